"""A/B experiments: sticky assignment, mSPRT p-values, traffic shifting on simulated feedback."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from typing import Any

import pytest

from ownlm.config import validate_config
from ownlm.router.experiments import (
    Experiment,
    ExperimentConfig,
    assign_point,
    msprt_p_value,
    shifted_weights,
)
from ownlm.router.policy import Router, RouterConfig, RouteRequest
from ownlm.store.schema import ArmStats


def make_experiment(name: str = "e", **kw: Any) -> Experiment:
    data: dict[str, Any] = {"arms": {"a": 0.5, "b": 0.5}}
    data.update(kw)
    return Experiment(name, validate_config(ExperimentConfig, data, "ownlm.yaml"))


def test_assign_point_is_pinned() -> None:
    # pinned values: a change here would move every running experiment's users
    assert assign_point("exp1", "alice") == pytest.approx(0.10049606881974564, abs=1e-15)
    assert assign_point("exp1", "bob") == pytest.approx(0.7003011784558603, abs=1e-15)
    assert assign_point("exp2", "alice") == pytest.approx(0.04061136631393891, abs=1e-15)


def test_assignment_stable_across_processes() -> None:
    code = "from ownlm.router.experiments import assign_point; print(assign_point('x', 'u7'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == assign_point("x", "u7")


def test_sticky_and_weighted() -> None:
    exp = make_experiment(arms={"a": 0.2, "b": 0.8})
    first = {f"u{i}": exp.assign(f"u{i}") for i in range(5000)}
    assert all(exp.assign(u) == arm for u, arm in first.items())
    share_a = sum(arm == "a" for arm in first.values()) / len(first)
    assert abs(share_a - 0.2) < 0.03  # binomial sd = 0.0057
    for user in ("alice", "bob", "carol"):  # arm a owns [0, 0.2), arm b [0.2, 1)
        assert exp.assign(user) == ("a" if assign_point("e", user) < 0.2 else "b")


def test_msprt_p_value_by_hand() -> None:
    # diff 0.3, V 0.01, tau^2 0.01: log L = 0.5 ln(0.5) + 0.01*0.09/(2*0.01*0.02) = 1.9034
    assert msprt_p_value(0.3, 0.01, 0.1) == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 2.25)))
    assert msprt_p_value(0.1, 0.01, 0.1) == 1.0  # log L < 0: capped at 1
    assert msprt_p_value(0.0, 0.0, 0.1) == 1.0
    assert msprt_p_value(0.2, 0.0, 0.1) == 0.0


def test_shifted_weights_by_hand() -> None:
    w = shifted_weights({"a": 0.5, "b": 0.25, "c": 0.25}, frozenset({"a"}), 0.05)
    assert w == pytest.approx({"a": 0.05, "b": 0.475, "c": 0.475})
    w = shifted_weights({"a": 0.5, "b": 0.5}, frozenset({"b"}), 0.1)
    assert w == pytest.approx({"a": 0.9, "b": 0.1})


def stats_for(counts: dict[str, tuple[int, int]], cost: float = 0.0) -> list[ArmStats]:
    """ArmStats from {arm: (successes, failures)} with thumbs rewards (1 up, 0 down)."""
    return [
        ArmStats("e", arm, s + f, s + f, float(s), float(s), s, f, cost * (s + f))
        for arm, (s, f) in counts.items()
    ]


def simulate(exp: Experiment, p_success: dict[str, float], n: int, seed: int) -> list[float]:
    """n requests from n/4 returning users; thumbs up with p_success[arm]; update every 100.

    Returns the weight of the last arm of p_success after each update.
    """
    rng = random.Random(seed)
    counts = {arm: [0, 0] for arm in exp.arms}
    watched = list(p_success)[-1]
    history = []
    for i in range(n):
        arm = exp.assign(f"user{rng.randrange(n // 4)}")
        counts[arm][0 if rng.random() < p_success[arm] else 1] += 1
        if (i + 1) % 100 == 0:
            exp.update(stats_for({a: (s, f) for a, (s, f) in counts.items()}))
            history.append(exp.weights[watched])
    return history


def test_better_arm_gets_the_traffic() -> None:
    exp = make_experiment(min_exploration=0.05)
    history = simulate(exp, {"a": 0.5, "b": 0.6}, n=4000, seed=1)
    assert history[0] == 0.5
    assert history[-1] == pytest.approx(0.95)
    assert exp.eliminated == frozenset({"a"})
    summary = {s.arm: s for s in exp.summaries}
    assert summary["a"].p_value < 0.05 and summary["b"].p_value == 1.0
    assert summary["b"].mean_reward > summary["a"].mean_reward


def test_equal_arms_do_not_shift() -> None:
    # the mSPRT is always valid: peeking every 100 requests keeps false shifts near alpha
    shifted = 0
    for seed in range(20):
        exp = make_experiment()
        history = simulate(exp, {"a": 0.5, "b": 0.5}, n=4000, seed=seed)
        shifted += history[-1] != 0.5
    assert shifted <= 3  # expected <= 1 at alpha 0.05; 3 leaves room for chance


def test_no_shift_before_min_feedback() -> None:
    exp = make_experiment(min_feedback_per_arm=500)
    exp.update(stats_for({"a": (10, 390), "b": (390, 10)}))  # huge gap, 400 per arm
    assert exp.weights == {"a": 0.5, "b": 0.5}
    exp.update(stats_for({"a": (10, 490), "b": (490, 10)}))
    assert exp.weights == pytest.approx({"a": 0.05, "b": 0.95})


def test_auto_shift_off_only_reports() -> None:
    exp = make_experiment(auto_shift=False)
    exp.update(stats_for({"a": (100, 900), "b": (900, 100)}))
    assert exp.weights == {"a": 0.5, "b": 0.5}
    assert {s.arm: s.p_value < 1e-6 for s in exp.summaries} == {"a": True, "b": False}


def test_cost_penalty_can_flip_the_winner() -> None:
    # b succeeds more (0.6 vs 0.5) but costs 0.02 USD per trace more; at 10 reward/USD that
    # is a 0.2 penalty, so a (0.5) beats b (0.6 - 0.2 = 0.4)
    exp = make_experiment(cost_penalty_per_usd=10.0)
    stats = stats_for({"a": (1000, 1000)}) + stats_for({"b": (1200, 800)}, cost=0.02)
    exp.update(stats)
    assert exp.eliminated == frozenset({"b"})


def test_router_update_arm_stats_shifts_decisions() -> None:
    cfg = validate_config(
        RouterConfig,
        {
            "experiments": {"e": {"arms": {"small": 0.5, "small-v2": 0.5}}},
            "routes": {
                "auto": {
                    "default": "small",
                    "policies": [{"kind": "experiment", "experiment": "e"}],
                }
            },
        },
        "ownlm.yaml",
    )
    router = Router(cfg)
    assert router.decide(RouteRequest("auto", "u1")).reason == (
        "experiment e (auto[0]): weights small=0.50, small-v2=0.50"
    )
    users = [f"u{i}" for i in range(2000)]
    before = sum(router.decide(RouteRequest("auto", u)).variant == "small-v2" for u in users)
    stats = [
        ArmStats("e", "small", 1000, 1000, 400.0, 400.0, 400, 600, 1.0),
        ArmStats("e", "small-v2", 1000, 1000, 700.0, 700.0, 700, 300, 1.0),
        ArmStats("other", "small", 5, 5, 0.0, 0.0, 0, 5, 0.0),  # another experiment: ignored
    ]
    router.update_arm_stats(stats)
    after = sum(router.decide(RouteRequest("auto", u)).variant == "small-v2" for u in users)
    assert router.decide(RouteRequest("auto", "u1")).reason == (
        "experiment e (auto[0]): weights small=0.05, small-v2=0.95; shifted, small worse"
    )
    assert 900 < before < 1100
    assert after > 1800  # 95% of 2000, minus noise


def test_a_cheap_canary_that_loses_quality_loses_once_failures_cost_the_app() -> None:
    # The paid arm: always right, $0.001 a request; the canary: free, right 80% of the time; a
    # success is worth $0.004 (cost penalty 250 per USD: the paid arm pays 0.25 successes a
    # request). Without a failure cost: 0.80 (own) beats 1 - 0.25 = 0.75 (paid). With a failure
    # costing what a success earns: own 0.8 - 0.2 = 0.60 loses to 0.75.
    def stats(cost_paid: float) -> list[ArmStats]:
        n, ok = 2000, 1600
        return [
            ArmStats("e", "paid", n, n, float(n), float(n), n, 0, n * cost_paid),
            ArmStats("e", "own", n, n, float(ok), float(ok), ok, n - ok, 0.0),
        ]

    def eliminated(failure_penalty: float) -> frozenset[str]:
        exp = Experiment(
            "e",
            ExperimentConfig(
                arms={"paid": 0.5, "own": 0.5}, min_feedback_per_arm=50, effect_sd=0.2,
                cost_penalty_per_usd=250.0, failure_penalty=failure_penalty,
            ),
        )  # fmt: skip
        exp.update(stats(0.001))
        return exp.eliminated

    assert eliminated(0.0) == frozenset({"paid"})  # savings bought a 20-point loss of quality
    assert eliminated(1.0) == frozenset({"own"})  # a wrong answer costs what a right one earns
