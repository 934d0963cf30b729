"""Raw ASGI middleware: small callables wrapping the app (Starlette's `middleware/` shape).

`ErrorShield` is the outermost layer: an exception that escapes an endpoint is an ownlm bug, so
it is logged with its traceback and answered as a 500 in the OpenAI error shape (never a bare
traceback). Client mistakes never reach it; endpoints answer those with 4xx themselves.
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
