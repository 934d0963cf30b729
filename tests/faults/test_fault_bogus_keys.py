"""100 bogus 1 MB bearer tokens against a subprocess gateway (SQLite: no store work involved).

With the default limits a 1 MB token never reaches the app: the request head passes
`max_header_bytes` and gets a 431 (ownlm/gateway/http_limits.py). With the head limit raised
above the token, the app refuses it with a 401 (`max_authorization_bytes`, or, raised too, the
key ring's lookup of an unknown secret). Either way each is refused and the gateway keeps
nothing of them: its resident memory grows by less than 5 MB over the 100.
"""

from __future__ import annotations

import re
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.conftest import GatewayProc, gateway_config, wait_for
from tests.gateway.conftest import MockUpstream

TOKENS = 100
TOKEN_BYTES = 1024 * 1024
BODY = b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}'


def send_bogus(port: int, n: int) -> tuple[str, bytes]:
    """POST with `Authorization: Bearer <1 MB>`: the status the gateway answered (or what
    happened instead) and the whole answer. The head is sent in pieces, and the client stops
    sending as soon as the gateway has answered (as a browser or curl does), so a 431 sent
    mid-head is read, not lost to the reset the kernel sends for the unread rest."""
    token = (b"sk-bogus-%d-" % n).ljust(TOKEN_BYTES, b"x")
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(BODY)
        + b"Authorization: Bearer "
        + token
        + b"\r\nConnection: close\r\n\r\n"
    )
    data = head + BODY
    got = b""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            while sent < len(data) and not select.select([s], [], [], 0)[0]:
                sent += s.send(data[sent : sent + 65536])  # until all is sent or it answered
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway closed the connection: read what it said before that
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            if not got:
                return f"reset after {sent} bytes sent, no answer", got
        except TimeoutError:
            return f"timed out after {sent} bytes sent", got
    m = re.match(rb"HTTP/1\.1 (\d{3})", got)
    return (m.group(1).decode() if m else f"no status line: {got[:80]!r}"), got


def warm_up(gw: GatewayProc) -> None:
    with httpx.Client(timeout=30, headers=gw.headers) as c:
        for i in range(5):
            body = {"model": "chat", "messages": [{"role": "user", "content": f"warm {i}"}]}
            assert c.post(gw.base_url + "/chat/completions", json=body).status_code == 200
            assert c.post(gw.base_url + "/chat/completions", json=body, headers={
                "authorization": f"Bearer sk-wrong-{i}"
            }).status_code == 401  # fmt: skip


def settled_rss_kb(gw: GatewayProc) -> int:
    wait_for(gw.traces_settled, 30, "the writer has nothing queued")
    samples = []
    for _ in range(5):
        time.sleep(0.2)
        samples.append(gw.rss_kb())
    return min(samples)


# limit -> (config overrides, the status expected, a phrase the answer must hold)
LIMITS: dict[str, tuple[dict[str, Any], str, bytes]] = {
    # the defaults: the head is refused by the protocol, before the app
    "head_limit": ({}, "431", b"request headers over 65536 bytes"),
    # the head may hold the token; the app refuses the Authorization header by its size, unread
    "authorization_limit": (
        {"max_header_bytes": 4 * TOKEN_BYTES},
        "401",
        b"(max_authorization_bytes)",
    ),
    # both raised: the key ring hashes each unknown secret, and must not memoise it
    "key_ring": (
        {"max_header_bytes": 4 * TOKEN_BYTES, "max_authorization_bytes": 2 * TOKEN_BYTES},
        "401",
        b"invalid API key ending in 'xxxx'",
    ),
}


@pytest.mark.parametrize("limit", list(LIMITS))
def test_a_hundred_bogus_one_megabyte_tokens_are_refused_and_leave_nothing(
    limit: str,
    mock_upstream: MockUpstream,
    start_gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    overrides, expected, phrase = LIMITS[limit]
    cfg = gateway_config(
        mock_upstream.base_url, f"sqlite:///{tmp_path}/gw.db", tmp_path, **overrides
    )
    gw = start_gateway(cfg)
    warm_up(gw)
    rss_before = settled_rss_kb(gw)
    t0 = time.monotonic()
    answers = [send_bogus(gw.port, i) for i in range(TOKENS)]
    outcomes = Counter(status for status, _ in answers)
    took = time.monotonic() - t0
    rss_after = settled_rss_kb(gw)
    grown_mb = (rss_after - rss_before) / 1024
    print(
        f"\n{limit}: {TOKENS} x 1 MB bogus tokens in {took:.1f} s -> {dict(outcomes)}; "
        f"RSS before {rss_before / 1024:.1f} MB, after {rss_after / 1024:.1f} MB "
        f"({grown_mb:+.2f} MB)"
    )
    assert outcomes == Counter({expected: TOKENS}), outcomes
    unexpected = [got[:300] for _, got in answers if phrase not in got]
    assert not unexpected, unexpected[:2]
    assert grown_mb < 5.0, grown_mb
    assert gw.proc.poll() is None
    with httpx.Client(timeout=30, headers=gw.headers) as c:  # still serving
        body = {"model": "chat", "messages": [{"role": "user", "content": "after"}]}
        assert c.post(gw.base_url + "/chat/completions", json=body).status_code == 200
