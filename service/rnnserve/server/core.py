"""InferenceCore: the one interface every front door (rnnserve.v1, KServe v2) programs against."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from rnnserve.server.domain import (
    GeneratedToken,
    GenerationRequest,
    InputData,
    ModelDescription,
    ModelStatistics,
    OutputOptions,
    SessionView,
    StepOutcome,
)
from rnnserve.server.errors import RnnServeError


@runtime_checkable
class InferenceCore(Protocol):
    """What a front door may ask of the serving core; no transport types cross this seam.

    Errors are the domain errors of `rnnserve.server.errors`, whose `field` is a path in the
    front door's own request where the front door says how its input is named (`input_field`).
    `identity` is the authenticated caller that owns sessions. InferenceEngine implements it.
    """

    @property
    def ready(self) -> bool:
        """True while models are loaded and the core accepts work."""
        ...

    def list_models(self) -> list[ModelDescription]:
        """Every served model at its latest version."""
        ...

    def get_model(self, name: str, version: int = 0) -> ModelDescription:
        """One model version (0 = latest)."""
        ...

    def model_statistics(self, name: str, version: int = 0) -> list[ModelStatistics]:
        """Cumulative work of one model version, every version (0) or every model (name "")."""
        ...

    async def create_session(self, name: str, version: int, identity: str) -> SessionView:
        """A new session on a streamable model."""
        ...

    async def open_sequence(
        self, name: str, version: int, identity: str, sequence: str, *, start: bool
    ) -> SessionView:
        """The session of a client-named sequence; `start` opens (or restarts) it."""
        ...

    async def get_session(self, session_id: str, identity: str) -> SessionView:
        """A live session's description."""
        ...

    async def reset_session(self, session_id: str, identity: str) -> SessionView:
        """Back to the initial state and step count 0."""
        ...

    async def close_session(self, session_id: str, identity: str) -> SessionView:
        """End a session."""
        ...

    async def export_state(self, session_id: str, identity: str) -> tuple[bytes, SessionView]:
        """A snapshot of a session's state."""
        ...

    async def import_state(self, snapshot: bytes, identity: str) -> SessionView:
        """A new session continuing from a snapshot."""
        ...

    async def step(
        self,
        session_id: str,
        identity: str,
        data: InputData,
        options: OutputOptions,
        *,
        input_field: str = "",
        expected_step_count: int | None = None,
        deadline: float | None = None,
    ) -> StepOutcome:
        """One message of input (one or more steps); the state advances only on success."""
        ...

    async def step_many(
        self,
        session_id: str,
        identity: str,
        messages: list[tuple[InputData, OutputOptions]],
        *,
        input_field: str = "",
        deadline: float | None = None,
    ) -> list[StepOutcome | RnnServeError]:
        """Several messages of one session in order, as one model call: step's outcomes, each."""
        ...

    async def predict(
        self,
        name: str,
        version: int,
        sequences: list[InputData],
        options: OutputOptions,
        *,
        input_field: str = "sequences",
    ) -> list[StepOutcome]:
        """Whole sequences from the initial state, no session."""
        ...

    def generate(self, request: GenerationRequest, identity: str) -> AsyncIterator[GeneratedToken]:
        """Tokens sampled from a language model, each as soon as it is produced."""
        ...
