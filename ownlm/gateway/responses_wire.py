"""The Responses wire format against chat completions: request checks and translation both ways.

Pure functions of plain dicts, no I/O (cheap to test and to time, bench/responses_translation.py):

- `check_responses_request(body)`: a 400 naming the field (`param`) for a body the translation
  cannot take;
- `chat_request(body, history)`: a Responses request as a chat-completions request;
- `response_from_chat(completion, body, response_id, created_at)`: a chat reply as a Response
  (streamed replies: `responses_stream.ResponseEvents`).

Output items are valid input items, so `input_messages` turns both into chat messages (how a
stored response becomes the history of the next one).
"""

from __future__ import annotations

from typing import Any

import orjson

from ownlm.gateway.wire import WireError, usage_tokens

# Responses create fields. The ones chat also has under the same name pass through; the others
# are translated (input, instructions, tools, tool_choice, text, max_output_tokens, reasoning),
# read by the gateway (store, previous_response_id, metadata) or accepted and not acted on.
# A key outside this set is not a Responses field: it passes to the chat body untouched.
SAME_IN_CHAT = {
    "model",
    "stream",
    "temperature",
    "top_p",
    "user",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
}
RESPONSES_FIELDS = SAME_IN_CHAT | {
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "max_output_tokens",
    "reasoning",
    "store",
    "previous_response_id",
    "metadata",
    "include",
    "truncation",
    "stream_options",
    "top_logprobs",
    "max_tool_calls",
    "prompt_cache_retention",
    "prompt_cache_options",
    "background",
    "background_options",
    "conversation",
    "prompt",
    "context_management",
    "moderation",
    "image",
    "access_programs",
}
# Fields that would change the answer and that a chat upstream cannot do: refused, not ignored.
UNSUPPORTED = {
    "background": "background responses (the gateway answers in the request)",
    "conversation": "conversation objects (chain turns with previous_response_id)",
    "prompt": "stored prompt templates",
    "context_management": "server-side context compaction",
}
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _bad(param: str, want: str, got: Any) -> WireError:
    text = orjson.dumps(got, default=str).decode()[:80] if got is not None else "null"
    return WireError(400, f"'{param}' must be {want}, got {text}", param=param)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def as_dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def check_responses_request(body: dict[str, Any]) -> None:
    """Raise WireError (400) for a Responses body that cannot be translated; names the field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "a non-empty string", model)
    for name, what in UNSUPPORTED.items():
        if body.get(name) not in (None, False):
            raise WireError(
                400, f"'{name}' is not supported by the ownlm gateway: {what}", param=name
            )
    inp = body.get("input")
    if not isinstance(inp, str | list) or (isinstance(inp, list) and not inp):
        raise _bad("input", "a string or a non-empty array of input items", inp)
    input_messages(inp)  # raises on a bad item, naming it
    for name in ("instructions", "previous_response_id", "user"):
        v = body.get(name)
        if v is not None and not isinstance(v, str):
            raise _bad(name, "a string", v)
    for name in ("stream", "store", "parallel_tool_calls"):
        v = body.get(name)
        if v is not None and not isinstance(v, bool):
            raise _bad(name, "a boolean", v)
    for name in ("temperature", "top_p"):
        v = body.get(name)
        if v is not None and not _is_num(v):
            raise _bad(name, "a number", v)
    v = body.get("max_output_tokens")
    if v is not None and not (is_int(v) and v >= 1):
        raise _bad("max_output_tokens", "an integer >= 1", v)
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(x, str) for x in metadata.values())
    ):
        raise _bad("metadata", "an object of string values", metadata)
    reasoning = body.get("reasoning")
    if reasoning is not None and not (
        isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str | None)
    ):
        raise _bad("reasoning", "an object with a string 'effort'", reasoning)
    chat_tools(body.get("tools"))
    chat_tool_choice(body.get("tool_choice"))
    chat_text_options(body.get("text"))


def _content(content: Any, param: str, role: str) -> str | list[dict[str, Any]]:
    """A message's content as chat content: one text part becomes a string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(param, "a string or an array of content parts", content)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        kind = as_dict(part).get("type")
        if kind in ("input_text", "output_text", "refusal"):
            key = "refusal" if kind == "refusal" else "text"
            text = part.get(key)
            if not isinstance(text, str):
                raise _bad(f"{p}.{key}", "a string", text)
            parts.append({"type": "text", "text": text})
        elif kind == "input_image" and role == "user":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise _bad(f"{p}.image_url", "a URL or data: URL (file_id is not supported)", url)
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(f"{p}.type", "input_text, output_text, refusal or (user) input_image", kind)
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])  # the common case, and what every chat template reads
    return parts


def input_messages(inp: Any, param: str = "input") -> list[dict[str, Any]]:
    """Responses input (a string, or input/output items) as chat messages; 400 on a bad item."""
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    if not isinstance(inp, list):
        raise _bad(param, "a string or an array of input items", inp)
    out: list[dict[str, Any]] = []
    for i, item in enumerate(inp):
        p = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise _bad(p, "an input item object", item)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in ROLES:
                raise _bad(f"{p}.role", "user, assistant, system or developer", role)
            out.append(
                {
                    "role": ROLES[role],
                    "content": _content(item.get("content"), f"{p}.content", role),
                }
            )
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise _bad(f"{p}.{key}", "a string", item.get(key))
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            # parallel calls, and a call after the answer's text, are one assistant message
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"{p}.call_id", "a string", item.get("call_id"))
            output = _content(item.get("output"), f"{p}.output", "tool")
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        else:
            raise _bad(f"{p}.type", "message, function_call or function_call_output", kind)
    return out


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Responses function tools as chat tools; 400 for other tool types."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _bad("tools", "an array of tools", tools)
    out = []
    for i, tool in enumerate(tools):
        t = as_dict(tool)
        if t.get("type") != "function":
            raise _bad(
                f"tools[{i}].type", "'function' (the only tool type served here)", t.get("type")
            )
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise _bad(f"tools[{i}].name", "a non-empty string", t.get("name"))
        fn: dict[str, Any] = {"name": t["name"]}
        for key, ok in (("description", str), ("parameters", dict), ("strict", bool)):
            v = t.get(key)
            if v is None:
                continue
            if not isinstance(v, ok):
                raise _bad(f"tools[{i}].{key}", f"a {ok.__name__} or null", v)
            fn[key] = v
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: Any) -> str | dict[str, Any] | None:
    """Responses tool_choice as chat tool_choice."""
    if choice is None:
        return None
    if isinstance(choice, str) and choice in ("none", "auto", "required"):
        return choice
    c = as_dict(choice)
    if c.get("type") == "function" and isinstance(c.get("name"), str):
        return {"type": "function", "function": {"name": c["name"]}}
    raise _bad("tool_choice", "none, auto, required or {type: function, name}", choice)


def chat_text_options(text: Any) -> dict[str, Any]:
    """`text` (format, verbosity) as chat fields: response_format and verbosity."""
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise _bad("text", "an object", text)
    out: dict[str, Any] = {}
    if text.get("verbosity") is not None:
        if not isinstance(text["verbosity"], str):
            raise _bad("text.verbosity", "a string", text["verbosity"])
        out["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    if fmt is None:
        return out
    kind = as_dict(fmt).get("type")
    if kind == "text":
        return out
    if kind == "json_object":
        return {**out, "response_format": {"type": "json_object"}}
    if kind != "json_schema":
        raise _bad("text.format.type", "text, json_object or json_schema", kind)
    if not isinstance(fmt.get("name"), str) or not fmt["name"]:
        raise _bad("text.format.name", "a non-empty string", fmt.get("name"))
    if not isinstance(fmt.get("schema"), dict):
        raise _bad("text.format.schema", "a JSON schema object", fmt.get("schema"))
    schema: dict[str, Any] = {"name": fmt["name"], "schema": fmt["schema"]}
    for key, ok in (("description", str), ("strict", bool)):
        v = fmt.get(key)
        if v is not None:
            if not isinstance(v, ok):
                raise _bad(f"text.format.{key}", f"a {ok.__name__}", v)
            schema[key] = v
    return {**out, "response_format": {"type": "json_schema", "json_schema": schema}}


def chat_request(body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """A checked Responses body as a chat-completions body; `history`: the earlier turns."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        # per the reference, instructions are not carried over to a follow-up response
        messages.append({"role": "system", "content": body["instructions"]})
    messages.extend(history)
    messages.extend(input_messages(body["input"]))
    out = {k: v for k, v in body.items() if k in SAME_IN_CHAT or k not in RESPONSES_FIELDS}
    out["messages"] = messages
    tools = chat_tools(body.get("tools"))
    if tools:  # chat upstreams refuse tool_choice and parallel_tool_calls without tools
        out["tools"] = tools
        if body.get("tool_choice") is not None:
            out["tool_choice"] = chat_tool_choice(body["tool_choice"])
        if body.get("parallel_tool_calls") is not None:
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    out.update(chat_text_options(body.get("text")))
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    effort = as_dict(body.get("reasoning")).get("effort")
    if effort is not None:
        out["reasoning_effort"] = effort
    return out


def response_shell(
    body: dict[str, Any], response_id: str, created_at: float, status: str
) -> dict[str, Any]:
    """The Response object without output and usage: what the request set."""
    text = body.get("text")
    text = dict(text) if isinstance(text, dict) else {}
    text.setdefault("format", {"type": "text"})
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": body["model"],
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": as_dict(body.get("reasoning")).get("effort"), "summary": None},
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": text,
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def response_usage(completion: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage as Responses usage (input/output/total tokens and their details)."""
    usage = as_dict(as_dict(completion).get("usage"))
    if not usage:
        return None
    p, c = usage_tokens(completion)
    cached = as_dict(usage.get("prompt_tokens_details")).get("cached_tokens")
    reasoning = as_dict(usage.get("completion_tokens_details")).get("reasoning_tokens")
    return {
        "input_tokens": p,
        "input_tokens_details": {
            "cached_tokens": cached if is_int(cached) else 0,
            "cache_write_tokens": 0,  # chat usage does not say; required by the reference
        },
        "output_tokens": c,
        "output_tokens_details": {"reasoning_tokens": reasoning if is_int(reasoning) else 0},
        "total_tokens": p + c,
    }


def item_status(finish: Any) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(tid: str, k: int, call_id: Any, name: str, args: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{tid}_{k}",
        "call_id": call_id if isinstance(call_id, str) and call_id else f"call_{tid}_{k}",
        "name": name,
        "arguments": args,
        "status": status,
    }


def response_from_chat(
    completion: dict[str, Any], body: dict[str, Any], response_id: str, created_at: float
) -> dict[str, Any]:
    """A chat.completion (first choice) as the Response object of the Responses body `body`."""
    choices = completion.get("choices")
    choice = as_dict(choices[0]) if isinstance(choices, list) and choices else {}
    msg = as_dict(choice.get("message"))
    status, incomplete = item_status(choice.get("finish_reason"))
    tid = response_id.removeprefix("resp_")
    output: list[dict[str, Any]] = []
    parts = []
    if isinstance(msg.get("content"), str) and msg["content"]:
        parts.append(text_part(msg["content"]))
    if isinstance(msg.get("refusal"), str) and msg["refusal"]:
        parts.append({"type": "refusal", "refusal": msg["refusal"]})
    if parts:
        item = {"type": "message", "id": f"msg_{tid}", "status": status, "role": "assistant"}
        output.append({**item, "content": parts})
    calls = msg.get("tool_calls")
    for k, tc in enumerate(calls if isinstance(calls, list) else []):
        fn = as_dict(as_dict(tc).get("function"))
        name, args = fn.get("name"), fn.get("arguments")
        output.append(
            call_item(
                tid,
                k,
                as_dict(tc).get("id"),
                name if isinstance(name, str) else "",
                args if isinstance(args, str) else "",
                "completed",
            )
        )
    out = response_shell(body, response_id, created_at, status)
    out.update(output=output, incomplete_details=incomplete, usage=response_usage(completion))
    return out
