"""A streamed chat reply as the Responses SSE events (the translation of one stream).

`ResponseEvents` takes the chat chunks' SSE bytes as they arrive and gives the Responses events
the reference lists: response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta / .done,
response.function_call_arguments.delta / .done, response.content_part.done,
response.output_item.done, and response.completed (or .incomplete, .failed) with usage.
Each event is `event: <type>` plus `data: <json>` with a `sequence_number` from 0.
"""

from __future__ import annotations

from typing import Any

import orjson

from ownlm.gateway.responses_wire import (
    as_dict,
    call_item,
    is_int,
    item_status,
    response_shell,
    response_usage,
    text_part,
)


def completion_chunk(completion: dict[str, Any]) -> bytes:
    """A whole chat.completion as one SSE chunk (an upstream that did not stream)."""
    choices = completion.get("choices")
    choice = as_dict(choices[0]) if isinstance(choices, list) and choices else {}
    msg = as_dict(choice.get("message"))
    delta = {k: msg[k] for k in ("content", "refusal") if isinstance(msg.get(k), str)}
    calls = msg.get("tool_calls")
    delta["tool_calls"] = (
        [{**tc, "index": i} for i, tc in enumerate(calls or []) if isinstance(tc, dict)]
        if isinstance(calls, list)
        else []
    )
    chunk: dict[str, Any] = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}],
    }
    if isinstance(completion.get("usage"), dict):
        chunk["usage"] = completion["usage"]
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class ResponseEvents:
    """One stream's translation: chat SSE bytes in (`feed`), Responses SSE events out.

    `start()` gives response.created and response.in_progress; `feed()` the events of each
    chat chunk (an output item opens when its first delta arrives and closes when the next item
    opens); `finish(error)` closes the open item and gives response.completed (or .incomplete,
    .failed) with the whole Response, which `response` then holds.
    """

    def __init__(self, body: dict[str, Any], response_id: str, created_at: float) -> None:
        self.body = body
        self.response_id = response_id
        self.created_at = created_at
        self.tid = response_id.removeprefix("resp_")
        self.seq = 0
        self._tail = b""
        self.items: list[dict[str, Any]] = []  # output items in output order
        self._open: int | None = None  # output index of the item receiving deltas
        self._message: int | None = None  # output index of the open message, if any
        self._calls: dict[int, int] = {}  # chat tool-call index -> output index
        self._refusal = ""
        self._usage: dict[str, Any] | None = None
        self._finish: Any = None
        self._error: str | None = None
        self.response: dict[str, Any] = response_shell(body, response_id, created_at, "in_progress")

    def _event(self, type_: str, **fields: Any) -> bytes:
        obj = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    def start(self) -> bytes:
        """response.created and response.in_progress."""
        return self._event("response.created", response=self.response) + self._event(
            "response.in_progress", response=self.response
        )

    def feed(self, chunk: bytes) -> bytes:
        """The Responses events for the complete SSE lines in tail + chunk."""
        data = self._tail + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._tail = data
            return b""
        lines, self._tail = data[:cut], data[cut + 1 :]
        out = []
        for line in lines.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(self._chunk(obj))
        return b"".join(out)

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        if isinstance(obj.get("usage"), dict):
            self._usage = obj
        if isinstance(obj.get("error"), dict):
            self._error = str(obj["error"].get("message") or obj["error"])
        choices = obj.get("choices")
        ch = as_dict(choices[0]) if isinstance(choices, list) and choices else {}
        if ch.get("finish_reason") is not None:
            self._finish = ch["finish_reason"]
        delta = as_dict(ch.get("delta"))
        out = []
        text = delta.get("content")
        if isinstance(text, str) and text:
            out.append(self._text(text))
        if isinstance(delta.get("refusal"), str):
            self._refusal += delta["refusal"]  # reaches the client in output_item.done
        calls = delta.get("tool_calls")
        for tc in calls if isinstance(calls, list) else []:
            if isinstance(tc, dict):
                out.append(self._call(tc))
        return b"".join(out)

    def _open_message(self) -> bytes:
        """Open a message item with one output_text part, unless it is the open item."""
        if self._message is not None and self._open == self._message:
            return b""
        out = self._close()
        self._message = self._open = len(self.items)
        item = {"type": "message", "id": self._message_id(), "status": "in_progress"}
        self.items.append({**item, "role": "assistant", "content": []})
        out += self._event(
            "response.output_item.added", output_index=self._open, item=self.items[-1]
        )
        self.items[-1]["content"].append(text_part(""))
        return out + self._event(
            "response.content_part.added",
            item_id=item["id"],
            output_index=self._open,
            content_index=0,
            part=text_part(""),
        )

    def _text(self, text: str) -> bytes:
        out = self._open_message()
        assert self._message is not None
        item = self.items[self._message]
        item["content"][0]["text"] += text
        return out + self._event(
            "response.output_text.delta",
            item_id=item["id"],
            output_index=self._message,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _message_id(self) -> str:
        n = sum(1 for it in self.items if it["type"] == "message")
        return f"msg_{self.tid}" if n == 0 else f"msg_{self.tid}_{n}"

    def _call(self, tc: dict[str, Any]) -> bytes:
        k = tc.get("index")
        if not is_int(k):
            k = max(self._calls, default=0)
        fn = as_dict(tc.get("function"))
        name, args = fn.get("name"), fn.get("arguments")
        out = b""
        if k not in self._calls:
            out = self._close()
            self._calls[k] = self._open = len(self.items)
            self.items.append(call_item(self.tid, k, tc.get("id"), "", "", "in_progress"))
            if isinstance(name, str):
                self.items[-1]["name"] = name
                name = None
            out += self._event(
                "response.output_item.added", output_index=self._open, item=self.items[-1]
            )
        idx = self._calls[k]
        item = self.items[idx]
        if isinstance(name, str):
            item["name"] += name
        if isinstance(args, str) and args:
            # a delta for a call already closed (interleaved calls) still lands in the final
            # Response of response.completed
            item["arguments"] += args
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=idx,
                delta=args,
            )
        return out

    def _close(self, status: str = "completed") -> bytes:
        """The done events of the open item."""
        idx, self._open = self._open, None
        if idx is None:
            return b""
        item = self.items[idx]
        item["status"] = status
        out = b""
        if item["type"] == "message":
            self._message = None
            part = item["content"][0]
            out += self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=idx,
                content_index=0,
                text=part["text"],
                logprobs=[],
            )
            out += self._event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=idx,
                content_index=0,
                part=part,
            )
        else:
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=idx,
                arguments=item["arguments"],
            )
        return out + self._event("response.output_item.done", output_index=idx, item=item)

    def finish(self, error: str | None = None) -> bytes:
        """Close the open item; response.completed, .incomplete or .failed with the Response."""
        self.feed(b"\n")  # a last line without its newline
        error = error or self._error
        status, incomplete = item_status(self._finish)
        out = b""
        if self._refusal:  # the refusal sits in a message item (the chat reply had one)
            out = self._open_message()
            assert self._message is not None
            self.items[self._message]["content"].append(
                {"type": "refusal", "refusal": self._refusal}
            )
        out += self._close("incomplete" if status == "incomplete" else "completed")
        if error is not None:
            status, incomplete = "failed", None
        self.response = {
            **self.response,
            "status": status,
            "output": self.items,
            "incomplete_details": incomplete,
            "usage": response_usage(self._usage),
        }
        if error is not None:
            self.response["error"] = {"code": "server_error", "message": error}
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}
        return out + self._event(kind.get(status, "response.failed"), response=self.response)
