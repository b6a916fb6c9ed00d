"""Where training runs: the device choice, and what moves with the model (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rnnserve.training.cli import build_parser  # noqa: E402
from rnnserve.training.model import NetworkSpec, RecurrentNet  # noqa: E402
from rnnserve.training.report import plot_char_models, results_table  # noqa: E402
from rnnserve.training.runs import resolve_device  # noqa: E402
from rnnserve.training.tasks.language_model import LanguageModelTask  # noqa: E402
from rnnserve.training.tasks.sequences import ClassifierTask  # noqa: E402

pytestmark = pytest.mark.torch


def _lm_task() -> LanguageModelTask:
    ids = torch.arange(400) % 7
    return LanguageModelTask({"train": ids, "validation": ids, "test": ids}, 4, 10, eval_streams=2)


def _classifier_task() -> ClassifierTask:
    split = ([[1, 2, 3]], [0])
    return ClassifierTask({"train": split, "validation": split, "test": split}, batch_size=1)


def test_auto_picks_the_cpu_without_a_gpu_or_for_a_task_that_cannot_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", _lm_task()).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", _lm_task()).type == "cuda"
    assert resolve_device("auto", _classifier_task()).type == "cpu"
    assert resolve_device("cpu", _lm_task()).type == "cpu"


def test_asking_for_a_gpu_that_cannot_be_used_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        resolve_device("cuda", _lm_task())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="ClassifierTask trains on the CPU only"):
        resolve_device("cuda", _classifier_task())
    with pytest.raises(ValueError, match="expected auto, cpu or cuda"):
        resolve_device("tpu", _lm_task())


def test_the_language_model_task_moves_its_text_and_carried_state() -> None:
    task = _lm_task()
    task.state = (torch.zeros(1, 4, 3),)
    task.to(torch.device("meta"))  # a device without data: only where tensors live is checked
    assert {ids.device.type for ids in task.splits.values()} == {"meta"}
    assert task.train_streams.device.type == "meta" and task.state[0].device.type == "meta"


def test_a_networks_initial_state_lives_with_its_weights() -> None:
    spec = NetworkSpec(
        cell="lstm", layers=2, hidden_size=8, output_size=5, vocab_size=5, embedding_size=4
    )
    model = RecurrentNet(spec).to("meta")
    assert [t.device.type for t in model.initial_state(3)] == ["meta", "meta"]


def test_train_build_and_reproduce_take_a_device() -> None:
    parser = build_parser()
    for command in (["train", "x"], ["build-repository"], ["reproduce", "x"]):
        assert parser.parse_args(command).device == "auto"
        assert parser.parse_args([*command, "--device", "cpu"]).device == "cpu"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "x", "--device", "tpu"])


def _history(values: list[float]) -> list[dict[str, float]]:
    return [
        {
            "step": 100.0 * (i + 1),
            "seconds": 6.0 * (i + 1),
            "train_loss": v + 0.1,
            "val_nats_per_char": v,
        }
        for i, v in enumerate(values)
    ]


def test_the_report_shows_gpu_runs_in_gpu_minutes(tmp_path: Path) -> None:
    metrics = {"val_nats_per_char": 1.3, "baseline_kneser_ney_7gram_val_nats_per_char": 1.35}
    records = {
        "char-lstm": {
            "device": "cuda",
            "training_seconds": 120.0,
            "steps": 200,
            "training_cpu_seconds_per_thread": 119.0,
            "history": _history([1.5, 1.3]),
            "metrics": metrics,
        },
        "char-gru": {
            "training_seconds": 900.0,
            "steps": 200,
            "training_cpu_seconds_per_thread": 600.0,
            "history": _history([1.4, 1.2]),
            "metrics": metrics,
        },
    }
    path = plot_char_models(records, tmp_path)
    assert path is not None and path.read_bytes().startswith(b"\x89PNG")

    repository = Path(__file__).resolve().parents[3] / "models" / "repository"
    table = results_table(repository, {"char-lstm": records["char-lstm"]})
    row = next(line for line in table.splitlines() if line.startswith("| char-lstm "))
    assert row.endswith("| 2.0 min on a GPU, 200 steps |")
    # the shipped char-gru was trained on a GPU; its run is not in this table's records, so its
    # manifest's environment says where it trained
    gru_row = next(line for line in table.splitlines() if line.startswith("| char-gru "))
    assert gru_row.endswith("min on a GPU, 7000 steps |")
