"""ReplyCache and cache_key: the key ignores dict key order (nested too) but not list order, the
variant or any value; LRU bound; TTL expiry on a fake clock."""

from __future__ import annotations

import pytest

from ownlm.gateway import cache
from ownlm.gateway.cache import ReplyCache, cache_key

BODY = {
    "model": "chat",
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "temperature": 0.2,
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True}},
}


def test_key_is_stable_across_dict_key_order_at_every_level() -> None:
    reordered = {
        "response_format": {"json_schema": {"strict": True, "name": "x"}, "type": "json_schema"},
        "temperature": 0.2,
        "messages": [{"content": "be brief", "role": "system"}, {"content": "hi", "role": "user"}],
        "model": "chat",
    }
    assert list(reordered) != list(BODY)
    assert cache_key("small", reordered) == cache_key("small", BODY)
    assert len(cache_key("small", BODY)) == 64  # sha256 hex


@pytest.mark.parametrize(
    "changed",
    [
        {**BODY, "messages": BODY["messages"][::-1]},  # list order is the conversation
        {**BODY, "temperature": 0.3},
        {**BODY, "temperature": "0.2"},
        {**BODY, "user": "u1"},
        {k: v for k, v in BODY.items() if k != "temperature"},
        {**BODY, "response_format": {"type": "json_schema", "json_schema": {"name": "y"}}},
    ],
)
def test_any_other_change_to_the_body_changes_the_key(changed: dict[str, object]) -> None:
    assert cache_key("small", changed) != cache_key("small", BODY)


def test_the_variant_is_part_of_the_key() -> None:
    assert cache_key("small", BODY) != cache_key("large", BODY)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The cache's monotonic clock, set by the test: clock[0] is now."""
    now = [1000.0]
    monkeypatch.setattr(cache.time, "monotonic", lambda: now[0])
    return now


def test_lru_bound_evicts_the_least_recently_used(clock: list[float]) -> None:
    c = ReplyCache(max_entries=2, ttl_s=60.0)
    c.put("a", b"A")
    c.put("b", b"B")
    assert c.get("a") == b"A"  # a is now the most recently used
    c.put("c", b"C")  # over the bound: b goes
    assert (c.get("a"), c.get("b"), c.get("c")) == (b"A", None, b"C")
    c.put("a", b"A2")  # storing again counts as a use, and replaces the reply
    c.put("d", b"D")  # c goes
    assert (c.get("a"), c.get("c"), c.get("d")) == (b"A2", None, b"D")


def test_zero_entries_stores_nothing(clock: list[float]) -> None:
    c = ReplyCache(max_entries=0, ttl_s=60.0)
    c.put("a", b"A")
    assert c.get("a") is None


def test_ttl_expiry_on_a_fake_clock(clock: list[float]) -> None:
    c = ReplyCache(max_entries=10, ttl_s=30.0)
    c.put("a", b"A")
    clock[0] += 30.0  # exactly at the expiry: still served
    assert c.get("a") == b"A"
    clock[0] += 0.001
    assert c.get("a") is None
    clock[0] -= 10.0  # an expired entry is dropped when read, not kept for later
    assert c.get("a") is None


def test_reading_does_not_extend_the_ttl_but_storing_again_does(clock: list[float]) -> None:
    c = ReplyCache(max_entries=10, ttl_s=30.0)
    c.put("a", b"A")
    c.put("b", b"B")
    clock[0] += 20.0
    assert c.get("a") == b"A"
    c.put("b", b"B2")  # expires 30 s from now
    clock[0] += 20.0  # 40 s after the first puts
    assert c.get("a") is None
    assert c.get("b") == b"B2"
