"""PostgreSQL hangs (SIGSTOP: connections stay open, no answer and no error ever comes).

A stopped server cannot cancel its own statements, so the gateway bounds its calls itself
(`store_timeout_s`): trace writes go to the spill after that long and feedback gets a 503 in
bounded time instead of blocking, the hang is logged and /health says degraded; once the
server runs again (SIGCONT) every acknowledged trace is stored exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import GatewayProc, PgServer, gateway_config, wait_for
from tests.gateway.conftest import MockUpstream

HANG_S = 10.0
STORE_TIMEOUT_S = 1.0
CLIENTS = 4


def cluster_pids(pg: PgServer) -> list[int]:
    """The postmaster and every process it started."""
    postmaster = int(Path(pg.data, "postmaster.pid").read_text().split()[0])
    out = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True)
    return [postmaster, *(int(p) for p in out.stdout.split())]


@pytest.mark.slow
def test_a_hung_postgres_bounds_feedback_and_loses_no_trace(
    pg: PgServer,
    mock_upstream: MockUpstream,
    start_gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    cfg = gateway_config(mock_upstream.base_url, pg.url, tmp_path, store_timeout_s=STORE_TIMEOUT_S)
    gw = start_gateway(cfg)
    acked: list[str] = []
    feedback: list[tuple[int, float, str]] = []  # (status, seconds, body) during the hang
    failures: list[str] = []
    hung = threading.Event()
    stop = threading.Event()

    def client(i: int) -> None:
        body = {"model": "chat", "messages": [{"role": "user", "content": f"client {i}"}]}
        with httpx.Client(timeout=60, headers=gw.headers) as c:
            while not stop.is_set():
                r = c.post(gw.base_url + "/chat/completions", json=body)
                tid = r.headers.get("x-ownlm-trace-id")
                if r.status_code != 200 or not tid:
                    failures.append(f"chat {r.status_code}: {r.text[:200]}")
                    continue
                acked.append(tid)
                t0 = time.monotonic()
                f = c.post(gw.base_url + "/feedback", json={"trace_id": tid, "thumbs": 1})
                if hung.is_set():
                    feedback.append((f.status_code, time.monotonic() - t0, f.text[:300]))
                elif f.status_code not in (200, 503):
                    failures.append(f"feedback {f.status_code}: {f.text[:200]}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    pids: list[int] = []
    try:
        wait_for(lambda: len(acked) >= 20, 30, "20 replies before the hang")
        pids = cluster_pids(pg)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        hung.set()
        hung_at = time.monotonic()
        degraded = None
        while time.monotonic() - hung_at < HANG_S:
            h = gw.health()
            why = str(h["traces"].get("store_error"))
            if h["status"] == "degraded" and "did not answer" in why:
                degraded = degraded or h
            time.sleep(0.25)
        during = len(acked)
    finally:
        for pid in reversed(pids):
            os.kill(pid, signal.SIGCONT)
        hung.clear()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(60)
    wait_for(gw.traces_settled, 60, "/health spilled == 0 and queued == 0")
    stored = dict(pg.sql("SELECT trace_id, count(*) FROM traces GROUP BY trace_id"))
    missing = [tid for tid in acked if tid not in stored]
    twice = [tid for tid, n in stored.items() if n != 1]
    slowest = max((s for _, s, _ in feedback), default=0.0)
    refused = [f for f in feedback if f[0] == 503]
    print(
        f"\nacknowledged {len(acked)} ({during} by the end of the {HANG_S:g} s hang), stored "
        f"{len(stored)}, missing {len(missing)}, twice {len(twice)}; feedback during the hang: "
        f"{len(feedback)}, 503 {len(refused)}, slowest {slowest:.2f} s "
        f"(store_timeout_s {STORE_TIMEOUT_S:g})"
    )
    assert not failures, failures[:5]
    assert degraded is not None, "/health never said degraded with 'did not answer'"
    assert refused and all("retry" in body for _, _, body in refused), feedback[:3]
    assert all(s == 200 or s == 503 for s, _, _ in feedback), feedback[:3]
    # flush of its trace + the spill wait + its own commit, each bounded by store_timeout_s
    assert slowest < 3 * STORE_TIMEOUT_S + 3.0, feedback
    assert not missing and not twice, (missing[:5], twice[:5])
    assert "did not answer" in gw.log_tail(200_000)
