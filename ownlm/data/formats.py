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


def prompt_messages(trace: Trace) -> list[Message]:
    """The request's messages, normalised."""
    messages = trace.request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SkipTrace("no_messages")
    return [normalize_message(m) for m in messages]


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
    """The request's `tools` list when it has one (function tools, as sent)."""
    tools = trace.request.get("tools")
    return tools if isinstance(tools, list) and tools else None


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
