"""Serving the own model, side by side: gateway on llama.cpp vs llama.cpp direct vs the torch path.

One run, one model (SmolLM2-135M-Instruct), the same 16 chat prompts (the demo app's
reasoning-gym `leg_counting` questions), greedy, at most 64 new tokens, streamed:

    gateway+llama.cpp  `ownlm serve` with the own model on `kind: llama_cpp` (the default own
                       engine: GGUF, a managed llama-server with parallel slots)
    llama.cpp direct   the same llama-server, its own /v1/chat/completions, no gateway
    gateway+torch      `ownlm serve` with `kind: local` (ownlm's in-process fp32 sampler, the
                       engine before llama.cpp)

    llama.cpp ub512    llama.cpp direct at llama.cpp's default micro-batch (ownlm starts it at 64)

For 1, 4 and 16 concurrent clients: latency p50/p99, time to first token p50, and tokens/s in
total (completion tokens / wall time). Clients are asyncio tasks in this process sending
streamed requests with aiohttp; everything listens on 127.0.0.1 and the loops are bounded.

    .venv/bin/python bench/serve_own_model.py                       # f16, 8 slots, 2 threads
    .venv/bin/python bench/serve_own_model.py --quantization q4_k_m --skip-torch
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp
import orjson
import uvicorn

from ownlm.demo.app import app_env
from ownlm.gateway.config import GatewayConfig
from ownlm.gateway.server import build_app, serve_gateway_in_thread
from ownlm.models.llama_cpp import LlamaServer, free_port

# llama-server closes a connection after each stream; say so (see ownlm/gateway/engine.py)
JSON = {"Content-Type": "application/json", "Connection": "close"}


def start_gateway(upstream: dict[str, Any], tmp: str) -> tuple[uvicorn.Server, Any, str]:
    cfg = GatewayConfig.model_validate(
        {
            "port": free_port(),
            "store_url": f"sqlite:///{tmp}/bench-{upstream['kind']}.db",
            "require_keys": False,
            "upstreams": {"own": {**upstream, "timeout_s": 600, "max_retries": 0}},
            "models": {"own": {"upstream": "own"}},
        }
    )
    app = build_app(cfg)
    server, _ = serve_gateway_in_thread(app, cfg, timeout_s=300)
    return server, app.app, f"http://127.0.0.1:{cfg.port}/v1/chat/completions"


async def one_request(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, Any]], max_tokens: int
) -> tuple[float, float, int]:
    """(latency s, time to first token s, completion tokens) of one streamed chat."""
    body = {
        "model": "own",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    buf = b""
    async with session.post(url, data=orjson.dumps(body), headers=JSON) as resp:
        if resp.status != 200:
            raise SystemExit(f"{url}: status {resp.status}: {(await resp.read())[:300]!r}")
        async for chunk in resp.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                raw, buf = buf.split(b"\n\n", 1)
                if not raw.startswith(b"data: ") or raw == b"data: [DONE]":
                    continue
                ev = orjson.loads(raw[6:])
                if ev.get("choices") and ev["choices"][0]["delta"].get("content"):
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                if ev.get("usage"):
                    tokens = int(ev["usage"]["completion_tokens"])
    latency = time.perf_counter() - t0
    return latency, ttft if ttft is not None else latency, tokens


async def load(
    url: str, prompts: list[list[dict[str, Any]]], clients: int, n_requests: int, max_tokens: int
) -> dict[str, float]:
    results: list[tuple[float, float, int]] = []
    queue = list(range(n_requests))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
        await one_request(session, url, prompts[0], 4)  # warm: connection, prompt cache

        async def client() -> None:
            while queue:
                i = queue.pop()
                results.append(await one_request(session, url, prompts[i % len(prompts)],
                                                 max_tokens))  # fmt: skip

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    return {
        "p50_s": statistics.median(lat),
        "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "ttft_p50_s": statistics.median(r[1] for r in results),
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "tokens_per_request": sum(r[2] for r in results) / len(results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quantization", default="f16")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument(
        "--compare-ubatch", type=int, default=512,
        help="also time llama.cpp direct at this micro-batch (llama.cpp's own default: 512)",
    )  # fmt: skip
    args = ap.parse_args()
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    env = app_env(seed=10_000)
    prompts = [env.reset(t) for t in env.tasks("train", 16)]
    levels = [int(c) for c in args.clients.split(",")]
    tmp = tempfile.mkdtemp(prefix="ownlm-bench-serve-")
    rows: dict[tuple[str, int], dict[str, float]] = {}

    engine = {
        "kind": "llama_cpp",
        "model_path": args.model,
        "quantization": args.quantization,
        "parallel_slots": args.slots,
        "threads": args.threads,
    }
    server, gw, url = start_gateway(engine, tmp)
    own = gw.upstreams["own"].server
    direct = own.base_url + "/v1/chat/completions"
    for c in levels:
        n = max(16, 2 * c)
        rows[("gateway+llama.cpp", c)] = asyncio.run(load(url, prompts, c, n, args.max_tokens))
        rows[("llama.cpp direct", c)] = asyncio.run(load(direct, prompts, c, n, args.max_tokens))
        print(f"  {c} clients: llama.cpp paths measured", flush=True)
    server.should_exit = True
    time.sleep(1.0)
    other = f"llama.cpp ub{args.compare_ubatch}"
    with LlamaServer(
        own.gguf, parallel_slots=args.slots, threads=args.threads,
        ubatch_tokens=args.compare_ubatch,
    ) as plain:  # fmt: skip
        for c in levels:
            n = max(16, 2 * c)
            rows[(other, c)] = asyncio.run(
                load(plain.base_url + "/v1/chat/completions", prompts, c, n, args.max_tokens)
            )
        print(f"  llama.cpp at micro-batch {args.compare_ubatch} measured", flush=True)
    time.sleep(1.0)
    if not args.skip_torch:
        server, gw, url = start_gateway({"kind": "local", "model_path": args.model}, tmp)
        for c in levels:
            n = max(16, 2 * c)
            rows[("gateway+torch", c)] = asyncio.run(load(url, prompts, c, n, args.max_tokens))
            print(f"  {c} clients: torch path measured", flush=True)
        server.should_exit = True

    print(
        f"\nown model {args.model}, {args.quantization} on llama.cpp ({args.slots} slots), "
        f"{args.threads} threads, greedy, <= {args.max_tokens} new tokens, streamed"
    )
    head = f"{'path':<19}{'clients':>8}{'p50 s':>9}{'p99 s':>9}{'TTFT p50':>10}{'tok/s':>9}"
    print(head + f"{'tok/req':>9}")
    for (path, c), r in rows.items():
        print(
            f"{path:<19}{c:>8}{r['p50_s']:>9.3f}{r['p99_s']:>9.3f}{r['ttft_p50_s']:>10.3f}"
            f"{r['tokens_per_s']:>9.1f}{r['tokens_per_request']:>9.1f}"
        )
    one, top = levels[0], levels[-1]
    g, d = rows[("gateway+llama.cpp", one)], rows[("llama.cpp direct", one)]
    print(
        f"\ngateway+llama.cpp p50 at {one} client: {g['p50_s'] / d['p50_s']:.2f}x llama.cpp direct"
    )
    ub = rows[("llama.cpp direct", top)]["p50_s"] / rows[(other, top)]["p50_s"]
    print(
        f"p50 at {top} clients, micro-batch {own.ubatch_tokens} (ownlm's) vs "
        f"{args.compare_ubatch}: {ub:.2f}x"
    )
    if ("gateway+torch", top) in rows:
        ratio = (
            rows[("gateway+llama.cpp", top)]["tokens_per_s"]
            / rows[("gateway+torch", top)]["tokens_per_s"]
        )
        print(f"throughput at {top} clients: gateway+llama.cpp {ratio:.1f}x gateway+torch")


if __name__ == "__main__":
    main()
