"""Upstream clients: the `UpstreamClient` Protocol and its OpenAI-compatible HTTP implementation.

`chat(body, stream=...)` returns an `UpstreamResponse` (whole body, any status) or, for a
streamed request the upstream accepted, an `UpstreamStream` of raw SSE bytes. Connection
failures and timeouts raise `UpstreamUnavailable` with the status the gateway should answer
(502 or 504). Retries and fallbacks are the caller's (`gateway/app.py`), one place for all kinds.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from ownlm.errors import ConfigError
from ownlm.gateway.config import UpstreamConfig


@dataclass
class UpstreamResponse:
    """A whole reply: status and body bytes as the upstream sent them."""

    status: int
    body: bytes
    content_type: str = "application/json"


class UpstreamStream(Protocol):
    """A streamed reply the upstream accepted (status 200): raw SSE bytes."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UpstreamClient(Protocol):
    """What the gateway needs from an upstream."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def chat(
        self, body: dict[str, Any], *, stream: bool
    ) -> UpstreamResponse | UpstreamStream: ...

    async def embeddings(self, body: dict[str, Any]) -> UpstreamResponse: ...


class _AiohttpStream:
    def __init__(self, resp: aiohttp.ClientResponse, name: str) -> None:
        self._resp = resp
        self._name = name

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as err:
            raise UpstreamUnavailable(
                502, f"upstream {self._name} broke off the stream: {err}"
            ) from err
        finally:
            self._resp.release()

    async def aclose(self) -> None:
        self._resp.close()


class OpenAIHTTPUpstream:
    """Any OpenAI-compatible server (a provider, vLLM, another gateway) over aiohttp."""

    def __init__(self, name: str, cfg: UpstreamConfig) -> None:
        self.name = name
        self.cfg = cfg
        base = cfg.base_url.rstrip("/")
        self._chat_url = base + "/chat/completions"
        self._embed_url = base + "/embeddings"
        self._headers = {"Content-Type": "application/json"}
        if cfg.api_key_env is not None:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ConfigError(
                    f"upstreams.{name}.api_key_env: environment variable {cfg.api_key_env} is "
                    "not set; export it or remove api_key_env"
                )
            self._headers["Authorization"] = f"Bearer {key}"
        self._whole = aiohttp.ClientTimeout(total=cfg.timeout_s, sock_connect=cfg.connect_timeout_s)
        self._streamed = aiohttp.ClientTimeout(
            total=None, sock_connect=cfg.connect_timeout_s, sock_read=cfg.timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.cfg.max_connections, ttl_dns_cache=300)
        # no skip_auto_headers: aiohttp then takes its fast path (sorting and copying the
        # skip list cost ~10% of a proxied request's CPU)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._whole
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def chat(
        self, body: dict[str, Any], *, stream: bool
    ) -> UpstreamResponse | UpstreamStream:
        return await self._post(self._chat_url, orjson.dumps(body), stream)

    async def embeddings(self, body: dict[str, Any]) -> UpstreamResponse:
        reply = await self._post(self._embed_url, orjson.dumps(body), False)
        assert isinstance(reply, UpstreamResponse)
        return reply

    async def _post(self, url: str, data: bytes, stream: bool) -> UpstreamResponse | UpstreamStream:
        assert self._session is not None, "start() was not called"
        try:
            if stream:
                resp = await self._session.post(url, data=data, timeout=self._streamed)
            else:  # the session's timeout (passing one per request costs a merge per call)
                resp = await self._session.post(url, data=data)
            if stream and resp.status == 200:
                return _AiohttpStream(resp, self.name)
            async with resp:
                body = await resp.read()
                return UpstreamResponse(resp.status, body, resp.content_type)
        except TimeoutError as err:
            raise UpstreamUnavailable(
                504, f"upstream {self.name} did not answer within {self.cfg.timeout_s} s"
            ) from err
        except aiohttp.ClientError as err:
            raise UpstreamUnavailable(502, f"upstream {self.name} failed: {err}") from err
