"""Confidence routing's calibration on hand-made rows, and the floor held on held-out rows."""

from __future__ import annotations

import random

import pytest

from ownlm.errors import ConfigError
from ownlm.eval.routing import NEVER, RoutingRow, calibrate_threshold, routed_outcomes
from ownlm.models.llama_cpp import answer_confidence


def rows(spec: list[tuple[float, bool]], served: bool = True) -> list[RoutingRow]:
    return [RoutingRow(c, ok, served) for c, ok in spec]


def test_confidence_is_the_geometric_mean_token_probability() -> None:
    assert answer_confidence([0.0, 0.0]) == 1.0
    assert answer_confidence([-1.0, -3.0]) == pytest.approx(0.1353, abs=1e-4)  # exp(-2)
    assert answer_confidence([]) == 0.0


def test_calibration_picks_the_lowest_threshold_that_controls_the_loss() -> None:
    # 10 rows, today always right. Own: wrong at confidences 0.1-0.3 and at 0.8, right elsewhere.
    # Conformal risk control keeps (losses + 1) / (n + 1) <= the allowed loss.
    spec = [(0.1, False), (0.2, False), (0.3, False), (0.4, True), (0.5, True), (0.6, True),
            (0.7, True), (0.8, False), (0.9, True), (0.95, True)]  # fmt: skip
    # 10% allowed: (0 + 1) / 11 <= 0.1, so no loss at all: only 0.9 and above go to the own model
    cal = calibrate_threshold(rows(spec), max_quality_loss=0.10, min_rows=10)
    assert cal.threshold == 0.9 and cal.own_share == pytest.approx(0.2)
    assert cal.routed_accuracy == 1.0 and cal.served_accuracy == 1.0 and cal.own_accuracy == 0.6
    # 20% allowed: (1 + 1) / 11 <= 0.2, one loss: the own model takes 0.4 and above
    loose = calibrate_threshold(rows(spec), max_quality_loss=0.20, min_rows=10)
    assert loose.threshold == 0.4 and loose.own_share == pytest.approx(0.7)
    assert routed_outcomes(rows(spec), 0.4).count(False) == 1
    # 2% allowed on 10 rows: even no loss gives 1/11 > 0.02, so nothing moves
    assert calibrate_threshold(rows(spec), min_rows=10).threshold == NEVER


def test_too_few_rows_says_how_many_are_needed_and_to_keep_the_paid_api() -> None:
    with pytest.raises(ConfigError, match="12 held-out prompts .* at least 40.* paid API"):
        calibrate_threshold(rows([(0.9, True)] * 12))


def test_a_floor_no_threshold_reaches_keeps_everything_on_the_paid_api() -> None:
    cal = calibrate_threshold(rows([(0.99, False)] * 50), min_rows=40)
    assert cal.threshold == NEVER and cal.own_share == 0.0 and cal.routed_accuracy == 1.0


def test_threshold_holds_the_floor_on_held_out_rows() -> None:
    # Own answers are right with probability = confidence; today's model is right 97% of the
    # time. Calibrate on one half, check on the other: the routed system stays within the floor.
    rng = random.Random(7)

    def draw(n: int) -> list[RoutingRow]:
        out = []
        for _ in range(n):
            c = rng.random()
            out.append(RoutingRow(c, rng.random() < c, rng.random() < 0.97))
        return out

    fit, held_out = draw(2000), draw(2000)
    cal = calibrate_threshold(fit, max_quality_loss=0.02)
    routed = sum(routed_outcomes(held_out, cal.threshold)) / len(held_out)
    served = sum(r.served_correct for r in held_out) / len(held_out)
    assert 0.2 < cal.own_share < 0.6  # a real share of traffic moved
    assert routed >= served - 0.02 - 0.01  # the floor, within sampling noise of 2,000 rows


def test_cross_fitting_checks_every_row_at_a_threshold_chosen_without_it() -> None:
    from ownlm.eval.routing import cross_fitted, fold_of

    rng = random.Random(11)
    rows_, ids = [], [f"q{i}" for i in range(1500)]
    for _ in ids:
        c = rng.random()
        rows_.append(RoutingRow(c, rng.random() < c, True))
    cv = cross_fitted(rows_, ids, folds=5, max_quality_loss=0.02)
    assert len(cv.thresholds) == 5 and len(set(cv.thresholds)) > 1  # one per fold
    for j, (r, i) in enumerate(zip(rows_, ids, strict=True)):
        assert cv.own[j] == (r.confidence >= cv.thresholds[fold_of(i, 5)])
        assert cv.routed[j] == (r.own_correct if cv.own[j] else r.served_correct)
    assert sum(cv.routed) / len(rows_) >= 1.0 - 0.02 - 0.01  # the floor, within noise
    with pytest.raises(ConfigError, match="at least 2"):
        cross_fitted(rows_, ids, folds=1, max_quality_loss=0.02)
