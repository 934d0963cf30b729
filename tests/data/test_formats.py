"""Trace -> message normalisation: parts joined, tool calls kept, unusable traces skipped."""

from __future__ import annotations

from typing import Any

import pytest

from ownlm.data.formats import (
    SkipTrace,
    answer_message,
    map_texts,
    message_text,
    normalize_message,
    prompt_messages,
    up_to_last_user,
)
from ownlm.store.schema import Trace


def test_content_parts_become_text_and_developer_becomes_system() -> None:
    msg = {
        "role": "developer",
        "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
    }
    assert normalize_message(msg) == {"role": "system", "content": "Be brief."}


def test_tool_call_arguments_object_becomes_string() -> None:
    msg = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}],
        "refusal": None,
    }
    assert normalize_message(msg) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
        ],
    }


def test_tool_message_keeps_its_call_id() -> None:
    msg = {"role": "tool", "tool_call_id": "c1", "content": "ok"}
    assert normalize_message(msg) == {"role": "tool", "content": "ok", "tool_call_id": "c1"}


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "non_text_content",
        ),
        ({"role": "wizard", "content": "hi"}, "unknown_role"),
        ({"role": "user", "content": None}, "malformed_message"),
        ("hello", "malformed_message"),
        ({"role": "tool", "content": "r"}, "malformed_message"),
        (
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
            "malformed_message",
        ),
        (
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"a": '}}],
            },
            "invalid_tool_arguments",
        ),
    ],
)
def test_unwritable_messages_are_skipped(msg: Any, reason: str) -> None:
    with pytest.raises(SkipTrace) as info:
        normalize_message(msg)
    assert info.value.args[0] == reason


def response(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


@pytest.mark.parametrize(
    ("resp", "reason"),
    [
        (None, "no_answer"),
        ({"choices": []}, "no_answer"),
        (response({"role": "assistant", "content": "cut"}, "length"), "answer_truncated"),
        (response({"role": "assistant", "content": "  "}), "empty_answer"),
        (response({"role": "assistant", "content": None}), "empty_answer"),
    ],
)
def test_unusable_answers(resp: dict[str, Any] | None, reason: str) -> None:
    with pytest.raises(SkipTrace) as info:
        answer_message(Trace(response=resp))
    assert info.value.args[0] == reason


def test_prompt_needs_messages() -> None:
    with pytest.raises(SkipTrace, match="no_messages"):
        prompt_messages(Trace(request={"model": "m"}))


def test_up_to_last_user_cuts_the_tool_loop() -> None:
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "content": "r", "tool_call_id": "c"},
    ]
    assert up_to_last_user(msgs) == msgs[:4]
    with pytest.raises(SkipTrace):
        up_to_last_user(msgs[:1])


def test_message_text_includes_tool_calls() -> None:
    msgs = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
        }
    ]
    assert message_text(msgs) == "assistant: \ncall f({})"


def test_map_texts_skips_structure_keys() -> None:
    obj = {
        "role": "user",
        "content": "hi",
        "tool_calls": [{"id": "x", "function": {"name": "n", "arguments": "a"}}],
    }
    out = map_texts(obj, str.upper, skip_keys=frozenset({"role", "id", "name"}))
    assert out == {
        "role": "user",
        "content": "HI",
        "tool_calls": [{"id": "x", "function": {"name": "n", "arguments": "A"}}],
    }
