"""Run a config end to end: train (resumable), evaluate held-out, save weights and a record."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rnnserve.training.config import RunConfig
from rnnserve.training.recipe import build_network, build_recipe
from rnnserve.training.trainer import train

RESULT_FILE = "result.json"
WEIGHTS_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"


def runs_dir() -> Path:
    """Where runs keep checkpoints and results (outside git)."""
    return Path.cwd() / ".cache" / "runs"


def finished_record(config: RunConfig, folder: Path) -> dict[str, Any] | None:
    """The result of a finished run of exactly this config in `folder`, if there is one."""
    path = folder / RESULT_FILE
    if not path.exists() or not (folder / WEIGHTS_FILE).exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    same = record.get("config") == json.loads(json.dumps(config.to_dict()))
    return record if same else None


def run_config(
    config: RunConfig, root: Path | None = None, progress_bar: bool = True, retrain: bool = False
) -> dict[str, Any]:
    """Train `config` (resuming its checkpoint), evaluate, and write model.pt and result.json.

    A finished run of the same config is reused as it is (its record is returned) unless
    `retrain`, which starts again from scratch.
    """
    folder = (root or runs_dir()) / config.name
    if retrain and folder.exists():
        shutil.rmtree(folder)
    record = finished_record(config, folder)
    if record is not None:
        return record
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.training.threads)
    torch.manual_seed(config.training.seed)
    recipe = build_recipe(config)
    model = build_network(recipe.spec)
    result = train(
        model,
        recipe.task,
        config.training,
        checkpoint=folder / CHECKPOINT_FILE,
        progress_bar=progress_bar,
        description=config.name,
    )
    started = time.perf_counter()
    metrics = {f"val_{k}": v for k, v in result.best.items() if k != "loss"}
    notes: dict[str, str] = {}
    if recipe.finish is not None:
        extra_metrics, notes = recipe.finish(model)
        metrics.update(extra_metrics)
    record = {
        "name": config.name,
        "config": config.to_dict(),
        "spec": asdict(recipe.spec),
        "parameters": model.parameter_count(),
        "metrics": metrics,
        "notes": notes,
        "training_seconds": result.seconds,
        "training_cpu_seconds_per_thread": result.cpu_seconds_per_thread,
        "evaluation_seconds": time.perf_counter() - started,
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "history": result.history,
    }
    torch.save({"spec": asdict(recipe.spec), "model": model.state_dict()}, folder / WEIGHTS_FILE)
    (folder / RESULT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
