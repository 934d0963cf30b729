"""20 clients leave never-ending streams after the first chunk (subprocess gateway, PostgreSQL).

The gateway must close each upstream stream at once (the mock counts the ones it is still
writing: within 1 s of the last client leaving, none), store each trace as a 499, and keep
nothing of the 20 streams: its resident memory comes back within 10 MB of what it was before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.faults.conftest import GatewayProc, PgServer, gateway_config, wait_for
from tests.gateway.conftest import MockUpstream

CLIENTS = 20
ENDLESS = {"model": "endless", "stream": True, "messages": [{"role": "user", "content": "go"}]}


def warm_up(gw: GatewayProc, n: int = 5) -> None:
    """A few normal requests, whole and streamed, so first-use allocations come before."""
    with httpx.Client(timeout=30, headers=gw.headers) as c:
        for i in range(n):
            msgs = [{"role": "user", "content": f"warm {i}"}]
            r = c.post(gw.base_url + "/chat/completions", json={"model": "chat", "messages": msgs})
            assert r.status_code == 200, r.text
            body = {"model": "chat", "messages": msgs, "stream": True}
            with c.stream("POST", gw.base_url + "/chat/completions", json=body) as s:
                assert s.status_code == 200
                assert "[DONE]" in s.read().decode()


def settled_rss_kb(gw: GatewayProc) -> int:
    """RSS once the writer has nothing left to do, read a few times a short while apart (the
    smallest: a sample may land while a batch is being built)."""
    wait_for(gw.traces_settled, 30, "the writer has nothing queued")
    samples = []
    for _ in range(5):
        time.sleep(0.2)
        samples.append(gw.rss_kb())
    return min(samples)


def test_twenty_clients_leaving_endless_streams_close_their_upstreams_and_free_memory(
    pg: PgServer,
    mock_upstream: MockUpstream,
    start_gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    gw = start_gateway(gateway_config(mock_upstream.base_url, pg.url, tmp_path))
    wait_for(lambda: mock_upstream.open_streams == 0, 10, "no mock stream open before")
    warm_up(gw)
    rss_before = settled_rss_kb(gw)
    peak: list[int] = []  # the mock's open streams when all 20 clients have their first chunk
    opened = threading.Barrier(CLIENTS + 1, action=lambda: peak.append(mock_upstream.open_streams))
    left_at: list[float] = []
    ids: list[str] = []
    failures: list[str] = []

    def client() -> None:
        try:
            with (
                httpx.Client(timeout=30, headers=gw.headers) as c,
                c.stream("POST", gw.base_url + "/chat/completions", json=ENDLESS) as resp,
            ):
                assert resp.status_code == 200, resp.status_code
                ids.append(resp.headers["x-ownlm-trace-id"])
                lines = resp.iter_lines()  # kept: a dropped line iterator closes the stream
                first = next(line for line in lines if line)
                assert first.startswith("data: "), first
                opened.wait(60)  # all 20 streams open at once, then all leave
            left_at.append(time.monotonic())
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            failures.append(repr(err))
            opened.abort()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    opened.wait(60)
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    open_at_peak = peak[0]
    wait_for(
        lambda: mock_upstream.open_streams == 0,
        30,
        "the mock's endless streams all closed",
        every_s=0.01,
    )
    closed_s = time.monotonic() - max(left_at)  # from the last client's leaving
    rss_after = settled_rss_kb(gw)
    rows = pg.sql("SELECT trace_id, status, error FROM traces WHERE alias = 'endless'")
    statuses = {tid: (status, error) for tid, status, error in rows}
    grown_mb = (rss_after - rss_before) / 1024
    print(
        f"\n{CLIENTS} endless streams ({open_at_peak} open at the peak): upstreams all closed "
        f"{closed_s:.2f} s after the last client left; RSS before {rss_before / 1024:.1f} MB, "
        f"after {rss_after / 1024:.1f} MB ({grown_mb:+.1f} MB); stored as "
        f"{sorted({s for s, _ in statuses.values()})}"
    )
    assert open_at_peak == CLIENTS, open_at_peak
    assert closed_s < 1.0, closed_s
    assert grown_mb < 10.0, grown_mb
    assert sorted(statuses) == sorted(ids), (len(statuses), len(ids))
    assert all(
        st == (499, "the client disconnected before the stream ended") for st in statuses.values()
    ), statuses
