"""Kendall's τ-b: hand-counted pairs, ties, and the undefined cases."""

from __future__ import annotations

import math

import pytest

from exitnas.results import kendall_tau


def test_kendall_tau_matches_hand_counts() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # 5 concordant, 1 discordant pair, no ties: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


def test_kendall_tau_b_corrects_for_ties() -> None:
    # a ties items 0 and 1: pairs (0,2), (0,3), (1,2), (1,3), (2,3) concordant, (0,1) tied in a only.
    # τ-b = (5 - 0) / sqrt((5 + 0 + 1) * (5 + 0 + 0))
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    # Ties in both rankings: (0,1) tied in a, (2,3) tied in b, (0,2) (0,3) (1,2) (1,3) concordant.
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 3]) == pytest.approx(4 / math.sqrt(5 * 5))
    # A pair tied in both rankings counts nowhere: (0,1) is left out; (0,2), (1,2) concordant,
    # (0,3), (1,3), (2,3) discordant: (2 - 3) / sqrt(5 * 5).
    assert kendall_tau([1, 1, 2, 3], [5, 5, 6, 4]) == pytest.approx(-0.2)
    # 4 concordant, 2 discordant, 2 pairs tied in a only, 2 in b only: (4 - 2) / sqrt(8 * 8).
    assert kendall_tau([1, 2, 2, 3, 3], [2, 1, 3, 3, 2]) == pytest.approx(0.25)


def test_kendall_tau_undefined_and_mismatched() -> None:
    assert math.isnan(kendall_tau([], []))
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))  # one ranking all ties
    with pytest.raises(ValueError, match="two scores per item"):
        kendall_tau([1, 2], [1, 2, 3])

