"""Run a config end to end: train (resumable), evaluate held-out, save weights and a record."""

from __future__ import annotations

import json
import platform
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


def environment(threads: int | None = None, device: str = "cpu") -> str:
    """What a float32 run's exact weights depend on besides code, data, seed and config.

    MKL and ATen pick their kernels by CPU (AVX2, AVX-512, ...), cuDNN by GPU, and kernels that
    sum in another order round differently; training amplifies the difference step after step.
    """
    if device == "cuda":
        return (
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}, {torch.cuda.get_device_name()} (float32, TF32 off)"
        )
    return (
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{_cpu_model()} ({platform.machine()}), {threads or torch.get_num_threads()} thread(s)"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def budget_bound(config: RunConfig, steps: int, cpu_seconds: float, stopped_early: bool) -> bool:
    """Whether the CPU-time budget, not max_steps or early stopping, ended a run."""
    minutes = config.training.max_minutes
    return (
        bool(minutes)
        and not stopped_early
        and steps < config.training.max_steps
        and (cpu_seconds >= 0.99 * 60 * float(minutes or 0))
    )


def resolve_device(name: str, task: object) -> torch.device:
    """`auto` is CUDA where torch sees a GPU and the task can move its data there, else the CPU.

    Only tasks with a `to(device)` method (the language models) train on a GPU.
    """
    movable = hasattr(task, "to")
    if name == "auto":
        name = "cuda" if movable and torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA device here (use --device cpu)")
    if name == "cuda" and not movable:
        raise ValueError(f"device cuda: {type(task).__name__} trains on the CPU only")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def reproducibility_note(config: RunConfig, record: dict[str, Any]) -> str:
    """Whether retraining `config` can give the same weights, and what it depends on."""
    steps = int(record["steps"])
    if record.get("device", "cpu") == "cuda":
        return (
            f"not byte-reproducible: trained on a GPU ({steps} steps fixed by the config, "
            "seeded); cuDNN's recurrent kernels add in another order than the CPU's and their "
            "backward pass is not deterministic, so a retrain, on a GPU or on the CPU (rnnserve-"
            f"train train {config.name} --device cpu, the same steps), gives other weights; "
            "the ONNX export of given weights is byte-identical"
        )
    if budget_bound(
        config, steps, record["training_cpu_seconds_per_thread"], record["stopped_early"]
    ):
        budget = config.training.max_minutes
        return (
            f"not byte-reproducible: the CPU-time budget (max_minutes {budget}) ended the run "
            f"at step {steps} of {config.training.max_steps}, and the learning-rate "
            "schedule followed the CPU time measured, so a rerun's steps and weights follow the "
            "machine's speed and load; set max_minutes to null for a reproducible run"
        )
    return (
        f"deterministic: {steps} steps fixed by the config, seeded, one thread; the ONNX export "
        "of given weights is byte-identical. rnnserve-train reproduce "
        f"{config.name} retrains and compares: byte-identical on the environment recorded here; "
        "on another CPU kernel path float32 rounding differs and training amplifies it"
    )


def finished_record(config: RunConfig, folder: Path) -> dict[str, Any] | None:
    """The result of a finished run of exactly this config in `folder`, if there is one."""
    path = folder / RESULT_FILE
    if not path.exists() or not (folder / WEIGHTS_FILE).exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    same = record.get("config") == json.loads(json.dumps(config.to_dict()))
    return record if same else None


def run_config(
    config: RunConfig,
    root: Path | None = None,
    progress_bar: bool = True,
    retrain: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Train `config` (resuming its checkpoint), evaluate, and write model.pt and result.json.

    A finished run of the same config is reused as it is (its record is returned) unless
    `retrain`, which starts again from scratch. `device` (resolve_device) is where the training
    steps run; the held-out evaluation and everything saved are on the CPU.
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
    model = build_network(recipe.spec, forget_bias=config.network.get("forget_bias"))
    where = resolve_device(device, recipe.task)
    if where.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # float32 throughout, as the CPU and ONNX run it
        model.to(where)
        recipe.task.to(where)  # type: ignore[attr-defined]
    result = train(
        model,
        recipe.task,
        config.training,
        checkpoint=folder / CHECKPOINT_FILE,
        progress_bar=progress_bar,
        description=config.name,
    )
    if where.type == "cuda":
        model.cpu()
        recipe.task.to(torch.device("cpu"))  # type: ignore[attr-defined]
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
        "device": where.type,
        "environment": environment(device=where.type),
    }
    torch.save({"spec": asdict(recipe.spec), "model": model.state_dict()}, folder / WEIGHTS_FILE)
    (folder / RESULT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
