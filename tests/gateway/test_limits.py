"""Limits at the gateway's edge: labels (user, session, tags, metadata), feedback ranges, JSON
depth, Authorization header size and the key cache, and /health's quarantine count.

Most tests call the ASGI app in process (no sockets) with a stand-in upstream that counts its
calls, so a refused request can be shown never to reach it; one test runs the real server and
mock upstream of conftest.py, where a body is re-encoded on its way upstream.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import math
import os
import tracemalloc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ownlm.config import validate_config
from ownlm.errors import ConfigError
from ownlm.gateway import admin, auth
from ownlm.gateway.auth import KeyRing
from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.server import build_app
from ownlm.gateway.tracing import PendingTrace
from ownlm.gateway.upstream import UpstreamResponse
from ownlm.gateway.wire import WireError, json_depth_over
from ownlm.router.policy import Decision
from ownlm.store.schema import ApiKey, Trace
from tests.gateway.test_compat import raw
from tests.gateway.test_fuzz import KEY, fuzz_config

MSG = [{"role": "user", "content": "hi"}]
COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)
EMBEDDING = orjson.dumps(
    {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]}
)


class CountingUpstream:
    """Answers every chat and embeddings call whole, and counts them."""

    name = "fixed"

    def __init__(self) -> None:
        self.calls = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def chat(self, body: dict[str, Any], *, stream: bool) -> UpstreamResponse:
        self.calls += 1
        return UpstreamResponse(200, COMPLETION)

    async def embeddings(self, body: dict[str, Any]) -> UpstreamResponse:
        self.calls += 1
        return UpstreamResponse(200, EMBEDDING)


class InProcess:
    """A started gateway called through ASGI on its own event loop."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.upstream = CountingUpstream()
        self.app = build_app(cfg, {"fixed": self.upstream})
        self.gw: Any = self.app.app  # type: ignore[attr-defined]
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.gw.start())

    def call(
        self,
        path: str,
        body: Any = None,
        headers: dict[str, str | None] | None = None,
        method: str = "POST",
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON reply) of one request with the fuzz key; a header given as None is
        left out."""
        data = (
            body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        )
        sent: list[dict[str, Any]] = []
        inbox = [{"type": "http.request", "body": data, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return inbox.pop(0) if inbox else {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        given: dict[str, str | None] = {
            "authorization": f"Bearer {KEY}",
            "content-type": "application/json",
        }
        given.update(headers or {})
        sent_headers = [(k.encode(), v.encode()) for k, v in given.items() if v is not None]
        scope = {"type": "http", "method": method, "path": path, "headers": sent_headers}
        self.loop.run_until_complete(self.app(scope, receive, send))
        payload = b"".join(m.get("body", b"") for m in sent[1:])
        return sent[0]["status"], orjson.loads(payload) if payload else {}

    def close(self) -> None:
        self.loop.run_until_complete(self.gw.stop())
        self.loop.close()


def start(tmp_path: Any, **overrides: Any) -> InProcess:
    """A gateway on fuzz_config (plus an admin key) with these config fields changed."""
    data = fuzz_config(str(tmp_path)).model_dump()
    data["admin_key_sha256"] = hashlib.sha256(b"sk-admin").hexdigest()
    data.update(overrides)
    return InProcess(GatewayConfig.model_validate(data))


@pytest.fixture
def gw(tmp_path: Any) -> Iterator[InProcess]:
    """A gateway with the default limits."""
    g = start(tmp_path)
    yield g
    g.close()


# -- labels ------------------------------------------------------------------------------------

ENDPOINTS = {
    "chat": ("/v1/chat/completions", {"model": "m", "messages": MSG}),
    "responses": ("/v1/responses", {"model": "m", "input": "hi"}),
    "embeddings": ("/v1/embeddings", {"model": "m", "input": "hi"}),
}
SEVENTEEN = ",".join(f"t{i}" for i in range(17))
# (body fields, headers, param named, start of the message)
BAD_LABELS = {
    "user": ({"user": "u" * 312}, {}, "user", "user is 312 characters; the limit is 200"),
    "user NUL": ({"user": "a\x00b"}, {}, "user", "user holds a NUL character"),
    "x-ownlm-user": ({}, {"x-ownlm-user": "u" * 201}, "x-ownlm-user", "header x-ownlm-user is 201"),
    "x-ownlm-session": (
        {},
        {"x-ownlm-session": "s" * 201},
        "x-ownlm-session",
        "header x-ownlm-session is 201 characters; the limit is 200",
    ),
    "metadata.session_id": (
        {"metadata": {"session_id": "s" * 201}},
        {},
        "metadata.session_id",
        "metadata.session_id is 201 characters; the limit is 200",
    ),
    "metadata keys": (
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        {},
        "metadata",
        "metadata has 17 keys",
    ),
    "metadata keys with headers": (
        {"metadata": {f"k{i}": "v" for i in range(16)}},
        {"x-ownlm-tag-team": "red"},
        "metadata",
        "metadata has 17 keys (body metadata plus x-ownlm-tag-* headers); the limit is 16",
    ),
    "metadata key": ({"metadata": {"k" * 65: "v"}}, {}, "metadata", "metadata key 'kkk"),
    "metadata value": (
        {"metadata": {"k": "v" * 513}},
        {},
        "metadata.k",
        "metadata.k is 513 characters; the limit is 512",
    ),
    "metadata value NUL": ({"metadata": {"k": "\x00"}}, {}, "metadata.k", "metadata.k holds a NUL"),
    "x-ownlm-tag-<key>": (
        {},
        {"x-ownlm-tag-team": "r" * 513},
        "x-ownlm-tag-team",
        "header x-ownlm-tag-team is 513 characters; the limit is 512",
    ),
    "tag count": ({}, {"x-ownlm-tags": SEVENTEEN}, "x-ownlm-tags", "the request has 17 tags"),
    "tag length": (
        {},
        {"x-ownlm-tags": "ok, " + "t" * 65},
        "x-ownlm-tags",
        "a tag in x-ownlm-tags is 65 characters; the limit is 64",
    ),
    "metadata.tags": (
        {"metadata": {"tags": "t" * 65}},
        {},
        "metadata.tags",
        "a tag in metadata.tags is 65 characters",
    ),
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_label_is_a_400_naming_it(gw: InProcess, endpoint: str, case: str) -> None:
    path, base = ENDPOINTS[endpoint]
    fields, headers, param, message = BAD_LABELS[case]
    status, reply = gw.call(path, {**base, **fields}, headers)
    assert status == 400, reply
    err = reply["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert err["message"].startswith(message), err["message"]
    assert gw.upstream.calls == 0  # refused on arrival, before any upstream call
    gw.gw.writer.flush()
    assert gw.gw.store.count_traces() == 0


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_labels_at_the_limits_are_stored(gw: InProcess, endpoint: str) -> None:
    path, base = ENDPOINTS[endpoint]
    meta = {f"k{i}": "v" * 512 for i in range(14)}
    meta.update(session_id="s" * 200, tags=",".join(["t" * 64] * 7))  # 454 characters
    headers: dict[str, str | None] = {"x-ownlm-tags": ",".join(["x" * 64] * 9)}
    status, reply = gw.call(path, {**base, "user": "u" * 200, "metadata": meta}, headers)
    assert status == 200, reply
    gw.gw.writer.flush()
    (trace,) = gw.gw.store.list_traces()
    assert trace.user == "u" * 200 and trace.session == "s" * 200
    assert len(trace.tags) == 16 and len(trace.metadata) == 16


def test_label_limits_come_from_the_config(tmp_path: Any) -> None:
    g = start(tmp_path, labels={"max_user_chars": 10, "max_tags": 1})
    try:
        status, reply = g.call(
            "/v1/chat/completions", {"model": "m", "messages": MSG, "user": "u" * 11}
        )
        assert (
            status == 400 and reply["error"]["message"] == "user is 11 characters; the limit is 10"
        )
        status, reply = g.call(
            "/v1/chat/completions", {"model": "m", "messages": MSG}, {"x-ownlm-tags": "a,b"}
        )
        assert status == 400 and reply["error"]["param"] == "x-ownlm-tags"
        assert (
            g.call("/v1/chat/completions", {"model": "m", "messages": MSG, "user": "u" * 10})[0]
            == 200
        )
    finally:
        g.close()
    # the store's user and session columns hold 200 characters: a larger limit is refused
    with pytest.raises(ConfigError, match="max_user_chars"):
        validate_config(GatewayConfig, {"labels": {"max_user_chars": 201}}, "ownlm.yaml")
    with pytest.raises(ConfigError, match="did you mean 'max_tags'"):
        validate_config(GatewayConfig, {"labels": {"max_tag": 3}}, "ownlm.yaml")


# -- feedback ----------------------------------------------------------------------------------


def stored_trace_id(gw: InProcess) -> str:
    """The id of a chat trace made with the fuzz key, once written."""
    status, _ = gw.call("/v1/chat/completions", {"model": "m", "messages": MSG})
    assert status == 200
    gw.gw.writer.flush()
    (trace,) = gw.gw.store.list_traces()
    return str(trace.trace_id)


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"score": 1.5}, "score", "'score' must be a number from 0 to 1, got 1.5"),
        ({"score": -0.01}, "score", "'score' must be a number from 0 to 1"),
        (
            {"value": 1_000_001},
            "value",
            "'value' must be a finite number of USD from -1000000 to 1000000",
        ),
        ({"value": -2e6}, "value", "'value' must be a finite number of USD"),
        ({"value": "3"}, "value", "'value' must be a finite number of USD"),
        ({"thumbs": "up", "user": "u" * 201}, "user", "user is 201 characters; the limit is 200"),
        ({"thumbs": "up", "user": "\x00"}, "user", "user holds a NUL character"),
        ({"comment": "bad\x00"}, "comment", "'comment' holds a NUL character"),
    ],
)
def test_bad_feedback_is_a_400_naming_the_field(
    gw: InProcess, fields: dict[str, Any], param: str, message: str
) -> None:
    tid = stored_trace_id(gw)
    status, reply = gw.call("/v1/feedback", {"trace_id": tid, **fields})
    assert status == 400, reply
    assert reply["error"]["param"] == param
    assert reply["error"]["message"].startswith(message), reply["error"]["message"]
    assert gw.gw.store.list_feedback(tid) == []


def test_feedback_at_the_range_ends_is_stored(gw: InProcess) -> None:
    tid = stored_trace_id(gw)
    for fields in ({"score": 0}, {"score": 1.0}, {"value": -1e6}, {"value": 1_000_000}):
        status, reply = gw.call("/v1/feedback", {"trace_id": tid, **fields})
        assert status == 200, reply
    got = [(f.score, f.value) for f in gw.gw.store.list_feedback(tid)]
    assert got == [(0.0, None), (1.0, None), (None, -1e6), (None, 1e6)]
    # JSON has no NaN or infinity: 1e999 is refused while parsing
    status, reply = gw.call("/v1/feedback", b'{"trace_id": "%s", "value": 1e999}' % tid.encode())
    assert status == 400 and "not valid JSON" in reply["error"]["message"]


def test_feedback_ranges_refuse_nan_and_inf_and_follow_the_config() -> None:
    cfg = GatewayConfig(max_feedback_value_usd=10.0)
    tid = "0" * 32
    for name in ("score", "value"):
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(WireError) as info:
                admin.parse_feedback({"trace_id": tid, name: bad}, cfg)
            assert info.value.status == 400 and info.value.param == name
    with pytest.raises(WireError, match="from -10 to 10, got 10.5"):
        admin.parse_feedback({"trace_id": tid, "value": 10.5}, cfg)
    assert admin.parse_feedback({"trace_id": tid, "value": -10}, cfg).value == -10.0


# -- JSON depth --------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """A chat body whose response_format nests `depth` levels in all (the body is level 1)."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    return (
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": %s}'
        % (b'{"x": ' + inner.encode() + b"}" if depth > 2 else b"{}")
    )


def test_json_depth_by_hand() -> None:
    assert not json_depth_over({}, 1) and json_depth_over({"a": {}}, 1)
    assert json_depth_over({"a": [1, "x", {"b": []}]}, 3)
    assert not json_depth_over({"a": [1, "x", {"b": []}], "c": {}}, 4)
    assert orjson.loads(nested(3))["response_format"] == {"x": []}
    assert orjson.loads(nested(2))["response_format"] == {}
    assert not json_depth_over(orjson.loads(nested(64)), 64)
    assert json_depth_over(orjson.loads(nested(65)), 64)


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/feedback"]
)
def test_deep_json_is_a_400(gw: InProcess, path: str) -> None:
    for depth in (65, 300, 5000):  # 300: past orjson's encoder; 5000: past its decoder
        status, reply = gw.call(path, nested(depth))
        assert status == 400, (depth, reply)
        err = reply["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "json_too_deep"
        assert "more than 64 levels deep" in err["message"]
    assert gw.upstream.calls == 0


def test_json_at_the_depth_limit_is_served(gw: InProcess) -> None:
    status, reply = gw.call("/v1/chat/completions", nested(64))
    assert status == 200, reply


def test_deep_json_through_the_server_is_not_a_500(gateway: Any) -> None:
    """The real path: uvicorn, the HTTP upstream client (it re-encodes the body), the store."""
    auth_header: dict[str, str | bytes] = {"authorization": f"Bearer {gateway.user_key}"}
    body = nested(300).replace(b'"model": "m"', b'"model": "chat"')
    status, _, reply = raw(gateway.root_url, "POST", "/v1/chat/completions", body, auth_header)
    assert status == 400 and orjson.loads(reply)["error"]["code"] == "json_too_deep"
    body = nested(64).replace(b'"model": "m"', b'"model": "chat"')
    status, _, reply = raw(gateway.root_url, "POST", "/v1/chat/completions", body, auth_header)
    assert status == 200, reply
    with pytest.raises(ConfigError, match="max_json_depth"):
        validate_config(GatewayConfig, {"max_json_depth": 300}, "ownlm.yaml")


# -- Authorization header and the key cache -----------------------------------------------------


def test_long_authorization_is_a_401_before_any_lookup(
    gw: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_lookup(*args: Any) -> Any:
        raise AssertionError("the header was read")

    monkeypatch.setattr(auth, "_bearer", no_lookup)
    monkeypatch.setattr(KeyRing, "_hash", no_lookup)
    long_key = "k" * 4090  # "Bearer " + this is 4097 bytes
    both: list[dict[str, str | None]] = [
        {"authorization": f"Bearer {long_key}"},
        {"authorization": None, "api-key": long_key},
    ]
    for headers in both:
        status, reply = gw.call("/v1/chat/completions", {"model": "m", "messages": MSG}, headers)
        assert status == 401, reply
        err = reply["error"]
        assert err["type"] == "authentication_error"
        assert err["message"].startswith(
            "the Authorization header is 4097 bytes; the limit is 4096"
        ), err["message"]
    headers = both[0]
    assert gw.call("/admin/keys", {"name": "x"}, headers)[0] == 401
    assert gw.call("/v1/models", None, headers, method="GET")[0] == 401
    assert gw.upstream.calls == 0


def test_key_cache_keeps_only_known_keys() -> None:
    keys = KeyRing(hashlib.sha256(b"admin").hexdigest(), max_authorization_bytes=4096)
    keys.add(ApiKey("k1", hashlib.sha256(b"s1").hexdigest(), "one", 1e9, 10**9))
    for i in range(1000):
        with pytest.raises(WireError) as info:
            keys.check(b"Bearer bogus-%d" % i)
        assert info.value.status == 401
        assert not keys.is_admin(b"Bearer bogus-%d" % i)
        assert keys.user_key_name(b"Bearer bogus-%d" % i) is None
    assert keys._hash_of_secret == {}
    assert keys.check(b"Bearer s1") == "k1" and keys.is_admin(b"Bearer admin")
    assert sorted(keys._hash_of_secret) == ["admin", "s1"]


def test_bogus_megabyte_tokens_do_not_stay_in_memory(gw: InProcess) -> None:
    """100 bearer tokens of 1 MB each: every one a 401, and none kept (was +101 MB)."""
    gc.collect()
    was_tracing = tracemalloc.is_tracing()  # e.g. PYTHONTRACEMALLOC: leave it on
    if not was_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            token = os.urandom(512 * 1024).hex()  # 1 MB of text, new each time
            status, _ = gw.call("/v1/models", None, {"authorization": f"Bearer {token}"}, "GET")
            assert status == 401
            del token
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not was_tracing:
            tracemalloc.stop()
    assert kept < 2 * 1024 * 1024, f"{kept} bytes kept after 100 bogus 1 MB keys"


# -- the store's side ----------------------------------------------------------------------------


def test_health_counts_quarantined_traces(gw: InProcess) -> None:
    status, reply = gw.call("/health", None, method="GET")
    assert status == 200 and reply["traces"]["quarantined"] == 0
    twin = Trace(alias="m")
    gw.gw.writer.record(twin)
    gw.gw.writer.flush()
    batch = [Trace(alias="m") for _ in range(4)]
    for tr in (*batch[:2], Trace(trace_id=twin.trace_id, alias="m"), *batch[2:]):
        gw.gw.writer.record(tr)  # one batch; the repeated trace id is refused by the store
    gw.gw.writer.flush()
    status, reply = gw.call("/health", None, method="GET")
    assert reply["traces"]["quarantined"] == 1
    assert reply["traces"]["written"] == 5 and reply["traces"]["failed"] == 0
    assert gw.gw.store.count_traces() == 5


def test_nul_in_an_upstream_error_is_escaped_for_the_store() -> None:
    trace = PendingTrace(
        0.0, "chat.completions", "m", {}, Decision("m", "default"), None, None, None
    )
    trace.finish(500, b'{"error": {"message": "upstream said a\\u0000b"}}')
    assert trace.build().error == "upstream said a\\u0000b"
