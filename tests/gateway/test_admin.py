"""gateway/admin.py: key creation, listing and disabling (fields checked, what is stored, what a
restart loads), the admin-key rules (401 vs 403, no side effect, the env var), load_keys,
record_experiments and parse_feedback's thumbs, types and messages.

Routes are called in process through ASGI (test_limits.InProcess: a started gateway on SQLite in
tmp_path, a stand-in upstream); the key and experiment loaders run on a real store. Already
covered elsewhere: the happy path of create/list/disable (test_chat_completions), GET routes
with a user key (test_compat), feedback range limits (test_limits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ownlm.gateway import admin
from ownlm.gateway.auth import KeyRing
from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.wire import WireError
from ownlm.store.schema import Trace
from ownlm.store.trace_store import TraceStore
from tests.gateway.conftest import gateway_config, sha
from tests.gateway.test_limits import MSG, InProcess, start
from tests.store.conftest import pg_server as pg_server  # noqa: F401 (fixtures)
from tests.store.conftest import pg_url as pg_url  # noqa: F401

ADMIN = {"authorization": "Bearer sk-admin"}  # test_limits.start's admin key
CHAT = {"model": "m", "messages": MSG}


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[InProcess]:
    """A gateway whose admin-made keys default to 7 requests/s with a burst of 3."""
    g = start(tmp_path, default_rate_per_s=7.0, default_burst=3)
    yield g
    g.close()


def make_key(gw: InProcess, **fields: Any) -> dict[str, Any]:
    status, made = gw.call("/admin/keys", {"name": "app", **fields}, ADMIN)
    assert status == 200, made
    return made


def bearer(secret: str) -> dict[str, str | None]:
    return {"authorization": f"Bearer {secret}"}


# -- POST /admin/keys --------------------------------------------------------------------------


def test_a_created_key_has_the_config_defaults_is_stored_hashed_and_works_at_once(
    gw: InProcess,
) -> None:
    made = make_key(gw)
    assert (made["rate_per_s"], made["burst"], made["budget_usd"]) == (7.0, 3, None)
    assert made["disabled"] is False and made["key"].startswith("sk-ownlm-")
    (row,) = gw.gw.store.list_keys()
    assert row.key_id == made["key_id"] and row.name == "app"
    assert row.key_sha256 == hashlib.sha256(made["key"].encode()).hexdigest()
    assert made["key"] not in repr(row)  # only the hash is kept
    for _ in range(3):  # the burst of 3, then the limit
        assert gw.call("/v1/chat/completions", CHAT, bearer(made["key"]))[0] == 200
    status, reply = gw.call("/v1/chat/completions", CHAT, bearer(made["key"]))
    assert status == 429 and reply["error"]["type"] == "rate_limit_error"


def test_a_created_key_takes_given_limits_and_a_budget(gw: InProcess) -> None:
    made = make_key(gw, rate_per_s=5, burst=10, budget_usd=0)
    assert (made["rate_per_s"], made["burst"], made["budget_usd"]) == (5.0, 10, 0.0)
    assert isinstance(made["rate_per_s"], float)
    status, reply = gw.call("/v1/chat/completions", CHAT, bearer(made["key"]))
    assert status == 429 and reply["error"]["code"] == "insufficient_quota"  # $0 is a budget


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"rate_per_s": -1.5}, "rate_per_s"),
        ({"rate_per_s": True}, "rate_per_s"),
        ({"rate_per_s": "5"}, "rate_per_s"),
        ({"burst": 0}, "burst"),
        ({"burst": 1.5}, "burst"),
        ({"burst": True}, "burst"),
        ({"burst": "2"}, "burst"),
        ({"budget_usd": -0.01}, "budget_usd"),
        ({"budget_usd": True}, "budget_usd"),
        ({"budget_usd": "1"}, "budget_usd"),
    ],
)
def test_bad_key_fields_are_a_400_naming_the_field_and_make_no_key(
    gw: InProcess, fields: dict[str, Any], param: str
) -> None:
    status, reply = gw.call("/admin/keys", {"name": "app", **fields}, ADMIN)
    assert status == 400 and reply["error"]["param"] == param, reply
    assert reply["error"]["message"].startswith(f"'{param}' must be")
    assert gw.gw.store.list_keys() == []
    assert [s.key.key_id for s in gw.gw.keys.keys()] == ["cfg-fuzz"]


def test_a_body_that_is_not_an_object_is_a_400(gw: InProcess) -> None:
    for raw in (b"[1]", b"{", b""):
        status, reply = gw.call("/admin/keys", raw, ADMIN)
        assert status == 400 and reply["error"]["type"] == "invalid_request_error", raw


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_key_name_the_store_cannot_keep_is_a_400(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    url = str(request.getfixturevalue("pg_url")) if backend == "postgresql" else None
    g = start(tmp_path, **({"store_url": url} if url else {}))
    try:
        for name in ("n" * 300, "a\x00b"):
            status, reply = g.call("/admin/keys", {"name": name}, ADMIN)
            assert status == 400 and reply["error"]["param"] == "name", (status, reply)
    finally:
        g.close()


# -- GET /admin/keys and POST /admin/keys/disable ----------------------------------------------


def test_listing_shows_limits_spend_and_holds_but_no_secret(gw: InProcess) -> None:
    made = make_key(gw, budget_usd=2.0)
    gw.gw.keys.settle(made["key_id"], 0.0, 0.75)  # what a priced request would have cost
    gw.gw.keys.reserve(made["key_id"], 0.5)  # and one in flight
    status, listed = gw.call("/admin/keys", None, ADMIN, method="GET")
    assert status == 200 and listed["object"] == "list"
    by_id = {k["key_id"]: k for k in listed["data"]}
    assert list(by_id) == ["cfg-fuzz", made["key_id"]]
    mine = by_id[made["key_id"]]
    assert (mine["spent_usd"], mine["reserved_usd"], mine["budget_usd"]) == (0.75, 0.5, 2.0)
    assert set(mine) == {
        "key_id",
        "name",
        "rate_per_s",
        "burst",
        "budget_usd",
        "disabled",
        "spent_usd",
        "reserved_usd",
    }


def test_disable_refuses_at_once_and_after_a_restart(tmp_path: Path) -> None:
    g = start(tmp_path)
    try:
        made = make_key(g)
        assert g.call("/v1/chat/completions", CHAT, bearer(made["key"]))[0] == 200
        status, reply = g.call("/admin/keys/disable", {"key_id": made["key_id"]}, ADMIN)
        assert (status, reply) == (200, {"key_id": made["key_id"], "disabled": True})
        assert g.call("/v1/chat/completions", CHAT, bearer(made["key"]))[0] == 401
        listed = g.call("/admin/keys", None, ADMIN, method="GET")[1]["data"]
        assert [k["disabled"] for k in listed if k["key_id"] == made["key_id"]] == [True]
    finally:
        g.close()
    again = start(tmp_path)  # a new process on the same store: load_keys reads it disabled
    try:
        status, reply = again.call("/v1/chat/completions", CHAT, bearer(made["key"]))
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    finally:
        again.close()


def test_disable_unknown_or_bad_ids(gw: InProcess) -> None:
    status, reply = gw.call("/admin/keys/disable", {"key_id": "nope"}, ADMIN)
    assert status == 404 and reply["error"]["message"] == "no key with id 'nope'"
    status, reply = gw.call("/admin/keys/disable", {"key_id": 5}, ADMIN)
    assert (status, reply["error"]["param"]) == (400, "key_id")
    # a key from ownlm.yaml is not in the store: it is disabled by editing the config
    status, _ = gw.call("/admin/keys/disable", {"key_id": "cfg-fuzz"}, ADMIN)
    assert status == 404
    assert gw.call("/v1/chat/completions", CHAT)[0] == 200


# -- the admin key -----------------------------------------------------------------------------

ADMIN_CALLS = [
    ("POST", "/admin/keys", {"name": "sneaky"}),
    ("POST", "/admin/keys/disable", {"key_id": "cfg-fuzz"}),
    ("GET", "/admin/experiments", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_a_user_key_is_403_an_unknown_or_disabled_key_401_and_nothing_changes(
    gw: InProcess, method: str, path: str, body: Any
) -> None:
    status, reply = gw.call(path, body, method=method)  # the fuzz user key
    assert (status, reply["error"]["type"], reply["error"]["code"]) == (
        403,
        "permission_error",
        "admin_key_required",
    )
    assert reply["error"]["message"] == (
        "key 'fuzz' is a user key; this endpoint needs the admin key"
    )
    disabled = make_key(gw)
    gw.call("/admin/keys/disable", {"key_id": disabled["key_id"]}, ADMIN)
    for headers in (bearer("sk-unknown"), {"authorization": None}, bearer(disabled["key"])):
        status, reply = gw.call(path, body, headers, method=method)
        assert (status, reply["error"]["type"]) == (401, "authentication_error"), headers
    # none of these calls made or disabled a key
    assert [k.name for k in gw.gw.store.list_keys()] == ["app"]
    assert gw.call("/v1/chat/completions", CHAT)[0] == 200


def test_without_an_admin_key_configured_every_admin_call_is_403(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OWNLM_TEST_ADMIN", raising=False)
    g = start(tmp_path, admin_key_sha256=None, admin_key_env="OWNLM_TEST_ADMIN")
    try:
        for method, path, body in ADMIN_CALLS:
            for headers in (ADMIN, {}):
                status, reply = g.call(path, body, headers, method=method)
                assert status == 403, (path, headers)
                assert reply["error"]["message"] == (
                    "no admin key configured; set OWNLM_TEST_ADMIN or admin_key_sha256"
                )
        assert g.gw.store.list_keys() == []
    finally:
        g.close()


def test_the_admin_key_from_its_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWNLM_TEST_ADMIN", "sk-from-env")
    g = start(tmp_path, admin_key_sha256=None, admin_key_env="OWNLM_TEST_ADMIN")
    try:
        assert g.call("/admin/keys", {"name": "x"}, bearer("sk-from-env"))[0] == 200
        assert g.call("/admin/keys", {"name": "y"}, ADMIN)[0] == 401  # not the config's now
    finally:
        g.close()


def test_admin_keys_are_needed_even_when_user_keys_are_not(tmp_path: Path) -> None:
    g = start(tmp_path, require_keys=False)
    try:
        assert g.call("/v1/chat/completions", CHAT, {"authorization": None})[0] == 200
        status, _ = g.call("/admin/keys", {"name": "x"}, {"authorization": None})
        assert status == 401
        assert g.call("/admin/keys", {"name": "x"}, ADMIN)[0] == 200
    finally:
        g.close()


def test_admin_sha256_prefers_the_config_then_the_env_var(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OWNLM_TEST_ADMIN", "sk-env")
    from_cfg = GatewayConfig(admin_key_sha256=sha("sk-cfg"), admin_key_env="OWNLM_TEST_ADMIN")
    assert admin.admin_sha256(from_cfg) == sha("sk-cfg")
    from_env = GatewayConfig(admin_key_env="OWNLM_TEST_ADMIN")
    assert admin.admin_sha256(from_env) == sha("sk-env")
    monkeypatch.setenv("OWNLM_TEST_ADMIN", "")  # set but empty: no admin key
    assert admin.admin_sha256(from_env) is None
    monkeypatch.delenv("OWNLM_TEST_ADMIN")
    assert admin.admin_sha256(from_env) is None


# -- load_keys and record_experiments on a real store ------------------------------------------


def loader(cfg: GatewayConfig, store: TraceStore) -> Any:
    """What load_keys and record_experiments read of a gateway: its config, store and keys."""
    return SimpleNamespace(cfg=cfg, store=store, keys=KeyRing(None, 4096))


def test_load_keys_takes_store_and_config_keys_with_their_spend(tmp_path: Path) -> None:
    store = TraceStore(f"sqlite:///{tmp_path}/k.db")
    made, secret = store.create_key("app", 2.0, 4, 10.0)
    gone, gone_secret = store.create_key("old", 1.0, 1, None)
    store.disable_key(gone.key_id)
    store.write_traces(
        [
            Trace(alias="a", key_id=made.key_id, cost_usd=0.25),
            Trace(alias="a", key_id=made.key_id, cost_usd=0.5),
            Trace(alias="a", key_id="cfg-user", cost_usd=1.5),
            Trace(alias="a", key_id=None, cost_usd=9.0),
        ]
    )
    cfg = gateway_config("http://127.0.0.1:9/v1", store.url)
    gw = loader(cfg, store)
    admin.load_keys(gw)
    states = {s.key.key_id: s for s in gw.keys.keys()}
    assert list(states) == [made.key_id, gone.key_id, "cfg-user", "cfg-limited", "cfg-broke"]
    assert states[made.key_id].spent_usd == pytest.approx(0.75)
    assert states["cfg-user"].spent_usd == pytest.approx(1.5)
    assert states["cfg-broke"].spent_usd == 0.0 and states["cfg-broke"].key.budget_usd == 0.02
    limited = states["cfg-limited"].key
    assert (limited.name, limited.rate_per_s, limited.burst) == ("limited", 0.01, 2)
    assert gw.keys.check(f"Bearer {secret}".encode()) == made.key_id
    assert gw.keys.check(b"Bearer sk-test-user") == "cfg-user"
    with pytest.raises(WireError) as info:
        gw.keys.check(f"Bearer {gone_secret}".encode())
    assert info.value.status == 401
    store.close()


def test_record_experiments_names_the_alias_and_keeps_decisions_over_a_restart(
    tmp_path: Path,
) -> None:
    store = TraceStore(f"sqlite:///{tmp_path}/e.db")
    router = {
        "experiments": {
            "ab": {"arms": {"chat-pro": 0.3, "chat": 0.7}},
            "unrouted": {"arms": {"chat": 0.5, "tools": 0.5}},
        },
        "routes": {
            "plain": {"default": "chat"},
            "app": {"default": "chat", "policies": [{"kind": "experiment", "experiment": "ab"}]},
        },
    }
    cfg = gateway_config("http://127.0.0.1:9/v1", store.url, router=router)
    admin.record_experiments(loader(cfg, store))
    got = {e.name: (e.alias, e.arms, e.weights) for e in store.list_experiments()}
    assert got == {
        "ab": ("app", ["chat-pro", "chat"], [0.3, 0.7]),  # weights in the arms' order
        "unrouted": ("", ["chat", "tools"], [0.5, 0.5]),  # no route runs it
    }
    store.set_eliminated("ab", ["chat-pro"])
    admin.record_experiments(loader(cfg, store))  # the next start: the decision stays
    assert {e.name: e.eliminated for e in store.list_experiments()} == {
        "ab": ["chat-pro"],
        "unrouted": None,
    }
    store.close()


# -- parse_feedback ----------------------------------------------------------------------------

TID = "0123456789abcdef" * 2
CFG = GatewayConfig()


@pytest.mark.parametrize(
    ("given", "stored"), [("up", 1), ("down", -1), (True, 1), (False, -1), (1, 1), (-1, -1)]
)
def test_thumbs_forms(given: Any, stored: int) -> None:
    fb = admin.parse_feedback({"trace_id": TID, "thumbs": given}, CFG)
    assert fb.thumbs == stored and type(fb.thumbs) is int


@pytest.mark.parametrize("bad", [0, 2, 1.0, -1.0, "Up", "yes", [1], {}])
def test_other_thumbs_are_a_400(bad: Any) -> None:
    with pytest.raises(WireError) as info:
        admin.parse_feedback({"trace_id": TID, "thumbs": bad}, CFG)
    assert info.value.status == 400 and info.value.param == "thumbs"
    assert str(info.value.message).startswith("'thumbs' must be 'up' or 'down', got ")


def test_numbers_become_floats_and_booleans_are_not_numbers() -> None:
    fb = admin.parse_feedback({"trace_id": TID, "score": 1, "value": -3}, CFG)
    assert (fb.score, fb.value) == (1.0, -3.0) and type(fb.score) is float
    assert (fb.trace_id, fb.thumbs, fb.comment, fb.user) == (TID, None, None, None)
    for name in ("score", "value"):
        with pytest.raises(WireError) as info:
            admin.parse_feedback({"trace_id": TID, name: True}, CFG)
        # a wrong type, not an out-of-range number (True would pass as 1)
        assert info.value.param == name and info.value.code is None
        with pytest.raises(WireError) as over:
            admin.parse_feedback({"trace_id": TID, name: 2e6}, CFG)
        assert over.value.code == "out_of_range"


@pytest.mark.parametrize(
    "body",
    [
        {"trace_id": TID},
        {"trace_id": TID, "comment": ""},  # an empty comment says nothing
        {"trace_id": TID, "thumbs": None, "score": None, "value": None, "user": "u"},
    ],
)
def test_feedback_with_nothing_in_it_is_a_400(body: dict[str, Any]) -> None:
    with pytest.raises(WireError, match="needs at least one of thumbs, score, value or comment"):
        admin.parse_feedback(body, CFG)


def test_a_comment_alone_is_feedback() -> None:
    fb = admin.parse_feedback({"trace_id": TID, "comment": "wrong unit", "user": "ana"}, CFG)
    assert (fb.comment, fb.user, fb.thumbs, fb.score) == ("wrong unit", "ana", None, None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"trace_id": TID.upper(), "thumbs": "up"}, "trace_id"),  # ids are lower-case hex
        ({"trace_id": TID[:-1], "thumbs": "up"}, "trace_id"),
        ({"trace_id": TID + "0", "thumbs": "up"}, "trace_id"),
        ({"trace_id": 5, "thumbs": "up"}, "trace_id"),
        ({"thumbs": "up"}, "trace_id"),
        ({"trace_id": TID, "comment": 5}, "comment"),
        ({"trace_id": TID, "thumbs": "up", "user": 5}, "user"),
    ],
)
def test_bad_ids_and_types_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(WireError) as info:
        admin.parse_feedback(body, CFG)
    assert info.value.status == 400 and info.value.param == param


def test_messages_quoting_what_was_sent_stay_short() -> None:
    for body in (
        {"trace_id": "x" * 5000, "thumbs": "up"},
        {"trace_id": TID, "thumbs": "u" * 5000},
        {"trace_id": TID, "score": ["s"] * 5000},
    ):
        with pytest.raises(WireError) as info:
            admin.parse_feedback(body, CFG)
        assert 50 < len(str(info.value.message)) <= 300
