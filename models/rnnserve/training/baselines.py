"""Count-based baselines: an interpolated modified Kneser-Ney character n-gram language model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_BITS = 7  # bits per symbol in an n-gram code: up to 128 symbols, 9 symbols in an int64


@dataclass(frozen=True)
class _Order:
    """One order k of the model: its k-grams' (modified) counts and their histories' totals."""

    grams: np.ndarray  # sorted k-gram codes
    counts: np.ndarray  # raw counts (highest order) or continuation counts (lower orders)
    histories: np.ndarray  # sorted (k-1)-gram codes that precede a symbol
    history_totals: np.ndarray  # sum of counts over the symbols after each history
    history_backoff: np.ndarray  # D1*N1 + D2*N2 + D3*N3+ of each history
    discounts: tuple[float, float, float]


class KneserNeyLM:
    """Interpolated Kneser-Ney (Chen & Goodman 1998) over symbol ids, modified or not.

    p_k(w | h) = max(c(hw) - D(c(hw)), 0) / c(h.) + gamma(h) * p_{k-1}(w | h'), where h' drops h's
    oldest symbol, gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) / c(h.), c is the raw count at
    the highest order and the continuation count N1+(.hw) below it, D1..D3 come from each
    order's count-of-counts, and p_0 is uniform over the vocabulary. A history never seen backs
    off to the next lower order with its whole mass. `modified=False` is the original
    interpolated Kneser-Ney: one discount D = n1 / (n1 + 2 n2) per order for every count.
    """

    def __init__(
        self, ids: np.ndarray, vocabulary_size: int, order: int = 7, modified: bool = True
    ) -> None:
        if vocabulary_size > 1 << _BITS or order > 64 // _BITS:
            raise ValueError(f"at most {1 << _BITS} symbols and order {64 // _BITS}")
        self.order = order
        self.vocabulary_size = vocabulary_size
        ids = np.asarray(ids, dtype=np.int64)
        self._orders: list[_Order] = []
        above: np.ndarray | None = None  # the (k+1)-gram codes, for continuation counts
        for k in range(order, 0, -1):
            grams = _codes(ids, k)
            if above is None:
                unique, counts = np.unique(grams, return_counts=True)
            else:
                # how many distinct symbols precede each k-gram: its (k+1)-grams' suffixes
                unique, counts = np.unique(above & ((1 << (_BITS * k)) - 1), return_counts=True)
            above = np.unique(grams)
            self._orders.append(_build_order(unique, counts, modified))
        self._orders.reverse()  # index k-1 holds order k

    def log_probabilities(self, ids: np.ndarray) -> np.ndarray:
        """Natural log p(ids[i] | up to order-1 symbols before it in `ids`), for every i."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        p = np.full(n, 1.0 / self.vocabulary_size)
        for k in range(1, self.order + 1):
            table = self._orders[k - 1]
            grams = np.full(n, -1, dtype=np.int64)
            if n >= k:
                grams[k - 1 :] = _codes(ids, k)
            has_history = grams >= 0  # the first k-1 symbols lack a full history
            history = grams >> _BITS
            at = np.searchsorted(table.histories, history)
            at = np.minimum(at, len(table.histories) - 1)
            seen = has_history & (table.histories[at] == history)
            total = np.where(seen, table.history_totals[at], 1)
            backoff = np.where(seen, table.history_backoff[at], 0.0)
            where = np.minimum(np.searchsorted(table.grams, grams), len(table.grams) - 1)
            count = np.where(seen & (table.grams[where] == grams), table.counts[where], 0)
            discount = np.select(
                [count == 0, count == 1, count == 2],
                [0.0, *table.discounts[:2]],
                table.discounts[2],
            )
            mixed = (np.maximum(count - discount, 0.0) + backoff * p) / total
            p = np.where(seen, mixed, p)
        return np.log(p)

    def nats_per_symbol(self, ids: np.ndarray) -> float:
        """Mean negative log-likelihood of `ids`, each symbol given the ones before it."""
        return float(-self.log_probabilities(ids).mean())


def _codes(ids: np.ndarray, k: int) -> np.ndarray:
    """The k-gram ending at each position i >= k-1, oldest symbol in the highest bits."""
    code = np.zeros(max(len(ids) - k + 1, 0), dtype=np.int64)
    for j in range(k):
        code = (code << _BITS) | ids[j : len(ids) - k + 1 + j]
    return code


def _discounts(counts: np.ndarray, modified: bool) -> tuple[float, float, float]:
    """Chen & Goodman's D1, D2, D3+ from the count-of-counts n1..n4 (or D = Y three times)."""
    n1, n2, n3, n4 = (int(np.count_nonzero(counts == c)) for c in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:  # too little data for the estimate: plain absolute discounting
        return (0.5, 0.5, 0.5)
    y = n1 / (n1 + 2 * n2)
    if not modified:
        return (y, y, y)
    return (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)


def _build_order(grams: np.ndarray, counts: np.ndarray, modified: bool) -> _Order:
    discounts = _discounts(counts, modified)
    history = grams >> _BITS
    starts = np.flatnonzero(np.r_[True, history[1:] != history[:-1]])
    d = np.select([counts == 1, counts == 2], discounts[:2], discounts[2])
    return _Order(
        grams=grams,
        counts=counts,
        histories=history[starts],
        history_totals=np.add.reduceat(counts, starts),
        history_backoff=np.add.reduceat(d, starts),
        discounts=discounts,
    )


def kneser_ney_char_baseline(
    train: str,
    held_out: dict[str, str],
    vocabulary: list[str],
    order: int = 7,
    modified: bool = True,
) -> dict[str, float]:
    """Nats per character of a Kneser-Ney `order`-gram fitted on `train`, on each held-out text.

    Each held-out text is scored as one stream from its first character (the first order-1
    characters see a shorter history), as the character models are evaluated.
    """
    index = {symbol: i for i, symbol in enumerate(vocabulary)}
    model = KneserNeyLM(np.array([index[c] for c in train]), len(vocabulary), order, modified)
    result = {}
    for name, text in held_out.items():
        nats = model.nats_per_symbol(np.array([index[c] for c in text]))
        result[name] = nats
        assert math.isfinite(nats)
    return result


def shakespeare_kneser_ney(order: int = 7) -> dict[str, float]:
    """The character models' baseline on their own splits: Kneser-Ney `order`-gram nats/char.

    `baseline_kneser_ney_<order>gram_*`: interpolated Kneser-Ney with one discount per order;
    `baseline_modified_kneser_ney_<order>gram_*`: three discounts per order (Chen & Goodman).
    """
    from rnnserve.training.datasets import shakespeare

    splits = shakespeare.load_splits()
    held_out = {"val": splits.validation, "test": splits.test}
    metrics = {}
    for modified, name in ((False, "kneser_ney"), (True, "modified_kneser_ney")):
        scores = kneser_ney_char_baseline(
            splits.train, held_out, splits.vocabulary, order, modified
        )
        for split, nats in scores.items():
            metrics[f"baseline_{name}_{order}gram_{split}_nats_per_char"] = nats
    return metrics
