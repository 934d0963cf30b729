"""An own model on llama.cpp: `UpstreamClient` over a `llama-server` the gateway manages.

    upstreams:
      own: {kind: llama_cpp, model_path: runs/demo/loop/cycle-1/grpo/final, quantization: f16}

At start the model is exported to GGUF (once, beside its weights), a `llama-server` is started on
loopback with `parallel_slots` slots (continuous batching: concurrent requests share decode
steps) and health-checked; at stop it is terminated. A supervisor restarts an engine that dies;
requests in flight then fail with 502 and requests during the restart get 503, both in the
OpenAI error shape, never a hang.

The prompt is rendered by `ownlm.models.chat.encode_prompt`, the function training and the gate
use, and sent as token ids to llama-server's `/completion`; its replies and SSE events are
translated to chat.completion objects and chunks, so the stream carries each token as sampled.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ownlm.gateway.config import UpstreamConfig
from ownlm.gateway.local import bad_request, max_new_tokens
from ownlm.gateway.upstream import UpstreamResponse, UpstreamUnavailable
from ownlm.gateway.wire import error_body
from ownlm.models.chat import encode_prompt
from ownlm.models.llama_cpp import (
    LlamaServer,
    completion_request,
    export_gguf,
    finish_reason,
    openai_logprobs,
)

log = logging.getLogger("ownlm.gateway")
CLOSE = {"Connection": "close"}


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    stop = body.get("stop")
    seed = body.get("seed")
    top = body.get("top_logprobs")
    return {
        "max_new_tokens": max_new_tokens(body),
        "temperature": float(body.get("temperature", 1.0)),
        "top_p": float(body.get("top_p", 1.0)),
        "stop": (stop,) if isinstance(stop, str) else tuple(stop or ()),
        "seed": seed if isinstance(seed, int) else None,
        "top_logprobs": (int(top) if isinstance(top, int) else 0) if body.get("logprobs") else None,
    }


class LlamaCppUpstream:
    """Answers chat requests with a managed llama-server (ownlm/models/llama_cpp.py)."""

    def __init__(self, name: str, cfg: UpstreamConfig, *, log_dir: Path | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.log_dir = log_dir
        self.tokenizer: Any = None
        self.server: Any = None
        self.restarts = 0
        self._session: aiohttp.ClientSession | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._ready = False  # started and healthy; False while restarting

    async def start(self) -> None:
        from ownlm.models.load import SMOLLM2_NAME, load_tokenizer

        path = self.cfg.model_path or SMOLLM2_NAME
        gguf = await asyncio.to_thread(export_gguf, path, self.cfg.quantization)
        self.tokenizer = await asyncio.to_thread(load_tokenizer, path)
        log_path = None
        if self.log_dir is not None:
            log_path = self.log_dir / f"llama-server-{self.name.replace(':', '_')}.log"
        self.server = LlamaServer(
            gguf,
            parallel_slots=self.cfg.parallel_slots,
            context_tokens_per_slot=self.cfg.context_tokens_per_slot,
            threads=self.cfg.threads,
            ubatch_tokens=self.cfg.ubatch_tokens,
            log_path=log_path,
        )
        await asyncio.to_thread(self.server.start, self.cfg.start_timeout_s)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=self.cfg.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.cfg.max_connections),
            headers={"Content-Type": "application/json"},
        )
        self._ready = True
        self._supervisor = asyncio.create_task(self._supervise())
        log.info("%s: llama-server on %s serving %s", self.name, self.server.base_url, gguf)

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._session is not None:
            await self._session.close()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    async def _supervise(self) -> None:
        """Restart the engine when its process dies; keep trying, with backoff, on failure."""
        backoff_s = 0.5
        while not self._closing:
            await asyncio.sleep(0.2)
            if self.server.alive():
                backoff_s = 0.5
                continue
            code = self.server.proc.returncode if self.server.proc else None
            log.warning("%s: llama-server exited (code %s); restarting", self.name, code)
            self._ready = False
            try:
                await asyncio.to_thread(self.server.stop)
                await asyncio.to_thread(self.server.start, self.cfg.start_timeout_s)
                self._ready = True
                self.restarts += 1
                log.info("%s: llama-server restarted on %s", self.name, self.server.base_url)
            except Exception:  # any failure: log it, wait, try again; the gateway keeps serving
                log.exception("%s: llama-server restart failed", self.name)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)

    def health(self) -> dict[str, Any]:
        """What /health reports about this engine."""
        alive = self.server is not None and self.server.alive()
        return {"engine": "llama.cpp", "alive": alive, "restarts": self.restarts}

    async def embeddings(self, body: dict[str, Any]) -> UpstreamResponse:
        return bad_request(f"upstream {self.name} (own model) does not serve embeddings")

    async def chat(self, body: dict[str, Any], *, stream: bool) -> Any:
        if body.get("tools"):
            return bad_request(
                f"upstream {self.name} (own model) does not support tools; route tool calls "
                "to another model",
                "tools",
            )
        n = int(body.get("n") or 1)
        if stream and n > 1:
            return bad_request(f"upstream {self.name} streams one choice; send n=1", "n")
        if stream and body.get("logprobs"):
            return bad_request(f"upstream {self.name} gives logprobs on whole replies", "logprobs")
        if not self._ready or not self.server.alive():
            return UpstreamResponse(
                503,
                error_body(
                    f"upstream {self.name}: the engine is restarting; retry in a few seconds",
                    "server_error",
                ),
            )
        ids = encode_prompt(self.tokenizer, body["messages"])
        sampling = _sampling(body)
        url = self.server.base_url + "/completion"
        head = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": str(body.get("model")),
        }
        try:
            if stream:
                req = completion_request(ids, **sampling, stream=True)
                # llama-server closes the connection after a stream (despite its Keep-Alive
                # header): ask for that, so the pool never reuses a closed connection
                resp = await self._session.post(url, data=orjson.dumps(req), headers=CLOSE)
                if resp.status != 200:
                    async with resp:
                        return _engine_error(self.name, resp.status, await resp.read())
                opts = body.get("stream_options")
                usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
                return _EngineStream(resp, head, len(ids), usage, self.name)
            replies = await asyncio.gather(
                *(
                    self._complete(url, ids, {**sampling, "seed": _nth_seed(sampling, i)})
                    for i in range(n)
                )
            )
        except (TimeoutError, aiohttp.ClientError) as err:
            raise UpstreamUnavailable(
                502, f"upstream {self.name}: the engine failed mid-request ({err}); retry"
            ) from err
        for status, reply in replies:
            if status != 200:
                return _engine_error(self.name, status, orjson.dumps(reply))
        completion_tokens = sum(int(r.get("tokens_predicted", 0)) for _, r in replies)
        completion = {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": r.get("content", "")},
                    "finish_reason": _finish(r),
                    **(
                        {"logprobs": openai_logprobs(r, sampling["top_logprobs"])}
                        if sampling["top_logprobs"] is not None
                        else {}
                    ),
                }
                for i, (_, r) in enumerate(replies)
            ],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": completion_tokens,
                "total_tokens": len(ids) + completion_tokens,
            },
        }
        return UpstreamResponse(200, orjson.dumps(completion))

    async def _complete(
        self, url: str, ids: list[int], sampling: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        assert self._session is not None
        req = completion_request(ids, **sampling)
        async with self._session.post(url, data=orjson.dumps(req)) as resp:
            raw = await resp.read()
        try:
            return resp.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return resp.status, {"error": {"message": raw[:200].decode(errors="replace")}}


def _nth_seed(sampling: dict[str, Any], i: int) -> int | None:
    seed = sampling["seed"]
    return None if seed is None else seed + i


def _finish(reply: dict[str, Any]) -> str:
    return finish_reason(reply.get("stop_type"))


def _engine_error(name: str, status: int, raw: bytes) -> UpstreamResponse:
    """llama-server's error as an OpenAI error reply (its message kept)."""
    try:
        msg = orjson.loads(raw)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        msg = raw[:200].decode(errors="replace")
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return UpstreamResponse(status, error_body(f"upstream {name} (llama.cpp): {msg}", kind))


class _EngineStream:
    """llama-server's SSE events as OpenAI chat.completion.chunk events, token by token."""

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        head: dict[str, Any],
        prompt_tokens: int,
        include_usage: bool,
        name: str,
    ) -> None:
        self._resp = resp
        self._head = {**head, "object": "chat.completion.chunk"}
        self._prompt_tokens = prompt_tokens
        self._include_usage = include_usage
        self._name = name

    def _event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**self._head, **payload}) + b"\n\n"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buf = b""
        first = True
        try:
            async for chunk in self._resp.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    raw, buf = buf.split(b"\n\n", 1)
                    if not raw.startswith(b"data: "):
                        continue  # SSE comments (pings)
                    ev = orjson.loads(raw[6:])
                    if "error" in ev:
                        raise UpstreamUnavailable(
                            502, f"upstream {self._name} (llama.cpp): {ev['error']}"
                        )
                    text = ev.get("content", "")
                    if text or first:
                        delta = {"content": text}
                        if first:
                            delta["role"] = "assistant"
                            first = False
                        yield self._event({"choices": [{"index": 0, "delta": delta}]})
                    if ev.get("stop"):
                        done = {"index": 0, "delta": {}, "finish_reason": _finish(ev)}
                        yield self._event({"choices": [done]})
                        if self._include_usage:
                            c = int(ev.get("tokens_predicted", 0))
                            usage = {
                                "prompt_tokens": self._prompt_tokens,
                                "completion_tokens": c,
                                "total_tokens": self._prompt_tokens + c,
                            }
                            yield self._event({"choices": [], "usage": usage})
                        yield b"data: [DONE]\n\n"
                        return
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as err:
            raise UpstreamUnavailable(
                502, f"upstream {self._name}: the engine broke off the stream ({err})"
            ) from err
        finally:
            self._resp.release()
        raise UpstreamUnavailable(502, f"upstream {self._name}: the engine ended the stream early")

    async def aclose(self) -> None:
        self._resp.close()
