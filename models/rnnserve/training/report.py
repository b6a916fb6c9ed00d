"""Training curves (PNG) and the results table for models/README.md, from runs and manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rnnserve.server.manifest import load_manifest
from rnnserve.training.runs import RESULT_FILE, runs_dir

# model -> (held-out metric in the manifest, target as text)
TARGETS: dict[str, tuple[str, str]] = {
    "char-lstm": ("test_nats_per_char", "<= 1.6 nats/char"),
    "char-gru": ("test_nats_per_char", "report beside the LSTM"),
    "char-rnn": ("test_nats_per_char", "report beside the LSTM"),
    "sentiment-gru": ("test_accuracy", ">= 0.75 and above bag-of-words logistic regression"),
    "births-lstm": ("test_mae_thousands", ">= 20% lower MAE than seasonal naive"),
    "pos-bilstm": ("test_token_accuracy", ">= 0.94 token accuracy"),
}


def _records(root: Path) -> dict[str, dict[str, Any]]:
    records = {}
    for path in sorted(root.glob(f"*/{RESULT_FILE}")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["name"] == path.parent.name:  # skip copies kept under other names
            records[record["name"]] = record
    return records


def plot_curves(records: dict[str, dict[str, Any]], output: Path) -> list[Path]:
    """One PNG per run: training loss and the validation metric against CPU minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, record in records.items():
        history = record["history"]
        if not history:
            continue
        metric = next(k for k in history[0] if k.startswith("val_") and k != "val_loss")
        # runs from before the CPU budget logged wall seconds only (and the trainer charged those)
        minutes = [h.get("cpu_seconds_per_thread", h["seconds"]) / 60 for h in history]
        figure, axis = plt.subplots(figsize=(6, 3.4))
        axis.plot(minutes, [h["train_loss"] for h in history], marker="o", label="train loss")
        axis.set_xlabel("CPU minutes (1 thread)")
        axis.set_ylabel("train loss")
        other = axis.twinx()
        other.plot(minutes, [h[metric] for h in history], marker="s", color="C1", label=metric)
        other.set_ylabel(metric)
        axis.set_title(name)
        figure.legend(loc="upper right", fontsize=8)
        figure.tight_layout()
        path = output / f"curve-{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def lm_comparison(records: dict[str, dict[str, Any]]) -> list[str]:
    """Validation nats/char of each char model, and the LSTM's at the others' CPU budget."""
    lines = []
    lstm = records.get("char-lstm")
    for name in ("char-lstm", "char-gru", "char-rnn"):
        record = records.get(name)
        if record is None:
            continue
        budget = record["training_cpu_seconds_per_thread"]
        value = record["metrics"]["val_nats_per_char"]
        line = f"{name}: val {value:.3f} nats/char after {budget / 60:.1f} CPU min"
        if lstm is not None and name != "char-lstm":
            earlier = [
                h
                for h in lstm["history"]
                if h.get("cpu_seconds_per_thread", h["seconds"]) <= budget
            ]
            if earlier:
                line += (
                    f"; char-lstm had {min(h['val_nats_per_char'] for h in earlier):.3f} by then"
                )
        lines.append(line)
    return lines


def results_table(repository: Path, records: dict[str, dict[str, Any]]) -> str:
    """Markdown table: model, cell, parameters, held-out metric, target, baseline, CPU minutes."""
    rows = [
        "| model | cell | parameters | held-out (test) | target | baseline | training |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(repository.glob("*/model.json")):
        manifest = load_manifest(path)
        metrics = manifest.versions[-1].metrics
        metric, target = TARGETS.get(manifest.name, ("", ""))
        baseline = ", ".join(
            f"{k.removeprefix('baseline_')} {v:.4g}"
            for k, v in metrics.items()
            if k.startswith("baseline_") and "test" in k
        )
        # a model whose run is not in this checkout: its manifest has the same figures
        record = records.get(manifest.name) or {
            "training_cpu_seconds_per_thread": 60
            * metrics.get("training_cpu_minutes_per_thread", 0),
            "steps": int(metrics.get("steps", 0)),
        }
        minutes = record["training_cpu_seconds_per_thread"] / 60
        rows.append(
            f"| {manifest.name} | {manifest.cell}{' (bi)' if manifest.bidirectional else ''} "
            f"| {manifest.architecture.parameters:,} "
            f"| {metric} {metrics.get(metric, float('nan')):.4g} | {target} | {baseline or '-'} "
            f"| {minutes:.1f} CPU min, {record['steps']} steps |"
        )
    return "\n".join(rows) + "\n"


def write_report(repository: Path, output: Path, root: Path | None = None) -> str:
    """Write the curves to `output` and return the markdown (table + LM comparison)."""
    output.mkdir(parents=True, exist_ok=True)
    records = _records(root or runs_dir())
    plot_curves(records, output)
    text = (
        results_table(repository, records)
        + "\n"
        + "\n".join(f"- {x}" for x in lm_comparison(records))
    )
    (output / "results.md").write_text(text + "\n", encoding="utf-8")
    return text
