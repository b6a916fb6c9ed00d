"""The exact McNemar test on hand-computed cases."""

from __future__ import annotations

import pytest
from rnnserve.training.significance import mcnemar_exact, paired_comparison


def test_mcnemar_exact_hand_computed() -> None:
    # 6 discordant pairs, 1 one way and 5 the other: P(X <= 1) = (1 + 6) / 64, doubled
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    # all 6 one way: 2 / 64
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    # 10 vs 0: 2 / 1024 < 0.05
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)


def test_mcnemar_exact_balanced_and_empty_are_one() -> None:
    assert mcnemar_exact(2, 2) == 1.0  # 2 * 11 / 16 capped at 1
    assert mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_paired_comparison_counts_discordant_pairs() -> None:
    first = [True, True, True, False, False, True]
    second = [True, False, False, True, False, False]
    result = paired_comparison(first, second)
    assert result["first_accuracy"] == pytest.approx(4 / 6)
    assert result["second_accuracy"] == pytest.approx(2 / 6)
    assert (result["first_only"], result["second_only"]) == (3.0, 1.0)
    assert result["p_value"] == pytest.approx(2 * (1 + 4) / 16)
    with pytest.raises(ValueError):
        paired_comparison([True], [True, False])
