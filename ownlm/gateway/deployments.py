"""Live deployments: the gateway follows the store's deployment log while it runs.

Every `deploy_refresh_s` the gateway reads the newest deployment per alias (ownlm/router/deploy.py
writes them: `ownlm promote`, `ownlm rollback`, the loop). When one changed, it loads the own
models it names (in-process local upstreams, loaded off the event loop while the old routing keeps
serving), then serves a new snapshot (config, router, deployments) in one assignment. After
each arm-stats refresh it acts on canary tests: a canary shown worse is rolled back, one shown
better is marked promoted in the registry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ownlm.errors import OwnlmError
from ownlm.gateway.config import ModelConfig
from ownlm.router.deploy import decide_canary, experiment_name, routing_for
from ownlm.router.policy import Router
from ownlm.store.registry import Registry
from ownlm.store.schema import Deployment, Experiment

if TYPE_CHECKING:
    from ownlm.gateway.app import Gateway

log = logging.getLogger("ownlm.gateway")
OWN = "own:"  # upstreams of deployed own models are named own:<variant>
STALE_CLOSE_S = 30.0  # an engine no deployment serves is closed this long after the swap


async def follow_deployments_once(gw: Gateway) -> None:
    """Apply the deployment log if it changed (run forever by `background.run_forever`)."""
    live = await asyncio.to_thread(gw.stored_deployments)
    if {a: d.seq for a, d in live.items()} != gw.served.deployed:
        await apply_deployments(gw, live)


async def apply_deployments(gw: Gateway, live: dict[str, Deployment]) -> None:
    """Load the models the deployments need, then swap config and router."""
    from ownlm.gateway.app import Served, build_upstream

    # the configured upstreams and models, without the own models earlier deployments added
    upstreams = {n: u for n, u in gw.cfg.upstreams.items() if not n.startswith(OWN)}
    models = {n: m for n, m in gw.cfg.models.items() if not m.upstream.startswith(OWN)}
    for dep in live.values():
        for variant, path in dep.models.items():
            if variant in models:
                continue
            up_name = f"{OWN}{variant}"
            up_cfg = gw.cfg.own_engine.model_copy(update={"model_path": path})
            if up_name not in gw.upstreams:
                client = build_upstream(up_name, up_cfg)
                log.info("loading %s from %s for %s on %s", variant, path, dep.alias, up_cfg.kind)
                await client.start()
                gw.upstreams[up_name] = client
            upstreams[up_name] = up_cfg
            escalate = (dep.escalations or {}).get(variant)
            if escalate is not None and up_cfg.kind != "llama_cpp":
                log.warning(
                    "%s: own_engine kind %s cannot read confidences; serving without "
                    "escalation", variant, up_cfg.kind,
                )  # fmt: skip
                escalate = None
            models[variant] = ModelConfig(
                upstream=up_name,
                model=variant,
                price_in_usd_per_mtok=gw.cfg.own_price_in_usd_per_mtok,
                price_out_usd_per_mtok=gw.cfg.own_price_out_usd_per_mtok,
                escalate=escalate,
            )
    unknown = {a for d in live.values() for a in d.arms if a not in models}
    if unknown:
        raise OwnlmError(f"deployments name variants this gateway does not serve: {unknown}")
    router_cfg = routing_for(gw.base_router, live)
    cfg = gw.cfg.model_copy(update={"upstreams": upstreams, "models": models, "router": router_cfg})
    router = Router(router_cfg, known_variants=list(models))
    assert gw.store is not None
    for dep in live.values():
        if len(dep.arms) > 1:
            exp = Experiment(
                experiment_name(dep), dep.alias, list(dep.arms), list(dep.arms.values())
            )
            await asyncio.to_thread(gw.store.save_experiment, exp)
    await asyncio.to_thread(gw.restore_decisions, router)
    served = Served(cfg, router, live)
    await asyncio.to_thread(gw.store.write_served_models, served.model_rows())  # for the report
    gw.serve(served)
    stale = [n for n in gw.upstreams if n.startswith(OWN) and n not in upstreams]
    if stale:  # e.g. a rolled-back canary's engine: closed once requests in flight are done
        asyncio.get_running_loop().call_later(
            STALE_CLOSE_S, lambda: asyncio.ensure_future(_close(gw, stale))
        )
    for dep in live.values():
        log.info("deployment #%s on %s: arms %s (%s)", dep.seq, dep.alias, dep.arms, dep.reason)


async def _close(gw: Gateway, names: list[str]) -> None:
    for name in names:
        if name in gw.cfg.upstreams:
            continue  # deployed again meanwhile
        client = gw.upstreams.pop(name, None)
        if client is not None:
            log.info("closing %s: no live deployment serves it", name)
            await client.close()


def act_on_canaries(gw: Gateway) -> None:
    """Roll back canaries their test shows worse; mark the ones shown better promoted."""
    assert gw.store is not None
    reg = Registry(gw.store)
    for dep in gw.live_deployments.values():
        exp = gw.router.experiments.get(experiment_name(dep))
        if exp is None or dep.canary is None or dep.seq in gw.canaries_decided:
            continue
        p = min((s.p_value for s in exp.summaries if s.eliminated), default=1.0)
        outcome = decide_canary(reg, dep, exp.eliminated, p)
        if outcome:
            gw.canaries_decided.add(dep.seq)
            log.info("deployment #%s on %s: %s", dep.seq, dep.alias, outcome)
