"""Turn a finished run into a served model: ONNX export, parity checks, manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from rnnserve.server.manifest import (
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    dump_manifest,
    file_sha256,
    load_manifest,
)
from rnnserve.training.config import RunConfig
from rnnserve.training.export import ExportWrapper, check_parity, export_onnx
from rnnserve.training.manifest_writer import build_manifest
from rnnserve.training.model import NetworkSpec, RecurrentNet
from rnnserve.training.recipe import build_recipe
from rnnserve.training.runs import RESULT_FILE, WEIGHTS_FILE, runs_dir


def publish_run(
    config: RunConfig, repository: Path, version: int = 1, root: Path | None = None
) -> Path:
    """Export the run of `config` into `repository/<name>/`; returns the manifest path."""
    folder = (root or runs_dir()) / config.name
    record = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    saved = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    spec = NetworkSpec(**saved["spec"])
    net = RecurrentNet(spec)
    net.load_state_dict(saved["model"])
    recipe = build_recipe(config)  # the vocabulary, labels and normalisation come from the data
    wrapper = ExportWrapper(
        net, recipe.input_mean, recipe.input_std, recipe.output_mean, recipe.output_std
    ).eval()

    model_dir = repository / config.name
    version_dir = model_dir / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    onnx_path = version_dir / ONNX_FILENAME
    export_onnx(wrapper, onnx_path, recipe.output_meaning, opset=config.opset)
    parity = check_parity(
        wrapper, onnx_path, recipe.output_meaning, streamable=not spec.bidirectional
    )

    metrics = dict(record["metrics"])
    cpu_minutes = record["training_cpu_seconds_per_thread"] / 60
    metrics["training_cpu_minutes_per_thread"] = round(cpu_minutes, 2)
    metrics["training_wall_minutes"] = round(record["training_seconds"] / 60, 2)
    metrics["steps"] = float(record["steps"])
    notes = dict(record["notes"])
    notes["training"] = (
        f"{record['steps']} steps, {cpu_minutes:.1f} CPU minutes on {config.training.threads} "
        f"thread(s) ({record['training_seconds'] / 60:.1f} min wall on a shared 2-core machine), "
        f"best at step {record['best_step']}; retrain: rnnserve-train train {config.name}"
    )
    manifest = build_manifest(
        name=config.name,
        description=config.description,
        task=config.task,
        spec=spec,
        parameters=record["parameters"],
        vocabulary=recipe.vocabulary,
        unknown_token=recipe.unknown_token,
        token_pattern=recipe.token_pattern,
        lowercase=recipe.lowercase,
        feature_names=recipe.feature_names,
        output_meaning=recipe.output_meaning,
        output_labels=recipe.output_labels,
        version=version,
        sha256=file_sha256(onnx_path),
        metrics={k: round(float(v), 6) for k, v in metrics.items()},
        notes=notes,
        opset=config.opset,
        parity=parity,
        data=recipe.data,
    )
    manifest_path = model_dir / MANIFEST_FILENAME
    dump_manifest(manifest, manifest_path)
    load_manifest(manifest_path)  # what the server will read must validate
    return manifest_path
