"""PostgreSQL goes away under a running `ownlm serve`, then comes back.

The gateway keeps answering while the store is down (traces wait in the spill, /health says
degraded), and once the server is back every trace whose reply a client got is stored exactly
once. The deployment follower, which reads the store every `deploy_refresh_s`, fails during the
outage and applies a deployment written after it within a few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ownlm.store.registry import Registry
from ownlm.store.schema import Deployment
from ownlm.store.trace_store import TraceStore
from tests.faults.conftest import GatewayProc, PgServer, gateway_config, wait_for
from tests.gateway.conftest import MockUpstream

CLIENTS = 8
OUTAGE_S = 10.0
AFTER_S = 3.0  # load kept on after the server is back


class Load:
    """Client threads sending chat completions in a loop until stopped."""

    def __init__(self, gw: GatewayProc, n: int) -> None:
        self.gw = gw
        self.acked: list[tuple[str, float]] = []  # (trace id, when the 200 arrived)
        self.failures: list[str] = []  # anything but a 200 with a trace id
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,)) for i in range(n)]

    def client(self, i: int) -> None:
        body = {"model": "chat", "messages": [{"role": "user", "content": f"client {i}"}]}
        try:
            with httpx.Client(timeout=30, headers=self.gw.headers) as c:
                while not self.stop.is_set():
                    try:
                        r = c.post(self.gw.base_url + "/chat/completions", json=body)
                    except httpx.HTTPError as err:
                        self.failures.append(f"{type(err).__name__}: {err}")
                        continue
                    tid = r.headers.get("x-ownlm-trace-id")
                    if r.status_code == 200 and tid:
                        self.acked.append((tid, time.monotonic()))
                    else:
                        self.failures.append(f"{r.status_code} {tid}: {r.text[:200]}")
        except Exception as err:  # noqa: BLE001 - a dying thread must show up in the assertion
            self.failures.append(f"client {i} died: {err!r}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


@pytest.mark.slow
def test_acknowledged_traces_survive_a_postgres_stop_under_load(
    pg: PgServer,
    mock_upstream: MockUpstream,
    start_gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    gw = start_gateway(gateway_config(mock_upstream.base_url, pg.url, tmp_path))
    assert gw.health()["status"] == "ok"
    samples: list[tuple[float, str, int]] = []  # (time, status, spilled) read during the outage
    with Load(gw, CLIENTS) as load:
        wait_for(lambda: len(load.acked) >= 50, 30, "50 replies before the outage")
        pg.stop("fast")
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < OUTAGE_S:
            h = gw.health()
            samples.append((time.monotonic(), h["status"], h["traces"].get("spilled", 0)))
            time.sleep(0.25)
        during = [tid for tid, at in load.acked if at >= stopped_at]
        pg.start()
        started_at = time.monotonic()
        replayed_s = None
        while time.monotonic() - started_at < AFTER_S:
            if replayed_s is None and not gw.health()["traces"].get("spilled"):
                replayed_s = time.monotonic() - started_at
            time.sleep(0.1)
    settle_s = wait_for(gw.traces_settled, 60, "/health spilled == 0 and queued == 0")
    if replayed_s is None:
        replayed_s = AFTER_S + settle_s
    # the deployment follower backs off while the store fails (doubling, up to 30 s): /health
    # says degraded until its next run succeeds
    wait_for(lambda: gw.health()["status"] == "ok", 45, "/health ok again")
    ok_s = time.monotonic() - started_at
    h = gw.health()
    stored = pg.sql("SELECT trace_id, count(*) FROM traces GROUP BY trace_id")
    counts = {tid: n for tid, n in stored}
    acked = [tid for tid, _ in load.acked]
    missing = [tid for tid in acked if tid not in counts]
    twice = {tid: n for tid, n in counts.items() if n != 1}
    max_spilled = max((s for _, _, s in samples), default=0)
    print(
        f"\nacknowledged {len(acked)} (during the {OUTAGE_S:g} s outage: {len(during)}), "
        f"stored {len(counts)}, missing {len(missing)}, max spilled {max_spilled}, "
        f"spill replayed {replayed_s:.1f} s after the restart, /health ok after {ok_s:.1f} s, "
        f"non-200 {len(load.failures)}, health {h['status']}, "
        f"written {h['traces']['written']}, failed {h['traces']['failed']}"
    )
    assert not load.failures, load.failures[:5]
    assert len(during) >= 20, f"too little load during the outage ({len(during)} replies)"
    degraded = [s for _, status, s in samples if status == "degraded" and s > 0]
    assert degraded, f"/health never said degraded with spilled > 0 in the outage: {samples[:8]}"
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged traces not stored"
    assert not twice, f"traces stored more than once: {list(twice.items())[:5]}"
    assert len(set(acked)) == len(acked), "a trace id was handed out twice"
    assert h["traces"]["failed"] == 0 and h["traces"]["dropped"] == 0, h


def served_model(gw: GatewayProc, alias: str) -> str:
    """The upstream model name that answered a request to `alias` (the mock echoes it)."""
    body = {"model": alias, "messages": [{"role": "user", "content": "which?"}]}
    r = httpx.post(gw.base_url + "/chat/completions", json=body, headers=gw.headers, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["model"])


def test_the_deployment_follower_applies_a_deployment_written_after_an_outage(
    pg: PgServer,
    mock_upstream: MockUpstream,
    start_gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    base = gateway_config(mock_upstream.base_url, pg.url, tmp_path)
    cfg = gateway_config(
        mock_upstream.base_url,
        pg.url,
        tmp_path,
        deploy_refresh_s=0.5,
        models={**base["models"], "chat-b": {"upstream": "mock", "model": "mock-chat-b"}},
        router={"routes": {"app": {"default": "chat"}}},
    )
    gw = start_gateway(cfg)
    assert served_model(gw, "app") == "mock-chat"
    assert gw.health()["tasks"]["deployments"]["errors"] == 0
    pg.stop("fast")
    stopped_at = time.monotonic()
    wait_for(
        lambda: gw.health()["tasks"]["deployments"]["last_error"] is not None,
        15,
        "/health tasks.deployments.last_error set while the store is down",
    )
    outage = gw.health()
    while time.monotonic() - stopped_at < 5.0:
        time.sleep(0.1)
    pg.start()
    store = TraceStore(pg.url)
    try:
        dep = Registry(store).deploy(
            Deployment(
                alias="app", arms={"chat-b": 1.0}, incumbent="chat", reason="after the outage"
            )
        )
    finally:
        store.close()
    deployed_at = time.monotonic()
    applied_s = wait_for(
        lambda: served_model(gw, "app") == "mock-chat-b",
        30,
        f"deployment #{dep.seq} applied (requests to 'app' answered by chat-b)",
        every_s=0.1,
    )
    wait_for(lambda: gw.health()["status"] == "ok", 30, "/health ok again")
    task = gw.health()["tasks"]["deployments"]
    print(
        f"\ndeployment #{dep.seq} applied {applied_s:.1f} s after it was written "
        f"(PG down {deployed_at - stopped_at:.1f} s); follower errors in the outage: "
        f"{outage['tasks']['deployments']['errors']} "
        f"({outage['tasks']['deployments']['last_error']!r:.80}), after: {task}"
    )
    assert applied_s < 10.0, applied_s
    assert task["last_error"] is None and task["errors"] >= 1, task
    models = httpx.get(gw.base_url + "/models", headers=gw.headers, timeout=30).json()
    assert "app" in {m["id"] for m in models["data"]}
