"""Exact-match reply cache: the same variant and request body get the stored reply bytes.

Opt-in per request (`x-ownlm-cache: true` header) or per model (`cache: true` in ownlm.yaml).
Only whole (non-streamed) 200 replies are stored. In memory, per gateway process, LRU-bounded.
"""

from __future__ import annotations

import collections
import hashlib
import time
from typing import Any

import orjson


def cache_key(variant: str, body: dict[str, Any]) -> str:
    """sha256 of the variant and the body with sorted keys (key order must not matter)."""
    raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(variant.encode() + b"\0" + raw).hexdigest()


class ReplyCache:
    """LRU map of cache key -> (expiry time, reply bytes)."""

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._items: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    def get(self, key: str) -> bytes | None:
        """The stored reply, or None if absent or expired."""
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return hit[1]

    def put(self, key: str, reply: bytes) -> None:
        """Store a reply, evicting the least recently used beyond max_entries."""
        if self.max_entries == 0:
            return
        self._items[key] = (time.monotonic() + self.ttl_s, reply)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
