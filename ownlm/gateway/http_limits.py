"""Limits on a request's head, before the ASGI app sees it: uvicorn's httptools protocol plus a
header-size bound and a header deadline.

uvicorn parses headers with no size bound and no time bound, and closes an idle keep-alive
connection only after a first request: a client that sends 1 MB of headers, trickles them a
byte at a time (slowloris), or connects and says nothing, holds memory and a connection for as
long as it likes. Here a connection whose request head (request line and headers) passes
`max_header_bytes` gets a 431 and is closed; one whose head is not complete `header_timeout_s`
after the connection opened (or after the previous response) gets a 408 and is closed. Bodies
are bounded by the app (`max_body_bytes`), idle keep-alive by uvicorn (`timeout_keep_alive`).
Hand-written because uvicorn has no such settings (h11's `h11_max_incomplete_event_size` bounds
only the slower h11 parser); it is a subclass that adds three hooks, nothing else.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with `max_header_bytes` and `header_timeout_s`."""

    max_header_bytes = 65536
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # bytes read while the head is incomplete (bounds the buffer)
        self._header_bytes = 0  # the head's own size, from the parser (exact)
        self._in_head = True
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # still inside the head after this read: the bytes so far are all request line + headers
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse(431, f"request headers over {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_bytes = 0
        if self._head_timer is None:
            self._start_head_clock()

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._stop_head_clock()
        if self._header_bytes > self.max_header_bytes:  # the whole head came in one read
            self._refuse(431, f"request headers over {self.max_header_bytes} bytes")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _start_head_clock(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(408, f"request headers not complete within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        if self.transport is None or self.transport.is_closing():
            return
        body = message.encode()
        self.transport.write(
            STATUS_LINE[status]
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: " + str(len(body)).encode() + b"\r\n"
            + b"connection: close\r\n\r\n" + body
        )  # fmt: skip
        self.transport.close()


def guarded_protocol(max_header_bytes: int, header_timeout_s: float) -> type[GuardedHttpTools]:
    """The protocol class with these limits (uvicorn takes a class as `http`)."""
    return type(
        "GuardedHttpTools",
        (GuardedHttpTools,),
        {"max_header_bytes": max_header_bytes, "header_timeout_s": header_timeout_s},
    )
