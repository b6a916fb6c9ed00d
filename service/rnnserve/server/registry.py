"""ModelRegistry: the served model versions, each with its state store, scheduler and text codec."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

from rnnserve.server.domain import FloatArray, InputData, ModelDescription, OutputSteps
from rnnserve.server.errors import (
    DeadlineExceeded,
    ModelNotFound,
    ModelNotStreamable,
    NotALanguageModel,
)
from rnnserve.server.inputs import ModelInput, TextCodec, validate_input
from rnnserve.server.logs import safe
from rnnserve.server.manifest import ModelManifest, TokenInput
from rnnserve.server.repository import ModelRepository
from rnnserve.server.runtime import OnnxModel
from rnnserve.server.scheduler import BatchScheduler
from rnnserve.server.sessions import ModelKey
from rnnserve.server.settings import Settings
from rnnserve.server.state_store import StateStore


@dataclass(frozen=True)
class CommittedStep:
    """A session's message as committed: its input and the output rows its reply was built from
    (one per step, or the last step's only), for a state tier that keeps the last reply."""

    inputs: ModelInput
    rows: list[FloatArray]  # outputs in manifest order, [steps or 1, ...]
    steps: OutputSteps


@dataclass
class ServedModel:
    """One loaded model version with its state store, scheduler and text codec."""

    model: OnnxModel
    store: StateStore
    scheduler: BatchScheduler
    codec: TextCodec | None
    max_steps_per_message: int
    # Told of every committed session step (model key, slot, and the message when the caller
    # asked to keep its reply): a shared state tier writes it; an awaitable it returns (sync
    # durability) is awaited before the step's result is returned.
    after_step: Callable[[ModelKey, int, CommittedStep | None], Awaitable[None] | None] | None = (
        None
    )

    @property
    def manifest(self) -> ModelManifest:
        return self.model.manifest

    @property
    def logits_index(self) -> int | None:
        """The next-token logits output of a language model (None for other models)."""
        return self.store.last_output_index

    def validate(self, data: InputData) -> ModelInput:
        """One message of input checked against the model (fields relative to the input)."""
        return validate_input(self.manifest, data, self.max_steps_per_message, self.codec)

    async def run(
        self,
        inputs: ModelInput,
        slot: int | None,
        deadline: float | None = None,
        *,
        keep: OutputSteps | None = None,
    ) -> list[FloatArray]:
        """Run one message through the scheduler: the outputs [steps, ...] in manifest order.

        With a session's `slot`, the store commits the step when its result is delivered; if the
        caller is cancelled after that, the commit is rolled back, so the state only ever moves
        with a result the caller received. `keep`: the rows of the reply (all steps, or the last)
        that a state tier keeps with the state, to answer a retry of this message whose reply
        was lost.
        """
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(
                "the deadline passed before the step was queued; state unchanged"
            )
        request = self.scheduler.submit(inputs, slot, deadline)
        try:
            # the scheduler fails the request with DeadlineExceeded if it is still queued then
            rows = await request.future
        except asyncio.CancelledError:
            self.scheduler.abandon(request)
            raise
        if slot is not None and self.after_step is not None:
            committed = None
            if keep is not None:
                kept = rows if keep is OutputSteps.ALL else [row[-1:] for row in rows]
                committed = CommittedStep(inputs, kept, keep)
            durable = self.after_step((self.manifest.name, self.model.version), slot, committed)
            if durable is not None:
                try:
                    await durable
                except BaseException:
                    # not durable (state tier unreachable, session moved) or cancelled meanwhile:
                    # the step is undone in memory, so the state moves only with a result
                    self.scheduler.abandon(request)
                    raise
        return rows

    def require_streamable(self) -> None:
        """Refuse sessions on a whole-sequence (bidirectional) model."""
        if not self.manifest.streamable:
            raise ModelNotStreamable(
                f"model {self.manifest.name!r} is whole-sequence only (bidirectional); use Predict",
                field="model",
            )

    def require_language_model(self) -> tuple[TextCodec, int]:
        """The codec and logits output of a language model; NotALanguageModel otherwise."""
        manifest = self.manifest
        if self.codec is None or manifest.task != "language-model":
            raise NotALanguageModel(
                f"model {manifest.name!r} is a {manifest.task}, not a language model; it cannot "
                "generate",
                field="model",
            )
        if self.logits_index is None:
            raise NotALanguageModel(
                f"model {manifest.name!r} has no logits output over its vocabulary", field="model"
            )
        return self.codec, self.logits_index


class ModelRegistry:
    """Loads the repository's models and finds a served version by name and number."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._stores: dict[ModelKey, StateStore] = {}

    @property
    def stores(self) -> Mapping[ModelKey, StateStore]:
        """Every served version's state store (filled by `load`)."""
        return self._stores

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[ServedModel]:
        for versions in self._models.values():
            yield from versions.values()

    async def load(self) -> None:
        """Load every model of the repository and start its scheduler (on the running loop)."""
        repository = ModelRepository(self.settings.model_repository, self.settings.models)
        loaded = await asyncio.to_thread(
            repository.load, intra_op_threads=self.settings.intra_op_threads
        )
        for name, versions in loaded.items():
            self._models[name] = {}
            for version, model in versions.items():
                served = self._serve(model)
                self._models[name][version] = served
                self._stores[(name, version)] = served.store

    def _serve(self, model: OnnxModel) -> ServedModel:
        manifest = model.manifest
        logits = _logits_output(manifest)
        width = manifest.outputs[logits].shape[0] if logits is not None else 0
        store = StateStore(manifest.states, last_output_index=logits, last_output_width=width)
        scheduler = BatchScheduler(
            model,
            store,
            max_batch_size=self.settings.max_batch_size,
            max_queue=self.settings.max_queue,
        )
        scheduler.start()
        spec = manifest.input
        codec = TextCodec(spec, manifest.name) if isinstance(spec, TokenInput) else None
        return ServedModel(model, store, scheduler, codec, self.settings.max_steps_per_message)

    async def stop(self) -> None:
        """Stop every scheduler (waiting and running steps fail with ShuttingDown)."""
        for served in self:
            await served.scheduler.stop()

    def resolve(self, name: str, version: int) -> ServedModel:
        """The served version (0 = latest); ModelNotFound with the field at fault otherwise."""
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(  # the name is the client's: made safe to echo and log
                f"model '{safe(name)}' is not served (served: {sorted(self._models)})",
                field="model.name",
            )
        number = version or max(versions)
        if number not in versions:
            raise ModelNotFound(
                f"model '{safe(name)}' has no version {version} (served: {sorted(versions)})",
                field="model.version",
            )
        return versions[number]

    def find(self, name: str, version: int) -> ServedModel | None:
        """Exactly this version, or None if it is not served."""
        return self._models.get(name, {}).get(version)

    def served(self, key: ModelKey) -> ServedModel:
        """The served version a live session is bound to."""
        name, version = key
        return self._models[name][version]

    def describe(self, name: str, version: int = 0) -> ModelDescription:
        """What a client may know about one model version (0 = latest)."""
        served = self.resolve(name, version)
        return ModelDescription(
            manifest=served.manifest,
            version=served.model.version,
            versions=sorted(self._models[name]),
            state_bytes=served.store.slot_bytes,
            max_steps_per_message=self.settings.max_steps_per_message,
        )

    def describe_all(self) -> list[ModelDescription]:
        """Every served model, described at its latest version."""
        return [self.describe(name) for name in sorted(self._models)]


def _logits_output(manifest: ModelManifest) -> int | None:
    """Index of a language model's next-token logits output over its vocabulary, if it has one."""
    if manifest.task != "language-model" or not isinstance(manifest.input, TokenInput):
        return None
    vocab = len(manifest.input.vocabulary)
    for index, spec in enumerate(manifest.outputs):
        if spec.meaning == "logits" and spec.shape == [vocab]:
            return index
    return None
