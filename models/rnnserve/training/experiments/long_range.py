"""Two measured claims: gated cells solve the adding problem where a tanh RNN cannot, and clipping
keeps a tanh RNN's training stable. Writes JSON results and PNG curves."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rnnserve.training.datasets import shakespeare
from rnnserve.training.experiments.adding import adding_batch
from rnnserve.training.model import CellName, NetworkSpec, RecurrentNet, detach_state
from rnnserve.training.tasks.language_model import as_streams, encode
from torch import nn
from torch.nn import functional

BASELINE_MSE = 1 / 6  # always answering 1.0
DIVERGED_LOSS = 3.5  # nats/char: worse than a unigram model (~3.3), i.e. training was lost


@dataclass(frozen=True)
class AddingSettings:
    length: int = 100
    hidden: int = 64
    batch: int = 64
    steps: int = 3000
    learning_rate: float = 2e-3
    eval_every: int = 100
    solved_mse: float = 0.002  # stop early once clearly solved: the rest would be wasted CPU
    seed: int = 0


def run_adding(cell: CellName, settings: AddingSettings) -> dict[str, object]:
    """Train one cell on the adding problem; returns the test-MSE curve and the final MSE."""
    torch.manual_seed(settings.seed)
    model = RecurrentNet(
        NetworkSpec(cell=cell, layers=1, hidden_size=settings.hidden, input_width=2, output_size=1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    train_gen = torch.Generator().manual_seed(settings.seed + 1)
    test_x, test_y = adding_batch(1000, settings.length, torch.Generator().manual_seed(12345))
    curve: list[tuple[int, float]] = []
    started = time.process_time()
    for step in range(1, settings.steps + 1):
        x, y = adding_batch(settings.batch, settings.length, train_gen)
        out, _ = model(x)
        loss = functional.mse_loss(out[:, -1, 0], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % settings.eval_every == 0:
            with torch.no_grad():
                mse = float(functional.mse_loss(model(test_x)[0][:, -1, 0], test_y))
            curve.append((step, mse))
            if mse < settings.solved_mse:
                break
    return {
        "cell": cell,
        "final_test_mse": curve[-1][1],
        "best_test_mse": min(m for _, m in curve),
        "steps": curve[-1][0],
        "cpu_seconds": time.process_time() - started,
        "curve": curve,
    }


@dataclass(frozen=True)
class ClipSettings:
    # plain SGD, as in Pascanu et al. (2013): a large gradient becomes a large step, so an
    # exploding gradient throws the weights far away unless its norm is clipped
    hidden: int = 256
    batch: int = 32
    seq_len: int = 100
    steps: int = 300
    learning_rates: tuple[float, ...] = (1.0, 2.0)
    seeds: tuple[int, ...] = (0, 1, 2)  # explosions are sporadic: count them over seeds
    clip_norm: float = 1.0


def run_clipping(
    clip: bool,
    settings: ClipSettings,
    ids: torch.Tensor,
    vocab: int,
    learning_rate: float,
    seed: int,
) -> dict[str, object]:
    """A tanh-RNN character model (SGD) trained with or without clipping; loss and grad norms."""
    torch.manual_seed(seed)
    model = RecurrentNet(
        NetworkSpec(
            cell="rnn",
            layers=1,
            hidden_size=settings.hidden,
            embedding_size=32,
            vocab_size=vocab,
            output_size=vocab,
        )
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    streams = as_streams(ids, settings.batch)
    losses, norms, state, position = [], [], None, 0
    for _ in range(settings.steps):
        if position + settings.seq_len + 1 > streams.shape[1]:
            position, state = 0, None
        x = streams[:, position : position + settings.seq_len]
        y = streams[:, position + 1 : position + settings.seq_len + 1]
        position += settings.seq_len
        logits, new_state = model(x, state)
        state = detach_state(new_state)
        loss = functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        limit = settings.clip_norm if clip else math.inf
        norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), limit)))
        optimizer.step()
        value = loss.item()
        losses.append(value if math.isfinite(value) else float("nan"))
    return {
        "clip": clip,
        "learning_rate": learning_rate,
        "seed": seed,
        "diverged": not all(math.isfinite(v) for v in losses[-50:])
        or sum(losses[-50:]) / 50 > DIVERGED_LOSS,
        "losses": losses,
        "grad_norms": norms,
        "final_loss_mean_last_50": sum(losses[-50:]) / 50,
    }


def _plot_adding(results: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    for result in results:
        curve: list[tuple[int, float]] = result["curve"]  # type: ignore[assignment]
        steps, mse = zip(*curve, strict=True)
        axis.plot(
            steps, mse, label=str(result["cell"]).upper() if result["cell"] != "rnn" else "tanh RNN"
        )
    axis.axhline(BASELINE_MSE, color="grey", linestyle="--", label="predict 1.0 (0.167)")
    axis.axhline(0.01, color="grey", linestyle=":", label="0.01")
    axis.set_yscale("log")
    axis.set_xlabel("training step (batch 64)")
    axis.set_ylabel("test MSE")
    axis.set_title("Adding problem, T = 100")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_clipping(results: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({float(r["learning_rate"]) for r in results})  # type: ignore[arg-type]
    figure, axes = plt.subplots(2, len(rates), figsize=(5 * len(rates), 5), sharex=True)
    axes = axes.reshape(2, -1)
    for column, rate in enumerate(rates):
        top, bottom = axes[0, column], axes[1, column]
        labelled: set[bool] = set()
        for result in (r for r in results if r["learning_rate"] == rate):
            clip = bool(result["clip"])
            label = None if clip in labelled else ("clip norm 1.0" if clip else "no clipping")
            labelled.add(clip)
            color = "C0" if clip else "C3"
            losses: list[float] = result["losses"]  # type: ignore[assignment]
            top.plot(losses, color=color, label=label, linewidth=0.8)
            bottom.plot(result["grad_norms"], color=color, linewidth=0.8)  # type: ignore[arg-type]
        top.set_yscale("log")  # diverged runs sit at 20-150 nats/char, working ones near 2
        top.set_title(f"tanh RNN 1 x 256, char LM, SGD lr {rate:g}, 3 seeds")
        top.set_ylabel("training loss (nats/char)")
        top.legend()
        bottom.set_yscale("log")
        bottom.set_ylabel("gradient norm (before clipping)")
        bottom.set_xlabel("training step")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_all(output: Path, quick: bool = False, only: str | None = None) -> dict[str, object]:
    """Run the experiments (tiny when `quick`; `only` = "adding" or "clipping" reruns one and
    keeps the other's saved results); write long-range.json and two PNGs to `output`."""
    torch.set_num_threads(1)
    output.mkdir(parents=True, exist_ok=True)
    saved_path = output / "long-range.json"
    summary: dict[str, object] = (
        json.loads(saved_path.read_text(encoding="utf-8")) if only and saved_path.exists() else {}
    )
    if only in (None, "adding"):
        adding = (
            AddingSettings(length=20, hidden=16, steps=60, eval_every=20)
            if quick
            else AddingSettings()
        )
        cells: tuple[CellName, ...] = ("lstm", "gru", "rnn")
        adding_results = [run_adding(cell, adding) for cell in cells]
        _plot_adding(adding_results, output / "adding-problem.png")
        summary["adding"] = {
            "settings": adding.__dict__,
            "baseline_mse": BASELINE_MSE,
            "results": adding_results,
        }
        for result in adding_results:
            print(
                f"adding T={adding.length} {result['cell']}: "
                f"final test MSE {result['final_test_mse']:.4f} "
                f"after {result['steps']} steps, {result['cpu_seconds']:.0f} CPU s"
            )
    if only in (None, "clipping"):
        clipping = (
            ClipSettings(hidden=16, steps=30, seq_len=20, seeds=(0,)) if quick else ClipSettings()
        )
        splits = shakespeare.load_splits()
        text = splits.train[: 200_000 if quick else 2_000_000]
        ids = encode(text, splits.vocabulary)
        clip_results = [
            run_clipping(clip, clipping, ids, len(splits.vocabulary), rate, seed)
            for rate in clipping.learning_rates
            for seed in clipping.seeds
            for clip in (True, False)
        ]
        _plot_clipping(clip_results, output / "clipping.png")
        summary["clipping"] = {"settings": clipping.__dict__, "results": clip_results}
        for result in clip_results:
            norms: list[float] = result["grad_norms"]  # type: ignore[assignment]
            print(
                f"lr={result['learning_rate']} seed={result['seed']} clip={result['clip']}: "
                f"mean loss over the last 50 steps {result['final_loss_mean_last_50']:.3f}, "
                f"max grad norm {max(norms):.1f}, diverged {result['diverged']}"
            )
    saved_path.write_text(json.dumps(summary) + "\n", encoding="utf-8")
    return summary
