"""The Kneser-Ney character baseline: a proper distribution, equal to a plain reference version."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np
import pytest
from rnnserve.training.baselines import KneserNeyLM, kneser_ney_char_baseline

TEXT = "the cat sat on the mat. the rat sat on the cat! " * 6 + "a bat ate a gnat."


def _reference(
    train: list[int], vocabulary: int, order: int, modified: bool
) -> Callable[[tuple[int, ...], int], float]:
    """Interpolated (modified) Kneser-Ney written out with dictionaries, for small texts."""
    counts: list[Counter[tuple[int, ...]]] = [Counter() for _ in range(order + 1)]
    for k in range(1, order + 1):
        for i in range(len(train) - k + 1):
            counts[k][tuple(train[i : i + k])] += 1
    table: list[dict[tuple[int, ...], int]] = [{} for _ in range(order + 1)]
    table[order] = dict(counts[order])
    for k in range(order - 1, 0, -1):  # continuation counts: distinct symbols before the k-gram
        before: defaultdict[tuple[int, ...], set[int]] = defaultdict(set)
        for gram in counts[k + 1]:
            before[gram[1:]].add(gram[0])
        table[k] = {gram: len(s) for gram, s in before.items()}
    discounts: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
    for k in range(1, order + 1):
        n = Counter(table[k].values())
        if not all(n[c] for c in (1, 2, 3, 4)):
            discounts.append((0.5, 0.5, 0.5))
            continue
        y = n[1] / (n[1] + 2 * n[2])
        if modified:
            discounts.append(
                (1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3])
            )
        else:
            discounts.append((y, y, y))

    def probability(history: tuple[int, ...], symbol: int) -> float:
        history = history[max(0, len(history) - order + 1) :] if order > 1 else ()
        p = 1.0 / vocabulary
        for k in range(1, len(history) + 2):
            h = history[len(history) - k + 1 :]
            followers = {g[-1]: c for g, c in table[k].items() if g[:-1] == h}
            if not followers:
                continue  # a history never seen: the lower order keeps all the mass
            d = discounts[k]
            backoff = sum(d[min(c, 3) - 1] for c in followers.values())
            c = followers.get(symbol, 0)
            kept = max(c - d[min(c, 3) - 1], 0.0) if c else 0.0
            p = (kept + backoff * p) / sum(followers.values())
        return p

    return probability


@pytest.mark.parametrize("modified", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_a_plain_reference_and_sums_to_one(order: int, modified: bool) -> None:
    vocabulary = [*sorted(set(TEXT)), "#"]  # one symbol never seen in training
    index = {c: i for i, c in enumerate(vocabulary)}
    ids = [index[c] for c in TEXT]
    model = KneserNeyLM(np.array(ids), len(vocabulary), order, modified)
    reference = _reference(ids, len(vocabulary), order, modified)
    the = [index[c] for c in "the "]
    unseen = [index["#"], index["#"], index["a"]]
    for history in [[], the[:1], the[:3], the, unseen, [index["."], index[" "]]]:
        got = [
            math.exp(model.log_probabilities(np.array([*history, s]))[-1])
            for s in range(len(vocabulary))
        ]
        want = [reference(tuple(history), s) for s in range(len(vocabulary))]
        assert sum(got) == pytest.approx(1.0, abs=1e-9)
        assert got == pytest.approx(want, rel=1e-9)


def test_a_longer_context_helps_on_text_that_repeats() -> None:
    vocabulary = sorted(set(TEXT))
    train, test = TEXT[:250], TEXT[250:]
    scores = [
        kneser_ney_char_baseline(train, {"test": test}, vocabulary, order)["test"]
        for order in (1, 3, 5)
    ]
    assert scores[0] > scores[1] > scores[2]
    assert scores[0] < math.log(len(vocabulary))  # even unigrams beat a uniform guess
