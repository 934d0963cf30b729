"""Rows an export writes, built from traces: SFT chats, preference pairs, RL prompts.

SFT (`sft_*.jsonl`), OpenAI's chat fine-tuning format, one conversation per line:
    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str|null, ...}],
     "tools": [...]}                  # only when the request had tools
  The request's messages, then the answer (`choices[0].message` of the response). An assistant
  message may carry `tool_calls: [{"id", "type": "function", "function": {"name",
  "arguments": str}}]` with `content` null or a string; a tool message carries `tool_call_id`.
Pairs (`pairs_*.jsonl`), TRL's conversational preference format:
    {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}
RL prompts (`rl_*.jsonl`), `ownlm.jsonl.PromptRow` (export writes it, `ownlm/envs/prompt_set.py`
reads it):
    {"id": str,                       # the trace id
     "messages": [messages],          # the request's messages up to and with the last user turn
     "answer": str | null,            # trace.metadata[rl.answer_key], redacted like the text
     "verifier": str,                 # rl.verifier from the config, e.g. "reasoning_gym:chain_sum"
     "metadata": {"alias": str, "created_at": float, "tags": [str]}}

Responses API traces (`endpoint: responses`) are exported the same way: the gateway stores the
request as the client sent it and the reply as the chat completion the upstream gave, so the
prompt is the Responses input as chat messages (instructions, the earlier turns of
`previous_response_id`, the input items) and the answer is that completion's message.

Messages are normalised before anything else: a content given as a list of parts becomes the
joined text of its text parts ("developer" becomes "system"); keys other than role, content,
name, tool_calls and tool_call_id are dropped. A trace that cannot be written faithfully (an
image part, an unknown role, a tool call without id or with arguments that are not JSON, no
answer, an answer cut by max_tokens) is skipped with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ownlm.store.schema import Trace

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")


class SkipTrace(Exception):
    """A trace that cannot become a row; args[0] is the reason counted in the manifest."""


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise SkipTrace("non_text_content")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise SkipTrace("malformed_message")


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list) or not calls:
        raise SkipTrace("malformed_message")
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise SkipTrace("malformed_message")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise SkipTrace("malformed_message")  # a result could not name its call
        args = fn.get("arguments", "")
        if not isinstance(args, str):  # some clients send an object; OpenAI's format is a string
            args = json.dumps(args, ensure_ascii=False)
        try:
            json.loads(args)
        except json.JSONDecodeError:
            raise SkipTrace("invalid_tool_arguments") from None  # e.g. cut by max_tokens
        out.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return out


def normalize_message(msg: Any) -> Message:
    """One message in the exported shape, or SkipTrace."""
    if not isinstance(msg, dict):
        raise SkipTrace("malformed_message")
    role = "system" if msg.get("role") == "developer" else msg.get("role")
    if role not in ROLES:
        raise SkipTrace("unknown_role")
    out: Message = {"role": role, "content": _text(msg.get("content"))}
    if role == "assistant" and msg.get("tool_calls"):
        out["tool_calls"] = _tool_calls(msg["tool_calls"])
    elif out["content"] is None:
        if role != "assistant":
            raise SkipTrace("malformed_message")
        raise SkipTrace("empty_answer")
    if role == "tool":
        if not isinstance(msg.get("tool_call_id"), str) or not msg["tool_call_id"]:
            raise SkipTrace("malformed_message")
        out["tool_call_id"] = msg["tool_call_id"]
    if isinstance(msg.get("name"), str) and role in ("system", "user", "assistant"):
        out["name"] = msg["name"]
    return out


def prompt_messages(trace: Trace, earlier: dict[str, list[Message]] | None = None) -> list[Message]:
    """The request's messages, normalised. A Responses API trace's input items become chat
    messages as the gateway sent them upstream: its instructions first, then the conversation
    of `previous_response_id` (from `earlier`: trace id -> that turn's messages and answer, of
    the Responses traces read before it), then its own input."""
    if trace.endpoint == "responses":
        return _responses_prompt(trace.request, earlier or {})
    messages = trace.request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SkipTrace("no_messages")
    return [normalize_message(m) for m in messages]


def _responses_prompt(request: dict[str, Any], earlier: dict[str, list[Message]]) -> list[Message]:
    out: list[Message] = []
    if isinstance(request.get("instructions"), str) and request["instructions"]:
        out.append({"role": "system", "content": request["instructions"]})
    previous = request.get("previous_response_id")
    if previous is not None:
        turn = earlier.get(str(previous).removeprefix("resp_"))
        if turn is None:  # not read (before `since`, or stored with store: false)
            raise SkipTrace("previous_response_missing")
        out.extend(turn)
    own = responses_input(request.get("input"))
    if not own:
        raise SkipTrace("no_messages")
    return out + own


def responses_input(inp: Any) -> list[Message]:
    """Responses input (a string, or message / function_call / function_call_output items) as
    normalised chat messages; SkipTrace for what a chat cannot hold (an image, a file)."""
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    if not isinstance(inp, list):
        raise SkipTrace("malformed_message")
    out: list[Message] = []
    for item in inp:
        if not isinstance(item, dict):
            raise SkipTrace("malformed_message")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                texts = []
                for part in content:
                    if not isinstance(part, dict) or part.get("type") not in (
                        "input_text", "output_text"
                    ):  # fmt: skip
                        raise SkipTrace("non_text_content")
                    texts.append({"type": "text", "text": part.get("text", "")})
                content = texts
            out.append(normalize_message({"role": item.get("role"), "content": content}))
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].extend(_tool_calls([call]))  # parallel calls: one message
            else:
                out.append(normalize_message({"role": "assistant", "tool_calls": [call]}))
        elif kind == "function_call_output":
            output = item.get("output")
            out.append(
                normalize_message(
                    {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}
                )
            )
        else:
            raise SkipTrace("non_text_content")
    return out


def answer_message(trace: Trace) -> Message:
    """The response's first choice as an assistant message; SkipTrace when cut or missing."""
    choices = (trace.response or {}).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise SkipTrace("no_answer")
    if choices[0].get("finish_reason") == "length":
        raise SkipTrace("answer_truncated")
    msg = normalize_message(choices[0].get("message"))
    if msg["role"] != "assistant":
        raise SkipTrace("no_answer")
    if not msg.get("tool_calls") and not (msg["content"] or "").strip():
        raise SkipTrace("empty_answer")
    return msg


def request_tools(trace: Trace) -> list[dict[str, Any]] | None:
    """The request's `tools` list when it has one (function tools as chat sends them; a
    Responses API tool `{type, name, description, parameters}` in that shape too)."""
    tools = trace.request.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    if trace.endpoint != "responses":
        return tools
    out = []
    for t in tools:
        if not isinstance(t, dict) or t.get("type") != "function":
            raise SkipTrace("non_function_tool")
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
        out.append({"type": "function", "function": fn})
    return out


def up_to_last_user(messages: list[Message]) -> list[Message]:
    """The messages up to and with the last user turn; SkipTrace when there is none."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            return messages[: i + 1]
    raise SkipTrace("no_user_turn")


def message_text(messages: list[Message]) -> str:
    """The messages as one string for dedupe: role, content and tool call arguments."""
    parts = []
    for m in messages:
        parts.append(f"{m['role']}: {m['content'] or ''}")
        for call in m.get("tool_calls", ()):
            parts.append(f"call {call['function']['name']}({call['function']['arguments']})")
    return "\n".join(parts)


def dedupe_text(messages: list[Message]) -> str:
    """The text duplicates are judged on: the messages without system turns.

    Apps send one long system prompt with every request; kept in, it would make every pair of
    prompts look alike.
    """
    return message_text([m for m in messages if m["role"] != "system"])


def map_texts(obj: Any, fn: Callable[[str], str], *, skip_keys: frozenset[str]) -> Any:
    """A copy of a JSON value with fn applied to every string not under a key in skip_keys."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [map_texts(v, fn, skip_keys=skip_keys) for v in obj]
    if isinstance(obj, dict):
        return {
            k: v if k in skip_keys else map_texts(v, fn, skip_keys=skip_keys)
            for k, v in obj.items()
        }
    return obj
