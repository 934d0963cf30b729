"""Serve an aiohttp app on 127.0.0.1 from a background thread (its own event loop).

For servers that stand in for what cannot be reached offline: the demo's scripted stand-in for a
paid API, and the mock upstreams of the tests. They speak the real OpenAI wire format over real
sockets, so the gateway and the openai client under test run unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web


@contextmanager
def serve_in_thread(app: web.Application, port: int) -> Iterator[str]:
    """Run app on 127.0.0.1:port until the block ends; yields its base URL (`.../v1`)."""
    runner = web.AppRunner(app, access_log=None)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True, name=f"loopback-{port}")
    thread.start()
    if not started.wait(10):
        raise RuntimeError(f"loopback server on port {port} did not start in 10 s")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
