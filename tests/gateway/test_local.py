"""The in-process local model behind the gateway, through the official openai client.

A tiny random Llama with the real SmolLM2 tokenizer stands in for the trained model; the
real SmolLM2 path is the same code with `model_path: smollm2-135m` (slow, not run here).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn

from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.local import LocalModelUpstream
from ownlm.gateway.server import build_app, uvicorn_config
from ownlm.models.tiny import tiny_model


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("local")
    cfg = GatewayConfig.model_validate(
        {
            "port": 0,
            "store_url": f"sqlite:///{tmp}/local.db",
            "require_keys": False,
            "flush_interval_ms": 20,
            "upstreams": {"own": {"kind": "local", "model_path": "unused-in-test"}},
            "models": {"own-model": {"upstream": "own"}},
        }
    )
    model, tokenizer = tiny_model(seed=0)
    upstream = LocalModelUpstream("own", cfg.upstreams["own"], model, tokenizer)
    app = build_app(cfg, {"own": upstream})
    server = uvicorn.Server(uvicorn_config(app, cfg))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", app.app  # type: ignore[attr-defined]
    server.should_exit = True
    thread.join(20)


@pytest.mark.slow  # ~12 s of CPU: torch + tokenizer load and sampling on a shared machine
def test_local_model_plain_and_streamed(local_gateway: tuple[str, Any]) -> None:
    url, gw = local_gateway
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    raw = client.chat.completions.with_raw_response.create(
        model="own-model", messages=msgs, max_tokens=6, temperature=0.0, n=2
    )
    out = raw.parse()
    assert (
        len(out.choices) == 2 and out.choices[0].message.content == out.choices[1].message.content
    )
    assert out.usage is not None and 1 <= out.usage.completion_tokens <= 12
    stream = client.chat.completions.create(
        model="own-model",
        messages=msgs,
        max_tokens=6,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content  # greedy: same answer
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == out.usage.prompt_tokens
    )
    gw.writer.flush()
    tr = gw.store.get_trace(raw.headers["x-ownlm-trace-id"])
    assert tr.upstream == "own" and tr.completion_tokens == out.usage.completion_tokens
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        client.chat.completions.create(
            model="own-model",
            messages=msgs,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )


def test_concurrent_requests_share_one_sampler_call(tiny: tuple[Any, Any]) -> None:
    import asyncio

    import orjson

    from ownlm.gateway.config import UpstreamConfig

    model, tokenizer = tiny
    up = LocalModelUpstream("own", UpstreamConfig(kind="local", model_path="x"), model, tokenizer)
    calls: list[int] = []
    complete = up._complete

    def counting(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append(len(bodies))
        return complete(bodies)

    up._complete = counting  # type: ignore[method-assign]

    def body(text: str, **kw: Any) -> dict[str, Any]:
        return {"model": "own", "messages": [{"role": "user", "content": text}], "max_tokens": 3,
                "temperature": 0.0, **kw}  # fmt: skip

    async def run() -> list[Any]:
        bodies = [body("a"), body("a longer prompt"), body("b"), body("c", max_tokens=2)]
        bodies.append(body("d", seed=7))
        return await asyncio.gather(*(up.chat(b, stream=False) for b in bodies))

    replies = [orjson.loads(r.body) for r in asyncio.run(run())]
    # all five are queued before the worker starts: the three that share settings go together,
    # the other max_tokens and the seeded one each run alone
    assert calls == [3, 1, 1]
    lengths = [r["usage"]["prompt_tokens"] for r in replies]
    assert lengths[1] > lengths[0]  # each reply counts its own prompt
    assert replies[3]["usage"]["completion_tokens"] <= 2
    assert all(r["choices"][0]["message"]["role"] == "assistant" for r in replies)
