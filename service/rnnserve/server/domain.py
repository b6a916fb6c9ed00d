"""Plain data types shared by the core and every front door (no grpc, no onnxruntime)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from rnnserve.server.manifest import ModelManifest

FloatArray = npt.NDArray[np.float32]

# One message worth of input: token ids int64 [steps], feature frames float32 [steps, width],
# or text that the model's vocabulary encodes.
InputData = npt.NDArray[np.int64] | npt.NDArray[np.float32] | str


class OutputSteps(enum.Enum):
    ALL = "all"
    LAST = "last"


class OutputFormat(enum.Enum):
    RAW = "raw"
    PROBABILITIES = "probabilities"
    TOP_K = "top_k"
    NONE = "none"


@dataclass(frozen=True)
class OutputOptions:
    """What a step's reply carries."""

    steps: OutputSteps = OutputSteps.ALL
    format: OutputFormat = OutputFormat.RAW
    top_k: int = 5


@dataclass
class OutputResult:
    """One model output for the returned steps (rows = returned steps)."""

    name: str
    meaning: str  # "logits" or "value"
    tensor: npt.NDArray[np.float32] | None = None  # RAW / PROBABILITIES: [rows, *shape]
    top_k_indices: npt.NDArray[np.int64] | None = None  # TOP_K: [rows, k]
    top_k_probabilities: npt.NDArray[np.float32] | None = None  # TOP_K: [rows, k]
    top_k_labels: list[list[str]] | None = None  # TOP_K, where labels exist
    argmax: npt.NDArray[np.int64] | None = None  # logits outputs: [rows]
    labels: list[str] | None = None  # argmax labels, where labels exist


@dataclass
class StepOutcome:
    """The result of one message of input."""

    outputs: list[OutputResult]
    steps: int
    step_count: int
    # With a shared state tier: the step count the tier holds for the session (what survives a
    # crash of this process); None with the in-memory store.
    durable_step_count: int | None = None


@dataclass(frozen=True)
class SessionView:
    """A session's public description; never carries state."""

    session_id: str
    model: str
    version: int
    step_count: int
    created_at: float
    expires_at: float
    state_bytes: int
    durable_step_count: int | None = None  # as in StepOutcome


@dataclass(frozen=True)
class ModelDescription:
    """What a client may know about one served model version."""

    manifest: ModelManifest
    version: int
    versions: list[int]
    state_bytes: int
    max_steps_per_message: int


@dataclass
class ModelStatistics:
    """The work one model version did since the server started, for every front door."""

    name: str
    version: int
    inferences: int = 0  # sequences run: a message, or one segment of a long message
    executions: int = 0  # onnxruntime calls (each runs a batch of sequences)
    queue_s: float = 0.0  # time the sequences waited for their call, summed over sequences
    compute_s: float = 0.0  # time in the model, summed over sequences (a call counts for each)
    last_inference: float = 0.0  # wall clock (time.time) of the last call, 0 before any


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0  # 1 = no limit
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """Sample from a language model on a new session (`model`) or an existing one (`session_id`)."""

    model: str | None = None
    version: int = 0
    session_id: str | None = None
    prompt: InputData | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 0
    stop: tuple[str, ...] = ()
    close_session: bool = False


class FinishReason(enum.Enum):
    LENGTH = "length"
    STOP = "stop"


@dataclass(frozen=True)
class GeneratedToken:
    session_id: str
    token_id: int
    text: str
    index: int
    step_count: int
    finish_reason: FinishReason | None = None  # set on the last token only
