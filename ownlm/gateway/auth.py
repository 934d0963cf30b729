"""API keys on the request path: lookup by sha256, per-key token bucket, spend budget.

A key comes as `Authorization: Bearer <key>` or, as Azure OpenAI clients send it, `api-key: <key>`.

Keys live in memory (loaded from the store and the config at start, added when the admin
creates one), so checking a key costs one sha256 and a dict lookup, no I/O. A header over
`max_authorization_bytes` is refused (401) before it is decoded or hashed.

Budgets hold: a billable request reserves its worst-case cost when it is admitted (`reserve`:
prompt bytes and `max_tokens`, priced at the dearest model it may reach) and is refused while
the key's spend plus what requests in flight hold has reached the budget; the writer thread
settles it (`settle`: the hold released, the priced cost counted) when it builds the trace, so
a reply's cost counts from then on, whether or not the store is up. The last request admitted
saw spend + holds under the budget, so a key never overruns it by more than one request's
reservation (tests/gateway/test_budget.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

from ownlm.gateway.wire import WireError
from ownlm.store.schema import ApiKey


@dataclass
class KeyState:
    """A key's limits and its live counters."""

    key: ApiKey
    tokens: float
    last_s: float
    spent_usd: float = 0.0
    reserved_usd: float = 0.0  # worst-case cost of the requests in flight


ADMIN_ID = "admin"


class KeyRing:
    """All keys the gateway accepts, by sha256 of the secret."""

    def __init__(self, admin_sha256: str | None, max_authorization_bytes: int) -> None:
        self.admin_sha256 = admin_sha256
        self.max_authorization_bytes = max_authorization_bytes
        self._by_hash: dict[str, KeyState] = {}
        self._by_id: dict[str, KeyState] = {}
        # memo: secrets of known keys -> their hash. Unknown secrets are never kept, so it holds
        # at most one entry per key however many bogus keys clients send.
        self._hash_of_secret: dict[str, str] = {}
        self._money = threading.Lock()  # spend and holds change on the loop and the writer thread

    def add(self, key: ApiKey, spent_usd: float = 0.0) -> None:
        """Accept this key from now on (replacing one with the same id)."""
        state = KeyState(key, float(key.burst), time.monotonic(), spent_usd)
        self._by_hash[key.key_sha256] = state
        self._by_id[key.key_id] = state

    def disable(self, key_id: str) -> None:
        """Stop accepting this key."""
        state = self._by_id.get(key_id)
        if state is not None:
            state.key.disabled = True

    def has_budget(self, key_id: str | None) -> bool:
        """True when the key has a budget (its requests reserve their worst case)."""
        state = self.get(key_id)
        return state is not None and state.key.budget_usd is not None

    def reserve(self, key_id: str | None, usd: float) -> float:
        """Hold `usd` (a request's worst-case cost) against the key's budget and return what is
        held (0 for a key without a budget); a 429 when the budget is spent or held."""
        state = self.get(key_id)
        if state is None or state.key.budget_usd is None:
            return 0.0
        with self._money:
            _check_budget(state)
            state.reserved_usd += usd
        return usd

    def settle(self, key_id: str | None, reserved_usd: float, cost_usd: float) -> None:
        """A request is done: release its hold and count what it cost."""
        state = self.get(key_id)
        if state is None:
            return
        with self._money:
            state.reserved_usd = max(0.0, state.reserved_usd - reserved_usd)
            state.spent_usd += cost_usd

    def keys(self) -> list[KeyState]:
        """Every key, in the order added."""
        return list(self._by_id.values())

    def _hash(self, secret: str) -> str:
        h = self._hash_of_secret.get(secret)
        if h is None:
            h = hashlib.sha256(secret.encode()).hexdigest()
            if h in self._by_hash or h == self.admin_sha256:
                self._hash_of_secret[secret] = h
        return h

    def _secret(self, authorization: bytes | None) -> str:
        """The bearer secret ("" for none); a 401 for a header over `max_authorization_bytes`,
        before it is decoded or hashed."""
        if authorization is not None and len(authorization) > self.max_authorization_bytes:
            raise WireError(
                401,
                f"the Authorization header is {len(authorization)} bytes; the limit is "
                f"{self.max_authorization_bytes} (max_authorization_bytes); send the API key "
                "the gateway admin gave you",
                type_="authentication_error",
                code="invalid_api_key",
            )
        return _bearer(authorization)

    def is_admin(self, authorization: bytes | None) -> bool:
        """True when the header carries the admin key."""
        secret = self._secret(authorization)
        return bool(secret and self.admin_sha256 and self._hash(secret) == self.admin_sha256)

    def user_key_name(self, authorization: bytes | None) -> str | None:
        """The name of the enabled user key in the header (not counted against its limits)."""
        secret = self._secret(authorization)
        state = self._by_hash.get(self._hash(secret)) if secret else None
        return None if state is None or state.key.disabled else state.key.name

    def check(self, authorization: bytes | None) -> str:
        """The key id allowed to make this request, or a WireError (401 or 429)."""
        state = self.identify(authorization)
        if state is None:
            return ADMIN_ID
        _check_budget(state)
        key = state.key
        now = time.monotonic()
        tokens = min(float(key.burst), state.tokens + (now - state.last_s) * key.rate_per_s)
        state.last_s = now
        if tokens < 1.0:
            state.tokens = tokens
            raise rate_limited(key, (1.0 - tokens) / key.rate_per_s)
        state.tokens = tokens - 1.0
        return key.key_id

    def identify(self, authorization: bytes | None) -> KeyState | None:
        """The enabled key the header carries (None: the admin key), else a 401 WireError."""
        secret = self._secret(authorization)
        if not secret:
            raise WireError(
                401,
                "no API key: send 'Authorization: Bearer <key>' or 'api-key: <key>' (ask the "
                "gateway admin for a key)",
                type_="authentication_error",
                code="invalid_api_key",
            )
        h = self._hash(secret)
        if h == self.admin_sha256:
            return None
        state = self._by_hash.get(h)
        if state is None or state.key.disabled:
            raise WireError(
                401,
                f"invalid API key ending in '{secret[-4:]}'; check the key or ask the admin",
                type_="authentication_error",
                code="invalid_api_key",
            )
        return state

    def get(self, key_id: str | None) -> KeyState | None:
        """The key with this id, if the ring has it."""
        return self._by_id.get(key_id) if key_id is not None else None


def rate_limited(key: ApiKey, wait_s: float) -> WireError:
    """The 429 of a key over its rate limit (in one process or across replicas)."""
    return WireError(
        429,
        f"key '{key.name}' is over its rate limit of {key.rate_per_s:g} requests/s "
        f"(burst {key.burst}); retry in {wait_s:.2f} s",
        type_="rate_limit_error",
        code="rate_limit_exceeded",
        headers=[(b"retry-after", f"{max(wait_s, 0.001):.3f}".encode())],
    )


def _check_budget(state: KeyState) -> None:
    """The one budget rule: a 429 once the key's spend plus what requests in flight hold has
    reached its budget (checked when a request arrives, and again when it reserves)."""
    key = state.key
    if key.budget_usd is not None and state.spent_usd + state.reserved_usd >= key.budget_usd:
        raise over_budget(key, state.spent_usd, state.reserved_usd)


def over_budget(key: ApiKey, spent_usd: float, held_usd: float) -> WireError:
    """The 429 of a key whose spend plus holds reached its budget (one process or replicas)."""
    held = f" and holds ${held_usd:.4f} for requests in flight" if held_usd else ""
    retry = "retry when they finish, or " if held_usd else ""
    return WireError(
        429,
        f"key '{key.name}' spent ${spent_usd:.4f}{held} of its ${key.budget_usd:.4f} "
        f"budget; {retry}ask the admin to raise it",
        type_="insufficient_quota",
        code="insufficient_quota",
    )


def authorization(headers: dict[bytes, bytes]) -> bytes | None:
    """The Authorization header, or an Azure-style `api-key: <key>` header as a bearer one."""
    value = headers.get(b"authorization")
    if value is None and (key := headers.get(b"api-key")):
        return b"Bearer " + key
    return value


def _bearer(authorization: bytes | None) -> str:
    if not authorization:
        return ""
    text = authorization.decode("latin-1").strip()
    if text[:7].lower() == "bearer ":
        return text[7:].strip()
    return ""
