"""Tool calls written in the chat text: render the tool list, parse and check a call.

SmolLM2's chat template has no tool format, so ownlm uses the Hermes/Qwen one in plain text:

    <tool_call>{"name": "search", "arguments": {"query": "Velmora Systems"}}</tool_call>

The system prompt lists the tools (OpenAI function schemas, shown compactly) and this format;
the sampler stops at `</tool_call>`; `parse_tool_call` reads the last call in an assistant turn.
Anything wrong (bad JSON, unknown tool, missing or mistyped argument) raises `ToolCallError`,
whose message goes back to the model as the tool result, so the episode goes on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
Tool = dict[str, Any]  # OpenAI tool schema: {"type": "function", "function": {...}}

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class ToolCallError(ValueError):
    """A tool call that cannot run; the message is shown to the model as the tool result."""


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool by name with JSON arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def function_tool(
    name: str, description: str, params: dict[str, tuple[str, str]], required: list[str]
) -> Tool:
    """An OpenAI tool schema; params maps name -> (JSON type, description)."""
    properties = {k: {"type": t, "description": d} for k, (t, d) in params.items()}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


def render_tool_call(call: ToolCall) -> str:
    """The text an assistant writes to make a call (what `parse_tool_call` reads back)."""
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def render_tools(tools: list[Tool]) -> str:
    """The tool list and call format for a system prompt, one line per tool."""
    lines = []
    for tool in tools:
        fn = tool["function"]
        props = fn.get("parameters", {}).get("properties", {})
        args = ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in props.items())
        lines.append(f"- {fn['name']}({args}): {fn.get('description', '')}")
    example = tools[0]["function"]["name"] if tools else "tool"
    return (
        "Tools:\n"
        + "\n".join(lines)
        + f'\nCall a tool with {TOOL_CALL_OPEN}{{"name": "{example}", "arguments": '
        f"{{...}}}}{TOOL_CALL_CLOSE}"
    )


def has_tool_call(text: str) -> bool:
    """Whether an assistant turn opens a tool call."""
    return TOOL_CALL_OPEN in text


def parse_tool_call(text: str, tools: list[Tool]) -> ToolCall:
    """The last tool call in an assistant turn, checked against the tool schemas.

    The close tag may be missing (the sampler cuts at it). Accepts OpenAI's `arguments` given as
    a JSON string, and `parameters` for `arguments`. Raises ToolCallError with what was wrong.
    """
    start = text.rfind(TOOL_CALL_OPEN)
    if start < 0:
        raise ToolCallError(f"no {TOOL_CALL_OPEN} in the message")
    body = text[start + len(TOOL_CALL_OPEN) :]
    end = body.find(TOOL_CALL_CLOSE)
    body = _FENCE.sub("", (body if end < 0 else body[:end]).strip())
    obj = _load_object(body)
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as err:
            raise ToolCallError(f"arguments is not valid JSON ({err.msg})") from err
    if not isinstance(name, str) or not name:
        raise ToolCallError('the call has no "name"; write {"name": ..., "arguments": {...}}')
    if not isinstance(args, dict):
        raise ToolCallError(f'"arguments" must be an object, got {type(args).__name__}')
    call = ToolCall(name=name, arguments=args)
    check_arguments(call, tools)
    return call


def _load_object(body: str) -> dict[str, Any]:
    """The JSON object in body; falls back to its first balanced {...} (trailing text ignored)."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as err:
        obj = None
        first = body.find("{")
        if first >= 0:
            try:
                obj, _ = json.JSONDecoder().raw_decode(body[first:])
            except json.JSONDecodeError:
                obj = None
        if obj is None:
            raise ToolCallError(f"the tool call is not valid JSON ({err.msg})") from err
    if not isinstance(obj, dict):
        raise ToolCallError(f"the tool call must be a JSON object, got {type(obj).__name__}")
    return obj


def check_arguments(call: ToolCall, tools: list[Tool]) -> None:
    """Raise ToolCallError for an unknown tool, a missing required or a mistyped argument."""
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    fn = by_name.get(call.name)
    if fn is None:
        raise ToolCallError(f"unknown tool '{call.name}'; available: {', '.join(sorted(by_name))}")
    schema = fn.get("parameters", {})
    props = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in call.arguments:
            raise ToolCallError(f"{call.name}: missing argument '{key}'")
    for key, value in call.arguments.items():
        if key not in props:
            raise ToolCallError(
                f"{call.name}: unknown argument '{key}'; expected {', '.join(sorted(props))}"
            )
        expected = props[key].get("type")
        kinds = _JSON_TYPES.get(expected, (object,))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ToolCallError(
                f"{call.name}: argument '{key}' must be {expected}, got {type(value).__name__}"
            )
