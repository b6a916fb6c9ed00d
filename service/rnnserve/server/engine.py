"""InferenceEngine: the serving core behind every front door (lifecycle, sessions, steps)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import numpy as np
from rnnserve.server import offload, snapshot_files, snapshot_signing
from rnnserve.server.core import InferenceCore
from rnnserve.server.domain import (
    FloatArray,
    GeneratedToken,
    GenerationRequest,
    InputData,
    ModelDescription,
    ModelStatistics,
    OutputOptions,
    SessionView,
    StepOutcome,
)
from rnnserve.server.errors import InvalidInput, RnnServeError, ShuttingDown
from rnnserve.server.generation import Generation
from rnnserve.server.inputs import ModelInput
from rnnserve.server.logs import safe, short_id
from rnnserve.server.persistence import SessionPersistence
from rnnserve.server.postprocess import build_outputs, check_options
from rnnserve.server.registry import ModelRegistry, ServedModel
from rnnserve.server.security import SecurityConfigError
from rnnserve.server.sessions import Session, SessionManager
from rnnserve.server.settings import Settings

if TYPE_CHECKING:
    from rnnserve.server.state_tier.redis_tier import RedisStateTier

log = logging.getLogger(__name__)


class InferenceEngine(InferenceCore):
    """Implements InferenceCore: loads the models, owns the sessions, runs every request.

    The jobs live in their own modules — ModelRegistry (models, stores, schedulers),
    SessionManager (ids, owners, TTL), Generation (sampling loop), SessionPersistence
    (snapshots) — and the engine wires them, refuses work while starting or stopping, and drains
    in-flight work at shutdown. All methods run on one asyncio event loop; onnxruntime runs in
    each model's worker thread.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(settings)
        self.sessions = SessionManager(
            self.registry.stores,
            ttl_s=settings.session_ttl_s,
            max_sessions=settings.max_sessions,
            max_sessions_per_principal=settings.max_sessions_per_principal,
        )
        # Read once, here: an unusable secret file, or an exposed server that would keep unsigned
        # snapshots, stops the start (SecurityConfigError) instead of surfacing later.
        secret = snapshot_signing.signing_secret(settings)
        snapshot_signing.check_secret_policy(settings, secret)
        self.persistence = SessionPersistence(
            self.registry,
            self.sessions,
            secret,
            require_secret=snapshot_signing.is_exposed(settings),
        )
        self.generation = Generation(
            self.registry,
            self.sessions,
            max_tokens=settings.max_generate_tokens,
            stopping=lambda: self._stopping,
        )
        # The shared state tier (Redis), or None: sessions live in this process's memory only.
        self.tier: RedisStateTier | None = None
        if settings.state_store == "redis":
            self.tier = _redis_tier(settings, self.sessions, self.persistence)
        self._started = False
        self._stopping = False
        self._in_flight = _InFlight()

    # Lifecycle.

    async def start(self) -> None:
        """Load the models, start the schedulers and the reaper, restore saved sessions.

        A snapshot_dir the server cannot write fails here, before the models load, and not at
        shutdown when every session would be lost.
        """
        if self.settings.snapshot_dir is not None:
            await asyncio.to_thread(snapshot_files.probe_writable, self.settings.snapshot_dir)
        await self.registry.load()
        if self.tier is not None:
            await self.tier.start()
            for served in self.registry:
                served.after_step = self.tier.after_step
        self.sessions.start_reaper()
        kept = 0
        if self.settings.snapshot_dir is not None:
            report = await self.persistence.restore(self.settings.snapshot_dir)
            kept = sum(report.kept.values())
            if self.tier is not None:
                await self.tier.adopt_restored()
        self._started = True
        log.info(
            "engine ready: %d models, %d sessions restored, %d kept aside",
            len(self.registry),
            len(self.sessions),
            kept,
        )

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let in-flight steps finish (up to `grace_s`), save sessions, stop."""
        if self._stopping:
            return
        self._stopping = True
        if self._in_flight.count:
            try:
                await asyncio.wait_for(self._in_flight.drained.wait(), timeout=grace_s)
            except TimeoutError:
                log.warning(
                    "%d requests still running after %.1f s; stopping",
                    self._in_flight.count,
                    grace_s,
                )
        await self.registry.stop()
        await self.sessions.stop_reaper()
        if self.tier is not None and self._started:
            await self.tier.stop()
        if self.settings.snapshot_dir is not None and self._started:
            await self.persistence.save(self.settings.snapshot_dir)

    @property
    def ready(self) -> bool:
        """True once the models are loaded and until shutdown begins."""
        return self._started and not self._stopping

    def _work(self) -> _InFlight:
        """Count a request as in flight, so that stop() can drain it; refuse it when stopping."""
        if self._stopping or not self._started:
            raise ShuttingDown(
                "the server is shutting down" if self._stopping else "the server is starting"
            )
        return self._in_flight

    # Models.

    def list_models(self) -> list[ModelDescription]:
        """Every served model, described at its latest version."""
        return self.registry.describe_all()

    def get_model(self, name: str, version: int = 0) -> ModelDescription:
        """One model version (0 = latest); ModelNotFound if it is not served."""
        return self.registry.describe(name, version)

    def model_statistics(self, name: str, version: int = 0) -> list[ModelStatistics]:
        """The work of one model version, of every version (version 0) or every model (name "")."""
        if not name:
            return [served.scheduler.statistics for served in self.registry]
        if version:
            return [self.registry.resolve(name, version).scheduler.statistics]
        self.registry.resolve(name, 0)  # ModelNotFound for a model that is not served
        return [s.scheduler.statistics for s in self.registry if s.manifest.name == name]

    # Sessions.

    async def create_session(self, name: str, version: int, identity: str) -> SessionView:
        """A new session on a streamable model, bound to `identity`."""
        with self._work():
            served = self.registry.resolve(name, version)
            served.require_streamable()
            if self.tier is not None:
                self.tier.make_room()
            session = self.sessions.create(name, served.model.version, identity)
            if self.tier is not None:
                await self.tier.created(session)
            # INFO shows the id's prefix and no owner: the log is no list of who holds which id.
            log.info("session %s created on %s", short_id(session.session_id), served.model.key)
            return self.sessions.view(session)

    async def open_sequence(
        self, name: str, version: int, identity: str, sequence: str, *, start: bool
    ) -> SessionView:
        """The session of a client-named sequence (a KServe / Triton correlation id).

        Sequences are scoped to `identity` and the model. `start` opens a new session for the
        sequence (closing an unfinished one of the same id: the sequence restarts); without it the
        sequence's live session is returned, or SequenceNotStarted says why there is none.
        """
        with self._work():
            served = self.registry.resolve(name, version)
            served.require_streamable()
            if not start:
                return self.sessions.view(self.sessions.find_sequence(identity, name, sequence))
            if self.tier is not None:
                self.tier.make_room()
            session = self.sessions.create(name, served.model.version, identity, sequence=sequence)
            if self.tier is not None:
                await self.tier.created(session)
            log.info(
                "session %s opened for sequence %s on %s",
                short_id(session.session_id),
                safe(sequence),
                served.model.key,
            )
            return self.sessions.view(session)

    async def get_session(self, session_id: str, identity: str) -> SessionView:
        """The session's description (also checks it still exists and belongs to `identity`)."""
        with self._work():
            await self._hold(session_id, identity)
            return self.sessions.view(self.sessions.get(session_id, identity))

    async def reset_session(self, session_id: str, identity: str) -> SessionView:
        """Back to the initial state and step count 0."""
        with self._work():
            await self._hold(session_id, identity)
            session = self.sessions.acquire(session_id, identity)
            try:
                before = session.store.read(session.slot)
                session.store.reset(session.slot)
                if self.tier is not None and self.tier.durability == "sync":
                    try:
                        await self.tier.persist(session)
                    except BaseException:
                        session.store.write(session.slot, before)
                        raise
                elif self.tier is not None:
                    self.tier.after_step(session.key, session.slot)
            finally:
                self.sessions.release(session)
            return self.sessions.view(session)

    async def close_session(self, session_id: str, identity: str) -> SessionView:
        """Close the session; later calls on it are told it was closed."""
        with self._work():
            await self._hold(session_id, identity)
            view = self.sessions.view(self.sessions.close(session_id, identity))
            if self.tier is not None:
                await self.tier.settle(session_id)
            return view

    async def export_state(self, session_id: str, identity: str) -> tuple[bytes, SessionView]:
        """A snapshot of the session's state (bound to this model version and weights)."""
        with self._work():
            await self._hold(session_id, identity)
            session = self.sessions.acquire(session_id, identity)
            try:
                data = self.persistence.export(session)
            finally:
                self.sessions.release(session)
            return data, self.sessions.view(session)

    async def import_state(self, snapshot: bytes, identity: str) -> SessionView:
        """A new session (owned by `identity`) continuing from a snapshot."""
        with self._work():
            if self.tier is not None:
                self.tier.make_room()
            session = self.persistence.load(snapshot, identity)
            if self.tier is not None:
                await self.tier.created(session)
            return self.sessions.view(session)

    async def _hold(self, session_id: str, identity: str) -> None:
        """With a shared state tier, make sure this process may serve the session before it is
        looked up: load it if it is not in memory (failover, or evicted), confirm its lease if
        it has lapsed."""
        if self.tier is not None:
            await self.tier.hold(session_id, identity)

    # Steps.

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
        """Feed one message (one or more steps) to a session; its state advances only on success.

        Errors in the input name their field under `input_field`, the input's name in the
        caller's request (empty: fields relative to the input, "tokens.ids[3]").
        """
        with self._work():
            await self._hold(session_id, identity)
            if expected_step_count is not None:
                again = await self._answer_again(
                    self.sessions.get(session_id, identity),
                    expected_step_count,
                    data,
                    options,
                    input_field,
                )
                if again is not None:
                    return again
            session = self.sessions.acquire(session_id, identity, expected_step_count)
            try:
                served = self.registry.served(session.key)
                inputs = await self._validated(served, data, options, input_field)
                raw = await served.run(inputs, session.slot, deadline, keep=options.steps)
                return StepOutcome(
                    outputs=build_outputs(served.manifest.outputs, raw, options),
                    steps=int(inputs.shape[0]),
                    step_count=session.step_count,
                    durable_step_count=session.written_step,
                )
            finally:
                self.sessions.release(session)

    @staticmethod
    async def _validated(
        served: ServedModel, data: InputData, options: OutputOptions, input_field: str
    ) -> ModelInput:
        """One message's options and input checked against the model."""
        check_options(options)
        try:
            return await offload.run_sized(offload.is_long_text(data), served.validate, data)
        except InvalidInput as err:
            raise err.with_field_prefix(input_field) from None

    async def _answer_again(
        self,
        session: Session,
        expected_step_count: int,
        data: InputData,
        options: OutputOptions,
        input_field: str,
    ) -> StepOutcome | None:
        """With a shared state tier: the reply to a message that already ran (the session is
        one message past `expected_step_count`, and it was this input) but whose reply was lost,
        from the reply kept with the state; None when that is not the case."""
        if self.tier is None or session.busy or expected_step_count == session.step_count:
            return None
        served = self.registry.served(session.key)
        inputs = await self._validated(served, data, options, input_field)
        rows = await self.tier.kept_reply(session, expected_step_count, inputs, options.steps)
        if rows is None:
            return None
        return StepOutcome(
            outputs=build_outputs(served.manifest.outputs, rows, options),
            steps=int(inputs.shape[0]),
            step_count=session.step_count,
            durable_step_count=session.written_step,
        )

    async def step_many(
        self,
        session_id: str,
        identity: str,
        messages: list[tuple[InputData, OutputOptions]],
        *,
        input_field: str = "",
        deadline: float | None = None,
    ) -> list[StepOutcome | RnnServeError]:
        """Several messages of one session, in order, run as one model call where they can be.

        The outcomes are those of calling `step` for each message in turn: a refused message
        (bad input) leaves the state as it was and gets its error, and the messages around it
        still run; a failure of the call itself (deadline, overload, shutdown) fails every message
        of the call and commits nothing. Errors about the session itself raise.
        """
        with self._work():
            await self._hold(session_id, identity)
            session = self.sessions.acquire(session_id, identity)
            try:
                served = self.registry.served(session.key)
                results: list[StepOutcome | RnnServeError | None] = [None] * len(messages)
                run: list[tuple[int, ModelInput]] = []
                for index, (data, options) in enumerate(messages):
                    try:
                        check_options(options)  # its field is already a request path
                    except InvalidInput as err:
                        results[index] = err
                        continue
                    try:
                        run.append((index, served.validate(data)))
                    except InvalidInput as err:
                        results[index] = err.with_field_prefix(input_field)
                await self._run_together(served, session, run, messages, results, deadline)
                outcomes = []
                for result in results:
                    assert result is not None  # every message has its outcome or its error
                    outcomes.append(result)
                return outcomes
            finally:
                self.sessions.release(session)

    async def _run_together(
        self,
        served: ServedModel,
        session: Session,
        run: list[tuple[int, ModelInput]],
        messages: list[tuple[InputData, OutputOptions]],
        results: list[StepOutcome | RnnServeError | None],
        deadline: float | None,
    ) -> None:
        """One model call over the valid messages' steps, its outputs split back per message."""
        if not run:
            return
        inputs = np.concatenate([x for _, x in run]) if len(run) > 1 else run[0][1]
        # a lone message's reply is kept for a retry (a message of a joined call is not one)
        keep = messages[run[0][0]][1].steps if len(run) == 1 else None
        try:
            raw = await served.run(inputs, session.slot, deadline, keep=keep)
        except RnnServeError as err:
            for index, _ in run:
                results[index] = err
            return
        end, step_count = 0, session.step_count - len(inputs)
        for index, x in run:
            start, end = end, end + len(x)
            step_count += len(x)
            results[index] = StepOutcome(
                outputs=build_outputs(
                    served.manifest.outputs, [r[start:end] for r in raw], messages[index][1]
                ),
                steps=len(x),
                step_count=step_count,
                durable_step_count=(
                    None if session.written_step is None else min(session.written_step, step_count)
                ),
            )

    async def predict(
        self,
        name: str,
        version: int,
        sequences: list[InputData],
        options: OutputOptions,
        *,
        input_field: str = "sequences",
    ) -> list[StepOutcome]:
        """Whole sequences, each from the initial state, no session (any model, bidirectional too).

        InvalidInput fields are full paths: "<input_field>[i].<field>".
        """
        with self._work():
            served = self.registry.resolve(name, version)
            check_options(options)
            if not sequences:
                raise InvalidInput("at least one sequence is required", field=input_field)
            # Validating and building the results of many sequences leaves the event loop.
            large = offload.is_large(len(sequences), 0) or any(map(offload.is_long_text, sequences))
            inputs = await offload.run_sized(large, _validate_all, served, sequences, input_field)
            tasks = [asyncio.ensure_future(served.run(x, None)) for x in inputs]
            try:
                raws = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise
            return await offload.run_sized(large, _outcomes, served, raws, inputs, options)

    async def generate(
        self, request: GenerationRequest, identity: str
    ) -> AsyncIterator[GeneratedToken]:
        """Sample tokens from a language model, yielding each as soon as it is produced.

        The generation counts as in flight (drained by `stop`) only while it produces a token,
        not while its caller holds one: a client that stops reading cannot hold up shutdown, and
        once shutdown has begun the next token is refused (ShuttingDown).
        """
        in_flight = self._work()
        if request.session_id:
            with in_flight:
                await self._hold(request.session_id, identity)
        async with contextlib.aclosing(self.generation.generate(request, identity)) as tokens:
            while True:
                with in_flight:
                    token = await anext(tokens, None)
                if token is None:
                    return
                yield token


def _redis_tier(
    settings: Settings, sessions: SessionManager, persistence: SessionPersistence
) -> RedisStateTier:
    """The Redis state tier; imported only when configured (the redis client is an extra)."""
    try:
        from rnnserve.server.state_tier.redis_tier import RedisStateTier
    except ModuleNotFoundError as err:
        raise SecurityConfigError(
            f"state_store redis needs the {err.name!r} package: pip install 'rnnserve[redis]'"
        ) from None
    return RedisStateTier(settings, sessions, persistence)


def _validate_all(
    served: ServedModel, sequences: list[InputData], input_field: str
) -> list[ModelInput]:
    """Every sequence of a Predict checked against the model; fields "<input_field>[i].<field>"."""
    inputs = []
    for index, data in enumerate(sequences):
        try:
            inputs.append(served.validate(data))
        except InvalidInput as err:
            raise err.with_field_prefix(f"{input_field}[{index}]") from None
    return inputs


def _outcomes(
    served: ServedModel,
    raws: list[list[FloatArray]],
    inputs: list[ModelInput],
    options: OutputOptions,
) -> list[StepOutcome]:
    """A Predict's results, one per sequence (each ran from the initial state)."""
    return [
        StepOutcome(
            outputs=build_outputs(served.manifest.outputs, raw, options),
            steps=int(x.shape[0]),
            step_count=int(x.shape[0]),
        )
        for raw, x in zip(raws, inputs, strict=True)
    ]


class _InFlight:
    """Counts the requests in flight (a context manager per request; a class, not a generator:
    it runs on every message)."""

    __slots__ = ("count", "drained")

    def __init__(self) -> None:
        self.count = 0
        self.drained = asyncio.Event()
        self.drained.set()

    def __enter__(self) -> None:
        self.count += 1
        self.drained.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1
        if self.count == 0:
            self.drained.set()
