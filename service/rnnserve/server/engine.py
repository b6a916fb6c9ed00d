"""InferenceEngine: the transport-free core every front door calls (models, sessions, steps)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rnnserve.server import metrics, snapshot
from rnnserve.server.errors import (
    CapacityExceeded,
    DeadlineExceeded,
    InvalidInput,
    InvalidSnapshot,
    ModelNotFound,
    ModelNotStreamable,
    NotALanguageModel,
    SessionNotFound,
    ShuttingDown,
)
from rnnserve.server.generation import Sampler, StopMatcher, check_sampling
from rnnserve.server.inputs import ModelInput, TextCodec, validate_input
from rnnserve.server.manifest import ModelManifest, TokenInput
from rnnserve.server.postprocess import build_outputs, check_options
from rnnserve.server.repository import ModelRepository
from rnnserve.server.runtime import FloatArray, OnnxModel
from rnnserve.server.scheduler import BatchScheduler
from rnnserve.server.sessions import ModelKey, Session, SessionManager
from rnnserve.server.settings import Settings
from rnnserve.server.state_store import StateStore
from rnnserve.server.types import (
    FinishReason,
    GeneratedToken,
    GenerationRequest,
    InputData,
    OutputOptions,
    SessionView,
    StepOutcome,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelDescription:
    """What a client may know about one served model version."""

    manifest: ModelManifest
    version: int
    versions: list[int]
    state_bytes: int
    max_steps_per_message: int


@dataclass
class ServedModel:
    """One loaded model version with its state store, scheduler and text codec."""

    model: OnnxModel
    store: StateStore
    scheduler: BatchScheduler
    codec: TextCodec | None
    logits_index: int | None  # the next-token logits output of a language model

    @property
    def manifest(self) -> ModelManifest:
        return self.model.manifest


class InferenceEngine:
    """Loads the models, owns the sessions and schedulers, and runs every request of the server.

    All methods run on one asyncio event loop; onnxruntime runs in each model's worker thread.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._stores: dict[ModelKey, StateStore] = {}
        self._sessions = SessionManager(
            self._stores, ttl_s=settings.session_ttl_s, max_sessions=settings.max_sessions
        )
        secret = settings.snapshot_secret
        self._secret = secret.get_secret_value().encode() if secret is not None else None
        self._started = False
        self._stopping = False
        self._inflight = 0
        self._drained: asyncio.Event | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the models, start the schedulers and the reaper, restore saved sessions."""
        repository = ModelRepository(self.settings.model_repository, self.settings.models)
        loaded = await asyncio.to_thread(
            repository.load, intra_op_threads=self.settings.intra_op_threads
        )
        for name, versions in loaded.items():
            self._models[name] = {}
            for version, model in versions.items():
                logits_index = _language_model_logits(model.manifest)
                width = 0
                if logits_index is not None:
                    width = model.manifest.outputs[logits_index].shape[0]
                store = StateStore(model.manifest.states, last_output_width=width)
                scheduler = BatchScheduler(
                    model,
                    store,
                    max_batch_size=self.settings.max_batch_size,
                    max_queue=self.settings.max_queue,
                )
                scheduler.start()
                spec = model.manifest.input
                codec = TextCodec(spec, name) if isinstance(spec, TokenInput) else None
                self._models[name][version] = ServedModel(
                    model, store, scheduler, codec, logits_index
                )
                self._stores[(name, version)] = store
        self._drained = asyncio.Event()
        self._drained.set()
        self._sessions.start_reaper()
        if self.settings.snapshot_dir is not None:
            await self._restore_sessions(self.settings.snapshot_dir)
        self._started = True
        log.info(
            "engine ready: %d models, %d sessions restored", len(self._models), len(self._sessions)
        )

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let in-flight steps finish (up to `grace_s`), save sessions, stop."""
        if self._stopping:
            return
        self._stopping = True
        if self._drained is not None and self._inflight:
            try:
                await asyncio.wait_for(self._drained.wait(), timeout=grace_s)
            except TimeoutError:
                log.warning(
                    "%d requests still running after %.1f s; stopping", self._inflight, grace_s
                )
        for versions in self._models.values():
            for served in versions.values():
                await served.scheduler.stop()
        await self._sessions.stop_reaper()
        if self.settings.snapshot_dir is not None and self._started:
            await self._save_sessions(self.settings.snapshot_dir)

    @property
    def ready(self) -> bool:
        """True once the models are loaded and until shutdown begins."""
        return self._started and not self._stopping

    @contextlib.contextmanager
    def _work(self) -> Iterator[None]:
        """Count a request as in flight, so that stop() can drain it; refuse it when stopping."""
        if self._stopping or not self._started:
            raise ShuttingDown(
                "the server is shutting down" if self._stopping else "the server is starting"
            )
        self._inflight += 1
        if self._drained is not None:
            self._drained.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0 and self._drained is not None:
                self._drained.set()

    # ---- models ------------------------------------------------------------------------------

    def list_models(self) -> list[ModelDescription]:
        """Every served model, described at its latest version."""
        return [self.get_model(name) for name in sorted(self._models)]

    def get_model(self, name: str, version: int = 0) -> ModelDescription:
        """One model version (0 = latest); ModelNotFound if it is not served."""
        served = self._resolve(name, version)
        return ModelDescription(
            manifest=served.manifest,
            version=served.model.version,
            versions=sorted(self._models[name]),
            state_bytes=served.store.slot_bytes,
            max_steps_per_message=self.settings.max_steps_per_message,
        )

    def _resolve(self, name: str, version: int) -> ServedModel:
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(
                f"model {name!r} is not served (served: {sorted(self._models)})", field="model.name"
            )
        number = version or max(versions)
        if number not in versions:
            raise ModelNotFound(
                f"model {name!r} has no version {version} (served: {sorted(versions)})",
                field="model.version",
            )
        return versions[number]

    def _served(self, session: Session) -> ServedModel:
        return self._models[session.model][session.version]

    # ---- sessions ----------------------------------------------------------------------------

    async def create_session(self, name: str, version: int, identity: str) -> SessionView:
        """A new session on a streamable model, bound to `identity`."""
        with self._work():
            served = self._resolve(name, version)
            _require_streamable(served.manifest)
            session = self._sessions.create(name, served.model.version, identity)
            log.info(
                "session %s created on %s for %s", session.session_id, served.model.key, identity
            )
            return self._sessions.view(session)

    async def get_session(self, session_id: str, identity: str) -> SessionView:
        """The session's description (also checks it still exists and belongs to `identity`)."""
        with self._work():
            return self._sessions.view(self._sessions.get(session_id, identity))

    async def reset_session(self, session_id: str, identity: str) -> SessionView:
        """Back to the initial state and step count 0."""
        with self._work():
            session = self._sessions.acquire(session_id, identity)
            try:
                self._served(session).store.reset(session.slot)
                session.step_count = 0
            finally:
                self._sessions.release(session)
            return self._sessions.view(session)

    async def close_session(self, session_id: str, identity: str) -> SessionView:
        """Close the session; later calls on it are told it was closed."""
        with self._work():
            session = self._sessions.close(session_id, identity)
            return self._sessions.view(session)

    async def export_state(self, session_id: str, identity: str) -> tuple[bytes, SessionView]:
        """A snapshot of the session's state (bound to this model version and weights)."""
        with self._work():
            session = self._sessions.acquire(session_id, identity)
            try:
                data = snapshot.encode(
                    self._snapshot_of(session, with_identity=False), self._secret
                )
            finally:
                self._sessions.release(session)
            return data, self._sessions.view(session)

    async def import_state(self, snapshot_bytes: bytes, identity: str) -> SessionView:
        """A new session (owned by `identity`) continuing from a snapshot."""
        with self._work():
            decoded = snapshot.decode(snapshot_bytes, self._secret)
            served = self._served_for_snapshot(decoded)
            _require_streamable(served.manifest)
            session = self._sessions.create(
                decoded.model, decoded.version, identity, step_count=decoded.step_count
            )
            served.store.write(session.slot, decoded.states)
            served.store.write_last_output(session.slot, decoded.last_output)
            return self._sessions.view(session)

    def _served_for_snapshot(self, decoded: snapshot.Snapshot) -> ServedModel:
        versions = self._models.get(decoded.model)
        if versions is None or decoded.version not in versions:
            raise InvalidSnapshot(
                f"snapshot is for model {decoded.model!r} version {decoded.version}, which this "
                "server does not serve",
                field="snapshot",
            )
        served = versions[decoded.version]
        snapshot.check_matches(
            decoded,
            decoded.model,
            decoded.version,
            served.model.weights_sha256,
            served.manifest.states,
        )
        if decoded.last_output is not None:
            want = None
            if served.logits_index is not None:
                want = served.manifest.outputs[served.logits_index].shape
            if want is None or list(decoded.last_output.shape) != want:
                raise InvalidSnapshot(
                    f"snapshot's last output has shape {list(decoded.last_output.shape)}; the "
                    f"model expects {want}",
                    field="snapshot",
                )
        return served

    def _snapshot_of(self, session: Session, *, with_identity: bool) -> snapshot.Snapshot:
        served = self._served(session)
        return snapshot.Snapshot(
            model=session.model,
            version=session.version,
            weights_sha256=served.model.weights_sha256,
            step_count=session.step_count,
            state_names=[s.input_name for s in served.manifest.states],
            states=served.store.read(session.slot),
            session=snapshot.SessionIdentity(
                session.session_id, session.identity, session.created_at
            )
            if with_identity
            else None,
            last_output=served.store.read_last_output(session.slot),
        )

    # ---- steps -------------------------------------------------------------------------------

    async def step(
        self,
        session_id: str,
        identity: str,
        data: InputData,
        options: OutputOptions,
        *,
        expected_step_count: int | None = None,
        deadline: float | None = None,
    ) -> StepOutcome:
        """Feed one message (one or more steps) to a session; its state advances only on success."""
        with self._work():
            session = self._sessions.acquire(session_id, identity, expected_step_count)
            try:
                served = self._served(session)
                check_options(options)
                inputs = validate_input(
                    served.manifest, data, self.settings.max_steps_per_message, served.codec
                )
                raw = await self._run(served, session, inputs, deadline)
                return StepOutcome(
                    outputs=build_outputs(served.manifest.outputs, raw, options),
                    steps=int(inputs.shape[0]),
                    step_count=session.step_count,
                )
            finally:
                self._sessions.release(session)

    async def _run(
        self,
        served: ServedModel,
        session: Session | None,
        inputs: ModelInput,
        deadline: float | None,
    ) -> list[FloatArray]:
        """Run one message through the scheduler; commit the step count with the state."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(
                "the deadline passed before the step was queued; state unchanged"
            )
        scheduler = served.scheduler
        request = scheduler.submit(inputs, session.slot if session else None, deadline)
        try:
            # the scheduler fails the request with DeadlineExceeded if it is still queued then
            raw = await request.future
        except asyncio.CancelledError:
            scheduler.abandon(request)
            raise
        if session is not None:
            session.step_count += request.steps
            if served.logits_index is not None:
                served.store.write_last_output(session.slot, raw[served.logits_index][-1])
        return raw

    async def predict(
        self, name: str, version: int, sequences: list[InputData], options: OutputOptions
    ) -> list[StepOutcome]:
        """Whole sequences, each from the initial state, no session (any model, bidirectional too).

        InvalidInput fields are full paths "sequences[i].<field>".
        """
        with self._work():
            served = self._resolve(name, version)
            check_options(options)
            if not sequences:
                raise InvalidInput("at least one sequence is required", field="sequences")
            inputs = []
            for index, data in enumerate(sequences):
                try:
                    inputs.append(
                        validate_input(
                            served.manifest, data, self.settings.max_steps_per_message, served.codec
                        )
                    )
                except InvalidInput as err:
                    raise err.with_field_prefix(f"sequences[{index}]") from None
            tasks = [asyncio.ensure_future(self._run(served, None, x, None)) for x in inputs]
            try:
                raws = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise
            return [
                StepOutcome(
                    outputs=build_outputs(served.manifest.outputs, raw, options),
                    steps=int(x.shape[0]),
                    step_count=int(x.shape[0]),
                )
                for raw, x in zip(raws, inputs, strict=True)
            ]

    # ---- generation --------------------------------------------------------------------------

    async def generate(
        self, request: GenerationRequest, identity: str
    ) -> AsyncIterator[GeneratedToken]:
        """Sample tokens from a language model, yielding each as soon as it is produced.

        The prompt runs as one chunk, then one step per generated token. Each token is fed to
        the model before it is yielded, so the session's state always covers the prompt and
        every token the caller has received; cancelling the consumer stops at once and leaves
        the state at the last yielded token.
        """
        with self._work():
            check_sampling(request.sampling)
            limit = self.settings.max_generate_tokens
            max_tokens = request.max_tokens or limit
            if not 0 < max_tokens <= limit:
                raise InvalidInput(
                    f"max_tokens must be in [1, {limit}], got {request.max_tokens}",
                    field="max_tokens",
                )
            created = request.session_id is None
            if created:
                if request.model is None:
                    raise InvalidInput("a model or a session_id is required", field="model")
                served = self._resolve(request.model, request.version)
                _require_language_model(served.manifest)
                _require_streamable(served.manifest)
                prompt = self._prompt(served, request.prompt, None)
                session = self._sessions.create(request.model, served.model.version, identity)
                session = self._sessions.acquire(session.session_id, identity)
            else:
                assert request.session_id is not None
                session = self._sessions.acquire(request.session_id, identity)
                served = self._served(session)
            yielded = False
            try:
                if not created:
                    _require_language_model(served.manifest)
                    prompt = self._prompt(served, request.prompt, session)
                tokens = self._sample(served, session, prompt, request, max_tokens)
                async with contextlib.aclosing(tokens):
                    async for token in tokens:
                        yielded = True
                        yield token
            finally:
                self._sessions.release(session)
                # A new session is closed when asked, or when the caller never learnt its id.
                if created and (request.close_session or not yielded):
                    self._sessions.remove(session, "closed")

    def _prompt(
        self, served: ServedModel, prompt: InputData | None, session: Session | None
    ) -> ModelInput | None:
        """The validated prompt, or None to continue from the session's last output."""
        if prompt is None or len(prompt) == 0:
            if session is None or not served.store.has_last_output(session.slot):
                where = "a new session" if session is None else "this session"
                raise InvalidInput(
                    f"a prompt is required: {where} has no output yet to continue from",
                    field="prompt",
                )
            return None
        return validate_input(
            served.manifest, prompt, self.settings.max_steps_per_message, served.codec
        )

    async def _sample(
        self,
        served: ServedModel,
        session: Session,
        prompt: ModelInput | None,
        request: GenerationRequest,
        max_tokens: int,
    ) -> AsyncGenerator[GeneratedToken, None]:
        assert served.codec is not None and served.logits_index is not None
        logits_index = served.logits_index
        sampler = Sampler(request.sampling)
        stops = StopMatcher(request.stop)
        if prompt is not None:
            raw = await self._run(served, session, prompt, None)
            logits = raw[logits_index][-1]
        else:
            last = served.store.read_last_output(session.slot)
            assert last is not None
            logits = last
        for index in range(max_tokens):
            if self._stopping:
                raise ShuttingDown("the server is shutting down; generation stopped")
            if session.closed:  # closed by another call while generating
                raise SessionNotFound(session.session_id, "closed")
            token = sampler.sample(logits)
            text = served.codec.vocabulary[token]
            raw = await self._run(served, session, np.array([token], dtype=np.int64), None)
            logits = raw[logits_index][-1]
            finish = None
            if stops.feed(text):
                finish = FinishReason.STOP
            elif index == max_tokens - 1:
                finish = FinishReason.LENGTH
            yield GeneratedToken(
                session_id=session.session_id,
                token_id=token,
                text=text,
                index=index,
                step_count=session.step_count,
                finish_reason=finish,
            )
            if finish is not None:
                return

    # ---- snapshots at shutdown and start -----------------------------------------------------

    async def _save_sessions(self, directory: Path) -> None:
        blobs = [
            snapshot.encode(self._snapshot_of(s, with_identity=True), self._secret)
            for s in self._sessions.live()
        ]
        directory.mkdir(parents=True, exist_ok=True)
        count = await asyncio.to_thread(snapshot.write_file, directory / snapshot.FILE_NAME, blobs)
        log.info("saved %d sessions to %s", count, directory / snapshot.FILE_NAME)

    async def _restore_sessions(self, directory: Path) -> None:
        path = directory / snapshot.FILE_NAME
        if not path.is_file():
            return
        try:
            blobs = await asyncio.to_thread(snapshot.read_file, path)
        except (OSError, InvalidSnapshot) as err:
            log.error("cannot read saved sessions %s: %s; starting without them", path, err)
            path.replace(path.with_name(path.name + ".unreadable"))
            return
        restored = 0
        for blob in blobs:
            try:
                decoded = snapshot.decode(blob, self._secret)
                served = self._served_for_snapshot(decoded)
                if decoded.session is None:
                    raise InvalidSnapshot("saved session has no session record", field="snapshot")
                session = self._sessions.create(
                    decoded.model,
                    decoded.version,
                    decoded.session.identity,
                    session_id=decoded.session.session_id,
                    created_at=decoded.session.created_at,
                    step_count=decoded.step_count,
                )
                served.store.write(session.slot, decoded.states)
                served.store.write_last_output(session.slot, decoded.last_output)
                restored += 1
            except (InvalidSnapshot, CapacityExceeded, ValueError) as err:
                metrics.EVICTIONS.labels("dropped").inc()
                log.warning("a saved session was not restored: %s", err)
        # Restored sessions live in memory now; a second start must not restore stale copies.
        path.unlink()
        log.info("restored %d of %d saved sessions from %s", restored, len(blobs), path)


def _require_streamable(manifest: ModelManifest) -> None:
    if not manifest.streamable:
        raise ModelNotStreamable(
            f"model {manifest.name!r} is whole-sequence only (bidirectional); use Predict",
            field="model",
        )


def _require_language_model(manifest: ModelManifest) -> None:
    if manifest.task != "language-model" or not isinstance(manifest.input, TokenInput):
        raise NotALanguageModel(
            f"model {manifest.name!r} is a {manifest.task}, not a language model; it cannot "
            "generate",
            field="model",
        )
    _logits_output(manifest)


def _language_model_logits(manifest: ModelManifest) -> int | None:
    """Index of a language model's next-token logits output (None for other models)."""
    try:
        _require_language_model(manifest)
    except NotALanguageModel:
        return None
    return _logits_output(manifest)


def _logits_output(manifest: ModelManifest) -> int:
    """Index of the output holding next-token logits over the vocabulary."""
    vocab = len(manifest.input.vocabulary) if isinstance(manifest.input, TokenInput) else -1
    for index, spec in enumerate(manifest.outputs):
        if spec.meaning == "logits" and spec.shape == [vocab]:
            return index
    raise NotALanguageModel(
        f"model {manifest.name!r} has no logits output over its vocabulary", field="model"
    )
