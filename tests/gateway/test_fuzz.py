"""Property-based fuzzing of the request schema: any body gets a reply below 500, in error shape.

In-process ASGI calls (no sockets) against a gateway whose upstream is a stand-in that always
answers; the store is SQLite in a temporary directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.server import build_app
from ownlm.gateway.upstream import UpstreamResponse

KEY = "sk-fuzz"
REPLY = orjson.dumps(
    {"id": "x", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1}}
)


class FixedUpstream:
    """Answers every request with the same whole reply."""

    name = "fixed"

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def chat(self, body: dict[str, Any], *, stream: bool) -> UpstreamResponse:
        return UpstreamResponse(200, REPLY)

    async def embeddings(self, body: dict[str, Any]) -> UpstreamResponse:
        return UpstreamResponse(200, REPLY)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "model",
    "messages",
    "stream",
    "temperature",
    "top_p",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "tools",
    "response_format",
    "stream_options",
    "user",
    "metadata",
    "logit_bias",
]
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system"]) | json_values},
    optional={"content": st.text(max_size=10) | json_values},
)
bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["m", "unknown"]) | json_values,
        "messages": st.lists(message, max_size=3) | json_values,
    },
    optional={f: json_values for f in FIELDS[2:]},
)
feedback_bodies = st.fixed_dictionaries(
    {},
    optional={
        k: json_values | st.just("0" * 32)
        for k in ("trace_id", "thumbs", "score", "value", "comment", "user")
    },
)


async def call(app: Any, path: str, body: bytes, method: str = "POST") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    headers = [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")]
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    await app(scope, receive, send)
    status = sent[0]["status"]
    return status, b"".join(m.get("body", b"") for m in sent[1:])


def fuzz_config(tmp: str) -> GatewayConfig:
    """A gateway on a SQLite store in tmp, one model on FixedUpstream, one unlimited key."""
    return GatewayConfig.model_validate(
        {
            "store_url": f"sqlite:///{tmp}/fuzz.db",
            "upstreams": {"fixed": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": {"m": {"upstream": "fixed"}},
            "keys": [
                {
                    "name": "fuzz",
                    "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                    "rate_per_s": 1e9,
                    "burst": 10**9,
                }
            ],
        }
    )


def check_reply(status: int, payload: bytes) -> None:
    assert status < 500, payload
    if status >= 400:
        err = orjson.loads(payload)["error"]
        assert isinstance(err["message"], str) and err["message"]


def test_fuzzed_requests_never_5xx() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = fuzz_config(tmp)
        app = build_app(cfg, {"fixed": FixedUpstream()})
        gw = app.app  # type: ignore[attr-defined]
        loop = asyncio.new_event_loop()
        loop.run_until_complete(gw.start())
        try:

            @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
            @given(body=bodies)
            def chat(body: dict[str, Any]) -> None:
                check_reply(
                    *loop.run_until_complete(
                        call(app, "/v1/chat/completions", json.dumps(body).encode())
                    )
                )

            @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
            @given(raw=st.binary(max_size=40) | json_values.map(lambda v: json.dumps(v).encode()))
            def raw_bytes(raw: bytes) -> None:
                for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/feedback"):
                    check_reply(*loop.run_until_complete(call(app, path, raw)))

            @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
            @given(body=feedback_bodies)
            def feedback(body: dict[str, Any]) -> None:
                check_reply(
                    *loop.run_until_complete(call(app, "/v1/feedback", json.dumps(body).encode()))
                )

            chat()
            raw_bytes()
            feedback()
        finally:
            loop.run_until_complete(gw.stop())
            loop.close()
