"""What the request path hands to the trace writer: a `PendingTrace`, built into a `Trace` later.

The request path only fills in fields it already has (ids, times, the decision, raw reply
bytes). `build()` runs in the store's writer thread: it parses the reply (reassembling SSE
streams), reads the token usage and prices it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from ownlm.gateway.config import LabelLimits
from ownlm.gateway.wire import WireError, check_label, reassemble_stream, usage_tokens
from ownlm.router.policy import Decision
from ownlm.store.schema import Trace


class _IdPool:
    """Random trace ids from one os.urandom call per 4096 ids (a syscall per id cost 10 us)."""

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next_id(self) -> str:
        if self._pos >= len(self._pool):
            self._pool = os.urandom(16 * 4096)
            self._pos = 0
        self._pos += 16
        return self._pool[self._pos - 16 : self._pos].hex()


new_trace_id = _IdPool().next_id


def header_text(value: bytes) -> str:
    """A header value as text: UTF-8 (what clients send today), else latin-1 (RFC 9110's old
    ISO-8859-1 rule), so `x-ownlm-user: Jürgen` is stored as "Jürgen"."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def request_labels(
    body: dict[str, Any], headers: dict[bytes, bytes], limits: LabelLimits
) -> tuple[str | None, str | None, list[str], dict[str, str]]:
    """(user, session, tags, metadata) from the body's `user`/`metadata` and x-ownlm-* headers.

    Headers: `x-ownlm-user`, `x-ownlm-session`, `x-ownlm-tags: a,b`, `x-ownlm-tag-<key>: value`
    (added to metadata). Metadata keys `session_id` and `tags` (comma list) are read too. Each
    label is checked against `limits` as it is read: a 400 naming the field if it is too long
    or holds a NUL (the store's columns and PostgreSQL refuse both).
    """
    raw_meta = body.get("metadata")
    metadata: dict[str, str] = {}
    for key, value in raw_meta.items() if isinstance(raw_meta, dict) else ():
        check_label("metadata", key, limits.max_metadata_key_chars, f"metadata key {key[:64]!r}")
        if not isinstance(value, str):
            raise WireError(400, f"metadata.{key} must be a string", param=f"metadata.{key}")
        check_label(f"metadata.{key}", value, limits.max_metadata_value_chars)
        metadata[key] = value
    tags: list[str] = []
    user = body.get("user") if isinstance(body.get("user"), str) else None
    if user is not None:
        check_label("user", user, limits.max_user_chars)
    session = metadata.get("session_id")
    if session is not None:
        check_label("metadata.session_id", session, limits.max_session_chars)
    for name, value in headers.items():
        if not name.startswith(b"x-ownlm-"):
            continue
        text = header_text(value)
        if name == b"x-ownlm-user":
            check_label("x-ownlm-user", text, limits.max_user_chars, "header x-ownlm-user")
            user = user or text
        elif name == b"x-ownlm-session":
            check_label("x-ownlm-session", text, limits.max_session_chars, "header x-ownlm-session")
            session = text
        elif name == b"x-ownlm-tags":
            _add_tags(tags, text, "x-ownlm-tags", limits)
        elif name.startswith(b"x-ownlm-tag-"):
            key = header_text(name[12:])
            param = "x-ownlm-tag-" + key[:64]
            check_label(param, key, limits.max_metadata_key_chars, f"metadata key {key[:64]!r}")
            check_label(param, text, limits.max_metadata_value_chars, f"header {param}")
            metadata[key] = text
    if len(metadata) > limits.max_metadata_keys:
        raise WireError(
            400,
            f"metadata has {len(metadata)} keys (body metadata plus x-ownlm-tag-* headers); the "
            f"limit is {limits.max_metadata_keys}",
            param="metadata",
            code="label_too_long",
        )
    if "tags" in metadata:
        _add_tags(tags, metadata["tags"], "metadata.tags", limits)
    return user, session, tags, metadata


def _add_tags(tags: list[str], text: str, param: str, limits: LabelLimits) -> None:
    """Append the comma-separated tags of `text`, each checked, and check the count."""
    for part in text.split(","):
        tag = part.strip()
        if tag:
            check_label(param, tag, limits.max_tag_chars, f"a tag in {param}")
            tags.append(tag)
    if len(tags) > limits.max_tags:
        raise WireError(
            400,
            f"the request has {len(tags)} tags (x-ownlm-tags plus metadata.tags); the limit is "
            f"{limits.max_tags}",
            param=param,
            code="label_too_long",
        )


class PendingTrace:
    """A trace in the making; `build()` turns it into a `Trace` row (in the writer thread)."""

    def __init__(
        self,
        t0: float,
        endpoint: str,
        alias: str,
        body: dict[str, Any],
        decision: Decision,
        key_id: str | None,
        user: str | None,
        session: str | None,
    ) -> None:
        self.trace_id = new_trace_id()
        self.created_at = time.time()
        self.t0 = t0
        self.endpoint = endpoint
        self.alias = alias
        self.body = body
        self.decision = decision
        self.key_id = key_id
        self.user = user
        self.session = session
        self.tags: list[str] = []
        self.metadata: dict[str, str] = {}
        self.variant = decision.variant
        self.upstream = ""
        self.upstream_model = ""
        self.price_in = 0.0
        self.price_out = 0.0
        self.ttft_ms: float | None = None
        self.latency_ms = 0.0
        self.status = 0
        self.reply: bytes | list[bytes] = b""
        self.error: str | None = None
        self.cache_hit = False
        self.route_note = ""  # appended to the router's reason (e.g. an escalation)
        # tokens an own-model attempt read and wrote before the request escalated: they count
        # in the trace's tokens (TFP is value per token processed), not in its bill
        self.extra_tokens = (0, 0)
        self.reserved_usd = 0.0  # held against the key's budget until the writer prices it

    def finish(
        self,
        status: int,
        reply: bytes | list[bytes],
        *,
        error: str | None = None,
        cache_hit: bool = False,
    ) -> None:
        """Note the reply (bytes, or the list of SSE chunks of a stream) and the latency."""
        self.latency_ms = (time.perf_counter() - self.t0) * 1000.0
        self.status = status
        self.reply = reply
        self.error = error
        self.cache_hit = cache_hit

    def build(self) -> Trace:
        """Parse the reply, count tokens, price them: the row the store writes."""
        stream = isinstance(self.reply, list)
        response: dict[str, Any] | None = None
        if isinstance(self.reply, list):
            response = reassemble_stream(b"".join(self.reply))
        elif self.reply:
            try:
                parsed = orjson.loads(self.reply)
            except orjson.JSONDecodeError:
                parsed = {"raw": self.reply[:10_000].decode("utf-8", "replace")}
            response = parsed if isinstance(parsed, dict) else {"raw": parsed}
        error = self.error
        if error is None and self.status >= 400 and response is not None:
            err = response.get("error")
            error = str(err.get("message") if isinstance(err, dict) else err)
        if error is not None and "\x00" in error:  # an upstream's text; PostgreSQL text refuses NUL
            error = error.replace("\x00", "\\u0000")
        prompt, completion = (0, 0) if self.cache_hit else usage_tokens(response)
        if self.endpoint == "embeddings":
            response = {"usage": response.get("usage")} if response else None  # vectors: no
        cost = (prompt * self.price_in + completion * self.price_out) / 1e6
        prompt, completion = prompt + self.extra_tokens[0], completion + self.extra_tokens[1]
        d = self.decision
        return Trace(
            trace_id=self.trace_id,
            created_at=self.created_at,
            endpoint=self.endpoint,
            alias=self.alias,
            variant=self.variant,
            upstream=self.upstream,
            upstream_model=self.upstream_model,
            request=self.body,
            response=response,
            status=self.status,
            error=error,
            stream=stream,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=self.latency_ms,
            ttft_ms=self.ttft_ms,
            cost_usd=cost,
            user=self.user,
            session=self.session,
            tags=self.tags,
            metadata=self.metadata,
            key_id=self.key_id,
            cache_hit=self.cache_hit,
            reason=d.reason + self.route_note,
            experiment=d.experiment,
            arm=d.arm,
        )
