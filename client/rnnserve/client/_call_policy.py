"""What Client and AsyncClient share: settings, retry schedule, model cache, requests, no I/O."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from rnnserve.client._codec import aim_generation, encode_input, encode_options
from rnnserve.client._errors import RnnServeError
from rnnserve.client._retry import RetryPolicy
from rnnserve.client._types import InputLike, ModelInfo, OutputOptions
from rnnserve.client._vocabulary import Vocabulary
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

CLIENT_ID_KEY = "x-client-id"


def call_metadata(client_id: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: the client identity sessions are bound to."""
    return ((CLIENT_ID_KEY, client_id),) if client_id else ()


def remaining(deadline: float | None) -> float | None:
    """Seconds left until a ``time.monotonic()`` deadline (``None``: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def model_ref(name: str, version: int) -> pb.ModelRef:
    """A model version reference (version 0: the latest)."""
    return pb.ModelRef(name=name, version=version)


class ClientCore:
    """The I/O-free half of :class:`Client` and :class:`AsyncClient`."""

    def __init__(
        self,
        target: str,
        client_id: str | None,
        timeout: float | None,
        retry: RetryPolicy | None,
        channel: grpc.Channel | grpc.aio.Channel,
        owns_channel: bool,
    ) -> None:
        self.target = target
        self.client_id = client_id
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._owns_channel = owns_channel
        self._stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
        self._metadata = call_metadata(client_id)
        self._models: dict[tuple[str, int], ModelInfo] = {}
        # Only the sync client is shared across threads; the lock costs the asyncio one nothing.
        self._models_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, client_id={self.client_id!r})"

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _deadline(self, timeout: float | None) -> float | None:
        timeout = self._timeout(timeout)
        return None if timeout is None else time.monotonic() + timeout

    def _retry_wait(
        self, error: RnnServeError, attempt: int, deadline: float | None, idempotent: bool
    ) -> float:
        """Seconds to wait before retrying a failed unary call; raises ``error`` when it is not
        to be retried (not idempotent, not a retried code, out of attempts or of time)."""
        if not (idempotent and self.retry.should_retry(error.code, attempt)):
            raise error
        wait = self.retry.backoff(attempt)
        if deadline is not None and time.monotonic() + wait >= deadline:
            raise error
        return wait

    def _start_generate(self, request: pb.GenerateRequest, timeout: float | None) -> Any:
        return self._stub.Generate(request, timeout=self._timeout(timeout), metadata=self._metadata)

    def _cached_model(self, name: str, version: int, refresh: bool) -> ModelInfo | None:
        if refresh:
            return None
        with self._models_lock:
            return self._models.get((name, version))

    def _remember_model(self, name: str, version: int, info: ModelInfo) -> ModelInfo:
        with self._models_lock:
            self._models[(name, version)] = info
            self._models[(info.name, info.version)] = info
        return info

    @staticmethod
    def _predict_request(
        model: str,
        version: int,
        sequences: Sequence[InputLike],
        options: OutputOptions,
        vocabulary: Vocabulary | None,
    ) -> pb.PredictRequest:
        return pb.PredictRequest(
            model=model_ref(model, version),
            sequences=[encode_input(sequence, vocabulary) for sequence in sequences],
            output=encode_options(options),
        )

    @staticmethod
    def _needs_vocabulary(prompt: InputLike | None) -> bool:
        """Whether a one-shot prompt is text, which the model's vocabulary may encode."""
        return isinstance(prompt, str) and bool(prompt)

    @staticmethod
    def _one_shot_request(
        model: str,
        version: int,
        prompt: InputLike | None,
        vocabulary: Vocabulary | None,
        settings: pb.GenerateRequest,
    ) -> pb.GenerateRequest:
        """A generation on a fresh session that the server closes when generation ends."""
        settings.close_session = True
        return aim_generation(
            settings, model=model, version=version, prompt=prompt, vocabulary=vocabulary
        )
