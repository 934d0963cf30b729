"""Replica settings refused with a message that says what to change (tests/faults/test_replicas.py
runs two replicas for real)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ownlm.config import validate_config
from ownlm.errors import ConfigError, StoreError
from ownlm.gateway.app import Gateway
from ownlm.gateway.config import GatewayConfig
from tests.gateway.conftest import free_port
from tests.store.conftest import pg_server as pg_server  # noqa: F401 (fixtures)
from tests.store.conftest import pg_url as pg_url  # noqa: F401


def test_replicas_on_a_sqlite_store_are_refused(tmp_path: Path) -> None:
    data = {"store_url": f"sqlite:///{tmp_path}/s.db", "shared_state_url": "redis://127.0.0.1/0"}
    with pytest.raises(ConfigError, match="replicas share one PostgreSQL store; store_url is"):
        validate_config(GatewayConfig, data, "ownlm.yaml")


def test_an_unreachable_shared_state_stops_the_start_in_one_line(pg_url: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    gw = Gateway(GatewayConfig(store_url=pg_url, shared_state_url=url, require_keys=False), {})

    async def start() -> None:
        try:
            await gw.start()
        finally:
            await gw.stop()

    with pytest.raises(ConfigError) as info:
        asyncio.run(start())
    assert str(info.value).startswith(f"cannot reach shared_state_url {url} (")
    assert "start valkey-server" in str(info.value) and "\n" not in str(info.value)


def test_a_second_gateway_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    cfg = GatewayConfig(store_url=f"sqlite:///{tmp_path}/one.db", require_keys=False)
    first, second = Gateway(cfg, {}), Gateway(cfg, {})

    async def run() -> None:
        await first.start()
        try:
            with pytest.raises(StoreError, match="another ownlm serve already uses the SQLite"):
                await second.start()
        finally:
            await first.stop()
        await second.start()  # the first one stopped: its lock is gone
        await second.stop()

    asyncio.run(run())
