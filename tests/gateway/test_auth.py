"""KeyRing: token bucket refill worked out by hand, budgets, admin key, disabled keys."""

from __future__ import annotations

import hashlib

import pytest

from ownlm.gateway import auth
from ownlm.gateway.auth import KeyRing
from ownlm.gateway.wire import WireError
from ownlm.store.schema import ApiKey


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def ring(monkeypatch: pytest.MonkeyPatch, clock: list[float]) -> KeyRing:
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    keys = KeyRing(sha("admin"), max_authorization_bytes=4096)
    keys.add(ApiKey("k1", sha("s1"), "one", rate_per_s=2.0, burst=3, budget_usd=1.0))
    return keys


def test_token_bucket_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    keys = ring(monkeypatch, clock)
    for _ in range(3):  # burst 3
        assert keys.check(b"Bearer s1") == "k1"
    with pytest.raises(WireError) as info:
        keys.check(b"Bearer s1")
    assert info.value.status == 429 and info.value.headers[0] == (b"retry-after", b"0.500")
    clock[0] += 0.5  # 2 tokens/s * 0.5 s = 1 token
    assert keys.check(b"Bearer s1") == "k1"
    with pytest.raises(WireError):
        keys.check(b"Bearer s1")
    clock[0] += 100.0  # refills only up to burst
    for _ in range(3):
        keys.check(b"bearer s1")
    with pytest.raises(WireError):
        keys.check(b"Bearer s1")


def test_budget_admin_and_bad_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ring(monkeypatch, [0.0])
    keys.settle("k1", 0.0, 0.6)
    keys.check(b"Bearer s1")
    keys.settle("k1", 0.0, 0.4)
    with pytest.raises(WireError, match=r"spent \$1.0000 of its \$1.0000") as info:
        keys.check(b"Bearer s1")
    assert info.value.code == "insufficient_quota"
    keys.settle("k1", 0.0, -0.5)  # (a refund) spend $0.50: holds count against it as spend does
    keys.reserve("k1", 0.5)
    with pytest.raises(WireError, match=r"holds \$0.5000 for requests in flight of its"):
        keys.check(b"Bearer s1")
    keys.settle("k1", 0.5, 0.1)
    keys.check(b"Bearer s1")
    assert keys.check(b"Bearer admin") == auth.ADMIN_ID and keys.is_admin(b"Bearer admin")
    assert not keys.is_admin(b"Bearer s1") and not keys.is_admin(None)
    for header in (None, b"", b"Basic s1", b"Bearer nope"):
        with pytest.raises(WireError) as bad:
            keys.check(header)
        assert bad.value.status == 401
    keys.disable("k1")
    with pytest.raises(WireError, match="invalid API key"):
        keys.check(b"Bearer s1")


def test_reservations_hold_the_budget_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ring(monkeypatch, [0.0])  # budget $1
    held = [keys.reserve("k1", 0.6), keys.reserve("k1", 0.6)]  # 0.6 < 1: the second is admitted
    assert held == [0.6, 0.6]
    with pytest.raises(WireError, match=r"holds \$1.2000 for requests in flight") as info:
        keys.reserve("k1", 0.6)  # 0 spent + 1.2 held >= 1
    assert info.value.status == 429 and info.value.code == "insufficient_quota"
    keys.settle("k1", 0.6, 0.1)  # one finished, cheaper than its worst case
    assert keys.reserve("k1", 0.6) == 0.6  # 0.1 spent + 0.6 held = 0.7 < 1
    keys.settle("k1", 0.6, 0.6)
    keys.settle("k1", 0.6, 0.6)
    state = keys.keys()[0]
    assert state.reserved_usd == 0.0 and state.spent_usd == pytest.approx(1.3)  # <= 1 + 0.6
    with pytest.raises(WireError):
        keys.reserve("k1", 0.0)
    assert keys.reserve(None, 5.0) == 0.0  # keys not required: nothing to hold
    keys.add(ApiKey("k2", sha("s2"), "two", rate_per_s=1.0, burst=1, budget_usd=None))
    assert keys.reserve("k2", 5.0) == 0.0  # no budget: nothing held
