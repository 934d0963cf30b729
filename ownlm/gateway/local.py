"""The in-process own model as an upstream: `UpstreamClient` over the rollout sampler.

    upstreams:
      own: {kind: local, model_path: smollm2-135m}     # or a run dir written by `ownlm train`

Requests that arrive while a generation runs wait, and then go together: concurrent requests with
the same sampling settings (temperature, top-p, max tokens, stop, n; no seed) are sampled as one
batch in a worker thread, so the event loop keeps serving other upstreams and a CPU decode step
(bound by reading the weights) serves several requests at once.
The sampler has no per-token callback, so a streamed reply is sent as SSE once the whole answer
exists (same wire format; time to first token = whole latency). Tools and embeddings are not
supported and answer 400 in the OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ownlm.gateway.config import UpstreamConfig
from ownlm.gateway.upstream import UpstreamResponse
from ownlm.gateway.wire import error_body

DEFAULT_MAX_NEW_TOKENS = 256


def bad_request(message: str, param: str | None = None) -> UpstreamResponse:
    """A 400 in the OpenAI error shape, as an upstream reply."""
    return UpstreamResponse(400, error_body(message, "invalid_request_error", param))


class ReplayStream:
    """SSE events of a finished completion, as an UpstreamStream."""

    def __init__(self, events: list[bytes]) -> None:
        self._events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self._events:
            yield event

    async def aclose(self) -> None:
        self._events = []


class LocalModelUpstream:
    """Answers chat requests with a model loaded in this process (`ownlm.models.load`)."""

    def __init__(
        self,
        name: str,
        cfg: UpstreamConfig,
        model: Any | None = None,
        tokenizer: Any | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = 16
        self._pending: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.model is None:
            from ownlm.models.load import SMOLLM2_NAME, load_model

            path = self.cfg.model_path or SMOLLM2_NAME
            self.model, self.tokenizer = await asyncio.to_thread(load_model, path)

    async def close(self) -> None:
        pass

    async def embeddings(self, body: dict[str, Any]) -> UpstreamResponse:
        return bad_request(f"upstream {self.name} (local model) does not serve embeddings")

    async def chat(self, body: dict[str, Any], *, stream: bool) -> UpstreamResponse | ReplayStream:
        if body.get("tools"):
            return bad_request(
                f"upstream {self.name} (local model) does not support tools; route tool calls "
                "to another model",
                "tools",
            )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((body, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        completion = await future
        if not stream:
            return UpstreamResponse(200, orjson.dumps(completion))
        return ReplayStream(completion_sse(completion, body))

    async def _drain(self) -> None:
        """Run waiting requests, a batch of same-settings requests at a time, until none wait."""
        while self._pending:
            key = _batch_key(self._pending[0][0])
            batch = [p for p in self._pending if _batch_key(p[0]) == key][: self.max_batch]
            if key[-1] is not None:  # a seeded request runs alone: its sample must not depend
                batch = batch[:1]  # on what else was in the batch
            for item in batch:
                self._pending.remove(item)
            try:
                results = await asyncio.to_thread(self._complete, [b for b, _ in batch])
            except Exception as err:  # reported to each waiting request, never lost
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for (_, fut), completion in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(completion)

    def _complete(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from ownlm.models.chat import encode_prompt
        from ownlm.rollout.sampler import sample_completions
        from ownlm.rollout.types import SamplingParams

        body = bodies[0]  # all share the sampling settings (_batch_key)
        stop = body.get("stop")
        params = SamplingParams(
            max_new_tokens=max_new_tokens(body),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
        )
        n = int(body.get("n") or 1)
        ids = [encode_prompt(self.tokenizer, b["messages"]) for b in bodies]
        out = sample_completions(self.model, self.tokenizer, ids, n, params)
        created, results = int(time.time()), []
        for p, b in enumerate(bodies):
            rows = range(p * n, (p + 1) * n)
            completion_tokens = int(out.completion_mask[p * n : (p + 1) * n].sum().item())
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": out.texts[r]},
                    "finish_reason": out.finish_reasons[r],
                }
                for i, r in enumerate(rows)
            ]
            results.append(
                {
                    "id": "chatcmpl-local-" + str(time.time_ns()),
                    "object": "chat.completion",
                    "created": created,
                    "model": str(b.get("model")),
                    "choices": choices,
                    "usage": {
                        "prompt_tokens": len(ids[p]),
                        "completion_tokens": completion_tokens,
                        "total_tokens": len(ids[p]) + completion_tokens,
                    },
                }
            )
        return results


def max_new_tokens(body: dict[str, Any]) -> int:
    """The request's token cap (max_completion_tokens, then max_tokens, else the default)."""
    return int(
        body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_NEW_TOKENS
    )


def _batch_key(body: dict[str, Any]) -> tuple[Any, ...]:
    """Requests with equal keys can share one sampler call."""
    stop = body.get("stop")
    seed = body.get("seed") if isinstance(body.get("seed"), int) else None
    return (
        max_new_tokens(body),
        float(body.get("temperature", 1.0)),
        float(body.get("top_p", 1.0)),
        (stop,) if isinstance(stop, str) else tuple(stop or ()),
        int(body.get("n") or 1),
        seed,
    )


def completion_sse(completion: dict[str, Any], body: dict[str, Any]) -> list[bytes]:
    """A finished chat.completion as the SSE events of a stream (usage if the body asks)."""
    head = {k: completion[k] for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk"
    events = []
    for ch in completion["choices"]:
        delta = {"role": "assistant", "content": ch["message"]["content"]}
        events.append({**head, "choices": [{"index": ch["index"], "delta": delta}]})
        done = {"index": ch["index"], "delta": {}, "finish_reason": ch["finish_reason"]}
        events.append({**head, "choices": [done]})
    opts = body.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage"):
        events.append({**head, "choices": [], "usage": completion["usage"]})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
