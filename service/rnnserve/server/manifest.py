"""The model manifest (<repository>/<name>/model.json): the contract between export and serving."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from rnnserve.server.tokenizer import TOKENIZERS, PatternTokenizer

MANIFEST_FILENAME = "model.json"
ONNX_FILENAME = "model.onnx"
SCHEMA_VERSION: Literal[1] = 1

Task = Literal["language-model", "classifier", "regressor", "tagger"]
Cell = Literal["rnn", "gru", "lstm"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenInput(_Strict):
    """Token ids, shape [batch, time], looked up in `vocabulary` (index = token id)."""

    kind: Literal["tokens"] = "tokens"
    name: str = Field(description="ONNX input tensor name")
    dtype: Literal["int64"] = "int64"
    vocabulary: list[str] = Field(min_length=1, description="token id -> token text")
    unknown_token: int | None = Field(
        default=None, description="id that text encoding uses for symbols not in the vocabulary"
    )
    tokenizer: str | None = Field(
        default=None,
        description="word-level models: the versioned tokenizer (rnnserve.server.tokenizer) that "
        'made the training tokens, e.g. "brown-v1"; the server splits text with it, and '
        "token_pattern / lowercase are then only a hint for readers that predate this field",
    )
    token_pattern: str | None = Field(
        default=None,
        description="word-level models: a Python regex whose re.findall matches are a text's "
        "tokens; None means one token per character (unless `tokenizer` is set)",
    )
    lowercase: bool = Field(default=False, description="lowercase text before tokenising it")

    @model_validator(mode="after")
    def _known_tokenizer(self) -> TokenInput:
        if self.tokenizer is None:
            return self
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}; known: {sorted(TOKENIZERS)}")
        named = TOKENIZERS[self.tokenizer]
        if (
            isinstance(named, PatternTokenizer)
            and self.token_pattern is not None
            and (self.token_pattern, self.lowercase) != (named.pattern, named.lowercase)
        ):
            raise ValueError(
                f"token_pattern and lowercase disagree with tokenizer {self.tokenizer!r}"
            )
        return self


class FeatureInput(_Strict):
    """Feature frames, shape [batch, time, width]; any normalisation lives inside the graph."""

    kind: Literal["features"] = "features"
    name: str = Field(description="ONNX input tensor name")
    dtype: Literal["float32"] = "float32"
    width: int = Field(gt=0)
    feature_names: list[str] | None = None

    @model_validator(mode="after")
    def _names_match_width(self) -> FeatureInput:
        if self.feature_names is not None and len(self.feature_names) != self.width:
            raise ValueError(
                f"feature_names has {len(self.feature_names)} names, width is {self.width}"
            )
        return self


InputSpec = Annotated[TokenInput | FeatureInput, Field(discriminator="kind")]


class OutputSpec(_Strict):
    """One per-step output, shape [batch, time, *shape]."""

    name: str = Field(description="ONNX output tensor name")
    meaning: Literal["logits", "value"] = Field(
        description="logits: unnormalised scores over `labels` (softmax gives probabilities); "
        "value: real-valued prediction(s)"
    )
    shape: list[int] = Field(description="trailing shape after [batch, time], e.g. [100]")
    dtype: Literal["float32"] = "float32"
    labels: list[str] | None = Field(
        default=None, description="class / tag / token names for a logits output"
    )

    @model_validator(mode="after")
    def _labels_match_shape(self) -> OutputSpec:
        if self.labels is not None and (len(self.shape) != 1 or self.shape[0] != len(self.labels)):
            raise ValueError(
                f"output {self.name}: {len(self.labels)} labels for shape {self.shape}"
            )
        return self


class StateSpec(_Strict):
    """A recurrent state tensor carried between calls (h, or c for an LSTM)."""

    input_name: str
    output_name: str
    shape: list[int] = Field(
        description="shape without the batch axis, e.g. [layers*directions, hidden]"
    )
    batch_axis: int = Field(default=1, ge=0, description="where the batch axis sits in the tensor")
    dtype: Literal["float32"] = "float32"
    initial_value: float = 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of this state for one sequence (float32)."""
        return 4 * math.prod(self.shape)

    def full_shape(self, batch: int) -> list[int]:
        shape = list(self.shape)
        shape.insert(self.batch_axis, batch)
        return shape


class Architecture(_Strict):
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    embedding_size: int | None = None
    parameters: int | None = None


class DataSource(_Strict):
    name: str
    source: str = Field(description="where it came from, pinned (package==version, file inside)")
    licence: str
    sha256: str | None = None
    splits: dict[str, int] | None = Field(default=None, description="split name -> examples")


class ExportInfo(_Strict):
    exporter: str = Field(description='e.g. "torch.onnx.export(dynamo=False) torch 2.13.0"')
    opset: int
    parity: dict[str, float] = Field(
        default_factory=dict, description="check name -> max abs diff onnxruntime vs PyTorch"
    )


class VersionInfo(_Strict):
    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of <version>/model.onnx")
    metrics: dict[str, float] = Field(default_factory=dict)
    export: ExportInfo
    created: str | None = None
    notes: dict[str, str] = Field(
        default_factory=dict, description="free text, e.g. a generated sample, training time"
    )


class ModelManifest(_Strict):
    """Everything the server needs to serve a model; it never guesses tensor names."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    description: str = ""
    task: Task
    cell: Cell
    bidirectional: bool = False
    streamable: bool = Field(
        description="state can be carried across calls; false if bidirectional"
    )
    architecture: Architecture
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    states: list[StateSpec] = Field(min_length=1)
    versions: list[VersionInfo] = Field(min_length=1)
    data: DataSource | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        if self.bidirectional and self.streamable:
            raise ValueError("a bidirectional model cannot be streamable")
        numbers = [v.version for v in self.versions]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"duplicate versions: {numbers}")
        names = [self.input.name] + [o.name for o in self.outputs]
        names += [s.input_name for s in self.states] + [s.output_name for s in self.states]
        if len(set(names)) != len(names):
            raise ValueError(f"tensor names are not unique: {names}")
        return self

    @property
    def state_bytes(self) -> int:
        """Bytes of recurrent state one session of this model holds."""
        return sum(state.nbytes for state in self.states)

    @property
    def latest_version(self) -> int:
        return max(v.version for v in self.versions)

    def version_info(self, version: int) -> VersionInfo:
        for info in self.versions:
            if info.version == version:
                return info
        raise KeyError(version)


def load_manifest(path: Path) -> ModelManifest:
    """Read and validate a manifest file (raises pydantic.ValidationError or OSError)."""
    return ModelManifest.model_validate_json(path.read_text(encoding="utf-8"))


def dump_manifest(manifest: ModelManifest, path: Path) -> None:
    """Write a manifest as indented JSON."""
    path.write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (what a manifest records for each version's onnx file)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
