"""Wire-format helpers on hand-made inputs: stream reassembly, request checks, labels."""

from __future__ import annotations

import orjson
import pytest

from ownlm.gateway.config import LabelLimits
from ownlm.gateway.tracing import request_labels
from ownlm.gateway.wire import (
    UsageEventFilter,
    WireError,
    check_chat_request,
    prompt_text,
    reassemble_stream,
    usage_tokens,
)


def sse(*objs: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs) + b"data: [DONE]\n\n"


def test_reassemble_two_choices_tool_call_and_usage() -> None:
    raw = sse(
        {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {
            "choices": [
                {"index": 0, "delta": {"content": "Hel"}},
                {"index": 1, "delta": {"content": "A"}},
            ]
        },
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {
            "choices": [
                {
                    "index": 1,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "t1", "function": {"name": "f", "arguments": '{"a"'}}
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 1,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
                    "finish_reason": "tool_calls",
                }
            ]
        },
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}},
    )
    # split mid-event: reassembly works on the joined bytes, whatever the chunking
    out = reassemble_stream(raw[:17] + raw[17:])
    assert (out["id"], out["model"]) == ("c1", "m")
    c0, c1 = out["choices"]
    assert (c0["message"]["content"], c0["finish_reason"]) == ("Hello", "stop")
    call = c1["message"]["tool_calls"][0]
    assert (call["id"], call["function"]["name"], call["function"]["arguments"]) == (
        "t1",
        "f",
        '{"a": 1}',
    )
    assert c1["message"]["content"] == "A" and c1["finish_reason"] == "tool_calls"
    assert usage_tokens(out) == (4, 3)


def test_reassemble_ignores_garbage() -> None:
    out = reassemble_stream(b"data: {bad\n\n: comment\n\ndata: 5\n\ndata: [DONE]\n\n")
    assert out["choices"] == [] and usage_tokens(out) == (0, 0)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user"}], "stream": "yes"}, "stream"),
        ({"model": "m", "messages": [{"role": "user"}], "max_tokens": True}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user"}], "stop": ["a", 1]}, "stop"),
        ({"model": "m", "messages": [{"role": "user"}], "metadata": {"a": 1}}, "metadata"),
    ],
)
def test_check_chat_request_names_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(WireError) as info:
        check_chat_request(body)
    assert info.value.status == 400 and info.value.param == param


def test_check_chat_request_accepts_unknown_fields() -> None:
    check_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "zz": [1]})


def test_prompt_text_and_labels() -> None:
    msgs = [{"role": "system", "content": "a"}, {"role": "user", "content": [{"text": "b"}, 3]}]
    assert prompt_text(msgs) == "a\nb"
    body = {"user": "u", "metadata": {"session_id": "s", "tags": "x, y", "tier": "pro"}}
    headers = {b"x-ownlm-tags": b"z", b"x-ownlm-tag-team": b"red", b"x-ownlm-user": b"other"}
    user, session, tags, meta = request_labels(body, headers, LabelLimits())
    assert (user, session, tags) == ("u", "s", ["z", "x", "y"])
    assert meta == {"session_id": "s", "tags": "x, y", "tier": "pro", "team": "red"}


def test_usage_event_filter_across_chunk_boundaries() -> None:
    a = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    u = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'
    done = b"data: [DONE]\n\n"
    raw = a + u + done
    for cut in range(1, len(raw)):
        f = UsageEventFilter()
        out = f.feed(raw[:cut]) + f.feed(raw[cut:]) + f.flush()
        assert out == a + done, cut
