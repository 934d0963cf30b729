"""The request head is bounded before the app sees it: a 431 for huge headers, a 408 and a closed
socket for a client that trickles them (slowloris) or connects and says nothing."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.server import build_app, serve_gateway_in_thread

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture
def port(config_for: Callable[..., GatewayConfig], tmp_path: Any) -> Iterator[int]:
    cfg = config_for(f"sqlite:///{tmp_path}/h.db", header_timeout_s=0.5, max_header_bytes=8192)
    server, thread = serve_gateway_in_thread(build_app(cfg), cfg, timeout_s=20)
    yield cfg.port
    server.should_exit = True
    thread.join(20)


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_silent_connection_is_closed(port: int) -> None:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        got = answer(s)
    assert got.startswith(b"HTTP/1.1 408") and 0.4 < time.monotonic() - t0 < 3


def test_headers_trickled_byte_by_byte_are_cut_off(port: int) -> None:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(HEAD)
        for _ in range(20):  # 4 s of one byte every 0.2 s, if the server let it
            try:
                s.sendall(b"X")
            except OSError:
                break
            time.sleep(0.2)
            s.setblocking(False)
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
        got = answer(s)
    assert got.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 3


def test_oversized_headers_get_a_431(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(HEAD + b"x-big: " + b"a" * 100_000 + b"\r\n\r\n")
        got = answer(s)
    assert got.startswith(b"HTTP/1.1 431") and b"8192 bytes" in got


def test_keep_alive_requests_are_not_cut(port: int) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": "Bearer sk-test-user"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
        assert c.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
        time.sleep(1.0)  # idle between requests: longer than header_timeout_s, under keep-alive
        assert c.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
