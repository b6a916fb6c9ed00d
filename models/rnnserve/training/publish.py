"""Turn a finished run into a served model: ONNX export, parity checks, manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from rnnserve.server.manifest import (
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    ModelManifest,
    TokenInput,
    dump_manifest,
    file_sha256,
    load_manifest,
)
from rnnserve.training.config import RunConfig
from rnnserve.training.export import ExportWrapper, check_parity, export_onnx
from rnnserve.training.manifest_writer import build_manifest
from rnnserve.training.model import NetworkSpec, RecurrentNet
from rnnserve.training.recipe import Recipe, build_recipe
from rnnserve.training.runs import (
    RESULT_FILE,
    WEIGHTS_FILE,
    environment,
    reproducibility_note,
    runs_dir,
)


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
    wall = f"{record['training_seconds'] / 60:.1f} min wall"
    where = (
        f"on a GPU ({wall}; see environment)"
        if record.get("device") == "cuda"
        else f"{cpu_minutes:.1f} CPU minutes on {config.training.threads} thread(s) ({wall} on "
        "a shared 2-core machine)"
    )
    notes["training"] = (
        f"{record['steps']} steps {where}, best at step {record['best_step']}; "
        f"retrain: rnnserve-train train {config.name}"
    )
    # a run recorded before environments were: it is being exported where it was trained
    notes["environment"] = record.get("environment") or environment(config.training.threads)
    notes["reproducibility"] = reproducibility_note(config, record)
    manifest = build_manifest(
        name=config.name,
        description=config.description,
        task=config.task,
        spec=spec,
        parameters=record["parameters"],
        vocabulary=recipe.vocabulary,
        unknown_token=recipe.unknown_token,
        tokenizer=recipe.tokenizer,
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
    if recipe.evaluate_served is not None:
        manifest, _ = with_served_metrics(manifest, recipe, model_dir, config.name)
    manifest_path = model_dir / MANIFEST_FILENAME
    dump_manifest(manifest, manifest_path)
    load_manifest(manifest_path)  # what the server will read must validate
    return manifest_path


SERVED_NOTE = (
    "{metrics}: recomputed by rnnserve-train evaluate {name}; the model's figures from the ONNX "
    "file run by onnxruntime as the server runs it, *_text_* with raw text sent through the "
    "server's text path (rnnserve.server.inputs)"
)


def add_metrics(
    folder: Path, metrics: dict[str, float], notes: dict[str, str] | None = None
) -> Path:
    """Merge `metrics` (rounded to 6 digits) and `notes` into a manifest's latest version."""
    path = folder / MANIFEST_FILENAME
    manifest = load_manifest(path)
    latest = manifest.version_info(manifest.latest_version)
    rounded = {k: round(float(v), 6) for k, v in metrics.items()}
    updated = latest.model_copy(
        update={
            "metrics": {**latest.metrics, **rounded},
            "notes": {**latest.notes, **(notes or {})},
        }
    )
    versions = [updated if v.version == latest.version else v for v in manifest.versions]
    dump_manifest(
        ModelManifest.model_validate(
            {**manifest.model_dump(), "versions": [v.model_dump() for v in versions]}
        ),
        path,
    )
    load_manifest(path)
    return path


def with_served_metrics(
    manifest: ModelManifest, recipe: Recipe, folder: Path, name: str
) -> tuple[ModelManifest, dict[str, float]]:
    """The recipe's served metrics of the model in `folder`, and the manifest with them merged
    into its latest version's metrics."""
    assert recipe.evaluate_served is not None
    metrics = {k: round(float(v), 6) for k, v in recipe.evaluate_served(folder, manifest).items()}
    latest = manifest.version_info(manifest.latest_version)
    updated = latest.model_copy(
        update={
            "metrics": {**latest.metrics, **metrics},
            "notes": {
                **latest.notes,
                "served_evaluation": SERVED_NOTE.format(metrics=", ".join(metrics), name=name),
            },
        }
    )
    versions = [updated if v.version == latest.version else v for v in manifest.versions]
    merged = ModelManifest.model_validate(
        {**manifest.model_dump(), "versions": [v.model_dump() for v in versions]}
    )
    return merged, metrics


def evaluate_published(
    config: RunConfig, repository: Path, write: bool = False
) -> dict[str, float]:
    """Evaluate a shipped model as the server runs it (no training, no torch model needed).

    The manifest's input first takes the recipe's tokenizer (the one its training tokens were
    made with). With `write`, both go into `repository/<name>/model.json`.
    """
    recipe = build_recipe(config)
    if recipe.evaluate_served is None:
        raise ValueError(f"{config.name}: its recipe has no served evaluation")
    folder = repository / config.name
    path = folder / MANIFEST_FILENAME
    manifest = load_manifest(path)
    if isinstance(manifest.input, TokenInput) and recipe.tokenizer is not None:
        spec = {**manifest.input.model_dump(), "tokenizer": recipe.tokenizer}
        manifest = ModelManifest.model_validate({**manifest.model_dump(), "input": spec})
    updated, metrics = with_served_metrics(manifest, recipe, folder, config.name)
    if write:
        dump_manifest(updated, path)
        load_manifest(path)
    return metrics
