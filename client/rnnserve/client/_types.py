"""The client's public value types: models, sessions, step outputs (numpy), generated tokens."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from rnnserve.client._vocabulary import Vocabulary

#: Anything the client accepts as one message of input: token ids (a sequence of ints or an
#: integer array), text (a ``str``, encoded with the model's vocabulary), or feature frames (a
#: float array ``[steps, width]``).
InputLike = str | Sequence[int] | npt.NDArray[np.generic]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class OutputFormat(enum.Enum):
    """How each output of a step is encoded in the reply."""

    RAW = "raw"  #: the model's raw logits or values
    PROBABILITIES = "probabilities"  #: softmax of logits outputs (values stay raw)
    TOP_K = "top_k"  #: only the k most probable classes per step
    NONE = "none"  #: no tensor: argmax labels and the step count only (cheapest)


class OutputSteps(enum.Enum):
    """Which steps of a message the reply carries."""

    ALL = "all"  #: one row per input step
    LAST = "last"  #: only the last step's row


class FinishReason(enum.Enum):
    """Why generation ended."""

    LENGTH = "length"  #: ``max_tokens`` tokens were generated
    STOP = "stop"  #: a stop string was produced


@dataclass(frozen=True)
class OutputOptions:
    """What a step's reply should contain."""

    format: OutputFormat = OutputFormat.RAW
    steps: OutputSteps = OutputSteps.ALL
    top_k: int = 5


@dataclass(frozen=True)
class OutputInfo:
    """One model output: its name, meaning (``"logits"`` or ``"value"``), shape and labels."""

    name: str
    meaning: str
    shape: tuple[int, ...]
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class StateInfo:
    """One recurrent state tensor of the model (shape per session, without the batch axis)."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """Everything the server says about one model version."""

    name: str
    version: int
    versions: tuple[int, ...]
    task: str
    cell: str
    bidirectional: bool
    streamable: bool
    input_kind: str
    vocabulary: Vocabulary | None
    feature_width: int
    outputs: tuple[OutputInfo, ...]
    states: tuple[StateInfo, ...]
    state_bytes: int
    max_steps_per_message: int
    description: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionInfo:
    """A session's public description; its state never travels here.

    ``durable_step_count`` is how many of its steps survive the loss of the server process
    holding it (``None`` with the in-memory state store: none do).
    """

    session_id: str
    model: str
    version: int
    step_count: int
    created_at: float
    expires_at: float
    state_bytes: int
    durable_step_count: int | None = None


@dataclass(frozen=True)
class ModelOutput:
    """One model output for the steps a reply returned (rows = returned steps).

    Which arrays are set depends on the requested :class:`OutputFormat`: ``tensor`` for RAW and
    PROBABILITIES, ``top_k_*`` for TOP_K; ``argmax`` (and ``labels`` where the output has labels)
    for every logits output.
    """

    name: str
    meaning: str
    tensor: FloatArray | None = None
    argmax: IntArray | None = None
    labels: tuple[str, ...] = ()
    top_k_indices: IntArray | None = None
    top_k_probabilities: FloatArray | None = None
    top_k_labels: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class StepOutput:
    """The outputs of one message of input.

    ``outputs`` maps each output name to its :class:`ModelOutput`, in the model's order;
    ``steps`` is how many steps the message consumed and ``step_count`` how many the session has
    consumed since it was opened or last reset; ``durable_step_count`` how many of those survive
    the loss of the server process (``None`` with the in-memory state store). The
    ``tensor``/``argmax``/``labels``/``top_k_*`` properties read the model's first output, which
    is all most models have.
    """

    outputs: Mapping[str, ModelOutput]
    steps: int
    step_count: int
    durable_step_count: int | None = None

    def __getitem__(self, name: str) -> ModelOutput:
        return self.outputs[name]

    def __iter__(self) -> Iterator[ModelOutput]:
        return iter(self.outputs.values())

    @property
    def output(self) -> ModelOutput:
        """The model's first output (``LookupError`` if the reply carries no outputs)."""
        for output in self.outputs.values():
            return output
        raise LookupError("this reply carries no outputs")

    @property
    def _first(self) -> ModelOutput:
        return self.output if self.outputs else _EMPTY

    @property
    def tensor(self) -> FloatArray | None:
        """The first output's tensor ``[rows, *shape]`` (RAW or PROBABILITIES format)."""
        return self._first.tensor

    @property
    def argmax(self) -> IntArray | None:
        """The first output's argmax per returned step (logits outputs)."""
        return self._first.argmax

    @property
    def labels(self) -> tuple[str, ...]:
        """The first output's argmax label per returned step, where it has labels."""
        return self._first.labels

    @property
    def top_k_indices(self) -> IntArray | None:
        """The first output's top-k class indices ``[rows, k]`` (TOP_K format)."""
        return self._first.top_k_indices

    @property
    def top_k_probabilities(self) -> FloatArray | None:
        """The first output's top-k probabilities ``[rows, k]`` (TOP_K format)."""
        return self._first.top_k_probabilities


# What the shortcuts of a reply without outputs read: nothing is set.
_EMPTY = ModelOutput(name="", meaning="")


@dataclass(frozen=True)
class GeneratedToken:
    """One generated token as the server sent it."""

    session_id: str
    token_id: int
    text: str
    index: int
    step_count: int
    finish_reason: FinishReason | None = None
