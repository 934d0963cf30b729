"""OpenAIHTTPUpstream against a small aiohttp server on loopback: what it sends, whole replies of
any status, timeouts and connect errors as UpstreamUnavailable (504/502, message naming the
upstream), streams (raw bytes, a stall, a cut, closing early), the pool bound, close()."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from ownlm.errors import ConfigError
from ownlm.gateway.config import UpstreamConfig
from ownlm.gateway.upstream import OpenAIHTTPUpstream, UpstreamResponse, UpstreamUnavailable
from tests.gateway.conftest import free_port

SSE = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]


@dataclass
class Seen:
    """What the server received, and the streams it is still writing."""

    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    open_streams: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


SEEN = web.AppKey("seen", Seen)


async def _stream(request: web.Request, chunks: list[bytes], gap_s: float) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for chunk in chunks:
        await resp.write(chunk)
        await asyncio.sleep(gap_s)
    await resp.write_eof()
    return resp


async def _chat(request: web.Request) -> web.StreamResponse:
    seen = request.app[SEEN]
    body = await request.json()
    seen.requests.append((request.path, dict(request.headers), body))
    model = body["model"]
    if model == "ok":
        return web.json_response({"echo": body})
    if model.startswith("status-"):
        status = int(model.removeprefix("status-"))
        return web.json_response({"error": {"message": f"mock {status}"}}, status=status)
    if model == "text":
        return web.Response(text="plain words", content_type="text/plain")
    if model == "slow":  # longer than the tests' timeout_s before any byte
        await asyncio.sleep(2.0)
        return web.json_response({})
    if model == "busy":  # overlapping requests show in max_in_flight
        seen.in_flight += 1
        seen.max_in_flight = max(seen.max_in_flight, seen.in_flight)
        await asyncio.sleep(0.2)
        seen.in_flight -= 1
        return web.json_response({})
    if model == "sse":
        return await _stream(request, SSE, 0.0)
    if model == "sse-trickle":  # 6 chunks 0.1 s apart: longer in all than timeout_s, never idle
        return await _stream(request, [b"data: {}\n\n"] * 6, 0.1)
    if model == "sse-stall":  # one chunk, then silence longer than timeout_s
        return await _stream(request, [SSE[0], SSE[1]], 2.0)
    if model == "sse-cut":  # one chunk, then the connection drops
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(SSE[0])
        assert request.transport is not None
        request.transport.abort()
        return resp
    if model == "truncated":  # a whole reply whose connection drops before its last byte
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b'{"id": "x"')
        assert request.transport is not None
        request.transport.abort()
        return resp
    if model == "sse-endless":
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        seen.open_streams += 1
        try:
            while True:
                await resp.write(b"data: {}\n\n")
                await asyncio.sleep(0.01)
        finally:  # the client closed the connection: the write failed or we were cancelled
            seen.open_streams -= 1
    raise AssertionError(f"unknown mock model {model}")


async def _embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[SEEN].requests.append((request.path, dict(request.headers), body))
    return web.json_response({"object": "list", "data": [{"embedding": [0.5]}]})


@contextlib.asynccontextmanager
async def mock_server() -> AsyncIterator[tuple[str, Seen]]:
    """The mock on a free loopback port; yields its base URL (ending in /v1) and what it saw."""
    app = web.Application()
    seen = app[SEEN] = Seen()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/embeddings", _embeddings)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


def run(test: Callable[[OpenAIHTTPUpstream, Seen], Awaitable[None]], **cfg: Any) -> None:
    """Start the mock and an upstream on it (timeout_s 0.5 unless given), run `test`, close."""

    async def main() -> None:
        async with mock_server() as (url, seen):
            up = OpenAIHTTPUpstream(
                "mock", UpstreamConfig(base_url=url, **{"timeout_s": 0.5, **cfg})
            )
            await up.start()
            try:
                await test(up, seen)
            finally:
                await up.close()

    asyncio.run(main())


async def whole(up: OpenAIHTTPUpstream, model: str) -> UpstreamResponse:
    reply = await up.chat({"model": model, "messages": []}, stream=False)
    assert isinstance(reply, UpstreamResponse)
    return reply


# -- requests and whole replies ----------------------------------------------------------------


def test_posts_the_body_as_json_with_the_key_and_returns_the_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", "sk-upstream")

    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        body = {"model": "ok", "messages": [{"role": "user", "content": "hé"}], "x_extra": [1]}
        reply = await up.chat(body, stream=False)
        assert isinstance(reply, UpstreamResponse) and reply.status == 200
        assert json.loads(reply.body) == {"echo": body}  # unknown fields pass through
        assert reply.content_type == "application/json"
        emb = await up.embeddings({"model": "e", "input": "hi"})
        assert (emb.status, json.loads(emb.body)["data"]) == (200, [{"embedding": [0.5]}])
        paths = [path for path, _, _ in seen.requests]
        assert paths == ["/v1/chat/completions", "/v1/embeddings"]  # the base's trailing / too
        for _, headers, _ in seen.requests:
            assert headers["Authorization"] == "Bearer sk-upstream"
            assert headers["Content-Type"] == "application/json"

    run(test, api_key_env="MOCK_UPSTREAM_KEY")


def test_a_trailing_slash_on_the_base_url_is_not_doubled() -> None:
    async def main() -> None:
        async with mock_server() as (url, seen):
            up = OpenAIHTTPUpstream("mock", UpstreamConfig(base_url=url + "/"))
            await up.start()
            try:
                assert (await whole(up, "ok")).status == 200
            finally:
                await up.close()
        assert [path for path, _, _ in seen.requests] == ["/v1/chat/completions"]

    asyncio.run(main())


def test_without_a_key_env_no_authorization_is_sent() -> None:
    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        await whole(up, "ok")
        assert "Authorization" not in seen.requests[0][1]

    run(test)


def test_a_missing_key_env_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOCK_UNSET_KEY", raising=False)
    cfg = UpstreamConfig(base_url="http://127.0.0.1:9/v1", api_key_env="MOCK_UNSET_KEY")
    with pytest.raises(ConfigError, match=r"upstreams\.paid\.api_key_env: .* MOCK_UNSET_KEY is"):
        OpenAIHTTPUpstream("paid", cfg)
    monkeypatch.setenv("MOCK_UNSET_KEY", "")  # set but empty counts as not set
    with pytest.raises(ConfigError, match="MOCK_UNSET_KEY is not set"):
        OpenAIHTTPUpstream("paid", cfg)


def test_error_statuses_are_replies_not_exceptions() -> None:
    """The caller decides on retries and fallbacks: a 4xx or 5xx comes back as it was sent."""

    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        for status in (400, 429, 500, 503):
            reply = await whole(up, f"status-{status}")
            assert reply.status == status
            assert json.loads(reply.body) == {"error": {"message": f"mock {status}"}}
        text = await whole(up, "text")
        assert (text.body, text.content_type) == (b"plain words", "text/plain")
        # a streamed request the upstream refuses is a whole reply too, not a stream
        refused = await up.chat({"model": "status-400"}, stream=True)
        assert isinstance(refused, UpstreamResponse) and refused.status == 400

    run(test)


# -- timeouts and connection failures ----------------------------------------------------------


def test_no_answer_within_timeout_s_is_a_504_naming_the_upstream() -> None:
    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        loop = asyncio.get_running_loop()
        for stream in (False, True):  # a stream must start (send its head) within timeout_s too
            t0 = loop.time()
            with pytest.raises(UpstreamUnavailable) as info:
                await up.chat({"model": "slow"}, stream=stream)
            assert 0.4 < loop.time() - t0 < 1.5, stream
            assert info.value.status == 504
            assert info.value.message == "upstream mock did not answer within 0.5 s"
            assert str(info.value) == info.value.message

    run(test)


def test_a_refused_connection_is_a_502_naming_the_upstream() -> None:
    port = free_port()  # nothing listens there

    async def main() -> None:
        up = OpenAIHTTPUpstream("gone", UpstreamConfig(base_url=f"http://127.0.0.1:{port}/v1"))
        await up.start()
        try:
            for stream in (False, True):
                with pytest.raises(UpstreamUnavailable) as info:
                    await up.chat({"model": "ok"}, stream=stream)
                assert info.value.status == 502
                assert info.value.message.startswith("upstream gone failed: Cannot connect to host")
                assert f"127.0.0.1:{port}" in info.value.message
            with pytest.raises(UpstreamUnavailable, match="upstream gone failed"):
                await up.embeddings({"model": "e", "input": "x"})
        finally:
            await up.close()

    asyncio.run(main())


# -- streams -----------------------------------------------------------------------------------


async def collect(stream: Any) -> bytes:
    return b"".join([chunk async for chunk in stream])


def test_a_stream_yields_the_raw_bytes_sent() -> None:
    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        stream = await up.chat({"model": "sse", "stream": True}, stream=True)
        assert not isinstance(stream, UpstreamResponse)
        assert await collect(stream) == b"".join(SSE)
        assert seen.requests[0][2]["stream"] is True

    run(test)


def test_a_stream_may_run_longer_than_timeout_s_while_chunks_keep_coming() -> None:
    """For a stream timeout_s bounds the wait between chunks, not the whole reply."""

    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stream = await up.chat({"model": "sse-trickle"}, stream=True)
        assert await collect(stream) == b"data: {}\n\n" * 6
        assert loop.time() - t0 > 0.5  # longer than timeout_s, in all

    run(test, timeout_s=0.3)


def test_a_stalled_stream_is_a_502_that_says_it_stalled() -> None:
    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        stream = await up.chat({"model": "sse-stall"}, stream=True)
        got: list[bytes] = []
        with pytest.raises(UpstreamUnavailable) as info:
            async for chunk in stream:
                got.append(chunk)
        assert b"".join(got) == SSE[0]
        assert info.value.status == 502
        assert info.value.message.startswith("upstream mock broke off the stream: ")
        assert "Timeout on reading data" in info.value.message  # the reason, not a bare colon

    run(test, timeout_s=0.3)


def test_a_dropped_connection_mid_reply_is_a_502() -> None:
    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        with pytest.raises(UpstreamUnavailable) as cut:
            await whole(up, "truncated")
        assert cut.value.status == 502
        assert cut.value.message.startswith("upstream mock failed: Response payload is not")
        stream = await up.chat({"model": "sse-cut"}, stream=True)
        with pytest.raises(UpstreamUnavailable) as info:
            await collect(stream)
        assert info.value.status == 502
        assert info.value.message.startswith("upstream mock broke off the stream: ")

    run(test)


def test_closing_a_stream_early_closes_the_upstream_connection() -> None:
    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        stream = await up.chat({"model": "sse-endless"}, stream=True)
        assert (await anext(aiter(stream))).startswith(b"data: {}\n\n")
        assert seen.open_streams == 1
        await stream.aclose()
        for _ in range(100):  # the server notices the closed socket at its next write
            if seen.open_streams == 0:
                break
            await asyncio.sleep(0.01)
        assert seen.open_streams == 0
        assert (await whole(up, "ok")).status == 200  # the upstream still serves

    run(test)


# -- the pool and closing ----------------------------------------------------------------------


def test_max_connections_bounds_requests_in_flight() -> None:
    async def test(up: OpenAIHTTPUpstream, seen: Seen) -> None:
        replies = await asyncio.gather(*(whole(up, "busy") for _ in range(4)))
        assert [r.status for r in replies] == [200] * 4
        assert seen.max_in_flight == 2

    run(test, max_connections=2)


def test_close_before_start_and_twice_is_harmless() -> None:
    async def main() -> None:
        up = OpenAIHTTPUpstream("mock", UpstreamConfig(base_url="http://127.0.0.1:9/v1"))
        await up.close()  # never started
        await up.start()
        await up.close()
        await up.close()

    asyncio.run(main())
