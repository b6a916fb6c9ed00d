"""Run configuration: one JSON file per shipped model (models/configs/<name>.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings; every run is seeded, so a config reproduces its model."""

    seed: int = 1234
    batch_size: int = 64
    seq_len: int = 100  # truncated-BPTT chunk for language models
    learning_rate: float = 2e-3
    min_learning_rate_ratio: float = 0.05  # cosine decays to learning_rate * this
    warmup_steps: int = 50
    max_steps: int = 1000
    # Wall-clock budget: the cosine schedule follows whichever of steps or time runs out first,
    # so a run on a busy machine still ends with a fully decayed learning rate.
    max_minutes: float | None = None
    clip_norm: float | None = 1.0  # None disables gradient clipping
    weight_decay: float = 0.0
    eval_every: int = 100
    patience: int = 5  # evaluations without improvement before early stopping
    threads: int = 2


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a shipped model: data, network, training and its description."""

    name: str
    task: str  # language-model | classifier | regressor | tagger
    dataset: str  # shakespeare | sentiment | births | brown | adding
    description: str
    network: dict[str, Any]
    training: TrainingConfig = field(default_factory=TrainingConfig)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    opset: int = 17

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_config(raw: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from a dict, rejecting unknown keys so typos fail loudly."""
    known_run = {f.name for f in fields(RunConfig)}
    unknown = set(raw) - known_run
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    training_raw = dict(raw.get("training", {}))
    known_training = {f.name for f in fields(TrainingConfig)}
    unknown = set(training_raw) - known_training
    if unknown:
        raise ValueError(f"unknown training keys: {sorted(unknown)}")
    return RunConfig(**{**raw, "training": TrainingConfig(**training_raw)})


def load_config(path_or_name: str | Path) -> RunConfig:
    """Load a config file, or a shipped config by model name (models/configs/<name>.json)."""
    path = Path(path_or_name)
    if not path.exists():
        path = CONFIG_DIR / f"{path_or_name}.json"
    return parse_config(json.loads(path.read_text(encoding="utf-8")))


def shipped_configs() -> list[Path]:
    """Every shipped model's config, in a fixed order."""
    return sorted(CONFIG_DIR.glob("*.json"))
