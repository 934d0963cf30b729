"""Raw ASGI plumbing the endpoints share: find a route, read a bounded body, send JSON, send an
OpenAI error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from ownlm.gateway.wire import WireError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def find_route(
    routes: dict[tuple[str, str], ASGIApp], method: str, path: str
) -> tuple[ASGIApp | None, str]:
    """The handler of `method path` and the `{id}` it matched ("" for an exact route).

    A route ending in `/{id}` matches any rest of the path, so an id may hold a '/' (a model
    named `org/model`; the openai client sends it as `%2F`, which the server decodes).
    """
    handler = routes.get((method, path))
    if handler is not None:
        return handler, ""
    cut = path.find("/", 1)
    while cut != -1 and cut + 1 < len(path):
        handler = routes.get((method, path[:cut] + "/{id}"))
        if handler is not None:
            return handler, path[cut + 1 :]
        cut = path.find("/", cut + 1)
    return None, ""


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole request body; 413 as soon as it is known to pass `limit` bytes."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    msg = await receive()
    if msg["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = msg.get("body", b"")
    if not msg.get("more_body", False):
        if len(body) > limit:
            raise _too_large(len(body), limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        parts.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts)


def _too_large(size: int, limit: int) -> WireError:
    return WireError(
        413,
        f"request body of {size} bytes is over the gateway's limit of {limit} bytes; "
        "send less, or raise max_body_bytes in ownlm.yaml",
        code="request_too_large",
    )


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    """A whole response in two ASGI messages."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any) -> None:
    """`obj` as a JSON response."""
    await send_bytes(send, status, orjson.dumps(obj))


async def send_error(
    send: Send, err: WireError, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A WireError in the OpenAI error shape."""
    body = error_body(err.message, err.type, err.param, err.code)
    await send_bytes(send, err.status, body, [*err.headers, *(extra_headers or [])])


CLIENT_GONE = 499  # the trace status of a stream the client left (nginx's "client closed")
STREAM_DEADLINE = 504  # the trace status of a stream cut off at stream_deadline_s


async def relay(
    chunks: AsyncIterator[bytes],
    handle: Callable[[bytes], Awaitable[None]],
    receive: Receive,
    deadline_s: float,
) -> tuple[int, str] | None:
    """Pass each chunk of an upstream stream to `handle` until it ends. Stops reading (the
    caller closes the upstream) as soon as the client disconnects or the stream passes
    `deadline_s`; returns the trace's status and why it stopped early, None when the stream
    ended. An upstream's own exception propagates."""

    async def pump() -> None:
        async for chunk in chunks:
            await handle(chunk)

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    reading = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(client_gone())
    try:
        done, _ = await asyncio.wait(
            {reading, watching}, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watching.cancel()
    if reading in done:
        reading.result()
        return None
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    if watching in done:
        return CLIENT_GONE, "the client disconnected before the stream ended"
    return STREAM_DEADLINE, f"the stream passed stream_deadline_s ({deadline_s:g} s)"
