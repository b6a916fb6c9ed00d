"""Tiny seeded ONNX recurrent models (onnx.helper, no torch) and a whole-sequence reference runner.

Every model follows the manifest contract (rnnserve.server.manifest): a batch-first input
(`tokens` int64 [batch, time] or `features` float32 [batch, time, width]), per-step outputs
[batch, time, *shape], and PyTorch-layout state tensors [layers*directions, batch, hidden] as graph
inputs (`h0`, `c0`) and outputs (`hn`, `cn`). The graphs use the native ONNX RNN/GRU/LSTM ops with
Transpose around them (onnxruntime's CPU kernels do not support layout=1).

Public API (stable; the transport, client and load-test suites import it):
- ``build_repository(root) -> dict[str, ModelManifest]``: writes every tiny model under `root`.
- ``run_whole_sequence(model_dir, inputs, version=None, states=None) -> dict[str, ndarray]``.
- the single builders (``build_language_model`` and friends) and the name constants below.

Import it as ``import tiny_models`` (tests/conftest.py puts tests/ on sys.path).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from rnnserve.server.manifest import (
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    Architecture,
    Cell,
    ExportInfo,
    FeatureInput,
    ModelManifest,
    OutputSpec,
    StateSpec,
    TokenInput,
    VersionInfo,
    dump_manifest,
    load_manifest,
)

OPSET = 17
IR_VERSION = 9

# 20 single-character tokens; text in tests is written with these characters only.
LM_VOCABULARY: list[str] = list("abcdefghijklmnop .,\n")
TAGS: list[str] = ["O", "B", "I"]
CLASSES: list[str] = ["negative", "neutral", "positive"]

RNN_LM = "tiny-rnn-lm"  # rnn, 1 layer, hidden 8, no unknown_token
GRU_LM = "tiny-gru-lm"  # gru, 1 layer, hidden 10, unknown_token = id of " "
LSTM_LM = "tiny-lstm-lm"  # lstm, 2 layers, hidden 12, versions 1 and 2 (different weights)
REGRESSOR = "tiny-regressor"  # gru, features width 4, output "value" [2]
CLASSIFIER = "tiny-classifier"  # lstm, features width 3, output "logits" [3] with CLASSES
TAGGER = "tiny-tagger"  # bidirectional lstm over LM_VOCABULARY tokens, "logits" [3] with TAGS
LANGUAGE_MODELS: tuple[str, ...] = (RNN_LM, GRU_LM, LSTM_LM)
ALL_MODELS: tuple[str, ...] = (RNN_LM, GRU_LM, LSTM_LM, REGRESSOR, CLASSIFIER, TAGGER)

_GATES = {"rnn": 1, "gru": 3, "lstm": 4}
_OPS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


def _recurrent_model(
    *,
    cell: Cell,
    input_kind: str,
    input_size: int,
    embedding_size: int,
    layers: int,
    hidden: int,
    directions: int,
    out_dim: int,
    output_name: str,
    seed: int,
) -> onnx.ModelProto:
    """Embedding (tokens) or identity (features) -> stacked recurrent ops -> per-step head."""
    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: npt.NDArray[np.generic]) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    if input_kind == "tokens":
        graph_input = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])
        emb = const(
            "embedding", rng.normal(0, 1.0, (input_size, embedding_size)).astype(np.float32)
        )
        nodes.append(helper.make_node("Gather", [emb, "tokens"], ["x_btf"], axis=0))
        x_btf, feature_size = "x_btf", embedding_size
    else:
        graph_input = helper.make_tensor_value_info(
            "features", TensorProto.FLOAT, ["batch", "time", input_size]
        )
        x_btf, feature_size = "features", input_size
    nodes.append(helper.make_node("Transpose", [x_btf], ["x_l0"], perm=[1, 0, 2]))

    is_lstm = cell == "lstm"
    state_names = ["h"] + (["c"] if is_lstm else [])
    state_inputs = [
        helper.make_tensor_value_info(
            f"{s}0", TensorProto.FLOAT, [layers * directions, "batch", hidden]
        )
        for s in state_names
    ]
    state_outputs = [
        helper.make_tensor_value_info(
            f"{s}n", TensorProto.FLOAT, [layers * directions, "batch", hidden]
        )
        for s in state_names
    ]
    per_layer_state: dict[str, list[str]] = {}
    for s in state_names:
        if layers == 1:
            per_layer_state[s] = [f"{s}0"]
        else:
            split = const(f"{s}_split", np.full(layers, directions, dtype=np.int64))
            outs = [f"{s}0_l{i}" for i in range(layers)]
            nodes.append(helper.make_node("Split", [f"{s}0", split], outs, axis=0))
            per_layer_state[s] = outs

    gates = _GATES[cell]
    scale = 1.0 / np.sqrt(hidden)
    x_in, in_size = "x_l0", feature_size
    layer_outputs: dict[str, list[str]] = {s: [] for s in state_names}
    for layer in range(layers):
        w = const(
            f"W{layer}",
            rng.uniform(-2 * scale, 2 * scale, (directions, gates * hidden, in_size)).astype(
                np.float32
            ),
        )
        r = const(
            f"R{layer}",
            rng.uniform(-2 * scale, 2 * scale, (directions, gates * hidden, hidden)).astype(
                np.float32
            ),
        )
        b = const(
            f"B{layer}",
            rng.uniform(-scale, scale, (directions, 2 * gates * hidden)).astype(np.float32),
        )
        inputs = [x_in, w, r, b, "", per_layer_state["h"][layer]]
        if is_lstm:
            inputs.append(per_layer_state["c"][layer])
        outputs = [f"y_l{layer}"] + [f"{s}n_l{layer}" for s in state_names]
        attrs: dict[str, object] = {"hidden_size": hidden}
        if directions == 2:
            attrs["direction"] = "bidirectional"
        if cell == "gru":
            attrs["linear_before_reset"] = 1  # PyTorch's GRU formulation
        if cell == "rnn":
            attrs["activations"] = ["Tanh"] * directions
        nodes.append(helper.make_node(_OPS[cell], inputs, outputs, **attrs))
        for s in state_names:
            layer_outputs[s].append(f"{s}n_l{layer}")
        # Y is [time, directions, batch, hidden] -> [time, batch, directions*hidden]
        nxt = f"x_l{layer + 1}"
        if directions == 1:
            axes = const(f"squeeze_axes{layer}", np.array([1], dtype=np.int64))
            nodes.append(helper.make_node("Squeeze", [f"y_l{layer}", axes], [nxt]))
        else:
            nodes.append(
                helper.make_node("Transpose", [f"y_l{layer}"], [f"yt_l{layer}"], perm=[0, 2, 1, 3])
            )
            shape = const(f"reshape{layer}", np.array([0, 0, -1], dtype=np.int64))
            nodes.append(helper.make_node("Reshape", [f"yt_l{layer}", shape], [nxt]))
        x_in, in_size = nxt, directions * hidden
    for s in state_names:
        if layers == 1:
            nodes.append(helper.make_node("Identity", layer_outputs[s], [f"{s}n"]))
        else:
            nodes.append(helper.make_node("Concat", layer_outputs[s], [f"{s}n"], axis=0))

    nodes.append(helper.make_node("Transpose", [x_in], ["y_bth"], perm=[1, 0, 2]))
    w_out = const("W_out", rng.normal(0, 1.0, (in_size, out_dim)).astype(np.float32))
    b_out = const("b_out", rng.normal(0, 0.1, (out_dim,)).astype(np.float32))
    nodes.append(helper.make_node("MatMul", ["y_bth", w_out], ["head"]))
    nodes.append(helper.make_node("Add", ["head", b_out], [output_name]))
    output = helper.make_tensor_value_info(
        output_name, TensorProto.FLOAT, ["batch", "time", out_dim]
    )

    graph = helper.make_graph(
        nodes,
        f"tiny_{cell}",
        [graph_input, *state_inputs],
        [output, *state_outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _write_versions(
    root: Path, name: str, seeds: dict[int, int], build: dict[str, object]
) -> list[VersionInfo]:
    infos = []
    for version, seed in seeds.items():
        model = _recurrent_model(seed=seed, **build)  # type: ignore[arg-type]
        path = root / name / str(version) / ONNX_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        data = model.SerializeToString()
        path.write_bytes(data)
        infos.append(
            VersionInfo(
                version=version,
                sha256=hashlib.sha256(data).hexdigest(),
                export=ExportInfo(exporter="onnx.helper (tests/tiny_models.py)", opset=OPSET),
                notes={"seed": str(seed)},
            )
        )
    return infos


def _states(cell: Cell, layers: int, directions: int, hidden: int) -> list[StateSpec]:
    names = ["h"] + (["c"] if cell == "lstm" else [])
    return [
        StateSpec(input_name=f"{s}0", output_name=f"{s}n", shape=[layers * directions, hidden])
        for s in names
    ]


def _save(root: Path, manifest: ModelManifest) -> ModelManifest:
    dump_manifest(manifest, root / manifest.name / MANIFEST_FILENAME)
    return manifest


def build_language_model(
    root: Path,
    name: str,
    cell: Cell,
    *,
    layers: int = 1,
    hidden: int = 8,
    embedding: int = 6,
    vocabulary: list[str] | None = None,
    unknown_token: int | None = None,
    seeds: dict[int, int] | None = None,
) -> ModelManifest:
    """A token language model: logits over the vocabulary per step. `seeds`: version -> seed."""
    vocab = vocabulary or LM_VOCABULARY
    seeds = seeds or {1: 1}
    build = dict(
        cell=cell,
        input_kind="tokens",
        input_size=len(vocab),
        embedding_size=embedding,
        layers=layers,
        hidden=hidden,
        directions=1,
        out_dim=len(vocab),
        output_name="logits",
    )
    versions = _write_versions(root, name, seeds, build)
    return _save(
        root,
        ModelManifest(
            name=name,
            description=f"tiny seeded {cell} language model for tests",
            task="language-model",
            cell=cell,
            streamable=True,
            architecture=Architecture(layers=layers, hidden_size=hidden, embedding_size=embedding),
            input=TokenInput(name="tokens", vocabulary=vocab, unknown_token=unknown_token),
            outputs=[OutputSpec(name="logits", meaning="logits", shape=[len(vocab)], labels=vocab)],
            states=_states(cell, layers, 1, hidden),
            versions=versions,
        ),
    )


def build_regressor(
    root: Path, name: str = REGRESSOR, *, width: int = 4, seed: int = 7
) -> ModelManifest:
    """A feature-input GRU regressor: two real values per step."""
    build = dict(
        cell="gru",
        input_kind="features",
        input_size=width,
        embedding_size=0,
        layers=1,
        hidden=8,
        directions=1,
        out_dim=2,
        output_name="value",
    )
    return _save(
        root,
        ModelManifest(
            name=name,
            description="tiny seeded GRU regressor for tests",
            task="regressor",
            cell="gru",
            streamable=True,
            architecture=Architecture(layers=1, hidden_size=8),
            input=FeatureInput(name="features", width=width),
            outputs=[OutputSpec(name="value", meaning="value", shape=[2])],
            states=_states("gru", 1, 1, 8),
            versions=_write_versions(root, name, {1: seed}, build),
        ),
    )


def build_classifier(
    root: Path, name: str = CLASSIFIER, *, width: int = 3, seed: int = 11
) -> ModelManifest:
    """A feature-input LSTM classifier with labelled logits at every step."""
    build = dict(
        cell="lstm",
        input_kind="features",
        input_size=width,
        embedding_size=0,
        layers=1,
        hidden=8,
        directions=1,
        out_dim=len(CLASSES),
        output_name="logits",
    )
    return _save(
        root,
        ModelManifest(
            name=name,
            description="tiny seeded LSTM classifier for tests",
            task="classifier",
            cell="lstm",
            streamable=True,
            architecture=Architecture(layers=1, hidden_size=8),
            input=FeatureInput(name="features", width=width),
            outputs=[
                OutputSpec(name="logits", meaning="logits", shape=[len(CLASSES)], labels=CLASSES)
            ],
            states=_states("lstm", 1, 1, 8),
            versions=_write_versions(root, name, {1: seed}, build),
        ),
    )


def build_tagger(root: Path, name: str = TAGGER, *, seed: int = 13) -> ModelManifest:
    """A bidirectional LSTM tagger over LM_VOCABULARY tokens (whole-sequence only)."""
    build = dict(
        cell="lstm",
        input_kind="tokens",
        input_size=len(LM_VOCABULARY),
        embedding_size=6,
        layers=1,
        hidden=8,
        directions=2,
        out_dim=len(TAGS),
        output_name="logits",
    )
    return _save(
        root,
        ModelManifest(
            name=name,
            description="tiny seeded bidirectional LSTM tagger for tests",
            task="tagger",
            cell="lstm",
            bidirectional=True,
            streamable=False,
            architecture=Architecture(layers=1, hidden_size=8, embedding_size=6),
            input=TokenInput(name="tokens", vocabulary=LM_VOCABULARY),
            outputs=[OutputSpec(name="logits", meaning="logits", shape=[len(TAGS)], labels=TAGS)],
            states=_states("lstm", 1, 2, 8),
            versions=_write_versions(root, name, {1: seed}, build),
        ),
    )


def build_repository(root: Path) -> dict[str, ModelManifest]:
    """Write every tiny model (ALL_MODELS) under `root` and return their manifests by name."""
    root.mkdir(parents=True, exist_ok=True)
    manifests = [
        build_language_model(root, RNN_LM, "rnn", hidden=8, seeds={1: 1}),
        build_language_model(
            root, GRU_LM, "gru", hidden=10, unknown_token=LM_VOCABULARY.index(" "), seeds={1: 2}
        ),
        build_language_model(root, LSTM_LM, "lstm", layers=2, hidden=12, seeds={1: 3, 2: 4}),
        build_regressor(root),
        build_classifier(root),
        build_tagger(root),
    ]
    return {m.name: m for m in manifests}


def run_whole_sequence(
    model_dir: Path,
    inputs: npt.NDArray[np.int64] | npt.NDArray[np.float32],
    *,
    version: int | None = None,
    states: dict[str, npt.NDArray[np.float32]] | None = None,
) -> dict[str, npt.NDArray[np.float32]]:
    """Run one whole sequence (tokens [T] or features [T, width]) with onnxruntime directly.

    Returns every per-step output by name without the batch axis ([T, *shape]) and every final
    state by its *input* name (e.g. "h0") without the batch axis ([layers*dirs, hidden]).
    `states` optionally gives initial states by input name (default: the manifest's initial value).
    """
    manifest = load_manifest(model_dir / MANIFEST_FILENAME)
    number = version if version is not None else manifest.latest_version
    session = ort.InferenceSession(
        str(model_dir / str(number) / ONNX_FILENAME), providers=["CPUExecutionProvider"]
    )
    feeds: dict[str, npt.NDArray[np.generic]] = {manifest.input.name: np.asarray(inputs)[None]}
    for spec in manifest.states:
        if states is not None and spec.input_name in states:
            value = np.expand_dims(np.asarray(states[spec.input_name], np.float32), spec.batch_axis)
        else:
            value = np.full(spec.full_shape(1), spec.initial_value, dtype=np.float32)
        feeds[spec.input_name] = value
    names = [o.name for o in manifest.outputs] + [s.output_name for s in manifest.states]
    results = session.run(names, feeds)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for spec, value in zip(manifest.outputs, results, strict=False):
        out[spec.name] = np.asarray(value)[0]
    for spec, value in zip(manifest.states, results[len(manifest.outputs) :], strict=True):
        out[spec.input_name] = np.take(np.asarray(value), 0, axis=spec.batch_axis)
    return out
