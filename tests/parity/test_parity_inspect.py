"""`rnnserve-train inspect` proposes valid manifests for exported and hand-made models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from rnnserve.server.inspect_onnx import InspectionError, propose_manifest  # noqa: E402
from rnnserve.server.manifest import (  # noqa: E402
    ModelManifest,
    file_sha256,
    load_manifest,
)
from rnnserve.training.cli import main  # noqa: E402


@pytest.mark.torch
def test_inspect_an_exported_lstm_language_model(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from rnnserve.training.export import ExportWrapper, export_onnx
    from rnnserve.training.model import NetworkSpec, RecurrentNet

    torch.manual_seed(0)
    spec = NetworkSpec(
        cell="lstm", layers=2, hidden_size=10, embedding_size=4, vocab_size=9, output_size=9
    )
    path = tmp_path / "my-lm.onnx"
    export_onnx(ExportWrapper(RecurrentNet(spec)), path, "logits")

    manifest, guesses = propose_manifest(path)
    assert manifest.name == "my-lm"
    assert (manifest.task, manifest.cell, manifest.streamable) == ("language-model", "lstm", True)
    assert manifest.input.name == "tokens" and len(manifest.input.vocabulary) == 9
    assert [(o.name, o.shape) for o in manifest.outputs] == [("logits", [9])]
    assert [(s.input_name, s.output_name, s.shape, s.batch_axis) for s in manifest.states] == [
        ("h0", "hn", [2, 10], 1),
        ("c0", "cn", [2, 10], 1),
    ]
    assert manifest.architecture.layers == 2 and manifest.architecture.hidden_size == 10
    assert manifest.versions[0].sha256 == file_sha256(path)
    assert any("vocabulary" in g for g in guesses)


def _hand_made_gru(path: Path, bidirectional: bool = False) -> None:
    """features [batch, time, 3] -> GRU(5) -> per-step value; state_in -> state_out."""
    directions = 2 if bidirectional else 1
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Transpose", ["features"], ["x_tbf"], perm=[1, 0, 2]),
        helper.make_node(
            "GRU",
            ["x_tbf", "W", "R", "B", "", "state_in"],
            ["y", "state_out"],
            hidden_size=5,
            direction="bidirectional" if bidirectional else "forward",
        ),
        helper.make_node("Transpose", ["y"], ["y_btdh"], perm=[2, 0, 1, 3]),
        helper.make_node("Reshape", ["y_btdh", "shape"], ["y_flat"]),
        helper.make_node("MatMul", ["y_flat", "head"], ["prediction"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hand-made",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "time", 3]),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [directions, "batch", 5]),
        ],
        [
            helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", "time", 1]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [directions, "batch", 5]),
        ],
        [
            init("W", (directions, 15, 3)),
            init("R", (directions, 15, 5)),
            init("B", (directions, 30)),
            init("head", (5 * directions, 1)),
            onnx.numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_inspect_a_hand_made_gru_regressor(tmp_path: Path) -> None:
    path = tmp_path / "sensor.onnx"
    _hand_made_gru(path)
    manifest, _ = propose_manifest(path)
    assert (manifest.task, manifest.cell, manifest.bidirectional) == ("regressor", "gru", False)
    assert manifest.input.kind == "features" and manifest.input.width == 3
    assert [(o.name, o.meaning, o.shape) for o in manifest.outputs] == [
        ("prediction", "value", [1])
    ]
    assert [(s.input_name, s.output_name, s.shape) for s in manifest.states] == [
        ("state_in", "state_out", [1, 5])
    ]


def test_inspect_a_hand_made_bidirectional_model_is_not_streamable(tmp_path: Path) -> None:
    path = tmp_path / "bi.onnx"
    _hand_made_gru(path, bidirectional=True)
    manifest, _ = propose_manifest(path)
    assert manifest.bidirectional and not manifest.streamable
    assert manifest.states[0].shape == [2, 5]


def test_inspect_the_shared_tiny_models_recovers_their_manifests(
    tiny_repository: Path, tiny_manifests: dict[str, ModelManifest]
) -> None:
    for name, expected in tiny_manifests.items():
        path = tiny_repository / name / str(expected.latest_version) / "model.onnx"
        proposed, _ = propose_manifest(path)
        assert proposed.cell == expected.cell and proposed.bidirectional == expected.bidirectional
        assert proposed.input.name == expected.input.name
        assert [o.shape for o in proposed.outputs] == [o.shape for o in expected.outputs]
        assert proposed.states == expected.states


def test_inspect_command_writes_a_manifest_that_validates(tmp_path: Path) -> None:
    path = tmp_path / "sensor.onnx"
    _hand_made_gru(path)
    out = tmp_path / "model.json"
    assert main(["inspect", str(path), "--name", "My Sensor", "--write", str(out)]) == 0
    manifest = load_manifest(out)
    assert manifest.name == "my-sensor"
    assert "task guessed" in json.loads(out.read_text())["versions"][0]["notes"]["check"]


def test_a_model_without_recurrent_state_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "stateless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", 2])],
    )
    path = tmp_path / "stateless.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(InspectionError, match="no state inputs"):
        propose_manifest(path)
