"""Quality-preserving routing by the own model's confidence: the own model answers, and when it
is unsure the request goes to the paid API instead (a cascade, as in FrugalGPT, Chen et al.
2023), with the threshold calibrated on held-out traffic to a quality floor the user sets.

    cal = calibrate_threshold(rows, max_quality_loss=0.02)
    cal.threshold, cal.own_share, cal.routed_accuracy, cal.served_accuracy

A row is one held-out prompt: the own model's confidence (`models.llama_cpp.answer_confidence`,
the same function the gateway applies) and whether its answer was right, and
whether the answer that serves the app today (the paid API's, from the traces) was right. The
calibration picks the lowest threshold (the most traffic on the own model) whose quality loss
against today's answers is controlled at `max_quality_loss` (conformal risk control). The gateway
applies it with `models.<own>.escalate` (ownlm/gateway/config.py).

The gate chooses the served threshold on all held-out rows and checks the procedure by
cross-fitting (`cross_fitted`): the rows are split into folds, and each fold is routed at the
threshold chosen on the other folds, so every row is checked at a threshold it did not help
choose. Using every row for the threshold matters: with n rows conformal risk control at 2 points
allows (0.02 (n + 1) - 1) rows made worse, one at n = 143 and four at n = 298, so the own model's
share grows with n even at the same accuracy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ownlm.errors import ConfigError

# Fewer held-out rows than this and the calibration refuses: a floor of 2 points cannot be
# told from noise (the 95% CI of an accuracy on 40 rows is about +-10 points near 0.9).
MIN_CALIBRATION_ROWS = 40
NEVER = 2.0  # a threshold no confidence reaches: everything goes to the paid API


@dataclass(frozen=True)
class RoutingRow:
    """One held-out prompt, as the calibration sees it."""

    confidence: float  # the own model's answer_confidence
    own_correct: bool
    served_correct: bool  # today's answer (the paid API's, from the trace)


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and what it gave on the rows it was chosen on."""

    threshold: float  # own model answers when confidence >= threshold; > 1: never
    own_share: float
    routed_accuracy: float
    served_accuracy: float
    own_accuracy: float
    rows: int


def routed_outcomes(rows: Sequence[RoutingRow], threshold: float) -> list[bool]:
    """Per row: right or wrong after routing at `threshold`."""
    return [r.own_correct if r.confidence >= threshold else r.served_correct for r in rows]


def calibrate_threshold(
    rows: Sequence[RoutingRow],
    *,
    max_quality_loss: float = 0.02,
    min_rows: int = MIN_CALIBRATION_ROWS,
) -> Calibration:
    """The lowest threshold whose quality loss against today's answers is controlled at
    max_quality_loss, by conformal risk control (Angelopoulos et al. 2022, "Conformal Risk
    Control", Thm. 1).

    A row's loss is 1 when routing makes it worse (the own model answers, wrongly, where today's
    answer was right), else 0; it can only fall as the threshold rises. The chosen threshold is the
    lowest with (n/(n+1)) * mean loss + 1/(n+1) <= max_quality_loss, which bounds the expected
    loss on a new prompt from the same traffic by max_quality_loss. (The plain empirical rule,
    mean loss <= max_quality_loss, failed the check on held-out prompts about half the time.)

    Raises ConfigError when there are fewer than min_rows rows (saying how many are needed). When
    no threshold keeps any traffic on the own model, NEVER is returned with own_share 0.
    """
    if len(rows) < min_rows:
        raise ConfigError(
            f"{len(rows)} held-out prompts with outcomes to calibrate the router on; it needs at "
            f"least {min_rows}: send more rated traffic (or lower min_calibration_rows), and "
            "keep routing to the paid API until then"
        )
    n = len(rows)
    served = sum(r.served_correct for r in rows) / n
    own = sum(r.own_correct for r in rows) / n
    # candidates: every distinct confidence (the own model takes the rows at or above it)
    for t in sorted({r.confidence for r in rows}):
        losses = sum(r.served_correct and not r.own_correct for r in rows if r.confidence >= t)
        if (losses + 1) / (n + 1) <= max_quality_loss + 1e-12:
            share = sum(r.confidence >= t for r in rows) / n
            routed = sum(routed_outcomes(rows, t)) / n
            return Calibration(t, share, routed, served, own, n)
    return Calibration(NEVER, 0.0, served, served, own, n)


def fold_of(problem_id: str, folds: int) -> int:
    """A fixed fold for a problem, by a hash of its id: the same in every run."""
    return int(hashlib.sha256(problem_id.encode()).hexdigest()[:8], 16) % folds


@dataclass(frozen=True)
class CrossFit:
    """Every row routed at a threshold chosen on the other folds, and the fold thresholds."""

    routed: list[bool]  # per row: right or wrong after routing
    own: list[bool]  # per row: the own model answered
    thresholds: list[float]  # one per fold


def cross_fitted(
    rows: Sequence[RoutingRow],
    ids: Sequence[str],
    *,
    folds: int,
    max_quality_loss: float,
    min_rows: int = MIN_CALIBRATION_ROWS,
) -> CrossFit:
    """Route each fold at the threshold calibrated on the others (see the module docstring).

    Raises ConfigError, as calibrate_threshold does, when a fold's complement has fewer than
    min_rows rows."""
    if folds < 2:
        raise ConfigError(f"folds is {folds}; cross-fitting needs at least 2")
    part = [fold_of(i, folds) for i in ids]
    routed, own, thresholds = [False] * len(rows), [False] * len(rows), []
    for k in range(folds):
        rest = [r for r, f in zip(rows, part, strict=True) if f != k]
        t = calibrate_threshold(rest, max_quality_loss=max_quality_loss, min_rows=min_rows)
        thresholds.append(t.threshold)
        for j, (r, f) in enumerate(zip(rows, part, strict=True)):
            if f == k:
                own[j] = r.confidence >= t.threshold
                routed[j] = r.own_correct if own[j] else r.served_correct
    return CrossFit(routed, own, thresholds)
