"""Every shipped model in models/repository loads in onnxruntime and matches its manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rnnserve.server.manifest import ONNX_FILENAME, ModelManifest, file_sha256, load_manifest

ort = pytest.importorskip("onnxruntime")

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
MANIFESTS = sorted(REPOSITORY.glob("*/model.json"))
PARITY_TOLERANCE = 1e-4  # rnnserve.training.export.PARITY_TOLERANCE


def test_the_default_demo_model_is_shipped() -> None:
    assert (REPOSITORY / "char-lstm" / "model.json").exists()


def test_the_repository_stays_small() -> None:
    total = sum(p.stat().st_size for p in REPOSITORY.rglob("*") if p.is_file())
    assert total <= 40 * 1000 * 1000  # issue 13: the model repository stays <= 40 MB


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.parent.name for p in MANIFESTS])
def test_shipped_model_matches_its_manifest(path: Path) -> None:
    manifest: ModelManifest = load_manifest(path)
    assert manifest.name == path.parent.name
    for info in manifest.versions:
        onnx_path = path.parent / str(info.version) / ONNX_FILENAME
        assert file_sha256(onnx_path) == info.sha256
        # relative for large logits (see rnnserve.training.export._max_scaled_diff)
        assert info.export.parity["max_scaled_diff"] <= PARITY_TOLERANCE
        assert max(info.export.parity.values()) <= 10 * PARITY_TOLERANCE
        if manifest.streamable:
            assert any(k.startswith("chunked_") for k in info.export.parity)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        expected_inputs = [manifest.input.name] + [s.input_name for s in manifest.states]
        assert sorted(inputs) == sorted(expected_inputs)
        assert sorted(outputs) == sorted(
            [o.name for o in manifest.outputs] + [s.output_name for s in manifest.states]
        )

        batch, time = 2, 3
        feeds: dict[str, np.ndarray] = {}
        if manifest.input.kind == "tokens":
            vocabulary = len(manifest.input.vocabulary)
            feeds[manifest.input.name] = np.array([[0, 1, vocabulary - 1]] * batch, dtype=np.int64)
        else:
            shape = (batch, time, manifest.input.width)
            feeds[manifest.input.name] = np.ones(shape, dtype=np.float32)
        for state in manifest.states:
            shape = tuple(state.full_shape(batch))
            feeds[state.input_name] = np.full(shape, state.initial_value, dtype=np.float32)
        results = dict(zip(outputs, session.run(None, feeds), strict=True))
        for output in manifest.outputs:
            assert list(results[output.name].shape) == [batch, time, *output.shape]
            assert np.isfinite(results[output.name]).all()
        for state in manifest.states:
            assert list(results[state.output_name].shape) == state.full_shape(batch)
