"""The Responses API: the official openai client against the gateway over a chat-only upstream.

The stand-in upstream below speaks chat completions only (whole and streamed), and answers by
what it is sent: JSON when asked for a response_format, a get_weather tool call when given
tools, "weather: <result>" after a tool result, "echo: <last user text>" otherwise, and
finish_reason "length" when max_completion_tokens is 1. The translation's pure functions are
tested on hand-made dicts; a fuzz test sends any Responses body and never gets a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pydantic
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent

from ownlm.gateway.loopback import serve_in_thread
from ownlm.gateway.responses_stream import ResponseEvents
from ownlm.gateway.responses_wire import chat_request, check_responses_request, response_from_chat
from ownlm.gateway.server import build_app, serve_gateway_in_thread
from ownlm.gateway.wire import WireError
from ownlm.store.trace_store import TraceStore
from tests.gateway.conftest import BROKE_KEY, USER_KEY, free_port, gateway_config
from tests.gateway.test_fuzz import FixedUpstream, call, check_reply, fuzz_config

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
ARGS = ('{"city":', ' "Paris"}')
WEATHER_JSON = '{"city": "Paris", "temp_c": 21}'


class Weather(pydantic.BaseModel):
    city: str
    temp_c: int


# -- the chat-only stand-in upstream ----------------------------------------------------------


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant message the stand-in answers `body` with."""
    last = body["messages"][-1]
    if body.get("response_format"):
        return {"role": "assistant", "content": WEATHER_JSON}
    if last["role"] == "tool":
        return {"role": "assistant", "content": f"weather: {last['content']}"}
    if body.get("tools"):
        call = {**CALL, "function": {"name": "get_weather", "arguments": "".join(ARGS)}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "assistant", "content": f"echo: {last['content']}"}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    request.app[BODIES].append(body)
    model = body["model"]
    if model in ("mock-500", "mock-400"):
        status = int(model[5:])
        err = {"error": {"message": f"stand-in says {status}", "type": "invalid_request_error"}}
        return web.json_response(err, status=status)
    msg = _answer(body)
    finish = "tool_calls" if msg.get("tool_calls") else "stop"
    if body.get("max_completion_tokens") == 1:
        finish = "length"
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    head = {"id": "chatcmpl-x", "created": 1700000000, "model": model}
    if not body.get("stream"):
        choice = {"index": 0, "message": msg, "finish_reason": finish}
        return web.json_response(
            {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    head["object"] = "chat.completion.chunk"

    async def delta(d: dict[str, Any], fin: str | None = None) -> None:
        await resp.write(
            _sse({**head, "choices": [{"index": 0, "delta": d, "finish_reason": fin}]})
        )

    await delta({"role": "assistant", "content": ""})
    if msg.get("tool_calls"):
        await delta({"tool_calls": [{**CALL, "index": 0}]})
        for part in ARGS:
            await delta({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
    else:
        for word in msg["content"].split(" "):
            await delta({"content": word + " "})
    await delta({}, finish)
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(_sse({**head, "choices": [], "usage": usage}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


BODIES = web.AppKey("bodies", list)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The stand-in's base URL and the chat bodies it received."""
    app = web.Application()
    bodies: list[dict[str, Any]] = []
    app[BODIES] = bodies
    app.router.add_post("/v1/chat/completions", _chat)
    with serve_in_thread(app, free_port()) as url:
        yield url, bodies


class Running:
    """A gateway on the stand-in; `client` uses the test user key."""

    def __init__(self, url: str, store_url: str) -> None:
        self.cfg = gateway_config(url, store_url, port=free_port())
        self.app = build_app(self.cfg)
        self.server, self.thread = serve_gateway_in_thread(self.app, self.cfg, timeout_s=20)
        self.base_url = f"http://127.0.0.1:{self.cfg.port}/v1"
        self.client = self.client_for(USER_KEY)

    def client_for(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def trace(self, trace_id: str) -> Any:
        store: TraceStore = self.app.app.store  # type: ignore[attr-defined]
        for _ in range(250):
            tr = store.get_trace(trace_id)
            if tr is not None:
                return tr
            time.sleep(0.02)
        raise AssertionError(f"trace {trace_id} never stored")


@pytest.fixture
def gw(upstream: tuple[str, list[dict[str, Any]]], tmp_path: Any) -> Iterator[Running]:
    running = Running(upstream[0], f"sqlite:///{tmp_path}/gw.db")
    yield running
    running.stop()


def last_body(upstream: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return upstream[1][-1]


# -- the official client ---------------------------------------------------------------------


def test_plain_response_is_a_priced_trace(gw: Running, upstream: Any) -> None:
    raw = gw.client.responses.with_raw_response.create(model="chat", input="hello there")
    r = raw.parse()
    assert r.id == "resp_" + raw.headers["x-ownlm-trace-id"]
    assert r.object == "response" and r.status == "completed" and r.model == "chat"
    assert r.output_text == "echo: hello there"
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (10, 5, 15)
    assert last_body(upstream)["messages"] == [{"role": "user", "content": "hello there"}]
    tr = gw.trace(raw.headers["x-ownlm-trace-id"])
    assert tr.endpoint == "responses" and tr.variant == "chat" and tr.status == 200
    assert tr.request == {"model": "chat", "input": "hello there"}  # the body as received
    assert (tr.prompt_tokens, tr.completion_tokens) == (10, 5)
    assert tr.cost_usd == pytest.approx((10 * 1000 + 5 * 2000) / 1e6)


def test_instructions_items_and_sampling_reach_upstream(gw: Running, upstream: Any) -> None:
    r = gw.client.responses.create(
        model="chat",
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "bonjour"}]},
        ],
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=50,
        metadata={"app": "test"},
        extra_body={"seed": 7},  # not a Responses field: passes to the chat body
    )
    assert r.output_text == "echo: bonjour" and r.instructions == "Be brief."
    assert r.temperature == 0.2 and r.max_output_tokens == 50
    body = last_body(upstream)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "bonjour"},
    ]
    assert (body["temperature"], body["top_p"], body["max_completion_tokens"]) == (0.2, 0.9, 50)
    assert body["seed"] == 7 and "metadata" not in body and "input" not in body


def test_router_alias_and_fallback(gw: Running) -> None:
    raw = gw.client.responses.with_raw_response.create(model="auto", input="hi")
    tr = gw.trace(raw.headers["x-ownlm-trace-id"])
    assert (tr.alias, tr.variant) == ("auto", "chat")
    raw = gw.client.responses.with_raw_response.create(model="broken", input="hi")
    assert raw.parse().output_text == "echo: hi"
    assert gw.trace(raw.headers["x-ownlm-trace-id"]).variant == "chat"  # fell back


def test_streamed_events(gw: Running) -> None:
    events = list(gw.client.responses.create(model="chat", input="hello there", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "echo: hello there "
    done = events[-1].response
    assert done.output_text == text and done.status == "completed"
    assert done.usage is not None and done.usage.total_tokens == 15
    assert events[0].response.id == done.id and events[0].response.status == "in_progress"
    tr = gw.trace(done.id.removeprefix("resp_"))
    assert tr.stream and (tr.prompt_tokens, tr.completion_tokens) == (10, 5)
    assert gw.client.responses.retrieve(done.id).output_text == text


def test_stream_helper(gw: Running) -> None:
    with gw.client.responses.stream(model="chat", input="hello there") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "echo: hello there "


def test_function_tools_round_trip(gw: Running, upstream: Any) -> None:
    r1 = gw.client.responses.create(
        model="chat",
        input="weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice="auto",
    )
    (call,) = r1.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id == "call_1" and json.loads(call.arguments) == {"city": "Paris"}
    body = last_body(upstream)
    assert body["tools"] == [
        {"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}
    ]
    assert body["tool_choice"] == "auto"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}
    # the client sends the history itself ...
    r2 = gw.client.responses.create(
        model="chat", input=[{"role": "user", "content": "weather in Paris?"}, call, result]
    )
    assert r2.output_text == "weather: 21 C"
    sent = last_body(upstream)["messages"]
    # ... or names the previous response
    r3 = gw.client.responses.create(model="chat", input=[result], previous_response_id=r1.id)
    assert r3.output_text == "weather: 21 C"
    assert (
        last_body(upstream)["messages"]
        == sent
        == [
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
        ]
    )
    forced = gw.client.responses.create(
        model="chat",
        input="x",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert forced.output[0].type == "function_call"
    assert last_body(upstream)["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }


def test_function_call_streamed(gw: Running) -> None:
    events = list(
        gw.client.responses.create(model="chat", input="w?", tools=[WEATHER_TOOL], stream=True)
    )
    types = [e.type for e in events]
    assert types[2] == "response.output_item.added" and events[2].item.type == "function_call"
    args = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(args) == '{"city": "Paris"}'
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == '{"city": "Paris"}'
    assert types[-2:] == ["response.output_item.done", "response.completed"]
    item = events[-1].response.output[0]
    assert (item.call_id, item.name, item.status) == ("call_1", "get_weather", "completed")


def test_structured_output(gw: Running, upstream: Any) -> None:
    fmt = {
        "type": "json_schema",
        "name": "weather",
        "schema": Weather.model_json_schema(),
        "strict": True,
    }
    r = gw.client.responses.create(model="chat", input="weather?", text={"format": fmt})
    assert json.loads(r.output_text) == {"city": "Paris", "temp_c": 21}
    assert r.text is not None and r.text.format.type == "json_schema"
    assert last_body(upstream)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": Weather.model_json_schema(), "strict": True},
    }
    parsed = gw.client.responses.parse(model="chat", input="weather?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", temp_c=21)
    assert last_body(upstream)["response_format"]["type"] == "json_schema"


def test_previous_response_id_chains_turns(gw: Running, upstream: Any) -> None:
    r1 = gw.client.responses.create(model="chat", input="first", instructions="old rules")
    r2 = gw.client.responses.create(model="chat", input="second", previous_response_id=r1.id)
    r3 = gw.client.responses.create(
        model="chat", input="third", previous_response_id=r2.id, instructions="new rules"
    )
    assert r3.previous_response_id == r2.id and r3.output_text == "echo: third"
    # the instructions of earlier turns are not carried over
    assert last_body(upstream)["messages"] == [
        {"role": "system", "content": "new rules"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "echo: first"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "echo: second"},
        {"role": "user", "content": "third"},
    ]


def test_retrieve_and_store_survive_a_restart(upstream: Any, tmp_path: Any) -> None:
    store_url = f"sqlite:///{tmp_path}/gw.db"
    first = Running(upstream[0], store_url)
    try:
        r1 = first.client.responses.create(model="chat", input="remember me")
        streamed = list(first.client.responses.create(model="chat", input="s", stream=True))
        assert first.client.responses.retrieve(r1.id) == r1
    finally:
        first.stop()
    second = Running(upstream[0], store_url)  # an empty memory: read from the store
    try:
        assert second.client.responses.retrieve(r1.id) == r1
        r_s = streamed[-1].response
        assert second.client.responses.retrieve(r_s.id).output == r_s.output
        r2 = second.client.responses.create(model="chat", input="again", previous_response_id=r1.id)
        assert [m["content"] for m in last_body(upstream)["messages"]] == [
            "remember me",
            "echo: remember me",
            "again",
        ]
        assert r2.output_text == "echo: again"
    finally:
        second.stop()


def test_store_false_and_other_keys(gw: Running) -> None:
    r = gw.client.responses.create(model="chat", input="secret", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        gw.client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as err:
        gw.client.responses.create(model="chat", input="x", previous_response_id=r.id)
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]
    mine = gw.client.responses.create(model="chat-pro", input="mine")
    with pytest.raises(openai.NotFoundError):
        gw.client_for(BROKE_KEY).responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        gw.client.responses.retrieve("resp_" + "0" * 32)
    with pytest.raises(openai.NotFoundError):
        gw.client.responses.retrieve("nonsense")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"input": 3}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call", "call_id": "c"}]}, "input[0].name"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "w"}}},
            "text.format.schema",
        ),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "instructions": ["a"]}, "instructions"),
        ({"input": "x", "previous_response_id": "resp_nope"}, "previous_response_id"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(gw: Running, kwargs: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        gw.client.responses.create(model="chat", **kwargs)
    assert err.value.body["param"] == param  # type: ignore[index]
    assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_errors_from_model_and_upstream(gw: Running) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        gw.client.responses.create(model="nope", input="x")
    assert err.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="stand-in says 400"):
        gw.client.responses.create(model="picky", input="x")
    with pytest.raises(openai.InternalServerError, match="stand-in says 500"):
        gw.client.responses.create(model="failing", input="x", stream=True)
    with pytest.raises(openai.AuthenticationError):
        gw.client_for("sk-wrong").responses.create(model="chat", input="x")


def test_max_output_tokens_makes_an_incomplete_response(gw: Running) -> None:
    r = gw.client.responses.create(model="chat", input="long", max_output_tokens=1)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    events = list(
        gw.client.responses.create(model="chat", input="long", max_output_tokens=1, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output[0].status == "incomplete"


# -- the pure translation --------------------------------------------------------------------


def test_chat_request_by_hand() -> None:
    body = {
        "model": "m",
        "input": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "a"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "see"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA"},
                ],
            },
        ],
        "store": True,
        "text": {"format": {"type": "json_object"}, "verbosity": "low"},
        "reasoning": {"effort": "low"},
        "parallel_tool_calls": False,  # dropped: no tools
        "top_k": 5,  # not a Responses field: passes
    }
    check_responses_request(body)
    history = [{"role": "user", "content": "before"}]
    assert chat_request(body, history) == {
        "model": "m",
        "messages": [
            {"role": "user", "content": "before"},
            {
                "role": "assistant",
                "content": "a",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "see"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                ],
            },
        ],
        "response_format": {"type": "json_object"},
        "verbosity": "low",
        "reasoning_effort": "low",
        "top_k": 5,
    }


def test_response_from_chat_by_hand() -> None:
    completion = {
        "choices": [
            {
                "message": {
                    "content": "hi",
                    "tool_calls": [{"id": "call_9", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }
    r = response_from_chat(completion, {"model": "m", "input": "x"}, "resp_" + "a" * 32, 1.5)
    assert r["status"] == "completed" and r["created_at"] == 1
    assert r["output"] == [
        {
            "type": "message",
            "id": "msg_" + "a" * 32,
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}],
        },
        {
            "type": "function_call",
            "id": f"fc_{'a' * 32}_0",
            "call_id": "call_9",
            "name": "f",
            "arguments": "{}",
            "status": "completed",
        },
    ]
    assert r["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }
    # junk from an upstream makes an empty response, not an exception
    assert response_from_chat({"choices": "x"}, {"model": "m"}, "resp_1", 0)["output"] == []


def test_stream_translation_does_not_depend_on_chunk_boundaries() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{**CALL, "index": 0}]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}},
    ]
    raw = b"".join(_sse(c) for c in chunks) + b"data: [DONE]\n\n"
    body = {"model": "m", "input": "x"}
    whole = ResponseEvents(body, "resp_1", 0)
    out_whole = whole.start() + whole.feed(raw) + whole.finish()
    split = ResponseEvents(body, "resp_1", 0)
    out_split = split.start() + b"".join(split.feed(raw[i : i + 1]) for i in range(len(raw)))
    out_split += split.finish()
    assert out_whole == out_split
    events = [orjson.loads(e.split(b"\ndata: ")[1]) for e in out_whole.split(b"\n\n") if e]
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["usage"]["total_tokens"] == 3
    # the streamed Response is the one rebuilt from the reassembled chat reply (retrieve)
    completion = {
        "choices": [
            {
                "message": {
                    "content": "Hello",
                    "tool_calls": [
                        {"id": "call_1", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    }
    rebuilt = response_from_chat(completion, body, "resp_1", 0)
    assert rebuilt["output"] == final["output"] and rebuilt["usage"] == final["usage"]


def test_translation_validates_against_the_official_types() -> None:
    """Whole and streamed output pass the openai package's own models, validated strictly (the
    client only constructs them, so a missing required field would go unseen there)."""
    body = {
        "model": "m",
        "input": "x",
        "instructions": "be brief",
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        "metadata": {"app": "t"},
    }
    msg = {
        "content": "hi",
        "refusal": "no",
        "tool_calls": [{**CALL, "function": {**CALL["function"], "arguments": "{}"}}],
    }
    usage = {"prompt_tokens": 2, "completion_tokens": 1}
    for finish in ("stop", "tool_calls", "length", "content_filter"):
        completion = {"choices": [{"message": msg, "finish_reason": finish}], "usage": usage}
        Response.model_validate(response_from_chat(completion, body, "resp_" + "a" * 32, 1.0))
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "hi", "refusal": "no"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{**CALL, "index": 0}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {"choices": [], "usage": usage},
    ]
    raw = b"".join(_sse(c) for c in chunks)
    events_type = pydantic.TypeAdapter(ResponseStreamEvent)
    for error in (None, "upstream broke off"):
        events = ResponseEvents(body, "resp_" + "a" * 32, 1.0)
        out = events.start() + events.feed(raw) + events.finish(error)
        kinds = set()
        for block in out.split(b"\n\n")[:-1]:
            head, data = block.split(b"\n")
            event = events_type.validate_python(orjson.loads(data.removeprefix(b"data: ")))
            assert head == b"event: " + event.type.encode()
            kinds.add(event.type)
        assert ("response.failed" in kinds) == (error is not None)


def test_check_rejects_unsupported_fields() -> None:
    for name in ("background", "conversation", "prompt"):
        with pytest.raises(WireError) as err:
            check_responses_request({"model": "m", "input": "x", name: {"id": "x"}})
        assert err.value.param == name and err.value.status == 400


# -- fuzz: any Responses body gets a reply below 500 -----------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
part = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["input_text", "output_text", "input_image", "refusal"])
        | json_values
    },
    optional={"text": st.text(max_size=5) | json_values, "image_url": json_values},
)
item = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output"]) | json_values,
        "role": st.sampled_from(["user", "assistant", "system", "developer"]) | json_values,
        "content": st.text(max_size=5) | st.lists(part, max_size=2) | json_values,
        "call_id": st.text(max_size=4) | json_values,
        "name": st.text(max_size=4) | json_values,
        "arguments": st.text(max_size=4) | json_values,
        "output": st.text(max_size=4) | st.lists(part, max_size=2) | json_values,
    },
)
tool = st.fixed_dictionaries(
    {"type": st.just("function") | json_values},
    optional={"name": st.text(max_size=4) | json_values, "parameters": json_values},
)
text_cfg = st.fixed_dictionaries(
    {},
    optional={
        "format": st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema"]) | json_values},
            optional={"name": st.text(max_size=4) | json_values, "schema": json_values},
        )
        | json_values,
        "verbosity": json_values,
    },
)
FIELDS = {
    "instructions": st.text(max_size=5) | json_values,
    "stream": st.booleans() | json_values,
    "store": st.booleans() | json_values,
    "tools": st.lists(tool, max_size=2) | json_values,
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
    "text": text_cfg | json_values,
    "max_output_tokens": st.integers() | json_values,
    "temperature": json_values,
    "top_p": json_values,
    "previous_response_id": st.just("resp_" + "0" * 32) | json_values,
    "metadata": json_values,
    "user": json_values,
    "reasoning": json_values,
    "background": json_values,
    "parallel_tool_calls": json_values,
}
bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["m", "unknown"]) | json_values,
        "input": st.text(max_size=5) | st.lists(item, max_size=3) | json_values,
    },
    optional=FIELDS,
)


def test_fuzzed_responses_bodies_never_5xx() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = fuzz_config(tmp)
        app = build_app(cfg, {"fixed": FixedUpstream()})
        inner = app.app  # type: ignore[attr-defined]
        loop = asyncio.new_event_loop()
        loop.run_until_complete(inner.start())
        try:

            @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
            @given(body=bodies)
            def create(body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                check_reply(*loop.run_until_complete(call(app, "/v1/responses", raw)))

            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
            @given(raw=st.binary(max_size=40), rid=st.text(max_size=40))
            def raw_and_retrieve(raw: bytes, rid: str) -> None:
                check_reply(*loop.run_until_complete(call(app, "/v1/responses", raw)))
                path = "/v1/responses/" + rid.replace("/", "")
                check_reply(*loop.run_until_complete(call(app, path, b"", "GET")))

            create()
            raw_and_retrieve()
        finally:
            loop.run_until_complete(inner.stop())
            loop.close()


delta = st.fixed_dictionaries(
    {},
    optional={
        "content": st.text(max_size=4) | json_values,
        "refusal": st.text(max_size=4) | json_values,
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": st.integers(-1, 2) | json_values,
                    "id": json_values,
                    "function": st.fixed_dictionaries(
                        {}, optional={"name": json_values, "arguments": json_values}
                    )
                    | json_values,
                },
            ),
            max_size=2,
        )
        | json_values,
    },
)
chunk = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(
            st.fixed_dictionaries(
                {}, optional={"delta": delta | json_values, "finish_reason": json_values}
            ),
            max_size=2,
        )
        | json_values,
        "usage": json_values,
        "error": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(chunk | json_values, max_size=5), cut=st.integers(0, 50))
def test_any_upstream_stream_translates_without_raising(chunks: list[Any], cut: int) -> None:
    raw = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    events = ResponseEvents({"model": "m", "input": "x"}, "resp_1", 0)
    out = events.start() + events.feed(raw[:cut]) + events.feed(raw[cut:]) + events.finish()
    assert out.endswith(b"\n\n") and events.response["status"] in (
        "completed",
        "incomplete",
        "failed",
    )
