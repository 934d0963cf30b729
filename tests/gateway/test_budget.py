"""Budgets hold under concurrency: a request reserves its worst-case cost when it is admitted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai

from ownlm.gateway.app import Gateway
from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.server import build_app, serve_gateway_in_thread
from ownlm.store.trace_store import TraceStore
from tests.gateway.conftest import sha

KEY = "sk-test-budget"
MSG = [{"role": "user", "content": "hello there"}]


def test_worst_case_prices_the_dearest_model_a_request_can_reach(
    config_for: Callable[..., GatewayConfig], tmp_path: Any
) -> None:
    gw = Gateway(config_for(f"sqlite:///{tmp_path}/w.db"))
    # "gone" is free but falls back to "chat" ($1000 in, $2000 out per 1M tokens)
    assert gw.worst_case_usd("gone", 1000, 1000) == 3.0
    assert gw.worst_case_usd("chat-pro", 1000, 1000) == 0.0


def test_fifty_concurrent_requests_overrun_a_budget_by_at_most_one_reservation(
    config_for: Callable[..., GatewayConfig], tmp_path: Any
) -> None:
    budget = 0.10
    store_url = f"sqlite:///{tmp_path}/b.db"
    keys = [{"name": "budget", "key_sha256": sha(KEY), "budget_usd": budget, "burst": 1000}]
    cfg = config_for(store_url, keys=keys)
    app = build_app(cfg)
    server, thread = serve_gateway_in_thread(app, cfg, timeout_s=20)
    gw: Gateway = app.app
    # each call costs 10 x $1000 + 5 x $2000 per 1M = $0.02 (the mock's usage) and takes 0.2 s;
    # it reserves its bound: ("hello there" 11 bytes + 32) x $1000 + 5 x $2000 per 1M = $0.053
    reservation = gw.worst_case_usd("delayed", 11 + 32, 5)
    assert abs(reservation - 0.053) < 1e-9

    async def fifty() -> list[int]:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{cfg.port}/v1", api_key=KEY, max_retries=0
        ) as c:

            async def one() -> int:
                try:
                    await c.chat.completions.create(model="delayed", messages=MSG, max_tokens=5)
                except openai.RateLimitError as err:
                    assert "budget" in err.message
                    return 429
                return 200

            return await asyncio.gather(*(one() for _ in range(50)))

    try:
        codes = asyncio.run(fifty())
        gw.writer.flush()
        state = gw.keys.keys()[0]
        held, spent = state.reserved_usd, state.spent_usd
    finally:
        server.should_exit = True
        thread.join(20)
    store = TraceStore(store_url)
    stored = store.spend_by_key()
    store.close()
    ok = codes.count(200)
    assert ok + codes.count(429) == 50
    # $0.10 buys 5 calls; each admission saw spend + holds under the budget
    assert 1 <= ok <= 7, codes
    assert held == 0.0  # every hold was settled
    assert abs(spent - 0.02 * ok) < 1e-9
    assert sum(stored.values()) <= budget + reservation + 1e-9
