"""State every gateway replica must agree on, in Valkey (or Redis): rate limits, budget spend and
holds, the reply cache, and which replica makes the A/B and canary decisions.

One `ownlm serve` keeps all of this in its own memory (the embedded default: `KeyRing`,
`ReplyCache`). Replicas (`shared_state_url: redis://host:6379/0`, any number of `ownlm serve`
processes on one PostgreSQL store behind a load balancer) keep it here instead:

- a key's token bucket is one hash, updated by one Lua script (`TAKE`) on the server's clock, so
  the limit holds across replicas exactly as in one process;
- a key's spend is one counter (`spent:<key>`, seeded from the stored traces with SET NX when a
  replica starts) and its holds one hash with a field per replica (`held:<key>`); `RESERVE`
  refuses while spend plus the holds of live replicas has reached the budget, then adds the
  request's worst case; the writer thread settles (hold released, cost counted: one
  transaction per trace batch). A replica's
  holds count only while its heartbeat key lives (10 s), so a killed replica cannot hold a
  budget forever;
- the reply cache is one key per entry with the cache's TTL;
- decisions are made once: the replica holding the `lead:decisions` lease (renewed each arm-stats
  step) runs the tests and writes their outcome to the store; the others take it from there.

Created and disabled keys reach every replica from the store (the `keys` task reads the
api_keys table every second). Measured on this machine: docs/scale.md.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis

from ownlm.errors import ConfigError

PREFIX = "ownlm:"
REPLICA_TTL_S = 10  # a replica's holds count while its heartbeat key lives
HEARTBEAT_S = 2.0

# KEYS: bucket. ARGV: rate per s, burst. Returns "0" (allowed) or the seconds to wait.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(v[1]) or burst
local last = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = '0'
if tokens < 1 then wait = tostring((1 - tokens) / rate) else tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return wait
"""

# KEYS: spent, held. ARGV: budget, usd, replica id, replica key prefix.
# Returns {1|0 (reserved or not), spent, held} as strings.
RESERVE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = 0
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  if redis.call('EXISTS', ARGV[4] .. h[i]) == 1 then
    held = held + tonumber(h[i + 1])
  else
    redis.call('HDEL', KEYS[2], h[i])
  end
end
if spent + held >= tonumber(ARGV[1]) then
  return {'0', tostring(spent), tostring(held)}
end
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBYFLOAT', KEYS[2], ARGV[3], ARGV[2]) end
return {'1', tostring(spent), tostring(held)}
"""


class SharedStateError(Exception):
    """Valkey did not answer; the gateway answers 503 (budgets and limits fail closed)."""


class SharedState:
    """One replica's view of the shared state (async on the event loop, sync for the writer)."""

    def __init__(self, url: str, cache_ttl_s: float) -> None:
        self.url = url
        self.cache_ttl_ms = max(1, int(cache_ttl_s * 1000))
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        opts: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
        try:
            self._aio = aioredis.Redis.from_url(url, **opts)
            self._sync = redis.Redis.from_url(url, **opts)
        except ValueError as err:
            raise ConfigError(
                f"shared_state_url {url!r}: {err}; use redis://host:6379/0 (Valkey or Redis)"
            ) from err
        self._unsettled: dict[str, tuple[float, float]] = {}  # key -> (held, cost), this batch
        self._take = self._aio.register_script(TAKE)
        self._reserve = self._aio.register_script(RESERVE)

    async def start(self, spend_by_key: dict[str, float]) -> None:
        """Check the server answers, say this replica is alive, seed spend from the store."""
        try:
            await self._aio.ping()
            await self.heartbeat()
            for key_id, usd in spend_by_key.items():
                await self._aio.set(f"{PREFIX}spent:{key_id}", repr(usd), nx=True)
        except redis.RedisError as err:
            raise ConfigError(
                f"cannot reach shared_state_url {self.url} ({err}); start valkey-server (or "
                "redis-server) there, or drop shared_state_url to keep limits in this process"
            ) from None

    async def close(self) -> None:
        try:
            await self._aio.delete(f"{PREFIX}replica:{self.replica_id}")
        except redis.RedisError:
            pass
        await self._aio.aclose()
        self._sync.close()

    async def heartbeat(self) -> None:
        """This replica's holds keep counting for REPLICA_TTL_S more seconds."""
        await self._aio.set(f"{PREFIX}replica:{self.replica_id}", "1", ex=REPLICA_TTL_S)

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        """One request from the key's bucket: 0, or the seconds until it has a token."""
        try:
            wait = await self._take(keys=[f"{PREFIX}bucket:{key_id}"], args=[rate_per_s, burst])
        except redis.RedisError as err:
            raise SharedStateError(str(err)) from None
        return float(wait)

    async def reserve(
        self, key_id: str, budget_usd: float, usd: float
    ) -> tuple[bool, float, float]:
        """Hold `usd` of the key's budget: (held or not, spend, holds of live replicas)."""
        keys = [f"{PREFIX}spent:{key_id}", f"{PREFIX}held:{key_id}"]
        args = [repr(budget_usd), repr(usd), self.replica_id, f"{PREFIX}replica:"]
        try:
            ok, spent, held = await self._reserve(keys=keys, args=args)
        except redis.RedisError as err:
            raise SharedStateError(str(err)) from None
        return ok in (b"1", "1"), float(spent), float(held)

    def settle(self, key_id: str, reserved_usd: float, cost_usd: float) -> None:
        """A request is done (writer thread): its hold released and its cost counted at the next
        `flush_settled`, once per trace batch."""
        held, cost = self._unsettled.get(key_id, (0.0, 0.0))
        self._unsettled[key_id] = (held + reserved_usd, cost + cost_usd)

    def flush_settled(self) -> None:
        """Send the batch's settlements in one transaction (writer thread, after each batch)."""
        if not self._unsettled:
            return
        todo, self._unsettled = self._unsettled, {}
        pipe = self._sync.pipeline(transaction=True)
        for key_id, (held, cost) in todo.items():
            if held:
                pipe.hincrbyfloat(f"{PREFIX}held:{key_id}", self.replica_id, -held)
            if cost:
                pipe.incrbyfloat(f"{PREFIX}spent:{key_id}", cost)
        try:
            pipe.execute()
        except redis.RedisError:  # kept for the next batch, so no spend goes uncounted
            for key_id, (held, cost) in todo.items():
                h, c = self._unsettled.get(key_id, (0.0, 0.0))
                self._unsettled[key_id] = (h + held, c + cost)
            raise

    async def cache_get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self._aio.get(f"{PREFIX}cache:{key}")
        except redis.RedisError:
            return None  # a cache that cannot answer is a miss
        return value

    async def cache_put(self, key: str, reply: bytes) -> None:
        try:
            await self._aio.set(f"{PREFIX}cache:{key}", reply, px=self.cache_ttl_ms)
        except redis.RedisError:
            pass

    async def lead(self, task: str, ttl_s: float) -> bool:
        """True while this replica holds `task`'s lease (taken if free, renewed if its own)."""
        key, ms = f"{PREFIX}lead:{task}", max(1000, int(ttl_s * 1000))
        if await self._aio.set(key, self.replica_id, nx=True, px=ms):
            return True
        holder = await self._aio.get(key)
        if holder is not None and holder.decode() == self.replica_id:
            await self._aio.pexpire(key, ms)
            return True
        return False
