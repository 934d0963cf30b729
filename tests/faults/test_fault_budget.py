"""A key's budget under 50 concurrent requests to a subprocess gateway on PostgreSQL.

Each request reserves its worst-case cost when it is admitted, so the stored spend of the key
may pass its budget by at most one reservation, however many requests arrive at once
(docs/gateway.md, "API keys, limits, budgets, cache"). Waves of 50 are sent until one is refused
whole; then a restarted gateway rebuilds the spend from the stored traces and refuses too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.faults.conftest import GatewayProc, PgServer, gateway_config, sha, wait_for
from tests.gateway.conftest import MockUpstream

KEY = "sk-faults-budget"
BUDGET = 0.10
MSG = [{"role": "user", "content": "hello there"}]
# each call costs the mock's usage, 10 x $1000 + 5 x $2000 per 1M tokens = $0.02, and takes
# 0.2 s; it reserves ("hello there" 11 bytes + 32) x $1000 + 5 x $2000 per 1M = $0.053
COST = 0.02
RESERVATION = (11 + 32) * 1000.0 / 1e6 + 5 * 2000.0 / 1e6


def wave(gw: GatewayProc, n: int) -> list[tuple[int, str]]:
    """n requests at once: (status, error message or '') of each."""

    async def run() -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        headers = {"authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as c:

            async def one() -> tuple[int, str]:
                body = {"model": "delayed", "messages": MSG, "max_tokens": 5}
                r = await c.post(gw.base_url + "/chat/completions", json=body)
                msg = "" if r.status_code == 200 else r.json()["error"]["message"]
                return r.status_code, msg

            return await asyncio.gather(*(one() for _ in range(n)))

    return asyncio.run(run())


def stored_spend(pg: PgServer) -> tuple[int, float]:
    rows = pg.sql(
        "SELECT count(*), coalesce(sum(cost_usd), 0) FROM traces WHERE key_id = %s", "cfg-budget"
    )
    return int(rows[0][0]), float(rows[0][1])


def test_fifty_concurrent_requests_overrun_a_budget_by_at_most_one_reservation(
    pg: PgServer,
    mock_upstream: MockUpstream,
    start_gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    keys = [{"name": "budget", "key_sha256": sha(KEY), "budget_usd": BUDGET, "burst": 10**6}]
    cfg = gateway_config(mock_upstream.base_url, pg.url, tmp_path, keys=keys)
    gw = start_gateway(cfg)
    waves: list[tuple[int, int]] = []  # (answered, refused) per wave
    for _ in range(8):
        codes = wave(gw, 50)
        odd = [(s, m) for s, m in codes if s != 200 and not (s == 429 and "budget" in m)]
        assert not odd, odd[:3]
        answered = sum(s == 200 for s, _ in codes)
        waves.append((answered, len(codes) - answered))
        wait_for(gw.traces_settled, 30, "the wave's traces written")
        n_stored, spent = stored_spend(pg)
        assert n_stored == sum(a for a, _ in waves), (n_stored, waves)
        assert spent <= BUDGET + RESERVATION + 1e-9, (spent, waves)
        if answered == 0:
            break
    print(
        f"\nbudget ${BUDGET:.2f}, reservation ${RESERVATION:.3f}: waves of 50 "
        f"(answered, 429): {waves}; stored spend ${spent:.3f} "
        f"(bound ${BUDGET + RESERVATION:.3f}) over {n_stored} traces"
    )
    assert waves[0][0] >= 1, waves
    assert waves[-1][0] == 0, f"the budget never refused a whole wave: {waves}"
    assert abs(spent - COST * n_stored) < 1e-9, (spent, n_stored)
    assert spent >= BUDGET - 1e-9  # a wave is refused whole only once the budget is spent

    gw.proc.terminate()
    gw.proc.wait(30)
    again = start_gateway(cfg)  # spend is rebuilt from the stored traces
    codes = wave(again, 10)
    print(f"after a restart: {sum(s == 429 for s, _ in codes)} of 10 refused")
    assert all(s == 429 for s, _ in codes), codes
    assert stored_spend(pg) == (n_stored, spent)
