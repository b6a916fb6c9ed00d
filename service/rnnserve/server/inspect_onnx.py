"""Propose a manifest for any ONNX file with recurrent state, so users can serve their own.

Needs the `onnx` package (the [train] extra); the server CLI imports this module lazily.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from rnnserve.server.manifest import (
    Architecture,
    ExportInfo,
    FeatureInput,
    ModelManifest,
    OutputSpec,
    StateSpec,
    TokenInput,
    VersionInfo,
    file_sha256,
)

_RECURRENT_OPS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
# How state inputs and outputs are usually named: h0 -> hn, state_in -> state_out, ...
_PAIR_PATTERNS = [("0", "n"), ("_in", "_out"), ("in", "out"), ("_init", "_final"), ("", "_out")]
_PROBE_BATCH, _PROBE_TIME = 3, 5


class InspectionError(ValueError):
    """The ONNX file does not look like a recurrent model rnnserve can serve."""


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for dim in value.type.tensor_type.shape.dim:
        dims.append(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?"))
    return dims


def _elem_type(value: onnx.ValueInfoProto) -> int:
    return int(value.type.tensor_type.elem_type)


def _pair_name(input_name: str, output_names: list[str]) -> str | None:
    for before, after in _PAIR_PATTERNS:
        if before and not input_name.endswith(before):
            continue
        stem = input_name[: len(input_name) - len(before)] if before else input_name
        candidate = stem + after
        if candidate in output_names:
            return candidate
    return None


def _recurrent_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type in _RECURRENT_OPS]


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _probe_inputs(
    model: onnx.ModelProto, main: onnx.ValueInfoProto, width: int | None, vocab: int | None
) -> dict[str, np.ndarray]:
    """Small inputs to run the graph once: that reveals output shapes the file leaves symbolic."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = _dims(value)
        if value.name == main.name:
            if _elem_type(value) == TensorProto.INT64:
                feeds[value.name] = rng.integers(0, vocab or 2, (_PROBE_BATCH, _PROBE_TIME))
            else:
                frames = (_PROBE_BATCH, _PROBE_TIME, width or 1)
                feeds[value.name] = rng.standard_normal(frames).astype(np.float32)
        else:
            shape = tuple(d if isinstance(d, int) and d > 0 else _PROBE_BATCH for d in dims)
            feeds[value.name] = np.zeros(shape, dtype=np.float32)
    return feeds


def _vocabulary_size(model: onnx.ModelProto) -> int | None:
    """Rows of the embedding table: the initializer the first Gather reads from."""
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in initializers:
            return int(initializers[node.input[0]].dims[0])
    return None


StatePair = tuple[onnx.ValueInfoProto, str]  # a state input and the name of its output


def propose_manifest(path: Path, name: str | None = None) -> tuple[ModelManifest, list[str]]:
    """Inspect `path` and propose a manifest; returns it with the guesses a person should check."""
    model = onnx.load(str(path))
    guesses: list[str] = []
    main, state_pairs = _split_inputs(path, model)
    model_input, vocab = _model_input(path, model, main, guesses)
    width = model_input.width if isinstance(model_input, FeatureInput) else None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in model.graph.output]
    probe = _probe_inputs(model, main, width, vocab)
    results = dict(zip(output_names, session.run(None, probe), strict=True))
    state_outputs = {partner for _, partner in state_pairs}
    outputs = [
        _output_spec(path, out_name, list(results[out_name].shape))
        for out_name in output_names
        if out_name not in state_outputs
    ]
    nodes = _recurrent_nodes(model)
    cell = _RECURRENT_OPS[nodes[0].op_type] if nodes else "lstm"
    if not nodes:
        guesses.append("no native RNN/GRU/LSTM node found: cell guessed as lstm")
    bidirectional = any(_attribute(n, "direction", b"forward") == b"bidirectional" for n in nodes)
    if vocab is not None and outputs and outputs[0].shape == [vocab]:
        task = "language-model"
    elif outputs and outputs[0].meaning == "value":
        task = "regressor"
    else:
        task = "tagger" if bidirectional else "classifier"
    guesses.append(f"task guessed as {task}; labels unknown (add them for logits outputs)")
    states = [
        StateSpec(
            input_name=value.name,
            output_name=partner,
            shape=[
                int(d) if isinstance(d, int) and d > 0 else int(results[partner].shape[i])
                for i, d in enumerate(_dims(value))
                if i != 1
            ],
            batch_axis=1,
        )
        for value, partner in state_pairs
    ]
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    producer = f"{model.producer_name} {model.producer_version}".strip() or "unknown"
    stem = re.sub(r"[^a-z0-9._-]+", "-", (name or path.stem).lower()).strip("-") or "model"
    manifest = ModelManifest(
        name=stem[:64],
        description=f"proposed by rnnserve-train inspect from {path.name}",
        task=task,  # type: ignore[arg-type]
        cell=cell,  # type: ignore[arg-type]
        bidirectional=bidirectional,
        streamable=not bidirectional,
        architecture=_architecture(nodes, states[0], bidirectional),
        input=model_input,
        outputs=outputs,
        states=states,
        versions=[
            VersionInfo(
                version=1,
                sha256=file_sha256(path),
                export=ExportInfo(exporter=producer, opset=opset),
            )
        ],
    )
    return manifest, guesses


def _split_inputs(
    path: Path, model: onnx.ModelProto
) -> tuple[onnx.ValueInfoProto, list[StatePair]]:
    """The one non-state input and the state inputs paired with their outputs by name."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    output_names = [o.name for o in model.graph.output]
    state_pairs: list[StatePair] = []
    main_inputs = []
    for value in inputs:
        partner = _pair_name(value.name, output_names)
        if (
            partner is not None
            and len(_dims(value)) == 3
            and _elem_type(value) == TensorProto.FLOAT
        ):
            state_pairs.append((value, partner))
        else:
            main_inputs.append(value)
    if not state_pairs:
        raise InspectionError(
            f"{path.name}: no state inputs paired with outputs by name (h0->hn, x_in->x_out); "
            f"inputs {[v.name for v in inputs]}, outputs {output_names}"
        )
    if len(main_inputs) != 1:
        raise InspectionError(
            f"{path.name}: expected one non-state input, found {[v.name for v in main_inputs]}"
        )
    return main_inputs[0], state_pairs


def _model_input(
    path: Path, model: onnx.ModelProto, main: onnx.ValueInfoProto, guesses: list[str]
) -> tuple[TokenInput | FeatureInput, int | None]:
    """Token ids (with the embedding table's vocabulary size) or feature frames of a width."""
    main_dims = _dims(main)
    if _elem_type(main) == TensorProto.INT64:
        vocab = _vocabulary_size(model)
        if vocab is None:
            raise InspectionError(f"{path.name}: token input but no embedding table found")
        guesses.append(
            f"vocabulary: {vocab} placeholder entries '0'..'{vocab - 1}'; put the real tokens"
        )
        return TokenInput(name=main.name, vocabulary=[str(i) for i in range(vocab)]), vocab
    if len(main_dims) == 3 and isinstance(main_dims[2], int) and main_dims[2] > 0:
        return FeatureInput(name=main.name, width=int(main_dims[2])), None
    raise InspectionError(
        f"{path.name}: input {main.name} is neither int64 [batch, time] "
        f"nor float32 [batch, time, width]: {main_dims}"
    )


def _output_spec(path: Path, name: str, shape: list[int]) -> OutputSpec:
    """A per-step output as the probe run shaped it; its meaning guessed from its name."""
    if shape[:2] != [_PROBE_BATCH, _PROBE_TIME]:
        raise InspectionError(
            f"{path.name}: output {name} is not per-step [batch, time, ...]: "
            f"{shape} for batch {_PROBE_BATCH}, time {_PROBE_TIME}"
        )
    trailing = [int(d) for d in shape[2:]]
    lowered = name.lower()
    meaning: Literal["logits", "value"]
    if "logit" in lowered or "score" in lowered:
        meaning = "logits"
    elif trailing in ([], [1]) or any(w in lowered for w in ("value", "pred", "forecast")):
        meaning = "value"
    else:
        meaning = "logits"
    return OutputSpec(name=name, meaning=meaning, shape=trailing)


def _architecture(
    nodes: list[onnx.NodeProto], state: StateSpec, bidirectional: bool
) -> Architecture:
    """Layers from the state's first axis (layers x directions), hidden size from its last."""
    hidden: int | None = state.shape[-1] or None
    if hidden is None and nodes:
        hidden = int(_attribute(nodes[0], "hidden_size", 0)) or None
    directions = 2 if bidirectional else 1
    first_axis = state.shape[0]
    layers = first_axis // directions if first_axis > 0 else max(1, len(nodes))
    return Architecture(layers=max(1, layers), hidden_size=hidden or 1)


def propose_manifest_json(path: Path, name: str | None = None) -> str:
    """The proposal as manifest JSON; the guesses to check go to the description's notes."""
    manifest, guesses = propose_manifest(path, name)
    version = manifest.versions[0].model_copy(update={"notes": {"check": "; ".join(guesses)}})
    manifest = manifest.model_copy(update={"versions": [version]})
    return manifest.model_dump_json(indent=2, exclude_none=True) + "\n"
