"""Management endpoints (admin key only), key loading, and the feedback body check.

POST /admin/keys          {"name", "rate_per_s"?, "burst"?, "budget_usd"?} -> key (shown once)
GET  /admin/keys          keys with their limits and spend (hashes only)
POST /admin/keys/disable  {"key_id"}
GET  /admin/models        models, their upstreams and prices
GET  /admin/experiments   per-arm traces, feedback and cost of every experiment
GET  /dashboard           the report's HTML dashboard from the live store (admin key, or open
                          when require_keys is false); ?bucket=hour&reference_variant=... etc.

A valid user key on these endpoints is refused with 403, an unknown key with 401.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from ownlm.gateway.asgi import Receive, Scope, Send, read_body, send_bytes, send_json
from ownlm.gateway.auth import authorization
from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.wire import WireError, check_label
from ownlm.store.schema import ApiKey, Experiment, Feedback

if TYPE_CHECKING:
    from ownlm.gateway.app import Gateway

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def admin_sha256(cfg: GatewayConfig) -> str | None:
    """The admin key's sha256: from the config, else from the env var it names, else None."""
    if cfg.admin_key_sha256 is not None:
        return cfg.admin_key_sha256
    secret = os.environ.get(cfg.admin_key_env)
    return hashlib.sha256(secret.encode()).hexdigest() if secret else None


def load_keys(gw: Gateway) -> None:
    """Fill the key ring from the store and the config, with spend from stored traces."""
    assert gw.store is not None
    spend = gw.store.spend_by_key()
    for key in gw.store.list_keys():
        gw.keys.add(key, spend.get(key.key_id, 0.0))
    for kc in gw.cfg.keys:
        key_id = "cfg-" + kc.name
        key = ApiKey(key_id, kc.key_sha256, kc.name, kc.rate_per_s, kc.burst, kc.budget_usd)
        gw.keys.add(key, spend.get(key_id, 0.0))


def record_experiments(gw: Gateway) -> None:
    """Write the router's experiments to the store, so data/ and reports can see them."""
    assert gw.store is not None
    cfg = gw.cfg.router
    for name, exp in cfg.experiments.items():
        alias = next(
            (
                a
                for a, route in cfg.routes.items()
                if any(getattr(p, "experiment", None) == name for p in route.policies)
            ),
            "",
        )
        arms = list(exp.arms)
        gw.store.save_experiment(Experiment(name, alias, arms, [exp.arms[a] for a in arms]))


def parse_feedback(body: dict[str, Any], cfg: GatewayConfig) -> Feedback:
    """A Feedback row from a request body, or a 400 naming the bad field.

    `score` is from 0 to 1, as the report and the data exports read it (a thumbs up counts as 1,
    a thumbs down as 0); `value` is money (USD), finite and within `max_feedback_value_usd`.
    """
    trace_id = body.get("trace_id")
    if not isinstance(trace_id, str) or not TRACE_ID.match(trace_id):
        raise WireError(
            400,
            f"'trace_id' must be the 32 hex chars of an x-ownlm-trace-id header, got {trace_id!r}"[
                :300
            ],
            param="trace_id",
        )
    thumbs = _thumbs(body.get("thumbs"))
    cap = cfg.max_feedback_value_usd
    values: dict[str, float | None] = {}
    for name, lo, hi, want in (
        ("score", 0.0, 1.0, "a number from 0 to 1"),
        ("value", -cap, cap, f"a finite number of USD from {-cap:.15g} to {cap:.15g}"),
    ):
        v = body.get(name)
        if v is None:
            values[name] = None
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise WireError(400, f"'{name}' must be {want}, got {v!r}"[:300], param=name)
        if not (isinstance(v, int) or math.isfinite(v)) or not lo <= v <= hi:
            raise WireError(
                400, f"'{name}' must be {want}, got {v!r}"[:300], param=name, code="out_of_range"
            )
        values[name] = float(v)
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise WireError(400, "'comment' must be a string", param="comment")
    if comment is not None and "\x00" in comment:
        raise WireError(
            400,
            "'comment' holds a NUL character (\\u0000), which the store cannot keep; remove it",
            param="comment",
            code="invalid_label",
        )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise WireError(400, "'user' must be a string", param="user")
    if user is not None:
        check_label("user", user, cfg.labels.max_user_chars)
    if thumbs is None and values["score"] is None and values["value"] is None and not comment:
        raise WireError(400, "feedback needs at least one of thumbs, score, value or comment")
    return Feedback(
        trace_id=trace_id,
        thumbs=thumbs,
        score=values["score"],
        value=values["value"],
        comment=comment,
        user=user,
    )


def _thumbs(v: Any) -> int | None:
    """'up'/'down', true/false or 1/-1 as +1/-1; None stays None."""
    if v is None:
        return None
    if v is True or v == "up":
        return 1
    if v is False or v == "down":
        return -1
    if type(v) is int and v in (1, -1):
        return int(v)
    raise WireError(400, f"'thumbs' must be 'up' or 'down', got {v!r}"[:300], param="thumbs")


def routes(gw: Gateway) -> dict[tuple[str, str], Handler]:
    """The admin endpoints, bound to a gateway."""

    def require_admin(scope: Scope) -> None:
        if gw.keys.admin_sha256 is None:
            raise WireError(
                403,
                f"no admin key configured; set {gw.cfg.admin_key_env} or admin_key_sha256",
                type_="permission_error",
            )
        header = authorization(dict(scope["headers"]))
        if gw.keys.is_admin(header):
            return
        name = gw.keys.user_key_name(header)
        if name is not None:  # a valid key, just not allowed here: 403, not 401
            raise WireError(
                403,
                f"key '{name}' is a user key; this endpoint needs the admin key",
                type_="permission_error",
                code="admin_key_required",
            )
        raise WireError(401, "this endpoint needs the admin key", type_="authentication_error")

    async def create_key(scope: Scope, receive: Receive, send: Send) -> None:
        require_admin(scope)
        body = gw.parse_body(await read_body(receive, dict(scope["headers"]), 65536))
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise WireError(400, "'name' must be a non-empty string", param="name")
        check_label("name", name, 200, "the key's name")  # the store's column is 200
        rate = body.get("rate_per_s", gw.cfg.default_rate_per_s)
        burst = body.get("burst", gw.cfg.default_burst)
        budget = body.get("budget_usd")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            raise WireError(400, "'rate_per_s' must be a number > 0", param="rate_per_s")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise WireError(400, "'burst' must be an integer >= 1", param="burst")
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int | float) or budget < 0
        ):
            raise WireError(400, "'budget_usd' must be a number >= 0", param="budget_usd")
        assert gw.store is not None
        key, secret = await asyncio.to_thread(
            gw.store.create_key, name, float(rate), burst, None if budget is None else float(budget)
        )
        gw.keys.add(key)
        await send_json(send, 200, {**_public(key), "key": secret})

    async def list_keys(scope: Scope, receive: Receive, send: Send) -> None:
        require_admin(scope)
        data = [
            {**_public(s.key), "spent_usd": s.spent_usd, "reserved_usd": s.reserved_usd}
            for s in gw.keys.keys()
        ]
        await send_json(send, 200, {"object": "list", "data": data})

    async def disable_key(scope: Scope, receive: Receive, send: Send) -> None:
        require_admin(scope)
        body = gw.parse_body(await read_body(receive, dict(scope["headers"]), 65536))
        key_id = body.get("key_id")
        if not isinstance(key_id, str):
            raise WireError(400, "'key_id' must be a string", param="key_id")
        assert gw.store is not None
        if not await asyncio.to_thread(gw.store.disable_key, key_id):
            raise WireError(404, f"no key with id {key_id!r}", param="key_id")
        gw.keys.disable(key_id)
        await send_json(send, 200, {"key_id": key_id, "disabled": True})

    async def list_models(scope: Scope, receive: Receive, send: Send) -> None:
        require_admin(scope)
        data = {name: m.model_dump() for name, m in gw.cfg.models.items()}
        await send_json(send, 200, {"models": data, "routes": sorted(gw.cfg.router.routes)})

    async def experiments(scope: Scope, receive: Receive, send: Send) -> None:
        require_admin(scope)
        assert gw.store is not None
        out = {}
        for name in gw.cfg.router.experiments:
            stats = await asyncio.to_thread(gw.store.arm_stats, name)
            out[name] = [dataclasses.asdict(s) for s in stats]
        await send_json(send, 200, {"experiments": out})

    async def dashboard(scope: Scope, receive: Receive, send: Send) -> None:
        if gw.cfg.require_keys:
            require_admin(scope)
        if gw.dashboard is None:
            raise WireError(
                404,
                "this gateway serves no dashboard: `ownlm serve` does, or write one with "
                "`ownlm report --set out=dashboard.html`",
                code="unknown_url",
            )
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        assert gw.store is not None
        status, html = await asyncio.to_thread(gw.dashboard, gw.store, query)
        await send_bytes(send, status, html.encode(), content_type=b"text/html; charset=utf-8")

    return {
        ("POST", "/admin/keys"): create_key,
        ("GET", "/admin/keys"): list_keys,
        ("POST", "/admin/keys/disable"): disable_key,
        ("GET", "/admin/models"): list_models,
        ("GET", "/admin/experiments"): experiments,
        ("GET", "/dashboard"): dashboard,
    }


def _public(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "rate_per_s": key.rate_per_s,
        "burst": key.burst,
        "budget_usd": key.budget_usd,
        "disabled": key.disabled,
    }
