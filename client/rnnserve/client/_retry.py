"""Retry policy for idempotent calls: UNAVAILABLE only, exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls are retried when the server is unavailable.

    Only calls that cannot apply twice are retried (ListModels, GetModel, GetSession,
    ExportState, and Step when it carries ``expected_step_count``), and only on UNAVAILABLE, the
    one code that means the request never ran. ``attempts`` counts the first try; the wait before
    retry ``n`` (1-based) is ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` with up
    to 20% random jitter, never past the call's deadline.
    """

    attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return base * (1.0 + 0.2 * random.random())

    def should_retry(self, code: grpc.StatusCode, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based) that failed with ``code`` is retried."""
        return code == grpc.StatusCode.UNAVAILABLE and attempt < self.attempts


#: A policy that never retries.
NO_RETRY = RetryPolicy(attempts=1)
