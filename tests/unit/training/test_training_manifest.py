"""Manifests written by training validate against the server's schema and reject bad contracts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

pytest.importorskip("torch")

from rnnserve.server.manifest import ModelManifest, dump_manifest, load_manifest
from rnnserve.training.config import load_config, parse_config, shipped_configs
from rnnserve.training.manifest_writer import build_manifest
from rnnserve.training.model import NetworkSpec

pytestmark = pytest.mark.torch


def _manifest(bidirectional: bool = False, **overrides: object) -> ModelManifest:
    spec = NetworkSpec(
        cell="lstm",
        layers=2,
        hidden_size=8,
        embedding_size=4,
        vocab_size=3,
        output_size=3,
        bidirectional=bidirectional,
    )
    arguments: dict[str, object] = {
        "name": "demo",
        "description": "tiny",
        "task": "language-model",
        "spec": spec,
        "parameters": 123,
        "vocabulary": ["a", "b", "c"],
        "unknown_token": None,
        "token_pattern": None,
        "lowercase": False,
        "feature_names": None,
        "output_meaning": "logits",
        "output_labels": ["a", "b", "c"],
        "version": 1,
        "sha256": "ab" * 32,
        "metrics": {"val_nats_per_char": 1.5},
        "notes": {"sample": "abc"},
        "opset": 17,
        "parity": {"whole_T1_B1": 1e-7},
        "data": {"name": "d", "source": "s", "licence": "MIT"},
    }
    arguments.update(overrides)
    return build_manifest(**arguments)  # type: ignore[arg-type]


def test_written_manifest_round_trips_through_the_schema(tmp_path: Path) -> None:
    manifest = _manifest()
    path = tmp_path / "model.json"
    dump_manifest(manifest, path)
    loaded = load_manifest(path)
    assert loaded == manifest
    assert [(s.input_name, s.output_name, s.shape) for s in loaded.states] == [
        ("h0", "hn", [2, 8]),
        ("c0", "cn", [2, 8]),
    ]
    assert loaded.versions[0].export.exporter.startswith("torch.onnx.export(dynamo=False)")
    assert loaded.streamable and loaded.input.kind == "tokens"


def test_bidirectional_models_are_written_not_streamable() -> None:
    manifest = _manifest(bidirectional=True, task="tagger")
    assert not manifest.streamable and manifest.states[0].shape == [4, 8]


def test_schema_rejects_mismatched_labels_and_bad_checksums() -> None:
    with pytest.raises(ValidationError):
        _manifest(output_labels=["a", "b"])
    with pytest.raises(ValidationError):
        _manifest(sha256="not-a-sha")
    raw = json.loads(_manifest().model_dump_json())
    raw["surprise"] = 1
    with pytest.raises(ValidationError):
        ModelManifest.model_validate(raw)


def test_every_shipped_config_parses_and_names_its_model() -> None:
    paths = shipped_configs()
    assert {p.stem for p in paths} >= {"char-lstm", "sentiment-gru", "births-lstm", "pos-bilstm"}
    for path in paths:
        config = load_config(path)
        assert config.name == path.stem
        # a CPU budget of minutes, or a fixed step count (the character LMs, trained on a GPU:
        # the same command trains them on the CPU in hours, see models/README.md)
        budget = config.training.max_minutes
        assert budget is None or budget <= 25
        if budget is None:
            repository = Path(__file__).resolve().parents[3] / "models" / "repository"
            latest = load_manifest(repository / config.name / "model.json").versions[-1]
            assert "CUDA" in latest.notes["environment"]


def test_config_typos_fail_loudly() -> None:
    with pytest.raises(ValueError, match="unknown training keys"):
        parse_config(
            {
                "name": "x",
                "task": "classifier",
                "dataset": "sentiment",
                "description": "",
                "network": {},
                "training": {"lerning_rate": 1},
            }
        )
