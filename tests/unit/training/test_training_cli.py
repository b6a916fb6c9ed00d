"""The training command line end to end on generated data: train, export, manifest, inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from rnnserve.server.manifest import file_sha256, load_manifest
from rnnserve.training.cli import build_parser, main

pytestmark = pytest.mark.torch


def test_the_documented_commands_exist() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) >= {
        "data",
        "train",
        "export",
        "build-repository",
        "inspect",
        "experiments",
        "report",
        "significance",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "rnnserve.training", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "build-repository" in completed.stdout


def test_train_then_build_repository_writes_a_servable_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # runs go to ./.cache/runs
    config = {
        "name": "tiny-gru",
        "task": "language-model",
        "dataset": "generated",
        "description": "generated text",
        "network": {"cell": "gru", "layers": 1, "hidden_size": 16, "embedding_size": 8},
        "training": {
            "batch_size": 8,
            "seq_len": 16,
            "max_steps": 40,
            "eval_every": 20,
            "learning_rate": 0.02,
            "warmup_steps": 5,
            "threads": 1,
        },
        "dataset_options": {"characters": 6000},
    }
    path = tmp_path / "tiny-gru.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), "--no-progress"]) == 0
    result = tmp_path / ".cache/runs/tiny-gru/result.json"
    record = json.loads(result.read_text())
    assert record["steps"] == 40 and record["metrics"]["val_nats_per_char"] < 2.0
    written = result.stat().st_mtime_ns
    assert main(["train", str(path), "--no-progress"]) == 0  # a finished run is reused
    assert result.stat().st_mtime_ns == written

    repository = tmp_path / "repository"
    assert (
        main(
            [
                "build-repository",
                "--configs",
                str(path),
                "--export-only",
                "--output",
                str(repository),
            ]
        )
        == 0
    )
    manifest = load_manifest(repository / "tiny-gru" / "model.json")
    version = manifest.versions[0]
    assert file_sha256(repository / "tiny-gru" / "1" / "model.onnx") == version.sha256
    assert max(version.export.parity.values()) <= 1e-5
    assert "chunked_7+13+1+16_B16" in version.export.parity
    assert version.metrics["test_nats_per_char"] < 2.0
    assert manifest.input.vocabulary == sorted(set(manifest.input.vocabulary))

    proposal = tmp_path / "proposal.json"
    assert (
        main(
            ["inspect", str(repository / "tiny-gru" / "1" / "model.onnx"), "--write", str(proposal)]
        )
        == 0
    )
    proposed = load_manifest(proposal)
    assert proposed.states == manifest.states and proposed.task == "language-model"
