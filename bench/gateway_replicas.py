"""Gateway replicas, side by side: requests/s and CPU per request with 1 and 2 `ownlm serve`
replicas, and what Valkey on the request path costs.

One run, one fast mock upstream and the raw asyncio load client of bench/gateway_vs_litellm.py,
four set-ups measured in interleaved rounds (64 clients, whole chats, a key with a budget so
every request also reserves and settles):

    sqlite           one gateway, the embedded default (SQLite, limits in its memory)
    pg               one gateway on PostgreSQL, limits in its memory
    pg+valkey        one gateway on PostgreSQL with shared_state_url (Valkey protocol)
    2x pg+valkey     two replicas on both, each with its own load client (32 clients each)

CPU per request counts the gateways' processes and, where it is on the path, the Valkey server's
(utime + stime from /proc over the load phase). Everything runs on this one machine, so two
replicas share its cores with the load clients, the mock, PostgreSQL and Valkey: the 2x row
shows what a second replica adds here, not what two hosts would do.

    python bench/gateway_replicas.py [--duration-s 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_vs_litellm as g  # noqa: E402  (the mock, the load client, /proc CPU)

HOST = g.HOST
ROOT = g.ROOT


def start_postgres(tmp: Path) -> tuple[str, list[str]]:
    """A throwaway PostgreSQL (as the postgres user when root); (URL, stop command)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("PostgreSQL binaries not found: run `make system-deps`")
    bindir = os.path.dirname(found[-1])
    root = tmp / "pg"
    root.mkdir()
    os.chmod(root, 0o755)
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    port = g.free_port()
    data = str(root / "data")
    subprocess.run(
        [*as_pg, f"{bindir}/initdb", "-D", data, "-U", user, "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses={HOST} -p {port} -k {root}"
    subprocess.run(
        [*as_pg, f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-w", "-l", f"{root}/log", "start"],
        check=True,
        capture_output=True,
    )
    stop = [*as_pg, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"]
    return f"postgresql://{user}@{HOST}:{port}/postgres", stop


def start_valkey(tmp: Path) -> tuple[str, subprocess.Popen[bytes]]:
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no valkey-server or redis-server: run `make system-deps`")
    port = g.free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        + ["--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return f"redis://{HOST}:{port}/0", proc


def gateway_config(tmp: Path, name: str, mock_port: int, port: int, **over: Any) -> Path:
    base = yaml.safe_load(g.ownlm_config(tmp, mock_port, port).read_text())
    base["keys"][0]["budget_usd"] = 1e9  # every request reserves and settles
    base.update(over)
    path = tmp / f"{name}-{port}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def measure(ports: list[int], pids: list[int], clients: int, duration_s: float) -> dict[str, Any]:
    """Load every port at once (clients split evenly); total req/s and CPU ms per request."""
    ticks0 = sum(g.cpu_ticks(p) for p in pids)
    each = max(1, clients // len(ports))
    with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:
        runs = [pool.submit(g.run_load, p, False, each, 10**9, duration_s) for p in ports]
        results = [r.result() for r in runs]
    ticks = sum(g.cpu_ticks(p) for p in pids) - ticks0
    n = sum(r["n"] for r in results)
    errors = sum(r["errors"] for r in results)
    rps = sum(r["rps"] for r in results)
    cpu_ms = 1000.0 * ticks / os.sysconf("SC_CLK_TCK") / max(n, 1)
    return {"rps": rps, "cpu_ms": cpu_ms, "errors": errors, "n": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration-s", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    pg_stop: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ownlm-replicas-") as tmp_s:
        tmp = Path(tmp_s)
        os.chmod(tmp, 0o755)  # the postgres user reads its data directory below it
        try:
            mock_port = g.free_port()
            procs.append(g.start([sys.executable, g.__file__, "--mock", str(mock_port)],
                                 tmp / "mock.log"))  # fmt: skip
            g.wait_ready(mock_port, procs[-1], 30, "mock")
            pg_url, pg_stop = start_postgres(tmp)
            valkey_url, valkey = start_valkey(tmp)
            procs.append(valkey)

            def serve(name: str, **over: Any) -> tuple[int, int]:
                port = g.free_port()
                cfg = gateway_config(tmp, name, mock_port, port, **over)
                cmd = [sys.executable, "-m", "ownlm", "serve", "--config", str(cfg)]
                procs.append(g.start(cmd, tmp / f"{name}-{port}.log"))
                g.wait_ready(port, procs[-1], 60, name)
                return port, procs[-1].pid

            shared = {"store_url": pg_url, "shared_state_url": valkey_url}
            setups: dict[str, tuple[list[int], list[int]]] = {}
            port, pid = serve("sqlite")
            setups["sqlite"] = ([port], [pid])
            port, pid = serve("pg", store_url=pg_url)
            setups["pg"] = ([port], [pid])
            port, pid = serve("pg+valkey", **shared)
            setups["pg+valkey"] = ([port], [pid, valkey.pid])
            port2, pid2 = serve("replica2", **shared)
            setups["2x pg+valkey"] = ([port, port2], [pid, pid2, valkey.pid])

            results: dict[str, list[dict[str, Any]]] = {k: [] for k in setups}
            for r in range(args.rounds):
                for name, (ports, pids) in setups.items():
                    res = measure(ports, pids, args.clients, args.duration_s)
                    results[name].append(res)
                    print(
                        f"  round {r + 1} {name:14s} {res['rps']:8.0f} req/s  "
                        f"cpu/req {res['cpu_ms']:.3f} ms  errors {res['errors']}",
                        flush=True,
                    )
        finally:
            for proc in procs:
                g.stop(proc)
            if pg_stop:
                subprocess.run(pg_stop, capture_output=True)

    def best(name: str, key: str) -> float:
        vals = [r[key] for r in results[name]]
        return max(vals) if key == "rps" else min(vals)

    print(f"\n{'setup':16s} {'req/s@' + str(args.clients):>10s} {'cpu ms/req':>11s}")
    for name in results:
        print(f"{name:16s} {best(name, 'rps'):10.0f} {best(name, 'cpu_ms'):11.3f}")
    print("\nratios (same run):")
    one, two = best("pg+valkey", "rps"), best("2x pg+valkey", "rps")
    print(f"  2 replicas / 1 replica req/s: {two / one:.2f}")
    print(
        "  cpu per request with Valkey on the path / embedded sqlite: "
        f"{best('pg+valkey', 'cpu_ms') / best('sqlite', 'cpu_ms'):.2f}"
    )


if __name__ == "__main__":
    main()
