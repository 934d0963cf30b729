"""An A/B test's decision outlives a restart: the eliminated arm is stored and taken up again,
even when the feedback that decided it is no longer enough to decide it anew."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete

from ownlm.gateway.app import Gateway
from ownlm.gateway.config import GatewayConfig
from ownlm.store import tables as t
from ownlm.store.schema import Feedback, Trace
from ownlm.store.trace_store import TraceStore


async def started(gw: Gateway, refresh: bool) -> frozenset[str]:
    await gw.start()
    try:
        if refresh:
            await gw._refresh_arm_stats_once()
        return gw.router.experiments["ab"].eliminated
    finally:
        await gw.stop()


def test_an_eliminated_arm_stays_eliminated_after_a_restart(
    config_for: Callable[..., GatewayConfig], tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    cfg = config_for(url, arm_stats_interval_s=3600.0, deploy_refresh_s=3600.0)
    store = TraceStore(url)
    traces = [
        Trace(alias="ab-test", variant=arm, experiment="ab", arm=arm)
        for arm in ("chat", "chat-pro")
        for _ in range(150)
    ]
    store.write_traces(traces)
    for tr in traces:  # chat is always right, chat-pro never
        store.add_feedback(Feedback(trace_id=tr.trace_id, thumbs=1 if tr.arm == "chat" else -1))
    assert asyncio.run(started(Gateway(cfg), refresh=True)) == frozenset({"chat-pro"})
    assert store.list_experiments()[0].eliminated == ["chat-pro"]
    with store.engine.begin() as conn:  # the ratings are gone: the data alone decides nothing
        conn.execute(delete(t.feedback))
    restarted = Gateway(cfg)
    assert asyncio.run(started(restarted, refresh=True)) == frozenset({"chat-pro"})
    weights = restarted.router.experiments["ab"].weights
    assert weights["chat-pro"] < weights["chat"]
    store.close()
