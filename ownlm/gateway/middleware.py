"""Raw ASGI middleware: small callables wrapping the app (Starlette's `middleware/` shape).

`ErrorShield` wraps the gateway: an exception that escapes an endpoint is an ownlm bug, so it is
logged with its traceback and answered as a 500 in the OpenAI error shape (never a bare
traceback). Client mistakes never reach it; endpoints answer those with 4xx themselves.

`Cors`, outermost and only when `cors_origins` is set, lets browser apps call the gateway: it
answers preflights itself (before any key check: browsers send none) and adds the CORS headers to
every response for an allowed origin, errors and streams included.
"""

from __future__ import annotations

import logging

from ownlm.gateway.asgi import ASGIApp, Message, Receive, Scope, Send, send_bytes
from ownlm.gateway.wire import error_body

log = logging.getLogger("ownlm.gateway")


class ErrorShield:
    """Turn an unexpected exception into a logged 500 with an OpenAI error body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:  # the one place a bug becomes a 500 (see module docstring)
            log.exception("bug while serving %s %s", scope.get("method"), scope.get("path"))
            if started:
                return
            body = error_body(
                f"internal error in the ownlm gateway ({type(err).__name__}); this is a bug, "
                "the gateway log has the traceback",
                "server_error",
            )
            await send_bytes(send, 500, body)


CORS_METHODS = b"GET, POST, OPTIONS"
CORS_HEADERS = b"authorization, api-key, content-type"  # when a preflight names none
CORS_EXPOSE = b"x-ownlm-trace-id, retry-after"


class Cors:
    """CORS for the origins in `cors_origins` ('*': any): preflights answered with 204."""

    def __init__(self, app: ASGIApp, origins: list[str], max_age_s: int) -> None:
        self.app = app
        self.any_origin = "*" in origins
        self.origins = frozenset(o.encode() for o in origins)
        self.max_age = str(max_age_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = asked_method = asked_headers = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                asked_method = value
            elif name == b"access-control-request-headers":
                asked_headers = value
        if origin is None:  # not a cross-origin browser request
            await self.app(scope, receive, send)
            return
        allowed = self.any_origin or origin in self.origins
        allow_origin = (b"access-control-allow-origin", b"*" if self.any_origin else origin)
        if scope["method"] == "OPTIONS" and asked_method is not None:
            if not allowed:
                text = origin.decode("latin-1")[:200]
                body = error_body(
                    f"origin '{text}' may not call this gateway from a browser; add it to "
                    "cors_origins in ownlm.yaml",
                    "permission_error",
                    code="cors_origin_not_allowed",
                )
                await send_bytes(send, 403, body)
                return
            headers = [
                allow_origin,
                (b"access-control-allow-methods", CORS_METHODS),
                (b"access-control-allow-headers", asked_headers or CORS_HEADERS),
                (b"access-control-max-age", self.max_age),
                (b"vary", b"Origin, Access-Control-Request-Headers"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if not allowed:  # served, without CORS headers: the browser keeps the reply from the page
            await self.app(scope, receive, send)
            return
        extra = [
            allow_origin,
            (b"access-control-expose-headers", CORS_EXPOSE),
            (b"vary", b"Origin"),
        ]

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, cors_send)
