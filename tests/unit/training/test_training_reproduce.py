"""Builds are deterministic: the same config trains and exports to a byte-identical ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from rnnserve.server.manifest import load_manifest
from rnnserve.training.cli import main
from rnnserve.training.config import RunConfig, parse_config
from rnnserve.training.publish import publish_run
from rnnserve.training.reproduce import compare_onnx
from rnnserve.training.runs import run_config

pytestmark = pytest.mark.torch


def _config(seed: int = 3, **training: object) -> RunConfig:
    return parse_config(
        {
            "name": "tiny-lstm",
            "task": "language-model",
            "dataset": "generated",
            "description": "generated text",
            "network": {"cell": "lstm", "layers": 1, "hidden_size": 12, "embedding_size": 6},
            "training": {
                "seed": seed,
                "batch_size": 4,
                "seq_len": 12,
                "max_steps": 12,
                "eval_every": 6,
                "warmup_steps": 2,
                "threads": 1,
                **training,
            },
            "dataset_options": {"characters": 3000},
        }
    )


def _build(config: RunConfig, root: Path) -> Path:
    run_config(config, root=root / "runs", progress_bar=False)
    publish_run(config, root / "repository", root=root / "runs")
    return root / "repository" / config.name / "1" / "model.onnx"


def test_two_builds_of_a_tiny_model_give_byte_identical_onnx_files(tmp_path: Path) -> None:
    first = _build(_config(), tmp_path / "a")
    second = _build(_config(), tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    assert compare_onnx(first, second) == {"byte_identical": True, "max_abs_weight_diff": 0.0}
    notes = load_manifest(first.parents[1] / "model.json").versions[0].notes
    assert notes["reproducibility"].startswith("deterministic: 12 steps")
    assert "thread(s)" in notes["environment"]

    other = _build(_config(seed=4), tmp_path / "c")  # another seed: same graph, other weights
    report = compare_onnx(first, other)
    assert not report["byte_identical"] and report["same_tensors"]
    assert report["max_abs_weight_diff"] > 0


def test_reproduce_command_retrains_and_compares_with_the_shipped_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _build(_config(), tmp_path / "shipped")
    path = tmp_path / "tiny-lstm.json"
    path.write_text(json.dumps(_config().to_dict()))
    repository = str(tmp_path / "shipped" / "repository")
    assert main(["reproduce", str(path), "--repository", repository]) == 0
    out = capsys.readouterr().out  # the training log (one line per evaluation), then the report
    report = json.loads(out[out.index("{\n") :])
    assert report["byte_identical"] and report["rebuilt_steps"] == report["shipped_steps"] == 12


def test_a_run_ended_by_its_cpu_budget_is_reported_as_not_reproducible() -> None:
    from rnnserve.training.runs import reproducibility_note

    config = _config(max_minutes=0.5, max_steps=1000)
    record = {"steps": 420, "training_cpu_seconds_per_thread": 30.2, "stopped_early": False}
    assert reproducibility_note(config, record).startswith("not byte-reproducible")
    record = {"steps": 1000, "training_cpu_seconds_per_thread": 12.0, "stopped_early": False}
    assert reproducibility_note(config, record).startswith("deterministic")


def test_a_gpu_run_is_reported_as_not_reproducible_with_its_reason() -> None:
    from rnnserve.training.runs import reproducibility_note

    record = {"steps": 12, "training_cpu_seconds_per_thread": 3.0, "stopped_early": False}
    note = reproducibility_note(_config(), {**record, "device": "cuda"})
    assert note.startswith("not byte-reproducible: trained on a GPU (12 steps")
    assert "cuDNN" in note and "--device cpu" in note


def test_reproduce_compares_a_run_trained_elsewhere_and_notes_it_in_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _build(_config(), tmp_path / "shipped")
    run_config(_config(seed=5), root=tmp_path / "elsewhere", progress_bar=False)
    path = tmp_path / "tiny-lstm.json"
    repository = tmp_path / "shipped" / "repository"

    # a run of another config (another seed) is not a rebuild of the shipped one
    path.write_text(json.dumps(_config().to_dict()))
    rebuilt = str(tmp_path / "elsewhere" / "tiny-lstm")
    with pytest.raises(ValueError, match="no finished run of tiny-lstm with this config"):
        main(["reproduce", str(path), "--repository", str(repository), "--rebuilt-run", rebuilt])

    # the same config trained elsewhere: compared, not retrained, and noted with --write
    run_config(_config(), root=tmp_path / "gpu", progress_bar=False)
    rebuilt = str(tmp_path / "gpu" / "tiny-lstm")
    args = ["reproduce", str(path), "--repository", str(repository), "--rebuilt-run", rebuilt]
    assert main([*args, "--write"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n") : out.rindex("}") + 1])
    assert report["byte_identical"] and report["rebuilt_steps"] == 12
    note = load_manifest(repository / "tiny-lstm" / "model.json").versions[0].notes["reproduced"]
    assert "byte-identical ONNX file" in note and "test_nats_per_char" in note
    assert not (tmp_path / ".cache" / "reproduce" / "runs" / "tiny-lstm" / "checkpoint.pt").exists()
