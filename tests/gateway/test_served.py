"""The served snapshot: a request reads the config and router it started under to its end."""

from __future__ import annotations

import asyncio
from typing import Any

from ownlm.gateway.app import Gateway, Served
from ownlm.router.policy import Router
from tests.gateway.conftest import gateway_config


def test_a_request_keeps_its_snapshot_across_a_swap(tmp_path: Any) -> None:
    cfg = gateway_config("http://127.0.0.1:9", f"sqlite:///{tmp_path}/s.db")
    gw = Gateway(cfg)
    models = {n: m for n, m in cfg.models.items() if n != "slow"}  # a rolled-back canary
    assert len(models) < len(cfg.models)
    new_cfg = cfg.model_copy(update={"models": models})
    seen: dict[str, Any] = {}
    swapped = asyncio.Event()

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        seen["before"] = (gw.cfg, gw.router)
        await swapped.wait()  # the deployment follower swaps while this request runs
        seen["after"] = (gw.cfg, gw.router, gw.aliases)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gw.routes[("GET", "/probe")] = handler

    async def main() -> None:
        sent: list[Any] = []

        async def send(msg: Any) -> None:
            sent.append(msg)

        scope = {"type": "http", "method": "GET", "path": "/probe", "headers": []}
        request = asyncio.create_task(gw(scope, None, send))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        gw.serve(Served(new_cfg, Router(new_cfg.router, known_variants=list(models))))
        swapped.set()
        await request
        assert sent[0]["status"] == 204

    asyncio.run(main())
    assert seen["after"][:2] == seen["before"] and seen["before"][0] is cfg
    assert seen["after"][2] == sorted(set(cfg.models) | set(cfg.router.routes))
    assert gw.cfg is new_cfg and "slow" not in gw.aliases  # what new requests get
