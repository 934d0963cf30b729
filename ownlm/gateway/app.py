"""The gateway ASGI app: one async function per OpenAI endpoint, read top to bottom.

Each endpoint: parse the body → authenticate → router.decide → call upstream (retries, then
fallbacks) → stream or return → record(trace). Recording only queues the trace; parsing the
reply, counting tokens and cost, and the insert happen in the store's writer thread.

What the gateway serves (config, router, aliases, deployments) is one immutable `Served`
snapshot, replaced whole by one assignment when a deployment changes (`Gateway.serve`). A
request reads the snapshot it started under from its first line to its last (a context
variable set per request), so a swap mid-request cannot pair one router's decision with
another config's models.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from ownlm.errors import OwnlmError, StoreError
from ownlm.gateway import admin, deployments, responses
from ownlm.gateway.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    find_route,
    read_body,
    relay,
    send_bytes,
    send_error,
    send_json,
)
from ownlm.gateway.auth import ADMIN_ID, KeyRing, authorization, over_budget, rate_limited
from ownlm.gateway.background import TaskHealth, run_forever
from ownlm.gateway.cache import ReplyCache, cache_key
from ownlm.gateway.config import GatewayConfig, UpstreamConfig
from ownlm.gateway.local import ReplayStream, completion_sse
from ownlm.gateway.shared import HEARTBEAT_S, SharedState, SharedStateError
from ownlm.gateway.tracing import PendingTrace, request_labels
from ownlm.gateway.upstream import (
    OpenAIHTTPUpstream,
    UpstreamClient,
    UpstreamResponse,
    UpstreamStream,
    UpstreamUnavailable,
)
from ownlm.gateway.wire import (
    UsageEventFilter,
    WireError,
    check_chat_request,
    check_embeddings_request,
    embedding_text,
    parse_json_object,
    prompt_text,
)
from ownlm.models.llama_cpp import answer_confidence
from ownlm.router.policy import Decision, Router, RouteRequest, route_text
from ownlm.store.registry import Registry
from ownlm.store.schema import ServedModel
from ownlm.store.spill import Spill
from ownlm.store.trace_store import TraceStore, UnknownTraceError, sqlite_path
from ownlm.store.writer import TraceWriter

log = logging.getLogger("ownlm.gateway")

# (store, query parameters) -> (HTTP status, HTML): `ownlm serve` passes the report's renderer
Dashboard = Callable[[TraceStore, dict[str, str]], tuple[int, str]]

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def build_upstreams(cfg: GatewayConfig) -> dict[str, UpstreamClient]:
    """One client per configured upstream."""
    out: dict[str, UpstreamClient] = {}
    for name, up in cfg.upstreams.items():
        out[name] = build_upstream(name, up)
    return out


def build_upstream(name: str, up: UpstreamConfig) -> UpstreamClient:
    """The client for one upstream config."""
    if up.kind == "openai":
        return OpenAIHTTPUpstream(name, up)
    if up.kind == "llama_cpp":
        from ownlm.gateway.engine import LlamaCppUpstream

        return LlamaCppUpstream(name, up)
    from ownlm.gateway.local import LocalModelUpstream

    return LocalModelUpstream(name, up)


@dataclass(frozen=True)
class Served:
    """What the gateway serves now; never changed, only replaced whole (`Gateway.serve`)."""

    cfg: GatewayConfig  # with the own models deployments added
    router: Router
    live_deployments: Mapping[str, Any] = field(default_factory=dict)  # alias -> Deployment

    @functools.cached_property
    def aliases(self) -> list[str]:
        """The names clients may send."""
        return sorted(set(self.cfg.models) | set(self.cfg.router.routes))

    @property
    def deployed(self) -> dict[str, int]:
        """alias -> seq of the deployment applied."""
        return {a: d.seq for a, d in self.live_deployments.items()}

    def model_rows(self) -> list[ServedModel]:
        """The models served, with their upstream's kind and prices, as the store keeps them."""
        cfg = self.cfg
        return [
            ServedModel(
                name,
                cfg.upstreams[m.upstream].kind,
                m.price_in_usd_per_mtok,
                m.price_out_usd_per_mtok,
            )
            for name, m in sorted(cfg.models.items())
        ]


class Gateway:
    """The ASGI app. Endpoints are methods so they share the config, store and key ring."""

    def __init__(
        self,
        cfg: GatewayConfig,
        upstreams: dict[str, UpstreamClient] | None = None,
        dashboard: Dashboard | None = None,
    ):
        self.dashboard = dashboard  # GET /dashboard's page (the report stage's), if served
        self._served = Served(cfg, Router(cfg.router, known_variants=list(cfg.models)))
        self._request_served: contextvars.ContextVar[Served] = contextvars.ContextVar("served")
        self.base_router = cfg.router  # deployments replace routes of this config
        self.canaries_decided: set[int] = set()
        self.decided: dict[str, frozenset[str]] = {}  # experiment -> eliminated arms, as stored
        self.upstreams = upstreams if upstreams is not None else build_upstreams(cfg)
        self.keys = KeyRing(admin.admin_sha256(cfg), cfg.max_authorization_bytes)
        self.cache = ReplyCache(cfg.cache_max_entries, cfg.cache_ttl_s)
        self.store: TraceStore | None = None
        self.writer: TraceWriter | None = None
        self.shared: SharedState | None = None  # replicas: limits, budgets, cache, lease
        self._store_lock: Any = None  # the open lock file of a SQLite store
        self._tasks: list[asyncio.Task[None]] = []
        self.task_health: dict[str, TaskHealth] = {}
        self.routes = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/v1/feedback"): self.feedback,
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/v1/models/{id}"): self.retrieve_model,
            ("GET", "/health"): self.health,
            **admin.routes(self),
            **responses.routes(self),
        }

    # -- what is served ---------------------------------------------------------------------

    @property
    def served(self) -> Served:
        """The snapshot this request started under; outside a request, the current one."""
        return self._request_served.get(self._served)

    def serve(self, served: Served) -> None:
        """Serve this snapshot from now on (requests in flight finish on theirs)."""
        self._served = served

    @property
    def cfg(self) -> GatewayConfig:
        return self.served.cfg

    @property
    def router(self) -> Router:
        return self.served.router

    @property
    def aliases(self) -> list[str]:
        return self.served.aliases

    @property
    def live_deployments(self) -> Mapping[str, Any]:
        return self.served.live_deployments

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        token = self._request_served.set(self._served)
        try:
            await self._handle(scope, receive, send)
        finally:
            self._request_served.reset(token)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        handler, path_id = find_route(self.routes, method, path)
        if path_id:
            scope["path_params"] = {"id": path_id}  # Starlette's name for it
        try:
            if handler is None:
                raise self.no_route(method, path)
            await handler(scope, receive, send)
        except WireError as err:
            await send_error(send, err)
        except StoreError as err:  # a store call of any endpoint (admin keys, stored responses)
            message = f"the store failed: {err}; retry"
            await send_error(send, WireError(503, message, type_="server_error"))
        except SharedStateError as err:  # replicas: limits and budgets fail closed
            message = f"the shared state (shared_state_url) did not answer: {err}; retry"
            await send_error(send, WireError(503, message, type_="server_error"))
        except ClientGone:
            return

    # -- endpoints ---------------------------------------------------------------------------

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/chat/completions, whole or streamed."""
        t0 = time.perf_counter()
        headers = dict(scope["headers"])
        key_id = await self.authenticate(headers)  # before the body is read
        body = self.parse_body(await read_body(receive, headers, self.cfg.max_body_bytes))
        check_chat_request(body)
        alias = self.check_alias(body["model"])
        trace = await self.routed_trace(
            t0, "chat.completions", alias, body, headers, body["messages"], key_id
        )
        decision = trace.decision
        tid = [(b"x-ownlm-trace-id", trace.trace_id.encode())]
        stream = body.get("stream") is True
        wants_cache = headers.get(b"x-ownlm-cache", b"").lower() in (b"1", b"true")
        ckey = None
        if not stream and (wants_cache or self.cfg.models[decision.variant].cache):
            ckey = cache_key(decision.variant, body)
            hit = await self.cached(ckey)
            if hit is not None:
                self.set_target(trace, decision.variant)
                trace.finish(200, hit, cache_hit=True)
                await send_bytes(send, 200, hit, tid)
                self.record(trace)
                return
        forward = body
        hide_usage: UsageEventFilter | None = None
        if stream:
            opts = body.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                # ask for usage anyway (to price the call), and hide it from the client
                forward = {**body, "stream_options": {**(opts or {}), "include_usage": True}}
                hide_usage = UsageEventFilter()
        reply = await self.answer(decision.variant, forward, stream, trace, send, tid)
        if reply is None:
            return
        if isinstance(reply, UpstreamResponse):
            trace.finish(reply.status, reply.body)
            await send_bytes(send, reply.status, reply.body, tid, reply.content_type.encode())
            if ckey is not None and reply.status == 200:
                await self.cache_reply(ckey, reply.body)
            self.record(trace)
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + tid})
        chunks: list[bytes] = []

        async def forward_chunk(chunk: bytes) -> None:
            if not chunks:
                trace.ttft_ms = (time.perf_counter() - t0) * 1000.0
            chunks.append(chunk)
            out = chunk if hide_usage is None else hide_usage.feed(chunk)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})

        status, error = await self.relay_upstream(reply, forward_chunk, receive)
        if hide_usage is not None and (rest := hide_usage.flush()):
            await send({"type": "http.response.body", "body": rest, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        trace.finish(status, chunks, error=error)
        self.record(trace)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/embeddings, passed through to the model's upstream."""
        t0 = time.perf_counter()
        headers = dict(scope["headers"])
        key_id = await self.authenticate(headers)  # before the body is read
        body = self.parse_body(await read_body(receive, headers, self.cfg.max_body_bytes))
        check_embeddings_request(body)
        alias = self.check_alias(body["model"])
        user, session, tags, metadata = request_labels(body, headers, self.cfg.labels)
        text = embedding_text(body["input"])
        routed = await self.decide(RouteRequest(alias, user, metadata, len(text) // 4, 0, text))
        # the variant is chosen like a chat's, but an embedding is no arm of an A/B experiment
        decision = Decision(routed.variant, "embeddings: " + routed.reason)
        trace = PendingTrace(t0, "embeddings", alias, body, decision, key_id, user, session)
        trace.tags, trace.metadata = tags, metadata
        if self.keys.has_budget(key_id):
            trace.reserved_usd = await self.reserve(
                key_id, self.worst_case_usd(decision.variant, len(text.encode()) + 8, 0)
            )
        tid = [(b"x-ownlm-trace-id", trace.trace_id.encode())]
        entry = self.cfg.models[decision.variant]
        self.set_target(trace, decision.variant)
        try:
            reply = await self.upstreams[entry.upstream].embeddings(
                {**body, "model": entry.model or decision.variant}
            )
        except UpstreamUnavailable as err:
            trace.finish(err.status, b"", error=err.message)
            self.record(trace)
            await send_error(send, WireError(err.status, err.message, type_="upstream_error"), tid)
            return
        trace.finish(reply.status, reply.body)
        await send_bytes(send, reply.status, reply.body, tid, reply.content_type.encode())
        self.record(trace)

    async def feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/feedback: answered only after the feedback row is durably committed."""
        headers = dict(scope["headers"])
        key_id = await self.authenticate(headers)  # before the body is read
        body = self.parse_body(await read_body(receive, headers, self.cfg.max_body_bytes))
        fb = admin.parse_feedback(body, self.cfg)
        fb.key_id = key_id
        made_by = None if key_id in (None, ADMIN_ID) else key_id  # the admin may rate any trace
        assert self.writer is not None
        try:
            await asyncio.to_thread(self.writer.add_feedback, fb, made_by)
        except UnknownTraceError as err:
            raise WireError(404, str(err), param="trace_id", code="trace_not_found") from None
        except StoreError as err:
            raise WireError(
                503, f"feedback not stored: {err}; retry", type_="server_error"
            ) from err
        await send_json(
            send, 200, {"id": fb.feedback_id, "object": "feedback", "trace_id": fb.trace_id}
        )

    async def list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /v1/models: the names clients may send."""
        await self.authenticate(dict(scope["headers"]))
        data = [
            {"id": a, "object": "model", "created": 0, "owned_by": "ownlm"} for a in self.aliases
        ]
        await send_json(send, 200, {"object": "list", "data": data})

    async def retrieve_model(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /v1/models/{id}: one name clients may send, as an OpenAI model object."""
        await self.authenticate(dict(scope["headers"]))
        alias = scope["path_params"]["id"]
        if alias not in self.aliases:
            raise self.unknown_model(alias, self.aliases)
        await send_json(
            send, 200, {"id": alias, "object": "model", "created": 0, "owned_by": "ownlm"}
        )

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /health: liveness, the trace writer's counters and the own-model engines."""
        w = self.writer
        stats: dict[str, Any] = {
            "queued": 0, "written": 0, "dropped": 0, "failed": 0, "quarantined": 0
        }  # fmt: skip
        if w is not None:
            stats = {"queued": w.queued, "written": w.written}
            stats.update(dropped=w.dropped, failed=w.failed, quarantined=w.quarantined)
            if w.spill is not None:
                stats["spilled"] = w.spill.count
                stats["spill_bytes"] = w.spill.size_bytes
                stats["spill_max_bytes"] = w.spill.max_bytes
            if w.store_error is not None:
                stats["store_error"] = w.store_error
        engines = {
            name: up.health() for name, up in self.upstreams.items() if hasattr(up, "health")
        }
        tasks = {name: h.report() for name, h in self.task_health.items()}
        ok = all(e["alive"] for e in engines.values()) and not any(
            t["last_error"] for t in tasks.values()
        )
        ok = ok and "store_error" not in stats and not stats.get("spilled")
        body: dict[str, Any] = {"status": "ok" if ok else "degraded", "traces": stats}
        if tasks:
            body["tasks"] = tasks
        if engines:
            body["engines"] = engines
        await send_json(send, 200, body)

    # -- steps shared by the endpoints -------------------------------------------------------

    def parse_body(self, raw: bytes) -> dict[str, Any]:
        """The request body as a JSON object within `max_json_depth`, or a 400."""
        return parse_json_object(raw, self.cfg.max_json_depth)

    async def authenticate(self, headers: dict[bytes, bytes]) -> str | None:
        """The caller's key id (None when keys are not required), or a 401/429 WireError; with
        replicas the rate limit is counted in the shared state."""
        if not self.cfg.require_keys:
            return None
        if self.shared is None:
            return self.keys.check(authorization(headers))
        state = self.keys.identify(authorization(headers))
        if state is None:
            return ADMIN_ID
        key = state.key
        wait_s = await self.shared.take(key.key_id, key.rate_per_s, key.burst)
        if wait_s > 0:
            raise rate_limited(key, wait_s)
        return key.key_id

    async def reserve(self, key_id: str | None, usd: float) -> float:
        """Hold a request's worst-case cost against its key's budget (KeyRing.reserve, or the
        shared state's with replicas); what is held, or a 429."""
        if self.shared is None:
            return self.keys.reserve(key_id, usd)
        state = self.keys.get(key_id)
        if state is None or state.key.budget_usd is None:
            return 0.0
        held, spent, holds = await self.shared.reserve(state.key.key_id, state.key.budget_usd, usd)
        if not held:
            raise over_budget(state.key, spent, holds)
        return usd

    async def cached(self, key: str) -> bytes | None:
        if self.shared is not None:
            return await self.shared.cache_get(key)
        return self.cache.get(key)

    async def cache_reply(self, key: str, reply: bytes) -> None:
        if self.shared is not None:
            await self.shared.cache_put(key, reply)
        else:
            self.cache.put(key, reply)

    def check_alias(self, alias: str) -> str:
        """The alias if the gateway serves it, else a 404 listing the ones it does."""
        if alias in self.cfg.models or alias in self.cfg.router.routes:
            return alias
        raise self.unknown_model(alias, self.aliases)

    def no_route(self, method: str, path: str) -> WireError:
        """405 naming the methods a known path takes (with `Allow`), else 404."""
        allowed = sorted({m for m, _ in self.routes if find_route(self.routes, m, path)[0]})
        if not allowed:
            return WireError(404, f"no endpoint {method} {path[:200]}", code="unknown_url")
        return WireError(
            405,
            f"{method} is not allowed on {path[:200]}; use {' or '.join(allowed)}",
            code="method_not_allowed",
            headers=[(b"allow", ", ".join(allowed).encode())],
        )

    @staticmethod
    def unknown_model(alias: str, known: list[str]) -> WireError:
        return WireError(
            404,
            f"model '{alias[:100]}' is not served here; known models: {', '.join(known)}",
            param="model",
            code="model_not_found",
        )

    async def decide(self, req: RouteRequest) -> Decision:
        """The router's decision; off the event loop when it has to embed the text."""
        if self.router.uses_embeddings:
            return await asyncio.to_thread(self.router.decide, req)
        return self.router.decide(req)

    def set_target(self, trace: PendingTrace, name: str) -> None:
        m = self.cfg.models[name]
        trace.variant = name
        trace.upstream = m.upstream
        trace.upstream_model = m.model or name
        trace.price_in = m.price_in_usd_per_mtok
        trace.price_out = m.price_out_usd_per_mtok

    async def routed_trace(
        self, t0: float, endpoint: str, alias: str, body: dict[str, Any],
        headers: dict[bytes, bytes], messages: list[Any], key_id: str | None,
    ) -> PendingTrace:  # fmt: skip
        """The router's decision for a chat-shaped request, in the trace it opens."""
        user, session, tags, metadata = request_labels(body, headers, self.cfg.labels)
        text = prompt_text(messages)  # every message: the prompt's size
        # the classifier scores route_text, the one function its training reads traces with
        req = RouteRequest(
            alias, user, metadata, len(text) // 4, len(messages), route_text(messages)
        )
        decision = await self.decide(req)
        trace = PendingTrace(t0, endpoint, alias, body, decision, key_id, user, session)
        trace.tags, trace.metadata = tags, metadata
        if self.keys.has_budget(key_id):  # the bound is priced only for keys that need it
            prompt_bound = len(text.encode()) + 32 * len(messages)
            if body.get("tools"):
                prompt_bound += len(orjson.dumps(body["tools"]))
            out = body.get("max_tokens") or body.get("max_completion_tokens")
            out = out or body.get("max_output_tokens") or self.cfg.budget_default_output_tokens
            n = body.get("n") or 1
            trace.reserved_usd = await self.reserve(
                key_id, self.worst_case_usd(decision.variant, prompt_bound, out * n)
            )
        return trace

    def worst_case_usd(self, variant: str, prompt_tokens: int, output_tokens: int) -> float:
        """The most a request may be billed: its token bounds priced at the dearest model it can
        reach (the variant, its fallbacks, its escalation and theirs). A token is at least one
        byte, so a prompt's UTF-8 bytes (plus 32 a message for the chat template) bound it."""
        reach, todo = set(), [variant]
        while todo:
            name = todo.pop()
            if name in reach or name not in self.cfg.models:
                continue
            reach.add(name)
            m = self.cfg.models[name]
            todo.extend(m.fallbacks)
            if m.escalate is not None:
                todo.append(m.escalate.to)
        models = [self.cfg.models[name] for name in reach]
        return max(
            ((prompt_tokens * m.price_in_usd_per_mtok + output_tokens * m.price_out_usd_per_mtok)
             / 1e6 for m in models),
            default=0.0,
        )  # fmt: skip

    async def answer(
        self, variant: str, body: dict[str, Any], stream: bool, trace: PendingTrace,
        send: Send, tid: list[tuple[bytes, bytes]],
    ) -> UpstreamResponse | UpstreamStream | None:  # fmt: skip
        """The variant's reply (through its escalation when it has one); None when no upstream
        answered, after the client got the 502/503 and the trace was recorded."""
        try:
            if self.cfg.models[variant].escalate is not None:
                return await self.call_escalating(variant, body, stream, trace)
            return await self.call_upstream(variant, body, stream, trace)
        except UpstreamUnavailable as err:
            trace.finish(err.status, b"", error=err.message)
            self.record(trace)
            await send_error(send, WireError(err.status, err.message, type_="upstream_error"), tid)
            return None

    async def relay_upstream(
        self, reply: UpstreamStream, forward: Any, receive: Receive
    ) -> tuple[int, str | None]:
        """Stream the upstream's chunks to `forward` (asgi.relay: stops when the client leaves or
        at stream_deadline_s), then close it; the trace's status and error."""
        try:
            stopped = await relay(reply, forward, receive, self.cfg.stream_deadline_s)
        except UpstreamUnavailable as err:
            return 200, err.message
        finally:
            await reply.aclose()
        return stopped if stopped is not None else (200, None)

    async def call_upstream(
        self, variant: str, body: dict[str, Any], stream: bool, trace: PendingTrace
    ) -> UpstreamResponse | UpstreamStream:
        """Try the variant, then its fallbacks; each with retries on 429, 5xx and no answer."""
        last: UpstreamResponse | UpstreamUnavailable | None = None
        for name in (variant, *self.cfg.models[variant].fallbacks):
            m = self.cfg.models[name]
            up_cfg = self.cfg.upstreams[m.upstream]
            upstream = self.upstreams[m.upstream]
            self.set_target(trace, name)
            forward = {**body, "model": m.model or name}
            for attempt in range(up_cfg.max_retries + 1):
                if attempt:
                    await asyncio.sleep(up_cfg.retry_backoff_s * 2 ** (attempt - 1))
                try:
                    reply = await upstream.chat(forward, stream=stream)
                except UpstreamUnavailable as err:
                    last = err
                    continue
                if isinstance(reply, UpstreamResponse) and (
                    reply.status == 429 or reply.status >= 500
                ):
                    last = reply
                    continue
                return reply
        if isinstance(last, UpstreamUnavailable):
            raise last
        assert last is not None
        return last

    async def call_escalating(
        self, variant: str, body: dict[str, Any], stream: bool, trace: PendingTrace
    ) -> UpstreamResponse | UpstreamStream:
        """The own model answers whole, with logprobs; an answer below the variant's confidence
        floor (or a failed call) is dropped and the escalation model answers instead."""
        esc = self.cfg.models[variant].escalate
        assert esc is not None
        own_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        own_body["logprobs"] = True
        confidence = 0.0
        try:
            reply = await self.call_upstream(variant, own_body, False, trace)
        except UpstreamUnavailable as err:
            reply = UpstreamResponse(err.status, b"")
        if isinstance(reply, UpstreamResponse) and reply.status == 200:
            completion = orjson.loads(reply.body)
            choice = completion["choices"][0]
            lps = [t["logprob"] for t in (choice.get("logprobs") or {}).get("content") or []]
            confidence = answer_confidence(lps)
            if confidence >= esc.min_confidence:
                trace.route_note = f"; own confidence {confidence:.3f} >= {esc.min_confidence:.3f}"
                if not body.get("logprobs"):
                    for ch in completion["choices"]:
                        ch.pop("logprobs", None)
                if stream:
                    return ReplayStream(completion_sse(completion, body))
                return UpstreamResponse(200, orjson.dumps(completion))
            usage = completion.get("usage") or {}
            tokens = (int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
            trace.extra_tokens = tokens
            trace.metadata = {**trace.metadata, "own_attempt_tokens": str(sum(tokens))}
        trace.route_note = (
            f"; escalated to {esc.to}: own confidence {confidence:.3f} < {esc.min_confidence:.3f}"
        )
        trace.metadata = {**trace.metadata, "escalated_from": variant}
        return await self.call_upstream(esc.to, body, stream, trace)

    def record(self, trace: PendingTrace) -> None:
        assert self.writer is not None
        if not self.writer.record(trace):  # the queue is full: the trace is lost, its cost not
            self._settle(trace, trace.build())

    # -- start and stop ----------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as err:  # reported to the server, which stops with it
                    if isinstance(err, OwnlmError):  # the message says what to change
                        log.error("gateway failed to start: %s", err)
                    else:
                        log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        """Open the store, start the writer, load keys, connect upstreams, start refreshers."""
        self._store_lock = lock_sqlite_store(self.cfg.store_url)
        self.store = await asyncio.to_thread(
            TraceStore, self.cfg.store_url, self.cfg.store_timeout_s
        )
        spill = None
        if self.cfg.spill_max_bytes:
            spill = Spill(spill_path(self.cfg), self.cfg.spill_max_bytes)
        self.writer = TraceWriter(
            self.store,
            flush_interval_ms=self.cfg.flush_interval_ms,
            max_batch=self.cfg.max_batch,
            max_queue=self.cfg.max_queue,
            on_built=self._settle,
            on_batch=self._flush_settled,
            spill=spill,
            timeout_s=self.cfg.store_timeout_s,
        )
        await asyncio.to_thread(admin.load_keys, self)
        if self.cfg.shared_state_url is not None:
            self.shared = SharedState(self.cfg.shared_state_url, self.cfg.cache_ttl_s)
            await self.shared.start(await asyncio.to_thread(self.store.spend_by_key))
        await asyncio.to_thread(admin.record_experiments, self)
        await asyncio.to_thread(self.restore_decisions, self.router)
        for up in self.upstreams.values():
            await up.start()
        await deployments.apply_deployments(self, await asyncio.to_thread(self.stored_deployments))
        for name, step, interval_s in (
            ("deployments", lambda: deployments.follow_deployments_once(self),
             self.cfg.deploy_refresh_s),
            ("arm_stats", self._refresh_arm_stats_once, self.cfg.arm_stats_interval_s),
        ):  # fmt: skip
            self.run_task(name, step, interval_s)
        if self.shared is not None:
            self.run_task("keys", self._refresh_keys_once, self.cfg.key_refresh_s)
            self.run_task("replica", self.shared.heartbeat, HEARTBEAT_S)

    def run_task(self, name: str, step: Any, interval_s: float) -> None:
        """Run `step` every `interval_s` until the gateway stops (background.run_forever)."""
        health = self.task_health[name] = TaskHealth()
        self._tasks.append(asyncio.create_task(run_forever(name, step, interval_s, health)))

    def restore_decisions(self, router: Router) -> None:
        """Give the router's experiments the eliminations their tests made before (stored)."""
        assert self.store is not None
        stored = {e.name: e.eliminated for e in self.store.list_experiments() if e.eliminated}
        for name, exp in router.experiments.items():
            if name in stored:
                exp.restore(stored[name])
            self.decided[name] = exp.eliminated

    def stored_deployments(self) -> dict[str, Any]:
        """The live deployment of each alias, as the store has it now."""
        assert self.store is not None
        return Registry(self.store).live()

    async def stop(self) -> None:
        """Stop refreshers, close upstreams, write every queued trace, close the store."""
        for task in self._tasks:
            task.cancel()
        for up in self.upstreams.values():
            await up.close()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.shared is not None:
            await self.shared.close()
        if self.store is not None:
            self.store.close()
        if self._store_lock is not None:
            self._store_lock.close()  # releases the flock

    def _settle(self, item: Any, row: Any) -> None:
        """A trace was built (in the writer thread): its key's hold is released and its cost
        counted, stored or not; a trace that could not be priced counts its whole hold."""
        held = getattr(item, "reserved_usd", 0.0)
        cost = held if row is None else row.cost_usd
        key_id = getattr(item, "key_id", None)
        if not (held or cost) or key_id is None:
            return
        if self.shared is None:
            self.keys.settle(key_id, held, cost)
            return
        self.shared.settle(key_id, held, cost)  # sent once per batch: _flush_settled

    def _flush_settled(self) -> None:
        """Replicas: the batch's settlements to the shared state, one transaction (writer)."""
        if self.shared is None:
            return
        try:
            self.shared.flush_settled()
        except redis.RedisError as err:  # the holds lapse with this replica's heartbeat
            log.error("could not settle a batch's spend in the shared state: %s", err)

    async def _refresh_keys_once(self) -> None:
        """Replicas: keys created or disabled on any replica (the api_keys table) apply here."""
        assert self.store is not None
        for key in await asyncio.to_thread(self.store.list_keys):
            known = self.keys.get(key.key_id)
            if known is None:
                self.keys.add(key)
            elif key.disabled and not known.key.disabled:
                self.keys.disable(key.key_id)

    async def _refresh_arm_stats_once(self) -> None:
        """Read the experiments' feedback stats, update the router, act on decided canaries."""
        assert self.store is not None
        store = self.store
        router = self.router  # a deployment may swap it while stats are read
        if not router.experiments:
            return
        if self.shared is not None and not await self.shared.lead(
            "decisions", 3 * self.cfg.arm_stats_interval_s
        ):  # another replica decides: take its decisions from the store, read no stats
            await asyncio.to_thread(self.restore_decisions, router)
            return
        stats = []
        for name in router.experiments:
            stats.extend(await asyncio.to_thread(store.arm_stats, name))
        router.update_arm_stats(stats)
        for name, exp in router.experiments.items():  # a new decision outlives a restart
            if exp.eliminated != self.decided.get(name, frozenset()):
                await asyncio.to_thread(store.set_eliminated, name, list(exp.eliminated))
                self.decided[name] = exp.eliminated
        if self.live_deployments:
            await asyncio.to_thread(deployments.act_on_canaries, self)


def lock_sqlite_store(url: str) -> Any:
    """An exclusive lock on `<db>.gateway.lock` beside a SQLite store (None for PostgreSQL):
    one gateway per SQLite file, since limits, budgets and decisions live in its memory."""
    db = sqlite_path(url)
    if db is None:
        return None
    path = db.with_name(db.name + ".gateway.lock")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("a")
    except OSError as err:
        raise StoreError(f"cannot open the store's lock file {path}: {err.strerror}") from err
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise StoreError(
            f"another ownlm serve already uses the SQLite store {db}: run one gateway per "
            "SQLite file; for several replicas use a PostgreSQL store_url and shared_state_url "
            "(docs/scale.md)"
        ) from None
    return f


def spill_path(cfg: GatewayConfig) -> str:
    """Where the writer spills traces: the config's path, else beside a SQLite store's file."""
    if cfg.spill_path:
        return cfg.spill_path
    db = sqlite_path(cfg.store_url)
    return f"{db}.spill.jsonl" if db is not None and db.name else "ownlm-spill.jsonl"
