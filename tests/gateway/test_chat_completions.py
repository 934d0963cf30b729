"""The official openai client against the gateway: plain, streamed, tools, errors, traces."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from ownlm.store.trace_store import TraceStore

RunningGateway = Any  # tests/gateway/conftest.py
MockUpstream = Any
USER_KEY = "sk-test-user"  # the keys conftest.py configures
ADMIN_KEY = "sk-test-admin"
LIMITED_KEY = "sk-test-limited"
BROKE_KEY = "sk-test-broke"


def http(method: str, url: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    """A raw request (stdlib); returns (status, parsed JSON body)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if key is not None:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


MSG = [{"role": "user", "content": "hello there"}]


def client(gw: RunningGateway, key: str = USER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)


def stored(gw: RunningGateway, trace_id: str) -> Any:
    """The trace as the store has it, once the writer has written it."""
    store: TraceStore = gw.app.app.store
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        tr = store.get_trace(trace_id)
        if tr is not None:
            return tr
        time.sleep(0.02)
    raise AssertionError(f"trace {trace_id} never stored")


def test_plain_chat_is_traced_with_cost(gateway: RunningGateway) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="chat",
        messages=MSG,
        user="alice",
        metadata={"session_id": "s1"},
        extra_headers={"x-ownlm-tags": "a,b"},
        extra_body={"custom_field": 7},
    )
    out = raw.parse()
    assert out.choices[0].message.content == "echo: hello there"
    assert out.usage is not None and out.usage.total_tokens == 15
    tid = raw.headers["x-ownlm-trace-id"]
    tr = stored(gateway, tid)
    assert (tr.alias, tr.variant, tr.upstream, tr.upstream_model) == (
        "chat",
        "chat",
        "mock",
        "mock-chat",
    )
    assert (tr.prompt_tokens, tr.completion_tokens, tr.status) == (10, 5, 200)
    assert tr.cost_usd == pytest.approx((10 * 1000 + 5 * 2000) / 1e6)
    assert (tr.user, tr.session, tr.tags, tr.key_id) == ("alice", "s1", ["a", "b"], "cfg-user")
    assert tr.request["custom_field"] == 7  # unknown fields kept
    assert tr.response["choices"][0]["message"]["content"] == "echo: hello there"
    assert tr.latency_ms > 0 and not tr.stream


def test_unknown_fields_reach_upstream(
    gateway: RunningGateway, mock_upstream: MockUpstream
) -> None:
    client(gateway).chat.completions.create(
        model="chat",
        messages=MSG,
        extra_body={"top_k": 3},
        stop=["x"],
        n=1,
        max_tokens=8,
        response_format={"type": "json_object"},
    )
    sent = mock_upstream.bodies[-1]
    assert sent["model"] == "mock-chat"
    assert (sent["top_k"], sent["stop"], sent["max_tokens"]) == (3, ["x"], 8)
    assert sent["response_format"] == {"type": "json_object"}


def test_streamed_chat_with_usage_is_reassembled(gateway: RunningGateway) -> None:
    stream = client(gateway).chat.completions.create(
        model="chat", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there "
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    tid = stream.response.headers["x-ownlm-trace-id"]
    tr = stored(gateway, tid)
    assert tr.stream and tr.ttft_ms is not None and 0 < tr.ttft_ms <= tr.latency_ms
    assert tr.response["choices"][0]["message"]["content"] == text
    assert (tr.prompt_tokens, tr.completion_tokens) == (10, 5)


def test_stream_without_usage_is_still_priced(
    gateway: RunningGateway, mock_upstream: MockUpstream
) -> None:
    stream = client(gateway).chat.completions.create(model="chat", messages=MSG, stream=True)
    chunks = list(stream)
    assert all(c.usage is None and c.choices for c in chunks)  # the usage event is hidden
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello there "
    assert mock_upstream.bodies[-1]["stream_options"] == {"include_usage": True}
    tr = stored(gateway, stream.response.headers["x-ownlm-trace-id"])
    assert (tr.prompt_tokens, tr.completion_tokens) == (10, 5) and tr.cost_usd > 0
    assert "stream_options" not in tr.request  # the trace keeps what the client sent


def test_tool_calls_plain_and_streamed(gateway: RunningGateway) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    c = client(gateway)
    out = c.chat.completions.create(model="tools", messages=MSG, tools=tools)
    call = out.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    stream = c.chat.completions.create(model="tools", messages=MSG, tools=tools, stream=True)
    args = "".join(
        (ch.choices[0].delta.tool_calls or [])[0].function.arguments or ""  # type: ignore[union-attr]
        for ch in stream
        if ch.choices and ch.choices[0].delta.tool_calls
    )
    assert json.loads(args) == {"city": "Paris"}
    tr = stored(gateway, stream.response.headers["x-ownlm-trace-id"])
    msg = tr.response["choices"][0]["message"]
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert tr.response["choices"][0]["finish_reason"] == "tool_calls"


def test_client_errors_are_typed(gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        client(gateway, "sk-wrong").chat.completions.create(model="chat", messages=MSG)
    with pytest.raises(openai.NotFoundError, match="model 'nope' is not served"):
        client(gateway).chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.BadRequestError, match="'temperature' must be a number"):
        client(gateway).chat.completions.create(model="chat", messages=MSG, temperature="hot")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="mock: bad temperature"):
        client(gateway).chat.completions.create(model="picky", messages=MSG)


def test_rate_limit_and_budget(gateway: RunningGateway) -> None:
    # closed by `with`: a client left to the garbage collector warns of its open socket later,
    # inside whichever test is running then
    with client(gateway, LIMITED_KEY) as limited, client(gateway, BROKE_KEY) as broke:
        limited.chat.completions.create(model="chat", messages=MSG)
        limited.chat.completions.create(model="chat", messages=MSG)
        with pytest.raises(openai.RateLimitError, match="over its rate limit") as info:
            limited.chat.completions.create(model="chat", messages=MSG)
        assert float(info.value.response.headers["retry-after"]) > 0
        broke.chat.completions.create(model="chat", messages=MSG)  # costs exactly its budget
        gateway.app.app.writer.flush()
        with pytest.raises(openai.RateLimitError, match="budget"):
            broke.chat.completions.create(model="chat", messages=MSG)


def test_retries_fallbacks_and_upstream_errors(
    gateway: RunningGateway, mock_upstream: MockUpstream
) -> None:
    c = client(gateway)
    before = mock_upstream.hits["mock-500"]
    raw = c.chat.completions.with_raw_response.create(model="broken", messages=MSG)
    assert raw.parse().choices[0].message.content == "echo: hello there"
    assert mock_upstream.hits["mock-500"] - before == 2  # one try + one retry, then fallback
    tr = stored(gateway, raw.headers["x-ownlm-trace-id"])
    assert (tr.alias, tr.variant, tr.upstream_model) == ("broken", "chat", "mock-chat")
    assert c.chat.completions.create(model="gone", messages=MSG).choices[0].message.content
    with pytest.raises(openai.InternalServerError) as failed:
        c.chat.completions.create(model="failing", messages=MSG)
    assert failed.value.status_code == 500
    with pytest.raises(openai.APIStatusError) as gone:
        c.chat.completions.create(model="gone-alone", messages=MSG)
    assert gone.value.status_code == 502 and "upstream dead failed" in gone.value.message
    with pytest.raises(openai.APIStatusError) as slow:
        c.chat.completions.create(model="slow", messages=MSG)
    assert slow.value.status_code == 504


def test_router_rule_and_cache(gateway: RunningGateway, mock_upstream: MockUpstream) -> None:
    c = client(gateway)
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=MSG, extra_headers={"x-ownlm-tag-tier": "pro"}
    )
    tr = stored(gateway, raw.headers["x-ownlm-trace-id"])
    assert (tr.alias, tr.variant, tr.metadata) == ("auto", "chat-pro", {"tier": "pro"})
    assert tr.reason.startswith("rule")
    tr2 = stored(
        gateway,
        c.chat.completions.with_raw_response.create(model="auto", messages=MSG).headers[
            "x-ownlm-trace-id"
        ],
    )
    assert tr2.variant == "chat"
    msgs = [{"role": "user", "content": "cache me"}]
    before = mock_upstream.hits["mock-chat"]
    first = c.chat.completions.with_raw_response.create(model="cached", messages=msgs)
    second = c.chat.completions.with_raw_response.create(model="cached", messages=msgs)
    assert mock_upstream.hits["mock-chat"] - before == 1
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert stored(gateway, second.headers["x-ownlm-trace-id"]).cache_hit
    hdr = {"x-ownlm-cache": "true"}
    c.chat.completions.create(model="chat", messages=msgs, extra_headers=hdr)
    c.chat.completions.create(model="chat", messages=msgs, extra_headers=hdr)
    assert mock_upstream.hits["mock-chat"] - before == 2


def test_experiment_arm_is_traced_and_counted(gateway: RunningGateway) -> None:
    c = client(gateway)
    arms = set()
    for user in ("u1", "u2", "u3", "u4", "u5", "u6"):
        raw = c.chat.completions.with_raw_response.create(model="ab-test", messages=MSG, user=user)
        tr = stored(gateway, raw.headers["x-ownlm-trace-id"])
        assert tr.experiment == "ab" and tr.arm == tr.variant
        arms.add(tr.arm)
        status, _ = http(
            "POST",
            f"{gateway.base_url}/feedback",
            {"trace_id": tr.trace_id, "thumbs": "up"},
            USER_KEY,
        )
        assert status == 200
    assert arms <= {"chat", "chat-pro"}
    status, body = http("GET", f"{gateway.root_url}/admin/experiments", key=ADMIN_KEY)
    stats = body["experiments"]["ab"]
    assert status == 200 and sum(s["n_traces"] for s in stats) == 6
    assert sum(s["successes"] for s in stats) == 6
    exp = gateway.app.app.store.list_experiments()[0]
    assert (exp.name, exp.alias, exp.arms) == ("ab", "ab-test", ["chat", "chat-pro"])


def test_feedback_models_embeddings_admin(gateway: RunningGateway) -> None:
    c = client(gateway)
    raw = c.chat.completions.with_raw_response.create(model="chat", messages=MSG)
    tid = raw.headers["x-ownlm-trace-id"]
    base, root = gateway.base_url, gateway.root_url
    status, ok = http(
        "POST", f"{base}/feedback", {"trace_id": tid, "thumbs": "up", "value": 2.5}, USER_KEY
    )
    assert status == 200 and ok["trace_id"] == tid
    fb = gateway.app.app.store.list_feedback(tid)
    assert [(f.thumbs, f.value) for f in fb] == [(1, 2.5)]
    status, missing = http(
        "POST", f"{base}/feedback", {"trace_id": "0" * 32, "thumbs": "up"}, USER_KEY
    )
    assert status == 404 and "no trace with id" in missing["error"]["message"]
    status, bad = http("POST", f"{base}/feedback", {"trace_id": "x", "thumbs": "up"}, USER_KEY)
    assert status == 400 and bad["error"]["param"] == "trace_id"
    status, _ = http("POST", f"{base}/feedback", {"trace_id": tid, "thumbs": "up"}, "sk-bad")
    assert status == 401
    assert {m.id for m in c.models.list()} >= {"chat", "auto", "tools"}
    emb = c.embeddings.create(model="emb", input=["a", "b"])
    assert [d.embedding for d in emb.data] == [[0.5, -0.5], [0.5, -0.5]]
    # a user key is known but not allowed there: 403, where an unknown key gets 401
    assert http("GET", f"{root}/admin/keys", key=USER_KEY)[0] == 403
    status, made = http("POST", f"{root}/admin/keys", {"name": "new", "rate_per_s": 5}, ADMIN_KEY)
    assert status == 200
    secret = made["key"]
    assert client(gateway, secret).chat.completions.create(model="chat", messages=MSG).choices
    listed = http("GET", f"{root}/admin/keys", key=ADMIN_KEY)[1]["data"]
    assert "new" in {k["name"] for k in listed} and secret not in json.dumps(listed)
    disabled = http("POST", f"{root}/admin/keys/disable", {"key_id": made["key_id"]}, ADMIN_KEY)
    assert disabled[0] == 200
    with pytest.raises(openai.AuthenticationError):
        client(gateway, secret).chat.completions.create(model="chat", messages=MSG)
    assert http("GET", f"{root}/health")[1]["status"] == "ok"
    assert "chat" in http("GET", f"{root}/admin/models", key=ADMIN_KEY)[1]["models"]


def test_raw_bad_input_is_4xx(gateway: RunningGateway) -> None:
    url = f"{gateway.base_url}/chat/completions"
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"model": 5, "messages": []}', 400, "'model' must be"),
        (b'{"model": "chat", "messages": [{"role": 1}]}', 400, "messages[0].role"),
        (b'{"model": "chat", "messages": [{"role": "user"}], "n": 0}', 400, "'n' must be"),
    ]
    for body, status, text in cases:
        got, reply = http("POST", url, body, USER_KEY)
        assert got == status, (body[:40], reply)
        assert text in reply["error"]["message"]
    assert http("GET", f"{gateway.base_url}/nothing")[0] == 404
    # oversized: the gateway answers 413 from the Content-Length, before the body arrives
    host, port = gateway.root_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {USER_KEY}\r\nContent-Length: {5 * 1024 * 1024}\r\n\r\n{{"
        )
        sock.sendall(head.encode())
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413") and "over the gateway's limit" in reply
