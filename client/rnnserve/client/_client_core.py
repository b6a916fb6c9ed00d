"""What Client and AsyncClient share: call settings and the model cache, no I/O."""

from __future__ import annotations

import threading

from rnnserve.client._call_policy import CallPolicy
from rnnserve.client._retry import RetryPolicy
from rnnserve.client._types import ModelInfo


class ClientCore:
    """The I/O-free half of :class:`Client` and :class:`AsyncClient`."""

    def __init__(
        self,
        target: str,
        client_id: str | None,
        timeout: float | None,
        retry: RetryPolicy | None,
        owns_channel: bool,
        token: str | None = None,
    ) -> None:
        self.target = target
        self.client_id = client_id
        # The token lives only in the call metadata; repr() and errors never show it.
        self._policy = CallPolicy(client_id, timeout, retry or RetryPolicy(), token)
        self._owns_channel = owns_channel
        self._models: dict[tuple[str, int], ModelInfo] = {}
        # Only the sync client is shared across threads; the lock costs the asyncio one nothing.
        self._models_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, client_id={self.client_id!r})"

    @property
    def timeout(self) -> float | None:
        """The default deadline in seconds of each call (``None``: no deadline)."""
        return self._policy.timeout

    @timeout.setter
    def timeout(self, timeout: float | None) -> None:
        self._policy.timeout = timeout

    @property
    def retry(self) -> RetryPolicy:
        """How idempotent calls are retried on UNAVAILABLE."""
        return self._policy.retry

    @retry.setter
    def retry(self, retry: RetryPolicy) -> None:
        self._policy.retry = retry

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
