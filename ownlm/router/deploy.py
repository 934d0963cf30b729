"""Promote a gated model as a canary arm, roll back, and turn deployments into routing.

    ownlm promote --set model=app-own@2 --set alias=assistant --set incumbent=strong
    ownlm rollback --set store_url=sqlite:///ownlm.db --set alias=app

`promote` writes a deployment row to the store: the alias's traffic is split between the
incumbent variant and the new version (served as variant `name-v<version>` by the gateway's
in-process local model), as an A/B experiment whose always-valid test (experiments.py) decides.
The running gateway picks the row up within `deploy_refresh_s`, loads the model and routes. When
the test shows the canary worse, the gateway rolls it back by itself; when it shows the canary
better, the version becomes `promoted` and keeps the traffic the test shifted to it.

`rollback` restores the routing that came before the newest deployment (one command, any time).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import Field

from ownlm.config import Config
from ownlm.errors import ConfigError, StoreError
from ownlm.router.experiments import ExperimentConfig
from ownlm.router.policy import ExperimentPolicy, RouteConfig, RouterConfig
from ownlm.store.registry import Registry, variant_name
from ownlm.store.schema import Deployment
from ownlm.store.trace_store import TraceStore


class CanaryTest(Config):
    """The A/B test a canary runs in (fields of ExperimentConfig, arms aside)."""

    metric: Literal["success_rate", "mean_reward"] = Field(
        "mean_reward", description="what the test compares: feedback successes or mean score"
    )
    alpha: float = Field(0.05, gt=0.0, le=0.5, description="false-positive rate of the test")
    effect_sd: float = Field(0.1, gt=0.0, description="sd of the mSPRT mixing prior")
    min_feedback_per_arm: int = Field(
        100, ge=1, description="no decision before every arm has this much feedback"
    )
    min_exploration: float = Field(
        0.05, ge=0.0, lt=0.5, description="share of traffic an eliminated arm keeps"
    )
    cost_penalty_per_usd: float = Field(
        0.0, ge=0.0, description="reward units subtracted per USD of mean cost per trace"
    )
    failure_penalty: float = Field(
        0.0, ge=0.0, description="metric success_rate: a failure scores -this, a success 1"
    )


class PromoteConfig(Config):
    """Which version, on which alias, against what, with how much traffic."""

    store_url: str = Field("sqlite:///ownlm.db", description="the registry and deployment log")
    model: str = Field(description="registry reference, e.g. app-own@2")
    alias: str = Field(description="the model name the app calls")
    incumbent: str | None = Field(
        None, description="variant that serves the alias now; default: the live deployment's"
    )
    canary_weight: float = Field(0.1, gt=0.0, lt=1.0, description="share of traffic to start")
    test: CanaryTest = Field(default_factory=CanaryTest, description="the A/B test's rule")
    force: bool = Field(False, description="promote even if the gate did not approve it")
    escalate: bool = Field(
        True,
        description="serve the canary with the confidence routing its gate calibrated: it "
        "answers when sure, the incumbent answers the rest",
    )


class RollbackConfig(Config):
    """Which alias to roll back."""

    store_url: str = Field("sqlite:///ownlm.db", description="the registry and deployment log")
    alias: str = Field(description="the model name the app calls")
    reason: str = Field("rolled back by hand", description="recorded with the rollback")


def promote(cfg: PromoteConfig) -> Deployment:
    """Deploy cfg.model as a canary arm of cfg.alias; the version's status becomes canary."""
    reg = Registry(TraceStore(cfg.store_url))
    mv = reg.get(cfg.model)
    if mv.status != "approved" and not cfg.force:
        raise StoreError(
            f"{mv.name}@{mv.version} is {mv.status}, not approved by the gate; run `ownlm gate` "
            "first, or set force=true to promote it anyway"
        )
    live = reg.current(cfg.alias)
    incumbent = cfg.incumbent
    if incumbent is None:
        if live is None:
            raise ConfigError(
                f"{cfg.alias!r} has no deployment yet: name the variant that serves it now, "
                "e.g. --set incumbent=strong"
            )
        incumbent = max(live.arms, key=lambda a: live.arms[a])
    if live is None:  # the routing to roll back to: all traffic on the incumbent, as before
        live = reg.deploy(
            Deployment(
                alias=cfg.alias,
                arms={incumbent: 1.0},
                incumbent=incumbent,
                reason=f"baseline before the first promotion: {incumbent} serves everything",
            )
        )
    canary = variant_name(mv.name, mv.version)
    if canary == incumbent:
        raise ConfigError(f"{canary} already serves {cfg.alias!r}; promote a newer version")
    models = {a: p for a, p in live.models.items() if a == incumbent}
    models[canary] = mv.path
    escalations = None
    if cfg.escalate:
        gated = [d for d in reg.gate_decisions(mv.name) if d.version == mv.version]
        threshold = gated[-1].metrics.get("routing_threshold") if gated else None
        if threshold is not None:
            escalations = {canary: {"to": incumbent, "min_confidence": float(threshold)}}
    # the new version becomes the canary; a canary still on trial that this routing drops is
    # rolled back (it never won), in the same transaction as the routing
    statuses = [(mv.name, mv.version, "canary")]
    dropped = reg.by_variant(live.canary) if live.canary not in (None, incumbent, canary) else None
    if dropped is not None and dropped.status == "canary":
        statuses.append((dropped.name, dropped.version, "rolled_back"))
    dep = reg.deploy(
        Deployment(
            alias=cfg.alias,
            arms={incumbent: 1.0 - cfg.canary_weight, canary: cfg.canary_weight},
            incumbent=incumbent,
            canary=canary,
            models=models,
            experiment=cfg.test.model_dump(),
            reason=f"canary {mv.name}@{mv.version} at {cfg.canary_weight:.0%} vs {incumbent}"
            + (
                f", escalating to {incumbent} below confidence "
                f"{escalations[canary]['min_confidence']:.3f}"
                if escalations
                else ""
            ),
            escalations=escalations,
        ),
        statuses,
    )
    return dep


def rollback(cfg: RollbackConfig) -> Deployment:
    """Restore the routing before the newest deployment of cfg.alias."""
    return Registry(TraceStore(cfg.store_url)).rollback(cfg.alias, cfg.reason)


def experiment_name(dep: Deployment) -> str:
    """The experiment a deployment runs as: one per deployment row."""
    return f"{dep.alias}#{dep.seq}"


def routing_for(base: RouterConfig, deployments: dict[str, Deployment]) -> RouterConfig:
    """The router config with each deployed alias's route replaced by its deployment."""
    routes = dict(base.routes)
    experiments = dict(base.experiments)
    for alias, dep in deployments.items():
        live = {a: w for a, w in dep.arms.items() if w > 0.0}
        if len(live) == 1:
            routes[alias] = RouteConfig(default=next(iter(live)))
            continue
        name = experiment_name(dep)
        experiments[name] = ExperimentConfig(arms=dict(dep.arms), **(dep.experiment or {}))
        routes[alias] = RouteConfig(
            default=dep.incumbent,
            policies=[ExperimentPolicy(kind="experiment", name="deployment", experiment=name)],
        )
    return base.model_copy(update={"routes": routes, "experiments": experiments})


def decide_canary(reg: Registry, dep: Deployment, eliminated: frozenset[str], p: float) -> str:
    """Act on a canary's test result: rollback if it lost, promoted if it won; '' if undecided
    or if `dep` is no longer the alias's live deployment (a hand rollback or a new promote came
    first: acting on the stale one would undo it)."""
    if dep.canary is None:
        return ""
    live = reg.current(dep.alias)
    if live is None or live.seq != dep.seq:
        return ""
    version = reg.by_variant(dep.canary)
    if dep.canary in eliminated:
        reg.rollback(dep.alias, f"canary {dep.canary} lost the A/B (p={p:.2g})")
        return f"rolled back {dep.canary}"
    if dep.incumbent in eliminated and version is not None and version.status == "canary":
        reg.mark_promoted(version.name, version.version)
        return f"promoted {dep.canary}"
    return ""


def promote_command(cfg: PromoteConfig) -> dict[str, Any]:
    """`ownlm promote`: deploy and print what now serves the alias."""
    dep = promote(cfg)
    print(f"deployed #{dep.seq} on {dep.alias}: {dep.reason}")
    return dataclasses.asdict(dep)


def rollback_command(cfg: RollbackConfig) -> dict[str, Any]:
    """`ownlm rollback`: restore the previous routing and print it."""
    dep = rollback(cfg)
    print(f"deployed #{dep.seq} on {dep.alias}: {dep.reason}; arms {dep.arms}")
    return dataclasses.asdict(dep)
