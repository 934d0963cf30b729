"""One request with an oversized label among 30 good ones, all at once, on PostgreSQL.

The oversized one is refused when it arrives (400 naming the field); the other 30 share the
writer's batches with nothing the store would refuse, so every one of them is stored. Without
the check, the long `user` would reach PostgreSQL's varchar(200) and the batch would have to be
written again row by row (traces.quarantined in /health).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.faults.conftest import GatewayProc, PgServer, gateway_config, wait_for
from tests.gateway.conftest import MockUpstream

GOOD = 30


def good_request(i: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Labels of all kinds; every fifth at the limits (200 characters, some not ASCII)."""
    at_limit = i % 5 == 0
    user = ("ü" * 200) if at_limit else f"user-{i}"
    session = ("s" * 200) if at_limit else f"session-{i}"
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": f"good {i}"}],
        "user": user,
        "metadata": {"n": str(i), "long": "v" * 512 if at_limit else "short"},
    }
    return body, {"x-ownlm-session": session, "x-ownlm-tags": f"batch,t{i}"}


BAD = {
    "user": (
        {"model": "chat", "messages": [{"role": "user", "content": "bad"}], "user": "u" * 500},
        {},
    ),
    "x-ownlm-session": (
        {"model": "chat", "messages": [{"role": "user", "content": "bad"}]},
        {"x-ownlm-session": "s" * 300},
    ),
}


def test_one_oversized_label_is_refused_and_its_30_neighbours_are_stored(
    pg: PgServer,
    mock_upstream: MockUpstream,
    start_gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    # a long flush interval puts the concurrent requests into the same few batches
    gw = start_gateway(
        gateway_config(mock_upstream.base_url, pg.url, tmp_path, flush_interval_ms=200)
    )
    jobs: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        (f"good-{i}", *good_request(i)) for i in range(GOOD)
    ]
    jobs += [(f"bad-{field}", body, headers) for field, (body, headers) in BAD.items()]
    results: dict[str, httpx.Response | Exception] = {}
    barrier = threading.Barrier(len(jobs))

    def send(name: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        try:
            with httpx.Client(timeout=30) as c:
                barrier.wait(30)
                results[name] = c.post(
                    gw.base_url + "/chat/completions", json=body, headers={**gw.headers, **headers}
                )
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            results[name] = err

    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = {n: r for n, r in results.items() if isinstance(r, Exception)}
    assert not errors and len(results) == len(jobs), errors
    resp = {n: r for n, r in results.items() if isinstance(r, httpx.Response)}
    for field in BAD:
        r = resp[f"bad-{field}"]
        assert r.status_code == 400, (field, r.status_code, r.text)
        err = r.json()["error"]
        assert err["param"] == field and err["code"] == "label_too_long", err
        assert field in err["message"], err
    good = {n: r for n, r in resp.items() if n.startswith("good-")}
    refused = {n: (r.status_code, r.text[:200]) for n, r in good.items() if r.status_code != 200}
    assert not refused, refused
    ids = {n: r.headers["x-ownlm-trace-id"] for n, r in good.items()}
    wait_for(gw.traces_settled, 30, "the writer has nothing queued")
    rows = pg.sql('SELECT trace_id, "user", session FROM traces')
    stored = {tid: (user, session) for tid, user, session in rows}
    h = gw.health()["traces"]
    bad = ", ".join(f"{f} -> {resp['bad-' + f].status_code}" for f in BAD)
    print(
        f"\nsent {len(jobs)} at once: {len(good)} good answered 200, "
        f"{sum(tid in stored for tid in ids.values())} of them stored; "
        f"bad: {bad}; "
        f"quarantined {h['quarantined']}, failed {h['failed']}, stored rows {len(stored)}"
    )
    missing = [n for n, tid in ids.items() if tid not in stored]
    assert not missing, f"{len(missing)} good traces not stored: {missing}"
    for n, tid in ids.items():
        body, headers = good_request(int(n.split("-")[1]))
        assert stored[tid] == (body["user"], headers["x-ownlm-session"]), n
    assert h["quarantined"] == 0 and h["failed"] == 0 and h["dropped"] == 0, h
