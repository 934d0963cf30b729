"""Two `ownlm serve` replicas on one PostgreSQL store and one Valkey-protocol server (Debian
`redis-server`, started here on loopback): a key's rate limit and budget hold across both, a key
disabled on one is refused by the other within a second, and killing one replica under load
loses no acknowledged feedback."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.faults.conftest import (
    KEY,
    GatewayProc,
    PgServer,
    free_port,
    gateway_config,
    sha,
    wait_for,
)
from tests.faults.test_fault_budget import COST, MSG, RESERVATION
from tests.gateway.conftest import MockUpstream

ADMIN = "sk-replicas-admin"
LIMITED = "sk-replicas-limited"
BUDGETED = "sk-replicas-budget"
BUDGET = 0.10


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[str]:
    """A throwaway Valkey-protocol server on 127.0.0.1 (no persistence); yields its URL."""
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        pytest.skip("no valkey-server or redis-server; run `make system-deps`")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        wait_for(lambda: _pings(client), 20, "the Valkey server answering")
        yield url
    finally:
        client.close()
        proc.kill()
        proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def replica_config(mock: MockUpstream, pg: PgServer, url: str, tmp_path: Path) -> dict[str, Any]:
    keys = [
        {"name": "user", "key_sha256": sha(KEY), "rate_per_s": 1e6, "burst": 10**6},
        {"name": "limited", "key_sha256": sha(LIMITED), "rate_per_s": 0.001, "burst": 10},
        {"name": "budget", "key_sha256": sha(BUDGETED), "budget_usd": BUDGET, "burst": 10**6},
    ]
    return gateway_config(
        mock.base_url,
        pg.url,
        tmp_path,
        shared_state_url=url,
        keys=keys,
        admin_key_sha256=sha(ADMIN),
    )


@pytest.fixture
def replicas(
    pg: PgServer,
    valkey: str,
    mock_upstream: MockUpstream,
    start_gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> tuple[GatewayProc, GatewayProc]:
    """Two `ownlm serve` replicas on one PostgreSQL and one Valkey-protocol server."""
    cfg = replica_config(mock_upstream, pg, valkey, tmp_path)
    return start_gateway(cfg), start_gateway(cfg)


def chat(gw: GatewayProc, key: str, model: str = "chat") -> httpx.Response:
    body = {"model": model, "messages": MSG, "max_tokens": 5}
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=30)


def test_two_replicas_share_limits_budgets_and_keys(
    pg: PgServer, replicas: tuple[GatewayProc, GatewayProc]
) -> None:
    a, b = replicas

    # the rate limit: burst 10, refilled once in 1000 s, counted once for both replicas
    codes = [chat((a, b)[i % 2], LIMITED).status_code for i in range(20)]
    assert sorted(codes) == [200] * 10 + [429] * 10, codes

    # the budget: 50 requests at once, half to each replica
    async def wave() -> list[int]:
        limits = httpx.Limits(max_connections=50)
        headers = {"authorization": f"Bearer {BUDGETED}"}
        async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as c:
            body = {"model": "delayed", "messages": MSG, "max_tokens": 5}
            sent = [
                c.post(gw.base_url + "/chat/completions", json=body)
                for gw in (a, b) * 25
            ]  # fmt: skip
            return [r.status_code for r in await asyncio.gather(*sent)]

    answered = []
    for _ in range(6):
        statuses = asyncio.run(wave())
        assert set(statuses) <= {200, 429}, statuses
        answered.append(statuses.count(200))
        wait_for(lambda: a.traces_settled() and b.traces_settled(), 30, "traces written")
        if answered[-1] == 0:
            break
    spent = float(
        pg.sql("SELECT coalesce(sum(cost_usd), 0) FROM traces WHERE key_id = 'cfg-budget'")[0][0]
    )
    assert spent <= BUDGET + RESERVATION + 1e-9 and answered[-1] == 0, (spent, answered)
    assert abs(spent - COST * sum(answered)) < 1e-9

    # a key created on one replica works on the other; disabled on one, refused by the other
    admin = {"authorization": f"Bearer {ADMIN}"}
    made = httpx.post(a.root_url + "/admin/keys", json={"name": "app"}, headers=admin, timeout=30)
    assert made.status_code == 200, made.text
    key, key_id = made.json()["key"], made.json()["key_id"]
    seen_s = wait_for(lambda: chat(b, key).status_code == 200, 10, "new key on replica b")
    off = httpx.post(
        a.root_url + "/admin/keys/disable", json={"key_id": key_id}, headers=admin, timeout=30
    )
    assert off.status_code == 200, off.text
    t0 = time.monotonic()
    refused_s = wait_for(lambda: chat(b, key).status_code == 401, 10, "disabled on replica b")
    print(
        f"\nrate limit across 2 replicas: {codes.count(200)} of 20 answered (burst 10); budget "
        f"waves of 50 answered {answered}, spend ${spent:.3f} (bound "
        f"${BUDGET + RESERVATION:.3f}); a new key served by the other replica after "
        f"{seen_s:.2f} s, a disabled one refused after {refused_s:.2f} s"
    )
    assert time.monotonic() - t0 < 5.0 and refused_s <= 1.5


@pytest.mark.slow
def test_killing_a_replica_under_load_loses_no_acknowledged_feedback(
    pg: PgServer, replicas: tuple[GatewayProc, GatewayProc]
) -> None:
    a, b = replicas
    acked: list[str] = []  # feedback ids answered 200
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=10, headers=a.headers) as c:
            n = 0
            while not stop.is_set():
                gw = (a, b)[(i + n) % 2]
                n += 1
                try:
                    r = c.post(
                        gw.base_url + "/chat/completions", json={"model": "chat", "messages": MSG}
                    )
                    if r.status_code != 200:
                        continue
                    tid = r.headers["x-ownlm-trace-id"]
                    f = c.post(gw.base_url + "/feedback", json={"trace_id": tid, "thumbs": 1})
                except httpx.HTTPError:
                    continue  # the killed replica
                if f.status_code == 200:
                    acked.append(f.json()["id"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 40, 30, "40 acknowledged feedbacks")
    a.proc.send_signal(signal.SIGKILL)
    killed_at = len(acked)
    wait_for(lambda: len(acked) >= killed_at + 40, 30, "40 more on the surviving replica")
    stop.set()
    for t in threads:
        t.join(30)
    wait_for(b.traces_settled, 30, "replica b's traces written")
    stored = {r[0] for r in pg.sql("SELECT feedback_id FROM feedback")}
    missing = [f for f in acked if f not in stored]
    print(
        f"\nkill -9 of one of 2 replicas: {len(acked)} feedback acknowledged ({killed_at} "
        f"before the kill), {len(missing)} missing"
    )
    assert not missing
