"""Build and validate the manifest (rnnserve.server.manifest.ModelManifest) for an exported run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import torch
from rnnserve.server.manifest import (
    Architecture,
    DataSource,
    ExportInfo,
    FeatureInput,
    ModelManifest,
    OutputSpec,
    StateSpec,
    TokenInput,
    VersionInfo,
)
from rnnserve.training.export import INPUT_NAMES, OUTPUT_NAMES, STATE_INPUTS, STATE_OUTPUTS
from rnnserve.training.model import NetworkSpec

EXPORTER = f"torch.onnx.export(dynamo=False) torch {torch.__version__.split('+')[0]}"


def state_specs(spec: NetworkSpec) -> list[StateSpec]:
    """h (and c for an LSTM) in PyTorch's layout [layers*directions, batch, hidden]."""
    shape = [spec.layers * spec.directions, spec.hidden_size]
    return [
        StateSpec(
            input_name=STATE_INPUTS[i], output_name=STATE_OUTPUTS[i], shape=shape, batch_axis=1
        )
        for i in range(spec.state_count)
    ]


def build_manifest(
    *,
    name: str,
    description: str,
    task: str,
    spec: NetworkSpec,
    parameters: int,
    vocabulary: list[str] | None,
    unknown_token: int | None,
    token_pattern: str | None,
    lowercase: bool,
    feature_names: list[str] | None,
    output_meaning: str,
    output_labels: list[str] | None,
    version: int,
    sha256: str,
    metrics: dict[str, float],
    notes: dict[str, str],
    opset: int,
    parity: dict[str, float],
    data: dict[str, Any] | None,
    tokenizer: str | None = None,
    created: str | None = None,
) -> ModelManifest:
    """Assemble a manifest; pydantic validates it on construction (raises ValidationError)."""
    model_input: TokenInput | FeatureInput
    if spec.vocab_size is not None:
        assert vocabulary is not None and len(vocabulary) == spec.vocab_size
        model_input = TokenInput(
            name=INPUT_NAMES["tokens"],
            vocabulary=vocabulary,
            unknown_token=unknown_token,
            tokenizer=tokenizer,
            token_pattern=token_pattern,
            lowercase=lowercase,
        )
    else:
        assert spec.input_width is not None
        model_input = FeatureInput(
            name=INPUT_NAMES["features"], width=spec.input_width, feature_names=feature_names
        )
    output = OutputSpec(
        name=OUTPUT_NAMES[output_meaning],
        meaning="logits" if output_meaning == "logits" else "value",
        shape=[spec.output_size],
        labels=output_labels,
    )
    return ModelManifest(
        name=name,
        description=description,
        task=task,  # type: ignore[arg-type]
        cell=spec.cell,
        bidirectional=spec.bidirectional,
        streamable=not spec.bidirectional,
        architecture=Architecture(
            layers=spec.layers,
            hidden_size=spec.hidden_size,
            embedding_size=spec.embedding_size if spec.vocab_size is not None else None,
            parameters=parameters,
        ),
        input=model_input,
        outputs=[output],
        states=state_specs(spec),
        versions=[
            VersionInfo(
                version=version,
                sha256=sha256,
                metrics=metrics,
                export=ExportInfo(exporter=EXPORTER, opset=opset, parity=parity),
                created=created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                notes=notes,
            )
        ],
        data=DataSource(**data) if data else None,
    )
