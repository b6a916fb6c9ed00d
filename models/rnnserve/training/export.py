"""ONNX export with the recurrent state as explicit inputs/outputs, and the parity checks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from rnnserve.training.model import RecurrentNet
from torch import nn

INPUT_NAMES = {"tokens": "tokens", "features": "features"}
OUTPUT_NAMES = {"logits": "logits", "value": "value"}
STATE_INPUTS = ("h0", "c0")
STATE_OUTPUTS = ("hn", "cn")
CHUNKS = (7, 13, 1, 16)  # 37 steps, fed in uneven chunks with the state carried
# float32 rounding in the recurrent sums grows with width and steps: over 37 steps from a random
# state, a 2 x 64 LSTM's outputs differ from PyTorch's by ~1e-6, a 2 x 448 LSTM's by ~4e-5.
PARITY_TOLERANCE = 1e-4


class ParityError(AssertionError):
    """onnxruntime and PyTorch disagree by more than the tolerance."""


class ExportWrapper(nn.Module):
    """The served graph: raw inputs in, raw outputs out, state tensors explicit.

    Feature normalisation and output de-normalisation happen here, inside the graph, so the server
    feeds raw values and gets raw values back.
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor
    output_mean: torch.Tensor
    output_std: torch.Tensor

    def __init__(
        self,
        net: RecurrentNet,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
        output_mean: float | None = None,
        output_std: float | None = None,
    ) -> None:
        super().__init__()
        self.net = net.eval()
        self.normalise_input = input_mean is not None and input_std is not None
        self.denormalise_output = output_mean is not None and output_std is not None
        self.register_buffer("input_mean", torch.tensor(input_mean or [0.0], dtype=torch.float32))
        self.register_buffer("input_std", torch.tensor(input_std or [1.0], dtype=torch.float32))
        self.register_buffer("output_mean", torch.tensor(output_mean or 0.0, dtype=torch.float32))
        self.register_buffer("output_std", torch.tensor(output_std or 1.0, dtype=torch.float32))

    @property
    def input_kind(self) -> str:
        return "tokens" if self.net.spec.vocab_size is not None else "features"

    def forward(self, inputs: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.normalise_input:
            inputs = (inputs - self.input_mean) / self.input_std
        out, new_state = self.net(inputs, tuple(state))
        if self.denormalise_output:
            out = out * self.output_std + self.output_mean
        return (out, *new_state)


def tensor_names(wrapper: ExportWrapper, output_meaning: str) -> tuple[list[str], list[str]]:
    """(input names, output names) of the exported graph, states last."""
    count = wrapper.net.spec.state_count
    inputs = [INPUT_NAMES[wrapper.input_kind], *STATE_INPUTS[:count]]
    outputs = [OUTPUT_NAMES[output_meaning], *STATE_OUTPUTS[:count]]
    return inputs, outputs


def example_inputs(
    wrapper: ExportWrapper, batch: int, time: int, seed: int = 0, random_state: bool = False
) -> tuple[torch.Tensor, ...]:
    """Inputs for export and parity: ids over the vocabulary, or features at the data's scale."""
    generator = torch.Generator().manual_seed(seed)
    spec = wrapper.net.spec
    if spec.vocab_size is not None:
        inputs = torch.randint(0, spec.vocab_size, (batch, time), generator=generator)
    else:
        assert spec.input_width is not None
        noise = torch.randn(batch, time, spec.input_width, generator=generator)
        inputs = (
            noise * wrapper.input_std + wrapper.input_mean if wrapper.normalise_input else noise
        )
    shape = (spec.layers * spec.directions, batch, spec.hidden_size)
    states = tuple(
        (torch.randn(shape, generator=generator) * 0.5 if random_state else torch.zeros(shape))
        for _ in range(spec.state_count)
    )
    return (inputs, *states)


def export_onnx(wrapper: ExportWrapper, path: Path, output_meaning: str, opset: int = 17) -> None:
    """Export with the TorchScript exporter (dynamo=False): native RNN/GRU/LSTM ops, dynamic axes.

    The dynamo exporter fixes the time axis to the example's length and unrolls nn.RNN, so the
    classic exporter is used; the example has batch and time >= 2 so no axis is specialised to 1.
    """
    input_names, output_names = tensor_names(wrapper, output_meaning)
    axes: dict[str, dict[int, str]] = {input_names[0]: {0: "batch", 1: "time"}}
    axes[output_names[0]] = {0: "batch", 1: "time"}
    for name in input_names[1:] + output_names[1:]:
        axes[name] = {1: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter warns about variable batch unless h0/c0 are graph inputs; here they are
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
        # the tracer's notes on shape checks inside nn.RNNBase; the axes are checked below instead
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        # deliberate: the TorchScript exporter is the one that keeps RNN ops and dynamic time
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            wrapper,
            example_inputs(wrapper, batch=2, time=3),
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    _check_dynamic_axes(model, input_names[0], output_names[0])


def _check_dynamic_axes(model: onnx.ModelProto, input_name: str, output_name: str) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in (input_name, output_name):
            dims = value.type.tensor_type.shape.dim[:2]
            if any(d.HasField("dim_value") for d in dims):
                raise ValueError(f"{value.name}: batch/time axes are not dynamic in the export")


def _run_torch(wrapper: ExportWrapper, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in wrapper(*args)]


def _max_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _max_scaled_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """|a - b| / max(1, |b|): absolute for small values, relative for large logits.

    float32 carries ~7 significant digits, so two correct kernels that sum in a different order
    differ by ~1e-6 of the value: a logit of 40 legitimately differs by ~1.5e-5.
    """
    return max(
        float(np.max(np.abs(x - y) / np.maximum(1.0, np.abs(y)))) for x, y in zip(a, b, strict=True)
    )


def check_parity(
    wrapper: ExportWrapper,
    path: Path,
    output_meaning: str,
    streamable: bool,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, float]:
    """onnxruntime vs PyTorch max abs diff: T=1 and 37, batch 1 and 16, and chunked (if streamable).

    Returns check name -> max abs diff, plus `max_scaled_diff` (see _max_scaled_diff), and raises
    ParityError if that exceeds `tolerance`.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_names, _ = tensor_names(wrapper, output_meaning)
    results: dict[str, float] = {}
    scaled: list[float] = []

    def compare(name: str, expected: list[np.ndarray], got: list[np.ndarray]) -> None:
        results[name] = _max_diff(expected, got)
        scaled.append(_max_scaled_diff(got, expected))

    def run_onnx(args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        feeds = {name: t.numpy() for name, t in zip(input_names, args, strict=True)}
        return list(session.run(None, feeds))

    for batch in (1, 16):
        for time in (1, 37):
            args = example_inputs(wrapper, batch, time, seed=batch * 100 + time)
            compare(f"whole_T{time}_B{batch}", _run_torch(wrapper, args), run_onnx(args))
        if not streamable:
            continue
        args = example_inputs(wrapper, batch, 37, seed=batch, random_state=True)
        compare(f"whole_T37_B{batch}_carried_state", _run_torch(wrapper, args), run_onnx(args))
        reference = _run_torch(wrapper, args)
        state = [t.numpy() for t in args[1:]]
        pieces, start = [], 0
        for size in CHUNKS:
            chunk = args[0][:, start : start + size]
            feeds = (chunk, *(torch.from_numpy(s) for s in state))
            out, *state = run_onnx(feeds)
            pieces.append(out)
            start += size
        chunked = [np.concatenate(pieces, axis=1), *state]
        name = "chunked_" + "+".join(str(c) for c in CHUNKS) + f"_B{batch}"
        compare(name, reference, chunked)
    worst = max(scaled)
    results["max_scaled_diff"] = worst
    if worst > tolerance:
        raise ParityError(
            f"{path}: onnxruntime vs PyTorch differ by {worst:.3g} > {tolerance}: {results}"
        )
    return results
