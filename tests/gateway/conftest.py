"""Gateway fixtures: a mock OpenAI upstream on loopback and a running gateway in front of it.

The mock speaks the real wire format (aiohttp): whole and SSE-streamed chat completions (with
`stream_options.include_usage`), tool calls, embeddings and errors. What it does is chosen by
the upstream model name the gateway sends:

    mock-chat   answers "echo: <last user text>", usage 10 prompt + 5 completion tokens
    mock-tools  answers with a get_weather tool call
    mock-500    answers 500 (an upstream failure)
    mock-400    answers 400 (an upstream complaint about the request)
    mock-slow   sleeps 3 s (longer than the test upstream's timeout)
    mock-delay  answers like mock-chat after 0.2 s (requests that overlap)
    mock-endless streams a chunk every 10 ms and never ends (counted in open_streams)
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import socket
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn
from aiohttp import web

from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.loopback import serve_in_thread
from ownlm.gateway.server import build_app, serve_gateway_in_thread

USER_KEY = "sk-test-user"
ADMIN_KEY = "sk-test-admin"
LIMITED_KEY = "sk-test-limited"
BROKE_KEY = "sk-test-broke"


@pytest.fixture(autouse=True)
def _collect_test_clients() -> Iterator[None]:
    """Collect each gateway test's garbage when it ends. A test that leaves an HTTP client to the
    garbage collector (an openai client, a urllib response) would otherwise warn about its
    unclosed socket inside whichever later test triggers the collection, and fail that one
    (warnings are errors here)."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _completion(model: str, message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    obj = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


@dataclass
class MockUpstream:
    """The running mock: its base URL and what it received."""

    base_url: str
    hits: Counter[str] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    open_streams: int = 0  # mock-endless streams still being written


MOCK = web.AppKey("mock", MockUpstream)


async def _chat(request: web.Request) -> web.StreamResponse:
    mock = request.app[MOCK]
    body = await request.json()
    mock.bodies.append(body)
    model = body["model"]
    mock.hits[model] += 1
    if model == "mock-500":
        err = {"error": {"message": "mock upstream exploded", "type": "server_error"}}
        return web.json_response(err, status=500)
    if model == "mock-400":
        err = {"error": {"message": "mock: bad temperature", "type": "invalid_request_error"}}
        return web.json_response(err, status=400)
    if model == "mock-slow":
        await asyncio.sleep(3)
    if model == "mock-delay":
        await asyncio.sleep(0.2)
    if model == "mock-endless":
        return await _endless(request, mock, model)
    text = "echo: " + str(body["messages"][-1].get("content"))
    tools = model == "mock-tools"
    if not body.get("stream"):
        if tools:
            msg = {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
            return web.json_response(_completion(model, msg, "tool_calls"))
        return web.json_response(_completion(model, {"role": "assistant", "content": text}, "stop"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(_chunk(model, {"role": "assistant", "content": ""}))
    if tools:
        head = {**TOOL_CALL, "index": 0, "function": {"name": "get_weather", "arguments": ""}}
        await resp.write(_chunk(model, {"tool_calls": [head]}))
        for part in ('{"city":', ' "Paris"}'):
            await resp.write(
                _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            )
        await resp.write(_chunk(model, {}, "tool_calls"))
    else:
        for word in text.split(" "):
            await resp.write(_chunk(model, {"content": word + " "}))
        await resp.write(_chunk(model, {}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _endless(request: web.Request, mock: MockUpstream, model: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    mock.open_streams += 1
    try:
        while True:
            await resp.write(_chunk(model, {"content": "more "}))
            await asyncio.sleep(0.01)
    finally:  # the gateway closed the connection: the write failed or the handler was cancelled
        mock.open_streams -= 1


async def _embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[MOCK].hits[body["model"]] += 1
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [
        {"object": "embedding", "index": i, "embedding": [0.5, -0.5]} for i in range(len(inputs))
    ]
    usage = {"prompt_tokens": 3, "total_tokens": 3}
    return web.json_response(
        {"object": "list", "data": data, "model": body["model"], "usage": usage}
    )


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[MockUpstream]:
    """The mock upstream, served from a thread for the whole session."""
    port = free_port()
    mock = MockUpstream(f"http://127.0.0.1:{port}/v1")
    app = web.Application()
    app[MOCK] = mock
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/embeddings", _embeddings)
    with serve_in_thread(app, port):
        yield mock


def gateway_config(upstream_url: str, store_url: str, **overrides: Any) -> GatewayConfig:
    """A config with the mock upstream, models for each mock behaviour and test keys."""
    data: dict[str, Any] = {
        "port": 0,
        "store_url": store_url,
        "flush_interval_ms": 20,
        "admin_key_sha256": sha(ADMIN_KEY),
        "upstreams": {
            "mock": {
                "base_url": upstream_url,
                "timeout_s": 1.0,
                "max_retries": 1,
                "retry_backoff_s": 0.0,
            },
            "dead": {"base_url": "http://127.0.0.1:9/v1", "max_retries": 0},
        },
        "models": {
            "chat": {
                "upstream": "mock",
                "model": "mock-chat",
                "price_in_usd_per_mtok": 1000.0,
                "price_out_usd_per_mtok": 2000.0,
            },
            "chat-pro": {"upstream": "mock", "model": "mock-chat"},
            "endless": {"upstream": "mock", "model": "mock-endless"},
            "delayed": {
                "upstream": "mock",
                "model": "mock-delay",
                "price_in_usd_per_mtok": 1000.0,
                "price_out_usd_per_mtok": 2000.0,
            },
            "tools": {"upstream": "mock", "model": "mock-tools"},
            "failing": {"upstream": "mock", "model": "mock-500"},
            "broken": {"upstream": "mock", "model": "mock-500", "fallbacks": ["chat"]},
            "picky": {"upstream": "mock", "model": "mock-400"},
            "slow": {"upstream": "mock", "model": "mock-slow"},
            "gone": {"upstream": "dead", "fallbacks": ["chat"]},
            "gone-alone": {"upstream": "dead"},
            "cached": {"upstream": "mock", "model": "mock-chat", "cache": True},
            "emb": {"upstream": "mock", "model": "mock-emb"},
        },
        "router": {
            "experiments": {"ab": {"arms": {"chat": 0.5, "chat-pro": 0.5}}},
            "routes": {
                "ab-test": {
                    "default": "chat",
                    "policies": [{"kind": "experiment", "experiment": "ab"}],
                },
                "auto": {
                    "default": "chat",
                    "policies": [
                        {"kind": "rule", "when": {"tags": {"tier": ["pro"]}}, "variant": "chat-pro"}
                    ],
                },
            },
        },
        "keys": [
            {"name": "user", "key_sha256": sha(USER_KEY), "rate_per_s": 10000, "burst": 10000},
            {"name": "limited", "key_sha256": sha(LIMITED_KEY), "rate_per_s": 0.01, "burst": 2},
            {"name": "broke", "key_sha256": sha(BROKE_KEY), "budget_usd": 0.02},
        ],
    }
    data.update(overrides)
    return GatewayConfig.model_validate(data)


@dataclass
class RunningGateway:
    """A gateway serving in a thread; `app.app` is the Gateway (inside its ErrorShield)."""

    base_url: str  # ends in /v1
    root_url: str
    server: uvicorn.Server
    app: Any
    mock: MockUpstream
    user_key: str = USER_KEY
    admin_key: str = ADMIN_KEY
    limited_key: str = LIMITED_KEY
    broke_key: str = BROKE_KEY


@pytest.fixture
def gateway(mock_upstream: MockUpstream, tmp_path: Any) -> Iterator[RunningGateway]:
    """A gateway on a free loopback port (uvicorn in a thread), SQLite store in tmp_path."""
    cfg = gateway_config(mock_upstream.base_url, f"sqlite:///{tmp_path}/gw.db", port=free_port())
    app = build_app(cfg)
    server, thread = serve_gateway_in_thread(app, cfg, timeout_s=20)
    root = f"http://127.0.0.1:{cfg.port}"
    yield RunningGateway(root + "/v1", root, server, app, mock_upstream)
    server.should_exit = True
    thread.join(20)


@pytest.fixture
def config_for(mock_upstream: MockUpstream) -> Callable[..., GatewayConfig]:
    """Build a gateway config on the mock upstream with a free port: config_for(store_url, **kw)."""

    def build(store_url: str, **overrides: Any) -> GatewayConfig:
        return gateway_config(mock_upstream.base_url, store_url, port=free_port(), **overrides)

    return build
