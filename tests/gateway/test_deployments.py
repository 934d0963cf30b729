"""Promote, rollback and automatic canary decisions against a live gateway and a real store.

A tiny random model is registered and promoted as a canary of the alias `ab-free` (served by the
mock upstream's `chat`); the gateway follows the deployment log, splits traffic, and goes back to
the incumbent on `ownlm rollback`, or by itself when the canary loses its A/B test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from ownlm.errors import ConfigError, StoreError
from ownlm.gateway.server import build_app, serve_gateway_in_thread
from ownlm.router.deploy import CanaryTest, PromoteConfig, RollbackConfig, promote, rollback
from ownlm.store.registry import Registry
from ownlm.store.schema import Deployment, ModelVersion
from ownlm.store.trace_store import TraceStore

USER_KEY = "sk-test-user"  # the keys conftest.py configures

ALIAS = "ab-free"


def start(cfg: Any) -> tuple[uvicorn.Server, Any]:
    return serve_gateway_in_thread(build_app(cfg), cfg, timeout_s=30)


def variants_served(client: Any, n: int) -> set[str]:
    seen = set()
    for i in range(n):
        r = client.chat.completions.with_raw_response.create(
            model=ALIAS,
            messages=[{"role": "user", "content": "hi"}],
            user=f"user-{i}",
            max_tokens=2,
        )
        seen.add(r.parse().model)
    return seen


def wait_for(pred: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def setup_store(store_url: str, model_dir: Path, status: str = "approved") -> Registry:
    reg = Registry(TraceStore(store_url))
    reg.register(ModelVersion("own", 1, str(model_dir), status=status))
    return reg


def test_promote_splits_traffic_and_rollback_restores(
    config_for: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from openai import OpenAI

    store_url = f"sqlite:///{tmp_path}/gw.db"
    reg = setup_store(store_url, tiny_model_dir)
    routes = {ALIAS: {"default": "chat"}}
    cfg = config_for(
        store_url,
        deploy_refresh_s=0.1,
        router={"routes": routes},
    )
    server, thread = start(cfg)
    client = OpenAI(base_url=f"http://127.0.0.1:{cfg.port}/v1", api_key=USER_KEY)
    try:
        assert variants_served(client, 6) == {"mock-chat"}
        with pytest.raises(ConfigError, match="name the variant"):
            promote(PromoteConfig(store_url=store_url, model="own@1", alias=ALIAS))
        dep = promote(
            PromoteConfig(
                store_url=store_url, model="own@1", alias=ALIAS, incumbent="chat", canary_weight=0.5
            )
        )
        assert dep.arms == {"chat": 0.5, "own-v1": 0.5}
        assert reg.get("own@1").status == "canary"
        wait_for(lambda: variants_served(client, 12) == {"mock-chat", "own-v1"})
        back = rollback(RollbackConfig(store_url=store_url, alias=ALIAS))
        assert back.arms == {"chat": 1.0} and "rollback of" in back.reason
        assert reg.get("own@1").status == "rolled_back"
        wait_for(lambda: variants_served(client, 12) == {"mock-chat"})
        with pytest.raises(StoreError, match="not approved by the gate"):
            promote(PromoteConfig(store_url=store_url, model="own@1", alias=ALIAS))
    finally:
        server.should_exit = True
        thread.join(20)


def test_losing_canary_is_rolled_back_automatically(
    config_for: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from openai import OpenAI

    store_url = f"sqlite:///{tmp_path}/gw.db"
    reg = setup_store(store_url, tiny_model_dir)
    reg.deploy(Deployment(alias=ALIAS, arms={"chat": 1.0}, incumbent="chat", reason="start"))
    promote(
        PromoteConfig(
            store_url=store_url,
            model="own@1",
            alias=ALIAS,
            canary_weight=0.5,
            test=CanaryTest(metric="success_rate", min_feedback_per_arm=15, min_exploration=0.0),
        )
    )
    cfg = config_for(
        store_url,
        deploy_refresh_s=0.1,
        arm_stats_interval_s=0.2,
        router={"routes": {ALIAS: {"default": "chat"}}},
    )
    server, thread = start(cfg)
    client = OpenAI(base_url=f"http://127.0.0.1:{cfg.port}/v1", api_key=USER_KEY)
    try:
        for i in range(80):  # users rate the incumbent up and the canary down
            r = client.chat.completions.with_raw_response.create(
                model=ALIAS, messages=[{"role": "user", "content": "q"}], user=f"u{i}", max_tokens=2
            )
            thumbs = "up" if r.parse().model == "mock-chat" else "down"
            client.post(
                "/feedback",
                body={"trace_id": r.headers["x-ownlm-trace-id"], "thumbs": thumbs},
                cast_to=object,
            )
        wait_for(lambda: reg.get("own@1").status == "rolled_back")
        live = reg.current(ALIAS)
        assert live is not None and live.arms == {"chat": 1.0}
        assert "lost the A/B" in live.reason
    finally:
        server.should_exit = True
        thread.join(20)


def test_follower_survives_any_error_and_applies_a_later_promote(
    config_for: Any, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a store error that is no OwnlmError (here a locked SQLite file, as sqlite3 raises it) used
    # to end the follower silently: no later promote or rollback was ever applied
    import sqlite3

    import httpx
    from openai import OpenAI

    store_url = f"sqlite:///{tmp_path}/gw.db"
    setup_store(store_url, tiny_model_dir)
    cfg = config_for(
        store_url, deploy_refresh_s=0.05, router={"routes": {ALIAS: {"default": "chat"}}}
    )
    real_live = Registry.live
    failures = {"left": 0}

    def flaky_live(self: Registry) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real_live(self)

    monkeypatch.setattr(Registry, "live", flaky_live)
    server, thread = start(cfg)
    client = OpenAI(base_url=f"http://127.0.0.1:{cfg.port}/v1", api_key=USER_KEY)
    health = f"http://127.0.0.1:{cfg.port}/health"
    try:
        failures["left"] = 10**9  # fails on and on: /health says so
        wait_for(lambda: httpx.get(health).json()["status"] == "degraded")
        task = httpx.get(health).json()["tasks"]["deployments"]
        assert task["errors"] >= 1 and "database is locked" in task["last_error"]
        promote(
            PromoteConfig(
                store_url=store_url, model="own@1", alias=ALIAS, incumbent="chat", canary_weight=0.5
            )
        )
        failures["left"] = 0  # the store is back: the follower applies the promote made meanwhile
        wait_for(lambda: variants_served(client, 12) == {"mock-chat", "own-v1"}, timeout=60)
        body = httpx.get(health).json()
        assert body["status"] == "ok" and body["tasks"]["deployments"]["last_error"] is None
    finally:
        client.close()
        server.should_exit = True
        thread.join(20)
