"""Gateway overhead, side by side: direct vs bare forwarder vs ownlm vs the LiteLLM proxy.

One run, one fast mock upstream (raw asyncio on uvloop, fixed replies), four paths to it:

    direct     the load client talks to the mock
    forwarder  bench/forwarder.py: raw ASGI + aiohttp, no work per request (a Python proxy's floor)
    ownlm      `ownlm serve` with API keys, a routing rule and tracing to SQLite all on
    litellm    the LiteLLM proxy (PyPI `litellm[proxy]`), one worker

For each, whole and streamed chats: latency p50/p99 at 1 client (and what the proxy adds to
direct), requests/s at 64 clients, and the proxy's CPU time per request (utime + stime of its
process tree from /proc, over the 64-client phase). The load client is a raw asyncio HTTP/1.1
client with keep-alive, in its own process. Everything listens on 127.0.0.1; loops are bounded.

    python bench/gateway_vs_litellm.py                   # all four paths
    python bench/gateway_vs_litellm.py --skip-litellm    # when LiteLLM cannot be installed

LiteLLM pins packages the ownlm venv must keep (huggingface_hub, rich, python-dateutil), so it
runs from its own venv, created on first use at --litellm-venv (pip install from PyPI).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HOST = "127.0.0.1"
LITELLM_VERSION = "1.108.7"
ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-" + "5f1c0e9a7b3d" * 5  # litellm refuses short master keys

# -- the mock upstream -------------------------------------------------------------------------

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "mock-chat",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi there, friend."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
).encode()


def _sse_events() -> list[bytes]:
    base = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "mock-chat",
    }
    deltas = [{"role": "assistant", "content": ""}] + [
        {"content": w} for w in ("Hi", " there", ",", " friend", ".")
    ]
    events = [
        {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
    ]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append(
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        }
    )
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


PLAIN_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_COMPLETION)).encode()
    + b"\r\n\r\n"
    + _COMPLETION
)
STREAM_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"".join(f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in _sse_events())
    + b"0\r\n\r\n"
)


class MockProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive server answering every request with a fixed chat reply."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15 : line_end if line_end > 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            stream = b'"stream":true' in body or b'"stream": true' in body
            self.transport.write(STREAM_REPLY if stream else PLAIN_REPLY)


def run_mock(port: int) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            MockProtocol, HOST, port, backlog=1024
        )
        await server.serve_forever()

    uvloop.run(main())


# -- the load client ---------------------------------------------------------------------------


async def _read_reply(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        end = lower.find(b"\r\n", at)
        await reader.readexactly(int(lower[at + 15 : end]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(size + 2)
    return status


async def _load(
    port: int, request: bytes, clients: int, n_max: int, duration_s: float
) -> dict[str, Any]:
    lats: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        while time.perf_counter() < deadline and len(lats) < n_max:
            t0 = time.perf_counter()
            writer.write(request)
            status = await _read_reply(reader)
            if status == 200:
                lats.append(time.perf_counter() - t0)
            else:
                errors += 1
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    lats.sort()
    return {
        "n": len(lats),
        "errors": errors,
        "wall_s": wall,
        "rps": len(lats) / wall,
        "p50_ms": 1000 * lats[len(lats) // 2] if lats else float("nan"),
        "p99_ms": 1000 * lats[min(len(lats) - 1, int(len(lats) * 0.99))] if lats else float("nan"),
        "lats_ms": [1000 * x for x in lats] if clients == 1 else [],
    }


def run_load(
    port: int, stream: bool, clients: int, n_max: int, duration_s: float, responses: bool = False
) -> dict[str, Any]:
    """Run the load client in its own process; returns its JSON summary."""
    cmd = (
        [
            sys.executable,
            __file__,
            "--load",
            str(port),
            "--clients",
            str(clients),
            "--n",
            str(n_max),
            "--duration-s",
            str(duration_s),
        ]
        + (["--stream"] if stream else [])
        + (["--responses"] if responses else [])
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def chat_request(stream: bool, responses: bool = False) -> bytes:
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 16,
    }
    path = b"/v1/chat/completions"
    if responses:  # the same question through the Responses API (translated to chat upstream)
        body, path = {"model": "chat", "input": "Say hi", "max_output_tokens": 16}, b"/v1/responses"
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    raw = json.dumps(body).encode()
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        + b"content-type: application/json\r\n"
        + f"authorization: Bearer {KEY}\r\ncontent-length: {len(raw)}\r\n\r\n".encode()
        + raw
    )


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_ticks(pid: int) -> int:
    """utime + stime (clock ticks) of pid and all its descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += int(stats[p][11]) + int(stats[p][12])
        todo.extend(children.get(p, []))
    return total


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float, name: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready")
        try:
            if run_load(port, False, 1, 1, 5.0)["n"] == 1:
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} not ready after {timeout_s} s")


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=fh, env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def ensure_litellm(venv: Path) -> Path:
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                f"litellm[proxy]=={LITELLM_VERSION}",
            ],
            check=True,
        )
    return exe


def ownlm_config(tmp: Path, mock_port: int, port: int) -> Path:
    import hashlib

    cfg = {
        "host": HOST,
        "port": port,
        "store_url": f"sqlite:///{tmp}/bench.db",
        "upstreams": {"mock": {"base_url": f"http://{HOST}:{mock_port}/v1"}},
        "models": {
            "small": {
                "upstream": "mock",
                "model": "mock-chat",
                "price_in_usd_per_mtok": 0.1,
                "price_out_usd_per_mtok": 0.4,
            },
            "strong": {"upstream": "mock", "model": "mock-chat-strong"},
        },
        "router": {
            "routes": {
                "chat": {
                    "default": "small",
                    "policies": [
                        {"kind": "rule", "when": {"tags": {"tier": ["pro"]}}, "variant": "strong"},
                        {"kind": "rule", "when": {"min_prompt_tokens": 4000}, "variant": "strong"},
                    ],
                }
            }
        },
        "keys": [
            {
                "name": "bench",
                "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                "rate_per_s": 1e9,
                "burst": 10**9,
            }
        ],
    }
    path = tmp / "ownlm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def litellm_config(tmp: Path, mock_port: int) -> Path:
    cfg = {
        "model_list": [
            {
                "model_name": "chat",
                "litellm_params": {
                    "model": "openai/mock-chat",
                    "api_base": f"http://{HOST}:{mock_port}/v1",
                    "api_key": "sk-mock",
                },
            }
        ],
        "litellm_settings": {"telemetry": False},
        "general_settings": {"master_key": KEY},
    }
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- the run -----------------------------------------------------------------------------------
# The machine is shared, so load from other work drifts during a run. Paths are measured in
# interleaved rounds (A B C D, A B C D, ...): latencies are pooled over the rounds, requests/s
# and CPU per request are the median of the rounds. Ratios then compare like with like.


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


def measure_all(
    paths: dict[str, tuple[int, int | None]], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """paths: name -> (port, pid of the proxy or None). Returns name -> mode -> figures."""
    out: dict[str, dict[str, Any]] = {name: {} for name in paths}
    for stream in (False, True):
        mode = "stream" if stream else "plain"
        lats: dict[str, list[float]] = {name: [] for name in paths}
        rps: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        errors = dict.fromkeys(paths, 0)
        for port, _ in paths.values():
            run_load(port, stream, 8, 10**9, 1.0)  # warm up connections and caches
        for r in range(args.rounds):
            for name, (port, pid) in paths.items():
                n_lat = args.n_latency // 10 if name == "litellm" else args.n_latency
                lat = run_load(port, stream, 1, n_lat, 30.0)
                lats[name] += lat["lats_ms"]
                ticks0 = cpu_ticks(pid) if pid else 0
                tput = run_load(port, stream, args.clients, 10**9, args.duration_s)
                if pid:
                    secs = (cpu_ticks(pid) - ticks0) / os.sysconf("SC_CLK_TCK")
                    cpu[name].append(1000.0 * secs / max(tput["n"], 1))
                rps[name].append(tput["rps"])
                errors[name] += lat["errors"] + tput["errors"]
                print(
                    f"  round {r + 1} {mode:6s} {name:9s} p50 {lat['p50_ms']:7.3f} ms  "
                    f"{tput['rps']:7.0f} req/s  cpu/req "
                    f"{cpu[name][-1] if pid else float('nan'):6.3f} ms",
                    flush=True,
                )
        for name in paths:
            out[name][mode] = {
                "p50_ms": pct(lats[name], 0.5),
                "p99_ms": pct(lats[name], 0.99),
                "rps": statistics.median(rps[name]),
                "cpu_ms_per_req": statistics.median(cpu[name]) if cpu[name] else None,
                "errors": errors[name],
            }
    return out


def measure_responses(port: int, pid: int | None, args: argparse.Namespace) -> dict[str, Any]:
    """ownlm only: CPU per request of POST /v1/responses vs chat completions, whole replies,
    in alternating rounds at 64 clients (the Responses call is translated to chat and back)."""
    assert pid is not None
    cpu: dict[str, list[float]] = {"chat": [], "responses": []}
    rps: dict[str, list[float]] = {"chat": [], "responses": []}
    run_load(port, False, 8, 10**9, 1.0, responses=True)  # warm up
    for r in range(args.rounds + 2):
        for api in ("chat", "responses"):
            ticks0 = cpu_ticks(pid)
            tput = run_load(port, False, args.clients, 10**9, args.duration_s, api == "responses")
            if tput["errors"]:
                raise RuntimeError(f"{api}: {tput['errors']} errors through ownlm")
            secs = (cpu_ticks(pid) - ticks0) / os.sysconf("SC_CLK_TCK")
            cpu[api].append(1000.0 * secs / max(tput["n"], 1))
            rps[api].append(tput["rps"])
            print(
                f"  round {r + 1} {api:9s} ownlm {tput['rps']:7.0f} req/s  cpu/req "
                f"{cpu[api][-1]:6.3f} ms",
                flush=True,
            )
    return {"cpu": cpu, "rps": rps}


def report_responses(t: dict[str, Any]) -> None:
    chat, resp = (statistics.median(t["cpu"][k]) for k in ("chat", "responses"))
    pairs = [b - a for a, b in zip(t["cpu"]["chat"], t["cpu"]["responses"], strict=True)]
    print(
        f"\nResponses API vs chat completions through ownlm (whole replies, 64 clients): "
        f"cpu/req {resp:.3f} vs {chat:.3f} ms, +{resp - chat:.3f} ms (per round: "
        + ", ".join(f"{d:+.3f}" for d in pairs)
        + f"); req/s {statistics.median(t['rps']['responses']):.0f} vs "
        f"{statistics.median(t['rps']['chat']):.0f}"
    )
    ok = resp - chat <= 0.1
    print(f"         goal: translation <= 0.1 ms CPU per request {'met' if ok else 'MISSED'}")


def report(results: dict[str, dict[str, Any]]) -> None:
    print("\npath       mode    p50 ms  p99 ms  +p50 ms  +p99 ms   req/s@64  cpu ms/req  errors")
    for mode in ("plain", "stream"):
        d = results["direct"][mode]
        for name, res in results.items():
            r = res[mode]
            add50, add99 = r["p50_ms"] - d["p50_ms"], r["p99_ms"] - d["p99_ms"]
            cpu = (
                f"{r['cpu_ms_per_req']:10.3f}" if r["cpu_ms_per_req"] is not None else "         -"
            )
            print(
                f"{name:10s} {mode:6s} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {add50:8.3f} "
                f"{add99:8.3f} {r['rps']:10.0f} {cpu}  {r['errors']:6d}"
            )
    print("\nratios (same run):")
    for mode in ("plain", "stream"):
        o, f, d = (results[k][mode] for k in ("ownlm", "forwarder", "direct"))
        line = (
            f"  {mode:6s} ownlm/forwarder req/s {o['rps'] / f['rps']:.2f}, "
            f"cpu {o['cpu_ms_per_req'] / f['cpu_ms_per_req']:.2f}"
        )
        if "litellm" in results:
            lt = results["litellm"][mode]
            line += f"; ownlm/litellm req/s {o['rps'] / lt['rps']:.1f}x"
            line += f", litellm/ownlm cpu {lt['cpu_ms_per_req'] / o['cpu_ms_per_req']:.1f}x"
        print(line)
        goals = [
            ("added p50 <= 0.5 ms", o["p50_ms"] - d["p50_ms"] <= 0.5),
            ("added p99 <= 1 ms", o["p99_ms"] - d["p99_ms"] <= 1.0),
            (">= 50% of forwarder req/s", o["rps"] >= 0.5 * f["rps"]),
            ("cpu <= 0.3 ms/req", o["cpu_ms_per_req"] <= 0.3),
        ]
        if "litellm" in results:
            goals.append((">= 30x litellm req/s", o["rps"] >= 30 * results["litellm"][mode]["rps"]))
        print("         goals: " + "; ".join(f"{g} {'met' if ok else 'MISSED'}" for g, ok in goals))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-latency", type=int, default=1000, help="1-client requests per round")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration-s", type=float, default=3.0, help="64-client phase per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-litellm", action="store_true")
    p.add_argument(
        "--litellm-venv",
        type=Path,
        default=Path.home() / ".cache" / "ownlm" / f"litellm-{LITELLM_VERSION}",
    )
    p.add_argument("--mock", type=int, help=argparse.SUPPRESS)
    p.add_argument("--load", type=int, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--responses", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mock:
        run_mock(args.mock)
        return
    if args.load:
        import uvloop

        req = chat_request(args.stream, args.responses)
        res = uvloop.run(_load(args.load, req, args.clients, args.n, args.duration_s))
        print(json.dumps(res))
        return

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="ownlm-bench-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            mock_port, fport, oport, lport = (free_port() for _ in range(4))
            procs.append(
                start([sys.executable, __file__, "--mock", str(mock_port)], tmp / "mock.log")
            )
            wait_ready(mock_port, procs[-1], 30, "mock")
            upstream = f"http://{HOST}:{mock_port}"
            cmds = {
                "forwarder": (
                    [
                        sys.executable,
                        str(ROOT / "bench" / "forwarder.py"),
                        "--port",
                        str(fport),
                        "--upstream",
                        upstream,
                    ],
                    {},
                    fport,
                ),
                "ownlm": (
                    [
                        sys.executable,
                        "-m",
                        "ownlm",
                        "serve",
                        "--config",
                        str(ownlm_config(tmp, mock_port, oport)),
                    ],
                    {},
                    oport,
                ),
            }
            if not args.skip_litellm:
                exe = ensure_litellm(args.litellm_venv)
                cmds["litellm"] = (
                    [
                        str(exe),
                        "--config",
                        str(litellm_config(tmp, mock_port)),
                        "--host",
                        HOST,
                        "--port",
                        str(lport),
                        "--num_workers",
                        "1",
                    ],
                    {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"},
                    lport,
                )
            paths: dict[str, tuple[int, int | None]] = {"direct": (mock_port, None)}
            for name, (cmd, env, port) in cmds.items():
                procs.append(start(cmd, tmp / f"{name}.log", env))
                wait_ready(port, procs[-1], 180, name)
                paths[name] = (port, procs[-1].pid)
            print(
                f"cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
                f"all paths up; logs in {tmp}",
                flush=True,
            )
            results = measure_all(paths, args)
            translation = measure_responses(*paths["ownlm"], args)
        finally:
            for proc in reversed(procs):
                stop(proc)
        report(results)
        report_responses(translation)


if __name__ == "__main__":
    main()
