"""The in-process own model as an upstream: `UpstreamClient` over the rollout sampler.

    upstreams:
      own: {kind: local, model_path: smollm2-135m}     # or a run dir written by `ownlm train`

One generation at a time, in a worker thread, so the event loop keeps serving other upstreams.
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


def _bad_request(message: str, param: str | None = None) -> UpstreamResponse:
    return UpstreamResponse(400, error_body(message, "invalid_request_error", param))


class _ReplayStream:
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
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self.model is None:
            from ownlm.models.load import SMOLLM2_NAME, load_model

            path = self.cfg.model_path or SMOLLM2_NAME
            self.model, self.tokenizer = await asyncio.to_thread(load_model, path)

    async def close(self) -> None:
        pass

    async def embeddings(self, body: dict[str, Any]) -> UpstreamResponse:
        return _bad_request(f"upstream {self.name} (local model) does not serve embeddings")

    async def chat(self, body: dict[str, Any], *, stream: bool) -> UpstreamResponse | _ReplayStream:
        if body.get("tools"):
            return _bad_request(
                f"upstream {self.name} (local model) does not support tools; route tool calls "
                "to another model",
                "tools",
            )
        async with self._lock:
            completion = await asyncio.to_thread(self._complete, body)
        if not stream:
            return UpstreamResponse(200, orjson.dumps(completion))
        return _ReplayStream(_as_sse(completion, body))

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        from ownlm.models.chat import encode_prompt
        from ownlm.rollout.sampler import sample_completions
        from ownlm.rollout.types import SamplingParams

        stop = body.get("stop")
        params = SamplingParams(
            max_new_tokens=body.get("max_completion_tokens")
            or body.get("max_tokens")
            or DEFAULT_MAX_NEW_TOKENS,
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
        )
        n = int(body.get("n") or 1)
        ids = encode_prompt(self.tokenizer, body["messages"])
        out = sample_completions(self.model, self.tokenizer, [ids], n, params)
        completion_tokens = int(out.completion_mask.sum().item())
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": out.finish_reasons[i],
            }
            for i, text in enumerate(out.texts)
        ]
        return {
            "id": "chatcmpl-local-" + str(time.time_ns()),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model")),
            "choices": choices,
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": completion_tokens,
                "total_tokens": len(ids) + completion_tokens,
            },
        }


def _as_sse(completion: dict[str, Any], body: dict[str, Any]) -> list[bytes]:
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
