"""Sampling the next token (temperature, top-k, top-p, seeded) and spotting stop strings."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from rnnserve.server.errors import InvalidInput
from rnnserve.server.types import SamplingParams


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
        scores = np.asarray(logits, dtype=np.float64) / params.temperature
        if 0 < params.top_k < scores.shape[0]:
            threshold = np.partition(scores, -params.top_k)[-params.top_k]
            scores = np.where(scores >= threshold, scores, -np.inf)
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        if params.top_p < 1:
            order = np.argsort(-probabilities, kind="stable")
            cumulative = np.cumsum(probabilities[order])
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
            mask = np.zeros_like(probabilities)
            mask[keep] = probabilities[keep]
            probabilities = mask / mask.sum()
        cumulative = np.cumsum(probabilities)
        draw = self._rng.random() * cumulative[-1]
        return int(min(np.searchsorted(cumulative, draw, side="right"), len(cumulative) - 1))


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
