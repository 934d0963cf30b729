"""Streams the client leaves, or that never end: the gateway stops reading the upstream and closes
it, and the trace says what happened (status 499 or 504, never a 200 the export would train on)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.server import build_app, serve_gateway_in_thread
from tests.gateway.conftest import MockUpstream, RunningGateway
from tests.store.test_spill import wait_until

BODY = {"model": "endless", "stream": True, "messages": [{"role": "user", "content": "go"}]}


def test_clients_that_leave_a_never_ending_stream_close_its_upstream(
    gateway: RunningGateway, mock_upstream: MockUpstream
) -> None:
    headers = {"authorization": f"Bearer {gateway.user_key}"}
    ids = []
    for _ in range(5):
        with (
            httpx.Client(timeout=10) as c,
            c.stream("POST", gateway.base_url + "/chat/completions", json=BODY, headers=headers)
        as resp):  # fmt: skip
            assert resp.status_code == 200
            ids.append(resp.headers["x-ownlm-trace-id"])
            events = (line for line in resp.iter_lines() if line)
            for _ in range(3):
                assert next(events).startswith("data: ")
        # the client is gone: the gateway must stop reading and close its upstream
    t0 = time.monotonic()
    wait_until(lambda: mock_upstream.open_streams == 0, timeout_s=5)
    closed_s = time.monotonic() - t0
    assert closed_s < 1.0, closed_s
    gw = gateway.app.app
    gw.writer.flush()
    for tid in ids:
        tr = gw.store.get_trace(tid)
        assert tr is not None and tr.status == 499
        assert tr.error == "the client disconnected before the stream ended"


def test_a_stream_past_its_deadline_is_cut_off(
    config_for: Callable[..., GatewayConfig], mock_upstream: MockUpstream, tmp_path: Any
) -> None:
    cfg = config_for(f"sqlite:///{tmp_path}/d.db", stream_deadline_s=0.5)
    app = build_app(cfg)
    server, thread = serve_gateway_in_thread(app, cfg, timeout_s=20)
    try:
        t0 = time.monotonic()
        with httpx.Client(timeout=10) as c:
            resp = c.post(
                f"http://127.0.0.1:{cfg.port}/v1/chat/completions",
                json=BODY,
                headers={"authorization": "Bearer sk-test-user"},
            )
        took = time.monotonic() - t0
        assert resp.status_code == 200 and 0.5 <= took < 3.0, took
        assert resp.text.count("data: ") > 5  # what came before the cut was passed on
        wait_until(lambda: mock_upstream.open_streams == 0, timeout_s=5)
        gw = app.app
        gw.writer.flush()
        tr = gw.store.get_trace(resp.headers["x-ownlm-trace-id"])
        assert tr is not None and tr.status == 504 and "stream_deadline_s" in (tr.error or "")
    finally:
        server.should_exit = True
        thread.join(20)
