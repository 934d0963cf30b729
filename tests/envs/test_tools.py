"""Tool-call text format: render, parse back, and every malformed call raises a clear error."""

from __future__ import annotations

import pytest

from ownlm.envs.tools import (
    ToolCall,
    ToolCallError,
    function_tool,
    parse_tool_call,
    render_tool_call,
    render_tools,
)

TOOLS = [
    function_tool("search", "find documents", {"query": ("string", "words")}, ["query"]),
    function_tool("open", "read one", {"doc_id": ("integer", "an id")}, ["doc_id"]),
]


def test_render_then_parse_round_trips() -> None:
    call = ToolCall("open", {"doc_id": 12})
    text = "Let me read it. " + render_tool_call(call)
    assert parse_tool_call(text, TOOLS) == call


def test_parse_without_close_tag_and_with_string_arguments() -> None:
    # the sampler cuts the close tag; OpenAI sends arguments as a JSON string
    text = '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"acme\\"}"}'
    assert parse_tool_call(text, TOOLS) == ToolCall("search", {"query": "acme"})


def test_parse_takes_the_last_call_and_ignores_trailing_text() -> None:
    text = (
        '<tool_call>{"name": "open", "arguments": {"doc_id": 1}}</tool_call> '
        '<tool_call>{"name": "open", "arguments": {"doc_id": 2}} thanks</tool_call>'
    )
    assert parse_tool_call(text, TOOLS) == ToolCall("open", {"doc_id": 2})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('<tool_call>{"name": "search", "arguments": {"query": }</tool_call>', "not valid JSON"),
        ('<tool_call>{"name": "browse", "arguments": {}}</tool_call>', "unknown tool 'browse'"),
        ('<tool_call>{"name": "search", "arguments": {}}</tool_call>', "missing argument 'query'"),
        ('<tool_call>{"name": "open", "arguments": {"doc_id": "7"}}', "must be integer, got str"),
        ('<tool_call>{"name": "open", "arguments": {"id": 7}}', "missing argument 'doc_id'"),
        ('<tool_call>["search"]</tool_call>', "must be a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'no "name"'),
        ("no call here", "no <tool_call>"),
    ],
)
def test_malformed_calls_raise_with_what_was_wrong(text: str, message: str) -> None:
    with pytest.raises(ToolCallError, match=message):
        parse_tool_call(text, TOOLS)


def test_render_tools_lists_each_tool_and_the_format() -> None:
    text = render_tools(TOOLS)
    assert "- search(query: string): find documents" in text.splitlines()
    assert "- open(doc_id: integer): read one" in text
    assert '<tool_call>{"name": "search", "arguments": {...}}</tool_call>' in text
