"""Training curves (PNG) and the results table for models/README.md, from runs and manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rnnserve.server.manifest import load_manifest
from rnnserve.training.runs import RESULT_FILE, runs_dir

# model -> (held-out metric in the manifest, target as text)
TARGETS: dict[str, tuple[str, str]] = {
    "char-lstm": ("test_nats_per_char", "<= 1.36 nats/char (the Kneser-Ney 7-gram)"),
    "char-gru": ("test_nats_per_char", "beside the LSTM, <= 1.36 nats/char"),
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


def _on_gpu(record: dict[str, Any]) -> bool:
    return record.get("device") == "cuda"


def _minutes(record: dict[str, Any]) -> tuple[list[float], str]:
    """Each evaluation's time: GPU runs' wall minutes, CPU runs' CPU minutes (their budget)."""
    history = record["history"]
    if _on_gpu(record):
        return [h["seconds"] / 60 for h in history], "minutes on a GPU (wall)"
    # runs from before the CPU budget logged wall seconds only (and the trainer charged those)
    minutes = [h.get("cpu_seconds_per_thread", h["seconds"]) / 60 for h in history]
    return minutes, "CPU minutes (1 thread)"


def _training(record: dict[str, Any]) -> str:
    if _on_gpu(record):
        return f"{record['training_seconds'] / 60:.1f} min on a GPU, {record['steps']} steps"
    minutes = record["training_cpu_seconds_per_thread"] / 60
    return f"{minutes:.1f} CPU min, {record['steps']} steps"


def plot_char_models(records: dict[str, dict[str, Any]], output: Path) -> Path | None:
    """The character models' validation nats/char against steps, with the 7-gram's line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("char-lstm", "char-gru", "char-rnn") if records.get(n, {}).get("history")]
    if not names:
        return None
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    for name in names:
        history = records[name]["history"]
        label = f"{name} ({_training(records[name])})"
        axis.plot(
            [h["step"] for h in history], [h["val_nats_per_char"] for h in history], label=label
        )
    baseline = records[names[0]]["metrics"].get("baseline_kneser_ney_7gram_val_nats_per_char")
    if baseline is not None:
        axis.axhline(
            baseline, color="grey", linestyle="--", label=f"Kneser-Ney 7-gram {baseline:.3f}"
        )
    axis.set_xlabel("training steps (128 streams x 128 characters each)")
    axis.set_ylabel("validation nats/char")
    axis.set_ylim(1.15, 2.0)
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = output / "curve-char-models.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


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
        minutes, unit = _minutes(record)
        figure, axis = plt.subplots(figsize=(6, 3.4))
        axis.plot(minutes, [h["train_loss"] for h in history], marker="o", label="train loss")
        axis.set_xlabel(unit)
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
    """Validation nats/char of each char model, and the LSTM's at the same step."""
    lines = []
    lstm = records.get("char-lstm")
    for name in ("char-lstm", "char-gru", "char-rnn"):
        record = records.get(name)
        if record is None:
            continue
        value = record["metrics"]["val_nats_per_char"]
        line = f"{name}: val {value:.3f} nats/char after {_training(record)}"
        if lstm is not None and name != "char-lstm":
            same_step = [h for h in lstm["history"] if h["step"] <= record["steps"]]
            if same_step:
                line += f"; char-lstm had {same_step[-1]['val_nats_per_char']:.3f} at that step"
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
        environment = manifest.versions[-1].notes.get("environment", "")
        record = records.get(manifest.name) or {
            "training_cpu_seconds_per_thread": 60
            * metrics.get("training_cpu_minutes_per_thread", 0),
            "training_seconds": 60 * metrics.get("training_wall_minutes", 0),
            "steps": int(metrics.get("steps", 0)),
            "device": "cuda" if "CUDA" in environment else "cpu",
        }
        rows.append(
            f"| {manifest.name} | {manifest.cell}{' (bi)' if manifest.bidirectional else ''} "
            f"| {manifest.architecture.parameters:,} "
            f"| {metric} {metrics.get(metric, float('nan')):.4g} | {target} | {baseline or '-'} "
            f"| {_training(record)} |"
        )
    return "\n".join(rows) + "\n"


def write_report(repository: Path, output: Path, root: Path | None = None) -> str:
    """Write the curves to `output` and return the markdown (table + LM comparison)."""
    output.mkdir(parents=True, exist_ok=True)
    records = _records(root or runs_dir())
    plot_curves(records, output)
    plot_char_models(records, output)
    text = (
        results_table(repository, records)
        + "\n"
        + "\n".join(f"- {x}" for x in lm_comparison(records))
    )
    (output / "results.md").write_text(text + "\n", encoding="utf-8")
    return text
