"""A/B experiments: sticky arm assignment by user and an always-valid test that shifts traffic.

Assignment hashes `experiment + user` to a point in [0, 1) and walks the cumulative arm weights,
so a user keeps their arm across requests and restarts while weights are unchanged. Requests with
no user are assigned at random.

The decision rule is a mixture sequential probability ratio test (mSPRT, Johari, Pekelis & Walsh
2015, "Always Valid Inference"), run on the cumulative per-arm stats every time the gateway calls
`Router.update_arm_stats`. Its p-values stay valid however often they are looked at, so checking
every few seconds does not inflate the false-positive rate. An arm whose mean reward is shown
worse than the best arm's (p < alpha / (k - 1)) is eliminated: it keeps `min_exploration` of the
traffic and its share goes to the arms still in the running. See docs/router.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ownlm.config import Config

if TYPE_CHECKING:
    from ownlm.store.schema import ArmStats

_HASH_SCALE = float(1 << 64)
log = logging.getLogger(__name__)


class ExperimentConfig(Config):
    """One A/B experiment: arms (variant name -> traffic weight) and its decision rule."""

    arms: dict[str, float] = Field(description="variant name -> share of traffic; sums to 1")
    auto_shift: bool = Field(True, description="move traffic off an arm the test shows worse")
    metric: Literal["success_rate", "mean_reward"] = Field(
        "success_rate", description="what the test compares: feedback successes or mean score"
    )
    alpha: float = Field(
        default=0.05, gt=0.0, le=0.5, description="false-positive rate of the test"
    )
    effect_sd: float = Field(
        default=0.1, gt=0.0, description="sd of the mSPRT mixing prior on the reward difference"
    )
    min_feedback_per_arm: int = Field(
        default=100, ge=1, description="no decision before every arm has this much feedback"
    )
    min_exploration: float = Field(
        default=0.05, ge=0.0, lt=0.5, description="share of traffic an eliminated arm keeps"
    )
    cost_penalty_per_usd: float = Field(
        default=0.0, ge=0.0, description="reward units subtracted per USD of mean cost per trace"
    )
    failure_penalty: float = Field(
        default=0.0,
        ge=0.0,
        description="metric success_rate: a failure scores -this (a success 1), so a wrong "
        "answer costs the app what it does (e.g. 1: as much as a right one earns)",
    )

    @model_validator(mode="after")
    def _check_arms(self) -> ExperimentConfig:
        if len(self.arms) < 2:
            raise ValueError(f"an experiment needs at least 2 arms, got {list(self.arms)}")
        bad = {a: w for a, w in self.arms.items() if not (w >= 0.0 and math.isfinite(w))}
        if bad:
            raise ValueError(f"arm weights must be >= 0, got {bad}")
        total = sum(self.arms.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"arm weights sum to {total:g}; make them sum to 1 (e.g. 0.5 and 0.5)")
        if self.min_exploration * len(self.arms) >= 1.0:
            raise ValueError(
                f"min_exploration {self.min_exploration} x {len(self.arms)} arms leaves nothing "
                f"to shift; use less than {1.0 / len(self.arms):g}"
            )
        return self


@dataclass(frozen=True, slots=True)
class ArmSummary:
    """What the decision rule saw for one arm at the last update."""

    arm: str
    n: int
    mean_reward: float
    cost_per_trace_usd: float
    weight: float
    p_value: float  # always-valid p-value of "this arm equals the best arm"; 1.0 for the best
    eliminated: bool


def assign_point(experiment: str, user: str) -> float:
    """Map (experiment, user) to a uniform point in [0, 1), the same in every process."""
    digest = hashlib.blake2b(f"{experiment}\x00{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SCALE


def msprt_p_value(diff: float, var: float, effect_sd: float) -> float:
    """p-value 1/Lambda of the normal-mixture SPRT for H0 'difference = 0'.

    diff: estimated difference of means; var: its variance (sA^2/nA + sB^2/nB);
    effect_sd: sd tau of the N(0, tau^2) mixing prior. Lambda = sqrt(V/(V+t2)) *
    exp(t2 diff^2 / (2 V (V+t2))) (Johari et al. 2015, eq. for the normal case).
    """
    if var <= 0.0:
        return 0.0 if diff != 0.0 else 1.0
    t2 = effect_sd * effect_sd
    log_lam = 0.5 * math.log(var / (var + t2)) + t2 * diff * diff / (2.0 * var * (var + t2))
    return 1.0 if log_lam <= 0.0 else math.exp(-log_lam)


def _arm_moments(
    s: ArmStats, metric: str, failure_penalty: float = 0.0
) -> tuple[int, float, float]:
    """(n, mean, variance of one observation) of an arm's reward.

    success_rate: a success scores 1 and a failure -failure_penalty, so the mean is
    p (1 + f) - f and the variance (1 + f)^2 p (1 - p).
    """
    if metric == "success_rate":
        n = s.successes + s.failures
        if n == 0:
            return 0, 0.0, 0.0
        p = s.successes / n
        scale = 1.0 + failure_penalty
        return n, p * scale - failure_penalty, scale * scale * p * (1.0 - p)
    n = s.n_feedback
    if n == 0:
        return 0, 0.0, 0.0
    mean = s.reward_sum / n
    return n, mean, max(s.reward_sq_sum / n - mean * mean, 0.0)


class Experiment:
    """Runtime state of one experiment: current weights, sticky assignment, decision rule."""

    def __init__(self, name: str, cfg: ExperimentConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.arms: tuple[str, ...] = tuple(cfg.arms)
        self.eliminated: frozenset[str] = frozenset()
        self.summaries: tuple[ArmSummary, ...] = ()
        self.status = ""  # what the router writes into a Decision's reason
        self._set_weights(dict(cfg.arms))

    def _set_weights(self, weights: dict[str, float]) -> None:
        # one tuple swapped in a single assignment, so a concurrent assign() sees old or new
        cum, acc = [], 0.0
        for arm in self.arms:
            acc += weights[arm]
            cum.append((acc, arm))
        self._cum: tuple[tuple[float, str], ...] = tuple(cum)
        self.weights = weights
        shown = ", ".join(f"{a}={w:.2f}" for a, w in weights.items())
        out = f"; shifted, {'/'.join(sorted(self.eliminated))} worse" if self.eliminated else ""
        self.status = f"weights {shown}{out}"

    def restore(self, eliminated: list[str]) -> None:
        """Take up the arms a test eliminated before a restart (stored in the experiments table),
        so a decision made on earlier feedback is not undone by a new process."""
        kept = frozenset(a for a in eliminated if a in self.cfg.arms)
        if self.cfg.auto_shift and kept and len(kept) < len(self.arms):
            self.eliminated = kept
            self._set_weights(shifted_weights(self.cfg.arms, kept, self.cfg.min_exploration))

    def assign(self, user: str | None) -> str:
        """Pick an arm: sticky by user, random when the request names no user."""
        u = assign_point(self.name, user) if user is not None else random.random()
        cum = self._cum
        for edge, arm in cum:
            if u < edge:
                return arm
        return cum[-1][1]

    def update(self, stats: list[ArmStats]) -> None:
        """Run the decision rule on cumulative per-arm stats and shift weights if it is sure."""
        cfg = self.cfg
        by_arm = {s.arm: s for s in stats if s.experiment == self.name and s.arm in cfg.arms}
        moments: dict[str, tuple[int, float, float, float]] = {}
        for arm in self.arms:
            s = by_arm.get(arm)
            if s is None:
                moments[arm] = (0, 0.0, 0.0, 0.0)
                continue
            n, mean, var = _arm_moments(s, cfg.metric, cfg.failure_penalty)
            cost = s.cost_usd / s.n_traces if s.n_traces else 0.0
            moments[arm] = (n, mean - cfg.cost_penalty_per_usd * cost, var, cost)
        best = max(self.arms, key=lambda a: (moments[a][0] > 0, moments[a][1]))
        ready = all(moments[a][0] >= cfg.min_feedback_per_arm for a in self.arms)
        level = cfg.alpha / (len(self.arms) - 1)  # Bonferroni over the k-1 comparisons
        eliminated = set(self.eliminated)
        p_values: dict[str, float] = {best: 1.0}
        nb, mb, vb, _ = moments[best]
        for arm in self.arms:
            if arm == best:
                continue
            n, m, v, _ = moments[arm]
            if n == 0 or nb == 0:
                p_values[arm] = 1.0
                continue
            p = msprt_p_value(mb - m, vb / nb + v / n, cfg.effect_sd)
            p_values[arm] = p
            if cfg.auto_shift and ready and p < level and m < mb:
                eliminated.add(arm)
        eliminated.discard(best)
        if cfg.auto_shift and eliminated != set(self.eliminated):
            self.eliminated = frozenset(eliminated)
            self._set_weights(shifted_weights(cfg.arms, self.eliminated, cfg.min_exploration))
            log.info(
                "experiment %s: %s (p-values %s, level %.4g)",
                self.name,
                self.status,
                {a: round(p, 6) for a, p in p_values.items()},
                level,
            )
        self.summaries = tuple(
            ArmSummary(
                arm=a,
                n=moments[a][0],
                mean_reward=moments[a][1],
                cost_per_trace_usd=moments[a][3],
                weight=self.weights[a],
                p_value=p_values[a],
                eliminated=a in self.eliminated,
            )
            for a in self.arms
        )


def shifted_weights(
    configured: dict[str, float], eliminated: frozenset[str], min_exploration: float
) -> dict[str, float]:
    """Eliminated arms get min_exploration; the rest share what is left, pro rata to config."""
    live = [a for a in configured if a not in eliminated]
    if not live:
        return dict(configured)
    left = 1.0 - min_exploration * len(eliminated)
    live_total = sum(configured[a] for a in live)
    out: dict[str, float] = {}
    for arm, w in configured.items():
        if arm in eliminated:
            out[arm] = min_exploration
        elif live_total > 0:
            out[arm] = left * w / live_total
        else:
            out[arm] = left / len(live)
    return out
