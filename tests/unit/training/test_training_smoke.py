"""Training on tiny generated data: the loss goes down, runs are seeded, checkpoints resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from rnnserve.training.config import TrainingConfig  # noqa: E402
from rnnserve.training.model import NetworkSpec, RecurrentNet  # noqa: E402
from rnnserve.training.tasks.language_model import LanguageModelTask, encode, generate  # noqa: E402
from rnnserve.training.tasks.sequences import ClassifierTask  # noqa: E402
from rnnserve.training.trainer import learning_rate_factor, train  # noqa: E402

pytestmark = pytest.mark.torch

VOCABULARY = list("abcd .\n")
TEXT = "abcd abcd. dcba dcba.\n" * 150  # a pattern a tiny LSTM learns in a few dozen steps


def _lm_task() -> LanguageModelTask:
    ids = encode(TEXT, VOCABULARY)
    cut = int(len(ids) * 0.8)
    return LanguageModelTask(
        {"train": ids[:cut], "validation": ids[cut:], "test": ids[cut:]},
        batch_size=8,
        seq_len=20,
        eval_streams=4,
    )


def _lm(seed: int = 0) -> RecurrentNet:
    torch.manual_seed(seed)
    spec = NetworkSpec(
        cell="lstm",
        layers=1,
        hidden_size=24,
        embedding_size=8,
        vocab_size=len(VOCABULARY),
        output_size=len(VOCABULARY),
    )
    return RecurrentNet(spec)


def _config(**overrides: Any) -> TrainingConfig:
    base = {
        "batch_size": 8,
        "seq_len": 20,
        "learning_rate": 0.02,
        "warmup_steps": 5,
        "max_steps": 60,
        "eval_every": 20,
        "patience": 10,
        "threads": 1,
    }
    return TrainingConfig(**{**base, **overrides})


def test_language_model_loss_decreases_on_generated_text() -> None:
    task = _lm_task()
    model = _lm()
    before = task.evaluate(model, "validation")["nats_per_char"]
    result = train(model, task, _config(), progress_bar=False)
    after = result.best["nats_per_char"]
    assert before > 1.8  # about log(7) for an untrained model
    assert after < 0.6 * before
    assert [h["step"] for h in result.history] == [20.0, 40.0, 60.0]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    sample = generate(model, VOCABULARY, "abcd", 30, temperature=0.5)
    assert sample.startswith("abcd") and len(sample) == 34 and set(sample) <= set(VOCABULARY)


def test_classifier_learns_a_generated_rule() -> None:
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(1, 6, size=int(rng.integers(3, 9)))) for _ in range(400)]
    labels = [int(5 in s) for s in sequences]  # positive iff token 5 occurs: needs memory
    splits = {
        "train": (sequences[:300], labels[:300]),
        "validation": (sequences[300:], labels[300:]),
        "test": (sequences[300:], labels[300:]),
    }
    torch.manual_seed(0)
    model = RecurrentNet(
        NetworkSpec(
            cell="gru", layers=1, hidden_size=16, embedding_size=8, vocab_size=6, output_size=2
        )
    )
    task = ClassifierTask(splits, batch_size=16)
    result = train(
        model, task, _config(max_steps=150, eval_every=50, learning_rate=0.01), progress_bar=False
    )
    assert result.best["accuracy"] >= 0.9


def test_runs_are_reproducible_with_the_same_seed() -> None:
    first, second = _lm(), _lm()
    train(first, _lm_task(), _config(max_steps=15, eval_every=15), progress_bar=False)
    train(second, _lm_task(), _config(max_steps=15, eval_every=15), progress_bar=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _Interrupting:
    """Wraps a task and raises after `limit` training batches, as a killed run would stop."""

    def __init__(self, task: LanguageModelTask, limit: int) -> None:
        self.task, self.limit, self.calls = task, limit, 0
        self.metric, self.higher_is_better = task.metric, task.higher_is_better

    def train_loss(self, model: Any, rng: Any) -> Any:
        self.calls += 1
        if self.calls > self.limit:
            raise KeyboardInterrupt
        return self.task.train_loss(model, rng)

    def evaluate(self, model: Any, split: str) -> dict[str, float]:
        return self.task.evaluate(model, split)

    def state_dict(self) -> dict[str, Any]:
        return self.task.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task.load_state_dict(state)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    config = _config(max_steps=40, eval_every=10, patience=100)
    straight = _lm()
    train(straight, _lm_task(), config, progress_bar=False)

    checkpoint = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train(
            _lm(), _Interrupting(_lm_task(), 25), config, checkpoint=checkpoint, progress_bar=False
        )
    assert torch.load(checkpoint, weights_only=False)["step"] == 20
    resumed = _lm(seed=99)  # the checkpoint, not the initialisation, decides the weights
    result = train(resumed, _lm_task(), config, checkpoint=checkpoint, progress_bar=False)
    assert result.steps == 40
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    config = _config(warmup_steps=10, min_learning_rate_ratio=0.1)
    assert learning_rate_factor(config, 0.0, 0) == pytest.approx(0.1)
    assert learning_rate_factor(config, 0.2, 10) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + np.cos(0.2 * np.pi))
    )
    assert learning_rate_factor(config, 1.0, 500) == pytest.approx(0.1)
