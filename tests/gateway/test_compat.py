"""Small OpenAI-compatibility items: CORS, GET /v1/models/{id}, embeddings on router aliases,
feedback scoped to its key, UTF-8 headers, 405 with Allow, 403 for user keys on admin routes,
Azure-style `api-key`, and a 400 for a body that is not UTF-8."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from ownlm.gateway.asgi import Message
from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.middleware import Cors
from ownlm.gateway.server import build_app, serve_gateway_in_thread
from ownlm.gateway.tracing import header_text
from ownlm.store.trace_store import TraceStore

RunningGateway = Any  # tests/gateway/conftest.py
USER_KEY = "sk-test-user"  # the keys conftest.py configures
ADMIN_KEY = "sk-test-admin"
MSG = [{"role": "user", "content": "hello there"}]
ORIGIN = "https://app.example"


def raw(
    root_url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str | bytes] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with headers sent as given (bytes stay bytes): (status, headers, body)."""
    url = urlsplit(root_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.putrequest(method, path, skip_accept_encoding=True)
    sent = {"content-type": "application/json", **(headers or {})}
    if data is not None:
        sent["content-length"] = str(len(data))
    for name, value in sent.items():
        conn.putheader(name, value)
    conn.endheaders(data)
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def bearer(key: str) -> dict[str, str | bytes]:
    return {"authorization": f"Bearer {key}"}


def client(gw: RunningGateway, key: str = USER_KEY) -> openai.OpenAI:
    """The official client on the gateway; use it in `with`, so its connections are closed."""
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)


def stored(store: TraceStore, trace_id: str) -> Any:
    """The trace as the store has it, once the writer has written it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        tr = store.get_trace(trace_id)
        if tr is not None:
            return tr
        time.sleep(0.02)
    raise AssertionError(f"trace {trace_id} never stored")


@pytest.fixture
def cors_root(config_for: Any, tmp_path: Any) -> Iterator[str]:
    """A gateway with cors_origins: [https://app.example]; its root URL."""
    cfg = config_for(f"sqlite:///{tmp_path}/cors.db", cors_origins=[ORIGIN], cors_max_age_s=300)
    server, thread = serve_gateway_in_thread(build_app(cfg), cfg, timeout_s=20)
    yield f"http://127.0.0.1:{cfg.port}"
    server.should_exit = True
    thread.join(20)


# -- 1. CORS -----------------------------------------------------------------------------------


def test_cors_preflight_and_headers_on_whole_streamed_and_error_replies(cors_root: str) -> None:
    preflight = {
        "origin": ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, x-stainless-os",
    }
    status, h, body = raw(cors_root, "OPTIONS", "/v1/chat/completions", headers=preflight)
    assert (status, body) == (204, b"")
    assert h["access-control-allow-origin"] == ORIGIN
    assert "POST" in h["access-control-allow-methods"]
    assert h["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
    assert h["access-control-max-age"] == "300" and "Origin" in h["vary"]

    status, h, body = raw(
        cors_root,
        "OPTIONS",
        "/v1/chat/completions",
        headers={**preflight, "origin": "https://evil"},
    )
    assert status == 403 and "access-control-allow-origin" not in h
    assert "'https://evil'" in json.loads(body)["error"]["message"]

    cors = {"origin": ORIGIN, **bearer(USER_KEY)}
    chat = {"model": "chat", "messages": MSG}
    for request in (chat, {**chat, "stream": True}):
        status, h, body = raw(cors_root, "POST", "/v1/chat/completions", request, cors)
        assert status == 200 and h["access-control-allow-origin"] == ORIGIN
        assert h["vary"] == "Origin" and "x-ownlm-trace-id" in h["access-control-expose-headers"]
        assert len(h["x-ownlm-trace-id"]) == 32
    assert b"data: [DONE]" in body  # the stream arrived whole

    status, h, _ = raw(cors_root, "GET", "/v1/models", headers={"origin": ORIGIN})
    assert status == 401 and h["access-control-allow-origin"] == ORIGIN  # the page can read why
    for headers in ({"origin": "https://evil", **bearer(USER_KEY)}, bearer(USER_KEY)):
        status, h, _ = raw(cors_root, "GET", "/v1/models", headers=headers)
        assert status == 200 and "access-control-allow-origin" not in h


def test_cors_any_origin_and_off_by_default(gateway: RunningGateway) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
        await send({"type": "http.response.body", "body": b"{}"})

    async def call(method: str, headers: list[tuple[bytes, bytes]]) -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": "/v1/models", "headers": headers}
        await Cors(app, ["*"], 600)(scope, receive, send)
        return sent

    start = asyncio.run(call("GET", [(b"origin", b"https://any.example")]))[0]
    assert start["status"] == 200
    assert (b"access-control-allow-origin", b"*") in start["headers"]
    assert (b"a", b"1") in start["headers"]
    pre = asyncio.run(
        call("OPTIONS", [(b"origin", b"https://x"), (b"access-control-request-method", b"POST")])
    )
    assert pre[0]["status"] == 204
    assert (
        dict(pre[0]["headers"])[b"access-control-allow-headers"]
        == b"authorization, api-key, content-type"
    )

    # no cors_origins: no CORS headers, and OPTIONS is just a method the gateway does not take
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST"}
    status, h, _ = raw(gateway.root_url, "OPTIONS", "/v1/chat/completions", headers=preflight)
    assert status == 405 and h["allow"] == "POST" and "access-control-allow-origin" not in h


@pytest.mark.parametrize("origin", ["https://app.example/", "app.example", "ftp://x", "https://"])
def test_cors_origin_must_be_an_origin(origin: str) -> None:
    with pytest.raises(ValueError, match="is not an origin; write scheme://host"):
        GatewayConfig.model_validate({"cors_origins": [origin]})


# -- 2. GET /v1/models/{id} --------------------------------------------------------------------


@pytest.fixture
def c(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    """The official client on the gateway with the user key."""
    with client(gateway) as c:
        yield c


def test_models_retrieve(gateway: RunningGateway, c: openai.OpenAI) -> None:
    for name in ("chat", "auto"):  # a model and a router alias
        m = c.models.retrieve(name)
        assert (m.id, m.object, m.owned_by) == (name, "model", "ownlm")
    for unknown in ("nope", "org/nope"):  # a '/' in an id is still this route
        with pytest.raises(openai.NotFoundError) as info:
            c.models.retrieve(unknown)
        err = info.value.body
        assert isinstance(err, dict) and err["code"] == "model_not_found"
        assert f"model '{unknown}' is not served here" in err["message"]
        assert "auto" in err["message"]
    with client(gateway, "sk-bad") as bad, pytest.raises(openai.AuthenticationError):
        bad.models.retrieve("chat")


# -- 3. embeddings on router aliases -----------------------------------------------------------


def test_embeddings_accept_router_aliases(gateway: RunningGateway, c: openai.OpenAI) -> None:
    store = gateway.app.app.store
    raw_reply = c.embeddings.with_raw_response.create(model="auto", input="some text")
    assert [d.embedding for d in raw_reply.parse().data] == [[0.5, -0.5]]
    tr = stored(store, raw_reply.headers["x-ownlm-trace-id"])
    assert (tr.alias, tr.variant, tr.upstream_model) == ("auto", "chat", "mock-chat")
    assert tr.reason.startswith("embeddings: ")
    tagged = c.embeddings.with_raw_response.create(
        model="auto", input=["a"], extra_headers={"x-ownlm-tag-tier": "pro"}
    )
    assert stored(store, tagged.headers["x-ownlm-trace-id"]).variant == "chat-pro"  # rule matched
    ab = c.embeddings.with_raw_response.create(model="ab-test", input=["a", "b"])
    tr = stored(store, ab.headers["x-ownlm-trace-id"])
    assert tr.variant in ("chat", "chat-pro") and tr.experiment is None and tr.arm is None
    plain = c.embeddings.with_raw_response.create(model="emb", input="x")
    assert stored(store, plain.headers["x-ownlm-trace-id"]).variant == "emb"
    with pytest.raises(openai.NotFoundError, match="known models: .*auto"):
        c.embeddings.create(model="nope", input="x")


# -- 4. feedback scoped to the key that made the trace ----------------------------------------


def test_feedback_only_from_the_key_that_made_the_trace_or_the_admin(
    gateway: RunningGateway, c: openai.OpenAI
) -> None:
    root = gateway.root_url
    status, _, made = raw(root, "POST", "/admin/keys", {"name": "other"}, bearer(ADMIN_KEY))
    assert status == 200
    other = json.loads(made)["key"]
    made_trace = c.chat.completions.with_raw_response.create(model="chat", messages=MSG)
    tid = made_trace.headers["x-ownlm-trace-id"]

    def rate(key: str, trace_id: str) -> tuple[int, Any]:
        status, _, body = raw(
            root, "POST", "/v1/feedback", {"trace_id": trace_id, "thumbs": "up"}, bearer(key)
        )
        return status, json.loads(body)

    status, theirs = rate(other, tid)
    _, unknown = rate(other, "0" * 32)
    assert status == 404 and theirs["error"]["code"] == "trace_not_found"
    # the same answer as for a trace that does not exist: no key learns of others' traces
    assert theirs["error"]["message"] == unknown["error"]["message"].replace("0" * 32, tid)
    assert "made with this API key" in theirs["error"]["message"]
    assert rate(USER_KEY, tid)[0] == 200
    assert rate(ADMIN_KEY, tid)[0] == 200
    rows = gateway.app.app.store.list_feedback(tid)
    assert [f.key_id for f in rows] == ["cfg-user", "admin"]


# -- 5. UTF-8 header values --------------------------------------------------------------------


def test_utf8_header_values_are_stored_as_sent(gateway: RunningGateway) -> None:
    assert header_text("Jürgen".encode()) == "Jürgen"
    assert header_text(b"J\xfcrgen") == "Jürgen"  # not UTF-8: read as latin-1
    store = gateway.app.app.store
    chat = {"model": "chat", "messages": MSG}
    for value in ("Jürgen".encode(), "Jürgen".encode("latin-1")):
        headers = {
            **bearer(USER_KEY),
            "x-ownlm-user": value,
            "x-ownlm-tag-city": "Köln".encode(),
            "x-ownlm-session": "Straße 1".encode(),
        }
        status, h, _ = raw(gateway.root_url, "POST", "/v1/chat/completions", chat, headers)
        assert status == 200
        tr = stored(store, h["x-ownlm-trace-id"])
        assert (tr.user, tr.session, tr.metadata["city"]) == ("Jürgen", "Straße 1", "Köln")


# -- 6. a wrong method on a known path ---------------------------------------------------------


def test_wrong_method_is_405_with_allow(gateway: RunningGateway) -> None:
    cases = [
        ("GET", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/chat", "GET"),
        ("PUT", "/admin/keys", "GET, POST"),
    ]
    for method, path, allow in cases:
        status, h, body = raw(gateway.root_url, method, path, headers=bearer(USER_KEY))
        err = json.loads(body)["error"]
        assert (status, h["allow"], err["code"]) == (405, allow, "method_not_allowed"), path
        assert err["message"].startswith(f"{method} is not allowed on {path}; use ")
        assert err["type"] == "invalid_request_error"
    status, _, body = raw(gateway.root_url, "GET", "/v1/nothing", headers=bearer(USER_KEY))
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url"


# -- 7. a user key on an admin route -----------------------------------------------------------


def test_user_key_on_admin_route_is_403_unknown_key_401(gateway: RunningGateway) -> None:
    for path in ("/admin/keys", "/admin/models", "/dashboard"):
        status, _, body = raw(gateway.root_url, "GET", path, headers=bearer(USER_KEY))
        err = json.loads(body)["error"]
        assert (status, err["type"]) == (403, "permission_error"), path
        assert err["message"] == "key 'user' is a user key; this endpoint needs the admin key"
        for headers in (bearer("sk-bad"), {}):
            assert raw(gateway.root_url, "GET", path, headers=headers)[0] == 401
    with openai.OpenAI(base_url=gateway.root_url, api_key=USER_KEY, max_retries=0) as admin:
        with pytest.raises(openai.PermissionDeniedError):
            admin.get("/admin/keys", cast_to=object)


# -- 8. Azure-style api-key header -------------------------------------------------------------


def test_azure_api_key_header_works_like_bearer(gateway: RunningGateway) -> None:
    chat = {"model": "chat", "messages": MSG}
    status, h, _ = raw(
        gateway.root_url, "POST", "/v1/chat/completions", chat, {"api-key": USER_KEY}
    )
    assert status == 200
    assert stored(gateway.app.app.store, h["x-ownlm-trace-id"]).key_id == "cfg-user"
    status, _, body = raw(gateway.root_url, "GET", "/v1/models", headers={"api-key": "sk-bad"})
    assert status == 401 and "ending in '-bad'" in json.loads(body)["error"]["message"]
    status, _, body = raw(gateway.root_url, "GET", "/v1/models")
    assert status == 401 and "'api-key: <key>'" in json.loads(body)["error"]["message"]
    status, _, _ = raw(gateway.root_url, "GET", "/admin/keys", headers={"api-key": ADMIN_KEY})
    assert status == 200
    status, _, _ = raw(gateway.root_url, "GET", "/admin/keys", headers={"api-key": USER_KEY})
    assert status == 403


# -- 9. a body that is not UTF-8 ---------------------------------------------------------------


def test_body_not_utf8_is_a_clear_400(gateway: RunningGateway) -> None:
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "caf\xe9"}]}'
    status, _, reply = raw(gateway.root_url, "POST", "/v1/chat/completions", body, bearer(USER_KEY))
    err = json.loads(reply)["error"]
    assert status == 400 and err["type"] == "invalid_request_error"
    assert err["message"] == (
        "the request body is not valid UTF-8 JSON: byte 0xe9 at offset 63 is not UTF-8; "
        "send the JSON encoded as UTF-8"
    )
    status, _, reply = raw(
        gateway.root_url, "POST", "/v1/chat/completions", b"{x", bearer(USER_KEY)
    )
    assert status == 400 and "is not valid JSON" in json.loads(reply)["error"]["message"]
