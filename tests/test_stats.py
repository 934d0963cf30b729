"""Tests for ownlm/stats.py: the Wilson interval and the difference interval by hand."""

from __future__ import annotations

import pytest

from ownlm.eval import accuracy
from ownlm.stats import diff_ci, wilson_interval


def test_wilson_interval_by_hand() -> None:
    # 8 of 10: centre (0.8 + 0.19208) / 1.38416 = 0.7167, half 0.2265
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)


def test_diff_ci_unpaired_by_hand() -> None:
    # 0.5 - 0.25 = 0.25; half 2 * sqrt(0.25*0.75/100 + 0.25/100) = 2 * 0.066144 = 0.132288
    d, low, high = diff_ci(0.25, 100, 0.5, 100, z=2.0)
    assert d == 0.25
    assert (low, high) == pytest.approx((0.25 - 0.132288, 0.25 + 0.132288), abs=1e-6)


def test_eval_keeps_the_same_functions() -> None:
    # eval code and users import them from ownlm.eval.accuracy; there is one definition.
    assert accuracy.wilson_interval is wilson_interval and accuracy.diff_ci is diff_ci
