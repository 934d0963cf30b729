"""The OpenAI Responses API on chat upstreams: POST /v1/responses, GET /v1/responses/{id}.

`create` reads like `Gateway.chat_completions`: parse the body → authenticate → the history
of `previous_response_id` → translate to a chat request (`responses_wire.chat_request`) →
`router.decide` → call upstream (the gateway's retries, fallbacks and escalation) → translate
the reply back (whole, or event by event with `responses_stream.ResponseEvents`) →
`record(trace)`. The trace is a chat trace with endpoint "responses": its request is the
Responses body as received, its response the chat reply, so tokens and cost are counted as
for a chat.

Stored responses live in the trace store: `resp_<trace_id>` is rebuilt from its trace, so
`GET /v1/responses/{id}` and `previous_response_id` work after a restart. The last
MEMORY_RESPONSES responses are also kept in memory, so a follow-up call does not wait for the
trace writer's next batch. A response is visible only to the API key that created it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ownlm.gateway.asgi import Receive, Scope, Send, read_body, send_bytes, send_error
from ownlm.gateway.responses_stream import ResponseEvents, completion_chunk
from ownlm.gateway.responses_wire import (
    chat_request,
    check_responses_request,
    input_messages,
    response_from_chat,
)
from ownlm.gateway.upstream import UpstreamResponse
from ownlm.gateway.wire import WireError

if TYPE_CHECKING:
    from ownlm.gateway.app import Gateway

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
RESPONSE_ID = re.compile(r"^resp_([0-9a-f]{32})$")
MEMORY_RESPONSES = 1024  # recent responses kept in memory; older ones are read from the store
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


@dataclass(frozen=True)
class StoredResponse:
    """A response as kept: who made it, the Responses body it answered and the Response."""

    key_id: str | None
    request: dict[str, Any]
    response: dict[str, Any]


class ResponsesAPI:
    """The Responses endpoints of one gateway, with their memory of recent responses."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.recent: OrderedDict[str, StoredResponse] = OrderedDict()

    async def create(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/responses, whole or streamed."""
        gw = self.gw
        t0 = time.perf_counter()
        headers = dict(scope["headers"])
        key_id = await gw.authenticate(headers)  # before the body is read
        body = gw.parse_body(await read_body(receive, headers, gw.cfg.max_body_bytes))
        check_responses_request(body)
        alias = gw.check_alias(body["model"])
        history = await self.history(body.get("previous_response_id"), key_id)
        chat = chat_request(body, history)
        messages = chat["messages"]
        trace = await gw.routed_trace(t0, "responses", alias, body, headers, messages, key_id)
        decision = trace.decision
        tid = [(b"x-ownlm-trace-id", trace.trace_id.encode())]
        rid = "resp_" + trace.trace_id
        stream = body.get("stream") is True
        if stream:  # usage prices the call and goes into response.completed
            chat["stream_options"] = {"include_usage": True}
        reply = await gw.answer(decision.variant, chat, stream, trace, send, tid)
        if reply is None:
            return
        chunks: list[bytes] = []
        if isinstance(reply, UpstreamResponse):
            completion = _completion(reply)
            if completion is None:  # an upstream error (its own body) or a reply not JSON
                trace.finish(reply.status, reply.body)
                gw.record(trace)
                if reply.status == 200:
                    message = "the upstream's chat reply is not a JSON object; retry"
                    await send_error(send, WireError(502, message, type_="upstream_error"), tid)
                    return
                ctype = reply.content_type.encode()
                await send_bytes(send, reply.status, reply.body, tid, ctype)
                return
            if not stream:
                response = response_from_chat(completion, body, rid, trace.created_at)
                self.keep(rid, key_id, body, response)
                trace.finish(200, reply.body)
                await send_bytes(send, 200, orjson.dumps(response), tid)
                gw.record(trace)
                return
            chunks = [completion_chunk(completion)]  # asked to stream, answered whole
        events = ResponseEvents(body, rid, trace.created_at)
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + tid})
        await send({"type": "http.response.body", "body": events.start(), "more_body": True})
        error, status = None, 200
        if chunks:
            trace.ttft_ms = (time.perf_counter() - t0) * 1000.0
            out = events.feed(chunks[0])
            await send({"type": "http.response.body", "body": out, "more_body": True})
        else:
            assert not isinstance(reply, UpstreamResponse)

            async def forward_chunk(chunk: bytes) -> None:
                if not chunks:
                    trace.ttft_ms = (time.perf_counter() - t0) * 1000.0
                chunks.append(chunk)
                if out := events.feed(chunk):
                    await send({"type": "http.response.body", "body": out, "more_body": True})

            status, error = await gw.relay_upstream(reply, forward_chunk, receive)
        last = events.finish(error)
        if events.response["status"] != "failed":
            self.keep(rid, key_id, body, events.response)
        await send({"type": "http.response.body", "body": last, "more_body": False})
        trace.finish(status, chunks, error=error)
        gw.record(trace)

    async def retrieve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /v1/responses/{id}: a stored response."""
        key_id = await self.gw.authenticate(dict(scope["headers"]))
        rid = scope["path"].rsplit("/", 1)[1]
        stored = await self.find(rid, key_id)
        if stored is None:
            raise WireError(
                404,
                f"no stored response with id '{rid[:80]}' (responses created with store: false "
                "are not kept)",
                code="response_not_found",
            )
        await send_bytes(send, 200, orjson.dumps(stored.response))

    # -- stored responses --------------------------------------------------------------------

    def keep(
        self, rid: str, key_id: str | None, body: dict[str, Any], response: dict[str, Any]
    ) -> None:
        """Remember a response (unless the request said store: false)."""
        if body.get("store") is False:
            return
        self.recent[rid] = StoredResponse(key_id, body, response)
        if len(self.recent) > MEMORY_RESPONSES:
            self.recent.popitem(last=False)

    async def find(self, rid: str, key_id: str | None) -> StoredResponse | None:
        """The stored response with this id made with this key: from memory, else the store."""
        stored = self.recent.get(rid)
        if stored is None:
            stored = await asyncio.to_thread(self.load, rid)
            if stored is not None:
                self.keep(rid, stored.key_id, stored.request, stored.response)
        if stored is None or stored.key_id != key_id:
            return None
        return stored

    def load(self, rid: str) -> StoredResponse | None:
        """Rebuild a response from its trace (runs in a thread)."""
        m = RESPONSE_ID.match(rid)
        gw = self.gw
        if m is None or gw.store is None or gw.writer is None:
            return None
        trace_id = m.group(1)
        if gw.writer.is_pending(trace_id):
            gw.writer.flush()
        trace = gw.store.get_trace(trace_id)
        if (
            trace is None
            or trace.endpoint != "responses"
            or trace.status != 200
            or trace.error is not None
            or trace.request.get("store") is False
        ):
            return None
        response = response_from_chat(trace.response or {}, trace.request, rid, trace.created_at)
        return StoredResponse(trace.key_id, trace.request, response)

    async def history(self, rid: str | None, key_id: str | None) -> list[dict[str, Any]]:
        """The chat messages of the conversation up to and including response `rid`."""
        turns: list[StoredResponse] = []
        while rid is not None:  # no loops: a response can only name an older one
            stored = await self.find(rid, key_id)
            if stored is None:
                which = "" if not turns else f" (an earlier turn of {turns[0].response['id']})"
                raise WireError(
                    400,
                    f"previous response '{rid[:80]}'{which} is not found: it was made with "
                    "store: false, by another key, or never",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            turns.append(stored)
            rid = stored.request.get("previous_response_id")
        messages: list[dict[str, Any]] = []
        for turn in reversed(turns):
            messages.extend(input_messages(turn.request["input"]))
            messages.extend(input_messages(turn.response["output"]))
        return messages


def _completion(reply: UpstreamResponse) -> dict[str, Any] | None:
    """The chat.completion of a 200 reply, None for an error or a body that is not one."""
    if reply.status != 200:
        return None
    try:
        completion = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return None
    return completion if isinstance(completion, dict) else None


def routes(gw: Gateway) -> dict[tuple[str, str], Handler]:
    """The Responses endpoints, bound to a gateway (`{id}`: the last path segment)."""
    api = ResponsesAPI(gw)
    return {
        ("POST", "/v1/responses"): api.create,
        ("GET", "/v1/responses/{id}"): api.retrieve,
    }
