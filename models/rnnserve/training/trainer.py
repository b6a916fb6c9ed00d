"""The training loop: Adam, warmup + cosine, clipping, early stopping, checkpoints, progress bar."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rnnserve.training.config import TrainingConfig
from torch import nn
from tqdm import tqdm


class Task(Protocol):
    """What the loop needs from a task: batches with a loss, and an evaluation."""

    metric: str  # validation metric used for early stopping
    higher_is_better: bool

    def train_loss(self, model: nn.Module, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """Loss on the next training batch and how many items (tokens, examples) it held."""
        ...

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Metrics on a held-out split; includes `metric`."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """What a run produced: the best validation metrics and the curves."""

    best: dict[str, float]
    best_step: int
    steps: int
    seconds: float  # wall clock
    cpu_seconds_per_thread: float  # the budget the run used (see train)
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; returns the numpy generator the tasks draw batches from."""
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def learning_rate_factor(config: TrainingConfig, progress: float, step: int) -> float:
    """Linear warmup, then cosine from 1 down to min_learning_rate_ratio as progress goes 0 -> 1."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_learning_rate_ratio + (1 - config.min_learning_rate_ratio) * cosine


def _better(task: Task, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if task.higher_is_better else value < best


def train(
    model: nn.Module,
    task: Task,
    config: TrainingConfig,
    checkpoint: Path | None = None,
    progress_bar: bool = True,
    description: str = "train",
) -> TrainResult:
    """Train `model` on `task`, resuming `checkpoint` if it exists; ends with the best weights."""
    torch.set_num_threads(config.threads)
    rng = seed_everything(config.seed)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    step, elapsed_before, cpu_before, best, best_step, bad = 0, 0.0, 0.0, None, 0, 0
    history: list[dict[str, float]] = []
    best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_metrics: dict[str, float] = {}
    device = next(model.parameters()).device  # the caller put the model (and task) there
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False, map_location=device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        task.load_state_dict(saved["task"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in saved:  # dropout draws from the GPU's generator
            torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)
        step, elapsed_before = saved["step"], saved["elapsed"]
        cpu_before = saved.get("cpu_per_thread", elapsed_before)
        best, best_step, bad = saved["best"], saved["best_step"], saved["bad"]
        best_weights, best_metrics, history = (
            saved["best_weights"],
            saved["best_metrics"],
            saved["history"],
        )

    max_seconds = config.max_minutes * 60 if config.max_minutes else math.inf
    # The budget counts this process's CPU time per thread ("core-seconds / threads"), not wall
    # time: on a shared machine the wall clock says more about the neighbours than about the run.
    cpu_started = time.process_time() - cpu_before * config.threads
    started = time.perf_counter() - elapsed_before

    def budget_used() -> float:
        return (time.process_time() - cpu_started) / config.threads

    bar = tqdm(total=config.max_steps, initial=step, desc=description, disable=not progress_bar)
    running_loss, running_items, window_start, stopped_early = 0.0, 0, time.perf_counter(), False
    model.train()
    while True:
        progress = max(step / config.max_steps, budget_used() / max_seconds)
        if progress >= 1.0:
            break
        factor = learning_rate_factor(config, progress, step)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * factor
        loss, items = task.train_loss(model, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(
            model.parameters(), config.clip_norm if config.clip_norm else math.inf
        )
        optimizer.step()
        step += 1
        running_loss += float(loss.detach()) * items
        running_items += items
        bar.update(1)
        if step % 10 == 0:
            rate = running_items / max(time.perf_counter() - window_start, 1e-9)
            bar.set_postfix(
                loss=f"{running_loss / max(running_items, 1):.3f}", items_s=f"{rate:.0f}"
            )
        if step % config.eval_every == 0 or step == config.max_steps:
            metrics = task.evaluate(model, "validation")
            model.train()
            record = {
                "step": float(step),
                "seconds": time.perf_counter() - started,
                "cpu_seconds_per_thread": budget_used(),
                "train_loss": running_loss / max(running_items, 1),
                "grad_norm": float(grad_norm),
                "learning_rate": config.learning_rate * factor,
                **{f"val_{k}": v for k, v in metrics.items()},
            }
            history.append(record)
            tqdm.write(" ".join(f"{k}={v:.4g}" for k, v in record.items()))
            running_loss, running_items, window_start = 0.0, 0, time.perf_counter()
            value = metrics[task.metric]
            if _better(task, value, best):
                best, best_step, bad, best_metrics = value, step, 0, metrics
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            if checkpoint is not None:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "task": task.state_dict(),
                        "rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(),
                        **(
                            {"cuda_rng": torch.cuda.get_rng_state(device)}
                            if device.type == "cuda"
                            else {}
                        ),
                        "step": step,
                        "elapsed": time.perf_counter() - started,
                        "cpu_per_thread": budget_used(),
                        "best": best,
                        "best_step": best_step,
                        "bad": bad,
                        "best_weights": best_weights,
                        "best_metrics": best_metrics,
                        "history": history,
                    },
                    checkpoint,
                )
            if bad >= config.patience:
                stopped_early = True
                break
    bar.close()
    if not history:  # a run too short to evaluate still reports its final weights
        best_metrics = task.evaluate(model, "validation")
        best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_weights)
    model.eval()
    return TrainResult(
        best=best_metrics,
        best_step=best_step,
        steps=step,
        seconds=time.perf_counter() - started,
        cpu_seconds_per_thread=budget_used(),
        stopped_early=stopped_early,
        history=history,
    )
