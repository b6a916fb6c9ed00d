"""Generation: sampling the next token (temperature, top-k, top-p, seeded), stop strings, loop."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable

import numpy as np
import numpy.typing as npt
from rnnserve.server.domain import (
    FinishReason,
    GeneratedToken,
    GenerationRequest,
    InputData,
    SamplingParams,
)
from rnnserve.server.errors import InvalidInput, SessionNotFound, ShuttingDown
from rnnserve.server.inputs import ModelInput
from rnnserve.server.registry import ModelRegistry, ServedModel
from rnnserve.server.sessions import Session, SessionManager


def check_sampling(params: SamplingParams) -> None:
    """Refuse sampling parameters outside their ranges (field names relative to the request)."""
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise InvalidInput(
            f"temperature must be a finite number >= 0, got {params.temperature}",
            field="sampling.temperature",
        )
    if params.top_k < 0:
        raise InvalidInput(f"top_k must be >= 0, got {params.top_k}", field="sampling.top_k")
    if not math.isfinite(params.top_p) or not 0 < params.top_p <= 1:
        raise InvalidInput(f"top_p must be in (0, 1], got {params.top_p}", field="sampling.top_p")


class Sampler:
    """Draws token ids from logits; the same seed gives the same sequence of draws."""

    def __init__(self, params: SamplingParams) -> None:
        check_sampling(params)
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def sample(self, logits: npt.NDArray[np.float32]) -> int:
        """One token id from a logits vector [vocab]."""
        params = self.params
        if params.temperature == 0:
            return int(np.argmax(logits))
        # One float64 buffer worked in place, with the ufuncs' own reductions (no Python-level
        # numpy wrappers): this runs once per generated token. The arithmetic, and so every draw,
        # is the same as computing each step into a new array.
        scores = np.array(logits, dtype=np.float64)
        if params.temperature != 1:
            scores /= params.temperature
        if 0 < params.top_k < scores.shape[0]:
            threshold = np.partition(scores, -params.top_k)[-params.top_k]
            scores[scores < threshold] = -np.inf
        scores -= _MAX(scores)
        probabilities = np.exp(scores, out=scores)
        probabilities /= _SUM(probabilities)
        if params.top_p < 1:
            order = np.argsort(-probabilities, kind="stable")
            cumulative = np.cumsum(probabilities[order])
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
            mask = np.zeros_like(probabilities)
            mask[keep] = probabilities[keep]
            probabilities = mask / mask.sum()
        cumulative = _SUM_ACCUMULATE(probabilities, out=probabilities)
        draw = self._rng.random() * cumulative[-1]
        return min(int(cumulative.searchsorted(draw, side="right")), len(cumulative) - 1)


_MAX = np.maximum.reduce
_SUM = np.add.reduce
_SUM_ACCUMULATE = np.add.accumulate


class StopMatcher:
    """Says when the generated text ends with (or now contains) one of the stop strings."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._keep = max((len(s) for s in self.stops), default=0)
        self._tail = ""

    def feed(self, piece: str) -> bool:
        """Add the text of one token; True once a stop string has appeared."""
        if not self.stops:
            return False
        # Only the last len(longest stop) + len(piece) characters can hold a new match.
        window = self._tail + piece
        hit = any(stop in window for stop in self.stops)
        self._tail = window[-self._keep :]
        return hit


class Generation:
    """Server-side generation: a prompt, then one sampled token at a time, each streamed at once.

    The prompt runs as one chunk, then one step per generated token. Each token is fed to the
    model before it is yielded, so the session's state always covers the prompt and every token
    the caller has received; cancelling the consumer stops at once and leaves the state at the
    last yielded token.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        sessions: SessionManager,
        *,
        max_tokens: int,
        stopping: Callable[[], bool],
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._max_tokens = max_tokens
        self._stopping = stopping

    async def generate(
        self, request: GenerationRequest, identity: str
    ) -> AsyncGenerator[GeneratedToken, None]:
        """Sample tokens on a new session (`request.model`) or an existing one, yielding each."""
        check_sampling(request.sampling)
        max_tokens = request.max_tokens or self._max_tokens
        if not 0 < max_tokens <= self._max_tokens:
            raise InvalidInput(
                f"max_tokens must be in [1, {self._max_tokens}], got {request.max_tokens}",
                field="max_tokens",
            )
        created = request.session_id is None
        if created:
            if request.model is None:
                raise InvalidInput("a model or a session_id is required", field="model")
            served = self._registry.resolve(request.model, request.version)
            served.require_language_model()
            served.require_streamable()
            prompt = _prompt(served, request.prompt, None)
            session = self._sessions.create(request.model, served.model.version, identity)
            session = self._sessions.acquire(session.session_id, identity)
        else:
            assert request.session_id is not None
            session = self._sessions.acquire(request.session_id, identity)
            served = self._registry.served(session.key)
        yielded = False
        try:
            if not created:
                served.require_language_model()
                prompt = _prompt(served, request.prompt, session)
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

    async def _sample(
        self,
        served: ServedModel,
        session: Session,
        prompt: ModelInput | None,
        request: GenerationRequest,
        max_tokens: int,
    ) -> AsyncGenerator[GeneratedToken, None]:
        codec, logits_index = served.require_language_model()
        sampler = Sampler(request.sampling)
        stops = StopMatcher(request.stop)
        if prompt is not None:
            logits = (await served.run(prompt, session.slot))[logits_index][-1]
        else:
            last = served.store.read_last_output(session.slot)
            assert last is not None
            logits = last
        for index in range(max_tokens):
            if self._stopping():
                raise ShuttingDown("the server is shutting down; generation stopped")
            if session.closed:  # closed by another call while generating
                raise SessionNotFound(session.session_id, "closed")
            token = sampler.sample(logits)
            text = codec.vocabulary[token]
            raw = await served.run(np.array([token], dtype=np.int64), session.slot)
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


def _prompt(
    served: ServedModel, prompt: InputData | None, session: Session | None
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
    return served.validate(prompt)
