"""Paired significance tests for comparing two classifiers on the same test examples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for `b` and `c` discordant pairs.

    Under the null hypothesis (both classifiers equally accurate) each discordant pair goes
    either way with probability 1/2, so min(b, c) is binomial(b + c, 1/2); the two-sided
    p-value is twice the smaller tail, capped at 1.
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)
    return min(1.0, 2.0 * tail)


def paired_comparison(first: Sequence[bool], second: Sequence[bool]) -> dict[str, float]:
    """Accuracies of two classifiers scored on the same examples, their discordant counts
    (`first_only`: first right, second wrong; `second_only`: the reverse) and the exact
    McNemar p-value."""
    if len(first) != len(second) or not first:
        raise ValueError("need the same, non-empty list of examples for both classifiers")
    first_only = sum(a and not b for a, b in zip(first, second, strict=True))
    second_only = sum(b and not a for a, b in zip(first, second, strict=True))
    return {
        "first_accuracy": sum(first) / len(first),
        "second_accuracy": sum(second) / len(second),
        "first_only": float(first_only),
        "second_only": float(second_only),
        "p_value": mcnemar_exact(first_only, second_only),
    }
