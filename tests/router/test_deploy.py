"""router/deploy.py against a real SQLite registry in tmp_path: promote (the first promotion's
baseline, the default incumbent, the models carried over, the gate's escalation, refusals),
the promote/rollback commands' output, routing_for, and decide_canary's three outcomes.

The gateway following these rows is test_deployments.py's; the registry's own rules (references,
rollback, one-transaction status changes) are test_registry.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ownlm.errors import ConfigError, StoreError
from ownlm.router.deploy import (
    CanaryTest,
    PromoteConfig,
    RollbackConfig,
    decide_canary,
    experiment_name,
    promote,
    promote_command,
    rollback,
    rollback_command,
    routing_for,
)
from ownlm.router.experiments import ExperimentConfig
from ownlm.router.policy import ExperimentPolicy, RouterConfig
from ownlm.store.registry import Registry
from ownlm.store.schema import Deployment, GateDecision, ModelVersion
from ownlm.store.trace_store import TraceStore


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/reg.db"


@pytest.fixture
def reg(url: str) -> Iterator[Registry]:
    """The registry with own@1 (approved, /runs/1) and own@2 (approved, /runs/2)."""
    store = TraceStore(url)
    r = Registry(store)
    for v in (1, 2):
        r.register(ModelVersion("own", v, f"/runs/{v}", status="approved"))
    yield r
    store.close()


def baseline(
    reg: Registry,
    arms: dict[str, float] | None = None,
    models: dict[str, str] | None = None,
    canary: str | None = None,
) -> Deployment:
    """A deployment of `app` (all traffic on strong unless given) written before the test."""
    arms = arms or {"strong": 1.0}
    incumbent = max(arms, key=arms.__getitem__)
    return reg.deploy(Deployment("app", arms, incumbent, "start", models or {}, canary=canary))


# -- promote -----------------------------------------------------------------------------------


def test_a_first_promotion_writes_the_baseline_it_rolls_back_to(reg: Registry, url: str) -> None:
    dep = promote(
        PromoteConfig(
            store_url=url, model="own@1", alias="app", incumbent="strong", canary_weight=0.2
        )
    )
    first, second = reg.deployments("app")
    assert (first.arms, first.canary, first.models) == ({"strong": 1.0}, None, {})
    assert first.reason == "baseline before the first promotion: strong serves everything"
    assert second == dep and dep.seq == first.seq + 1
    assert dep.arms == {"strong": 0.8, "own-v1": 0.2}
    assert (dep.incumbent, dep.canary, dep.models) == ("strong", "own-v1", {"own-v1": "/runs/1"})
    assert dep.experiment == CanaryTest().model_dump()
    assert dep.reason == "canary own@1 at 20% vs strong" and dep.escalations is None
    assert reg.get("own@1").status == "canary"
    back = rollback(RollbackConfig(store_url=url, alias="app"))
    assert back.arms == {"strong": 1.0} and back.canary is None
    assert back.reason == f"rollback of #{dep.seq}: rolled back by hand"
    assert reg.get("own@1").status == "rolled_back"


def test_a_newer_canary_rolls_back_the_one_still_on_trial(reg: Registry, url: str) -> None:
    cfg = {"store_url": url, "alias": "app", "incumbent": "strong"}
    promote(PromoteConfig(model="own@1", **cfg))
    dep = promote(PromoteConfig(model="own@2", **cfg))
    assert dep.arms == {"strong": 0.9, "own-v2": 0.1} and dep.canary == "own-v2"
    # own@1 left the routing without winning: no longer a canary, and its row says so
    assert reg.get("own@1").status == "rolled_back" and reg.get("own@2").status == "canary"


def test_the_incumbent_is_the_live_arm_with_most_traffic_and_keeps_its_model(
    reg: Registry, url: str
) -> None:
    live = baseline(
        reg,
        {"strong": 0.3, "own-v1": 0.7},
        models={"own-v1": "/runs/1", "gone-v9": "/runs/old"},
        canary="own-v1",
    )
    dep = promote(PromoteConfig(store_url=url, model="own@2", alias="app"))
    assert [d.seq for d in reg.deployments("app")] == [live.seq, dep.seq]  # no new baseline
    assert dep.incumbent == "own-v1"
    assert dep.arms == {"own-v1": 0.9, "own-v2": 0.1}
    # the incumbent's own model is still loaded; variants that no longer serve are dropped
    assert dep.models == {"own-v1": "/runs/1", "own-v2": "/runs/2"}


def test_promote_refuses_an_unapproved_version_unless_forced(reg: Registry, url: str) -> None:
    reg.register(ModelVersion("own", 3, "/runs/3"))  # a candidate: never gated
    baseline(reg)
    with pytest.raises(StoreError) as info:
        promote(PromoteConfig(store_url=url, model="own@3", alias="app"))
    assert str(info.value) == (
        "own@3 is candidate, not approved by the gate; run `ownlm gate` first, or set "
        "force=true to promote it anyway"
    )
    assert len(reg.deployments("app")) == 1 and reg.get("own@3").status == "candidate"
    dep = promote(PromoteConfig(store_url=url, model="own@3", alias="app", force=True))
    assert dep.canary == "own-v3" and reg.get("own@3").status == "canary"
    with pytest.raises(StoreError, match="no model version own@7"):
        promote(PromoteConfig(store_url=url, model="own@7", alias="app"))


def test_promoting_what_already_serves_is_refused_and_writes_nothing(
    reg: Registry, url: str
) -> None:
    baseline(reg, {"own-v1": 1.0}, models={"own-v1": "/runs/1"})
    with pytest.raises(ConfigError, match="own-v1 already serves 'app'; promote a newer version"):
        promote(PromoteConfig(store_url=url, model="own@1", alias="app"))
    assert len(reg.deployments("app")) == 1 and reg.get("own@1").status == "approved"


def gate(reg: Registry, version: int, at: float, **metrics: float) -> None:
    reg.record_gate(GateDecision("own", version, "strong", True, ["ok"], metrics, created_at=at))


def test_the_escalation_comes_from_the_versions_latest_gate_decision(
    reg: Registry, url: str
) -> None:
    gate(reg, 1, 1.0, routing_threshold=0.5)
    gate(reg, 1, 2.0, routing_threshold=0.7345)  # gated again: this one counts
    gate(reg, 2, 3.0, routing_threshold=0.9)  # another version's: not this one's
    baseline(reg)
    dep = promote(PromoteConfig(store_url=url, model="own@1", alias="app"))
    assert dep.escalations == {"own-v1": {"to": "strong", "min_confidence": 0.7345}}
    assert dep.reason == (
        "canary own@1 at 10% vs strong, escalating to strong below confidence 0.735"
    )
    reg.rollback("app", "again")
    off = promote(PromoteConfig(store_url=url, model="own@2", alias="app", escalate=False))
    assert off.escalations is None and "escalating" not in off.reason


def test_no_escalation_without_a_calibrated_threshold(reg: Registry, url: str) -> None:
    gate(reg, 1, 1.0, domain_diff=0.2)  # gated before the routing threshold existed
    baseline(reg)
    dep = promote(PromoteConfig(store_url=url, model="own@1", alias="app"))
    assert dep.escalations is None and dep.reason == "canary own@1 at 10% vs strong"


def test_the_commands_print_what_serves_and_return_the_row(
    reg: Registry, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline(reg)
    made = promote_command(PromoteConfig(store_url=url, model="own@1", alias="app"))
    assert capsys.readouterr().out == "deployed #2 on app: canary own@1 at 10% vs strong\n"
    assert (made["seq"], made["arms"], made["canary"]) == (
        2,
        {"strong": 0.9, "own-v1": 0.1},
        "own-v1",
    )
    back = rollback_command(RollbackConfig(store_url=url, alias="app", reason="pager"))
    assert capsys.readouterr().out == (
        "deployed #3 on app: rollback of #2: pager; arms {'strong': 1.0}\n"
    )
    assert back["seq"] == 3 and back["arms"] == {"strong": 1.0}


# -- routing_for -------------------------------------------------------------------------------

BASE = RouterConfig.model_validate(
    {
        "experiments": {"kept": {"arms": {"strong": 0.5, "cheap": 0.5}}},
        "routes": {
            "app": {"default": "cheap"},
            "solo": {"default": "cheap"},
            "other": {"default": "strong"},
        },
    }
)


def test_routing_for_replaces_deployed_routes_only() -> None:
    test = CanaryTest(metric="success_rate", alpha=0.01, min_feedback_per_arm=40)
    split = Deployment(
        "app", {"strong": 0.9, "own-v1": 0.1}, "strong", "c", experiment=test.model_dump(), seq=7
    )
    solo = Deployment("solo", {"own-v1": 1.0, "strong": 0.0}, "strong", "done", seq=8)
    got = routing_for(BASE, {"app": split, "solo": solo})
    assert experiment_name(split) == "app#7"
    route = got.routes["app"]
    assert route.default == "strong"
    assert route.policies == [
        ExperimentPolicy(kind="experiment", name="deployment", experiment="app#7")
    ]
    exp = got.experiments["app#7"]
    assert exp.arms == {"strong": 0.9, "own-v1": 0.1}
    assert (exp.metric, exp.alpha, exp.min_feedback_per_arm) == ("success_rate", 0.01, 40)
    # one arm with all the traffic (a weight-0 arm does not count): a plain default, no test
    assert got.routes["solo"].default == "own-v1" and got.routes["solo"].policies == []
    assert "solo#8" not in got.experiments
    assert (
        got.routes["other"] == BASE.routes["other"]
        and got.experiments["kept"] == (BASE.experiments["kept"])
    )
    assert BASE.routes["app"].default == "cheap" and "app#7" not in BASE.experiments  # unchanged


def test_every_canary_test_field_means_the_same_in_the_experiment() -> None:
    """A deployment stores CanaryTest's fields; routing_for hands them to ExperimentConfig."""
    test = CanaryTest(
        metric="success_rate",
        alpha=0.02,
        effect_sd=0.3,
        min_feedback_per_arm=7,
        min_exploration=0.2,
        cost_penalty_per_usd=1.5,
        failure_penalty=0.5,
    )
    exp = ExperimentConfig(arms={"a": 0.5, "b": 0.5}, **test.model_dump())
    assert {k: getattr(exp, k) for k in CanaryTest.model_fields} == test.model_dump()
    dep = Deployment("app", {"a": 0.5, "b": 0.5}, "a", "r", experiment=None, seq=1)
    assert routing_for(BASE, {"app": dep}).experiments["app#1"] == ExperimentConfig(
        arms={"a": 0.5, "b": 0.5}
    )  # no stored test: the experiment's defaults


# -- decide_canary -----------------------------------------------------------------------------


@pytest.fixture
def canary(reg: Registry) -> Deployment:
    """app: strong (baseline), then own@2 as a canary beside it; own@1 promoted before."""
    reg.set_status("own", 1, "promoted")
    reg.set_status("own", 2, "canary")
    baseline(reg)
    return reg.deploy(
        Deployment(
            "app",
            {"strong": 0.9, "own-v2": 0.1},
            "strong",
            "canary",
            models={"own-v2": "/runs/2"},
            canary="own-v2",
        )
    )


# the canary's loss decides even when the incumbent is eliminated too
@pytest.mark.parametrize("eliminated", [{"own-v2"}, {"own-v2", "strong"}])
def test_a_losing_canary_is_rolled_back(
    reg: Registry, canary: Deployment, eliminated: set[str]
) -> None:
    out = decide_canary(reg, canary, frozenset(eliminated), 0.01234)
    assert out == "rolled back own-v2"
    live = reg.current("app")
    assert live is not None and live.arms == {"strong": 1.0} and live.canary is None
    assert live.reason == f"rollback of #{canary.seq}: canary own-v2 lost the A/B (p=0.012)"
    assert reg.get("own@2").status == "rolled_back"
    assert reg.get("own@1").status == "promoted"


def test_a_winning_canary_is_promoted_once_and_keeps_its_traffic(
    reg: Registry, canary: Deployment
) -> None:
    assert decide_canary(reg, canary, frozenset({"strong"}), 0.003) == "promoted own-v2"
    assert reg.get("own@2").status == "promoted"
    assert reg.get("own@1").status == "retired"  # one promoted version per name
    assert reg.current("app") == canary  # no new row: the test already shifted the traffic
    assert decide_canary(reg, canary, frozenset({"strong"}), 0.003) == ""  # decided already
    assert [v.status for v in reg.store.list_model_versions("own")] == ["retired", "promoted"]


def test_undecided_or_unknown_canaries_change_nothing(reg: Registry, canary: Deployment) -> None:
    rows = reg.deployments()
    for eliminated in (frozenset(), frozenset({"cheap"})):
        assert decide_canary(reg, canary, eliminated, 1.0) == ""
    no_canary = reg.deployments("app")[0]
    assert decide_canary(reg, no_canary, frozenset({"strong"}), 0.01) == ""
    # a canary variant the registry does not know cannot be promoted
    stranger = Deployment("app", {"strong": 0.5, "x-v1": 0.5}, "strong", "r", canary="x-v1")
    assert decide_canary(reg, stranger, frozenset({"strong"}), 0.01) == ""
    assert reg.deployments() == rows
    assert reg.get("own@2").status == "canary"


def test_a_stale_canary_decision_does_not_undo_a_hand_rollback(
    reg: Registry, canary: Deployment
) -> None:
    by_hand = reg.rollback("app", "by hand")
    decide_canary(reg, canary, frozenset({"own-v2"}), 0.01)  # the gateway, one refresh behind
    live = reg.current("app")
    assert live is not None and live.arms == {"strong": 1.0}, live
    assert live.seq == by_hand.seq
