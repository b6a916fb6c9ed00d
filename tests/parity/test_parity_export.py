"""Export parity: onnxruntime equals PyTorch for tiny rnn/gru/lstm models, whole and chunked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from rnnserve.training.export import (  # noqa: E402
    ExportWrapper,
    ParityError,
    check_parity,
    example_inputs,
    export_onnx,
)
from rnnserve.training.model import NetworkSpec, RecurrentNet  # noqa: E402

pytestmark = pytest.mark.torch
TOLERANCE = 1e-5


def _token_model(cell: str, bidirectional: bool = False) -> ExportWrapper:
    torch.manual_seed(0)
    spec = NetworkSpec(
        cell=cell,
        layers=2,
        hidden_size=12,
        embedding_size=6,
        vocab_size=17,
        output_size=17,
        bidirectional=bidirectional,
    )
    return ExportWrapper(RecurrentNet(spec))


def _run(
    session: ort.InferenceSession, names: list[str], arrays: list[np.ndarray]
) -> list[np.ndarray]:
    return list(session.run(None, dict(zip(names, arrays, strict=True))))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_export_is_dynamic_and_streams_in_chunks(cell: str, tmp_path: Path) -> None:
    wrapper = _token_model(cell)
    path = tmp_path / "model.onnx"
    export_onnx(wrapper, path, "logits")
    graph = onnx.load(str(path)).graph
    assert {n.op_type for n in graph.node} >= {cell.upper() if cell != "rnn" else "RNN"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["tokens", "h0", "c0"][: 3 if cell == "lstm" else 2]
    assert session.get_outputs()[0].name == "logits"

    for batch in (1, 16):
        for time in (1, 37):
            args = example_inputs(wrapper, batch, time, seed=time)
            with torch.no_grad():
                expected = [t.numpy() for t in wrapper(*args)]
            got = _run(session, names, [a.numpy() for a in args])
            assert got[0].shape == (batch, time, 17)
            for e, g in zip(expected, got, strict=True):
                assert np.max(np.abs(e - g)) <= TOLERANCE

        # the same 37 steps fed as 7+13+1+16 with the state carried between calls
        args = example_inputs(wrapper, batch, 37, seed=5, random_state=True)
        with torch.no_grad():
            whole = [t.numpy() for t in wrapper(*args)]
        state = [a.numpy() for a in args[1:]]
        pieces, start = [], 0
        for size in (7, 13, 1, 16):
            out, *state = _run(session, names, [args[0][:, start : start + size].numpy(), *state])
            pieces.append(out)
            start += size
        assert np.max(np.abs(np.concatenate(pieces, axis=1) - whole[0])) <= TOLERANCE
        for final, expected_state in zip(state, whole[1:], strict=True):
            assert final.shape == expected_state.shape == (2, batch, 12)
            assert np.max(np.abs(final - expected_state)) <= TOLERANCE

    report = check_parity(wrapper, path, "logits", streamable=True)
    assert {"whole_T1_B1", "whole_T37_B16", "chunked_7+13+1+16_B1", "chunked_7+13+1+16_B16"} <= set(
        report
    )
    assert max(report.values()) <= TOLERANCE


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bidirectional_matches_whole_sequence_only(cell: str, tmp_path: Path) -> None:
    wrapper = _token_model(cell, bidirectional=True)
    path = tmp_path / "model.onnx"
    export_onnx(wrapper, path, "logits")
    report = check_parity(wrapper, path, "logits", streamable=False)
    assert set(report) == {
        "whole_T1_B1",
        "whole_T37_B1",
        "whole_T1_B16",
        "whole_T37_B16",
        "max_scaled_diff",
    }
    assert max(report.values()) <= TOLERANCE

    # chunking a bidirectional model changes its outputs: why the manifest says streamable: false
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    args = [a.numpy() for a in example_inputs(wrapper, 2, 20, seed=3)]
    whole = _run(session, names, args)[0]
    first, *state = _run(session, names, [args[0][:, :10], *args[1:]])
    second = _run(session, names, [args[0][:, 10:], *state])[0]
    assert np.max(np.abs(np.concatenate([first, second], axis=1) - whole)) > 1e-3


def test_normalisation_lives_inside_the_graph(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = RecurrentNet(
        NetworkSpec(cell="gru", layers=1, hidden_size=8, input_width=3, output_size=1)
    )
    mean, std = [100.0, 0.5, -2.0], [10.0, 0.25, 4.0]
    wrapper = ExportWrapper(net, mean, std, output_mean=9.0, output_std=1.5)
    path = tmp_path / "model.onnx"
    export_onnx(wrapper, path, "value")
    raw = np.array([[[110.0, 0.75, 2.0], [90.0, 0.25, -6.0]]], dtype=np.float32)
    with torch.no_grad():
        normalised = (torch.from_numpy(raw) - torch.tensor(mean)) / torch.tensor(std)
        expected = net(normalised)[0] * 1.5 + 9.0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": raw, "h0": np.zeros((1, 1, 8), np.float32)})[0]
    assert got.shape == (1, 2, 1)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert max(check_parity(wrapper, path, "value", streamable=True).values()) <= TOLERANCE


def test_parity_failure_is_reported(tmp_path: Path) -> None:
    wrapper = _token_model("gru")
    path = tmp_path / "model.onnx"
    export_onnx(wrapper, path, "logits")
    with torch.no_grad():  # the graph on disk no longer matches the module
        wrapper.net.head.bias.add_(0.5)
    with pytest.raises(ParityError, match="differ by"):
        check_parity(wrapper, path, "logits", streamable=True)
