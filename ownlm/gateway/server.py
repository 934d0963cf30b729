"""`ownlm serve`: the gateway on uvicorn (uvloop + httptools), one worker.

    ownlm serve --config examples/ownlm.yaml
    ownlm serve --config ownlm.yaml --set port=9000 --set store_url=postgresql://me@db/ownlm

The store is opened and upstreams connected at start (ASGI lifespan); on SIGINT/SIGTERM the
server stops taking requests and the trace writer writes everything queued before exit.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time

import uvicorn

from ownlm.gateway.app import Dashboard, Gateway
from ownlm.gateway.asgi import ASGIApp
from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.http_limits import guarded_protocol
from ownlm.gateway.middleware import Cors, ErrorShield
from ownlm.gateway.upstream import UpstreamClient

__all__ = ["GatewayConfig", "build_app", "serve", "serve_gateway_in_thread"]


def build_app(
    cfg: GatewayConfig,
    upstreams: dict[str, UpstreamClient] | None = None,
    dashboard: Dashboard | None = None,
) -> ASGIApp:
    """The ASGI app: the gateway inside its error shield, inside CORS when cors_origins is set;
    `dashboard` renders GET /dashboard (the report stage's page; None: no dashboard)."""
    app: ASGIApp = ErrorShield(Gateway(cfg, upstreams, dashboard))
    if cfg.cors_origins:
        app = Cors(app, cfg.cors_origins, cfg.cors_max_age_s)
    return app


def uvicorn_config(app: ASGIApp, cfg: GatewayConfig) -> uvicorn.Config:
    """uvicorn settings measured fastest here (PERF-NOTES): uvloop, httptools (with the head's
    size and time bounded: http_limits.py), no access log."""
    return uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        loop="uvloop",
        http=guarded_protocol(cfg.max_header_bytes, cfg.header_timeout_s),
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # X-Forwarded-* rewriting: a middleware layer per request
        log_level="warning",
        timeout_graceful_shutdown=10,
    )


def serve_gateway_in_thread(
    app: ASGIApp, cfg: GatewayConfig, timeout_s: float = 60.0
) -> tuple[uvicorn.Server, threading.Thread]:
    """Run the gateway in a daemon thread (tests, benches, the demo) until it has started.

    Stop it with `server.should_exit = True` and `thread.join()`.
    """
    from ownlm.errors import OwnlmError

    server = uvicorn.Server(uvicorn_config(app, cfg))
    thread = threading.Thread(target=server.run, daemon=True, name="gateway")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise OwnlmError(
            f"the gateway did not start on {cfg.host}:{cfg.port} within {timeout_s:.0f} s; "
            "its log above says why"
        )
    return server, thread


def serve(cfg: GatewayConfig, dashboard: Dashboard | None = None) -> None:
    """Run the gateway until interrupted."""
    # The trace writer thread shares the GIL with the event loop; a 1 ms switch interval (default
    # 5 ms) bounds how long a request waits for it behind a batch of trace inserts.
    sys.setswitchinterval(0.001)
    server = uvicorn.Server(uvicorn_config(build_app(cfg, dashboard=dashboard), cfg))
    # Cyclic GC: freeze what start-up allocated (modules, config) so full collections skip it,
    # and collect the young generation less often; measured -18% CPU per request in the bench.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"ownlm gateway on http://{cfg.host}:{cfg.port}/v1 (store {cfg.store_url})", flush=True)
    server.run()
