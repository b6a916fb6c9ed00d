"""Retrain a shipped model from scratch and compare the result with the shipped ONNX file."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from rnnserve.server.manifest import MANIFEST_FILENAME, ONNX_FILENAME, file_sha256, load_manifest
from rnnserve.training.config import RunConfig
from rnnserve.training.publish import publish_run
from rnnserve.training.runs import environment, finished_record, run_config


def compare_onnx(shipped: Path, rebuilt: Path) -> dict[str, Any]:
    """Whether two ONNX files are byte-identical, and if not, how far apart their weights are.

    Weights are matched by initializer name (the exporter names them deterministically), so a
    difference in names is reported rather than guessed around.
    """
    same = file_sha256(shipped) == file_sha256(rebuilt)
    report: dict[str, Any] = {"byte_identical": same}
    if same:
        report["max_abs_weight_diff"] = 0.0
        return report
    a = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(shipped)).graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(rebuilt)).graph.initializer}
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        report["same_tensors"] = False
        return report
    diffs = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].size}
    report["same_tensors"] = True
    report["max_abs_weight_diff"] = max(diffs.values(), default=0.0)
    report["weights_identical"] = report["max_abs_weight_diff"] == 0.0
    return report


def reproduce(
    config: RunConfig,
    repository: Path,
    work: Path,
    rebuilt_run: Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Train `config` from scratch in `work`, export it there, and compare with the shipped model.

    `rebuilt_run`: a finished run folder of the same config (model.pt, result.json) trained
    elsewhere, say on another machine or a GPU, compared instead of training here.
    Returns the comparison (compare_onnx), the rebuilt and shipped metrics side by side, the
    environments, and the step counts.
    """
    runs = work / "runs"
    if rebuilt_run is None:
        record = run_config(config, root=runs, progress_bar=False, retrain=True, device=device)
    else:
        found = finished_record(config, rebuilt_run)
        if found is None:
            raise ValueError(f"{rebuilt_run}: no finished run of {config.name} with this config")
        record = found
        shutil.rmtree(runs / config.name, ignore_errors=True)
        shutil.copytree(
            rebuilt_run, runs / config.name, ignore=shutil.ignore_patterns("checkpoint*")
        )
    rebuilt_manifest = load_manifest(publish_run(config, work / "repository", root=work / "runs"))
    shipped_manifest = load_manifest(repository / config.name / MANIFEST_FILENAME)
    version = shipped_manifest.latest_version
    report = compare_onnx(
        repository / config.name / str(version) / ONNX_FILENAME,
        work / "repository" / config.name / "1" / ONNX_FILENAME,
    )
    shipped = shipped_manifest.version_info(version).metrics
    rebuilt = rebuilt_manifest.versions[0].metrics
    report["metrics"] = {
        key: {"shipped": shipped[key], "rebuilt": rebuilt[key]}
        for key in sorted(shipped.keys() & rebuilt.keys())
        if key.startswith(("test_", "val_"))
    }
    report["shipped_steps"] = int(shipped.get("steps", -1))
    report["rebuilt_steps"] = record["steps"]
    report["shipped_notes"] = {
        key: shipped_manifest.version_info(version).notes.get(key, "not recorded")
        for key in ("environment", "reproducibility")
    }
    report["environment"] = record.get("environment") or environment()
    return report


def summary(report: dict[str, Any]) -> str:
    """One line for the shipped manifest's notes: how close a rebuild came."""
    if report["byte_identical"]:
        outcome = "byte-identical ONNX file"
    elif report.get("same_tensors"):
        outcome = f"weights differ by at most {report['max_abs_weight_diff']:.3g}"
    else:
        outcome = "other tensors"
    metrics = "; ".join(
        f"{key} {pair['rebuilt']:.4f} (shipped {pair['shipped']:.4f})"
        for key, pair in report["metrics"].items()
        if key.startswith("test_")
    )
    return (
        f"{dt.date.today().isoformat()}: a rebuild ({report['environment']}, "
        f"{report['rebuilt_steps']} steps) gave {outcome}; {metrics}"
    )
