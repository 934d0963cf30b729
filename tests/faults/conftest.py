"""Fault fixtures: a PostgreSQL server a test may stop and start, and `ownlm serve` as a subprocess.

Every fault test runs the real thing out of process: `python -m ownlm serve --config cfg.yaml
--set port=N` in front of the mock OpenAI upstream (tests/gateway/conftest.py, served from a
thread of the test process, so its counters such as `open_streams` are readable here), storing
into a throwaway PostgreSQL server (initdb + pg_ctl on a free loopback port, as the `postgres`
user when the tests run as root, like tests/store/conftest.py). The server is per test, so a test
that stops it cannot break another. Every process a fixture starts is killed in its teardown,
also when the test fails; a failing test's output ends with the gateway's log tail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gateway.conftest import (
    free_port,
    mock_upstream,  # noqa: F401 (the fixture, for this folder)
    sha,
)
from tests.store.conftest import _as_pg_user, _pg_bin

KEY = "sk-faults-user"  # a static key in every config below, with no budget and a huge rate
START_TIMEOUT_S = 60.0  # a loaded 2-core machine may take a while to start a Python process


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> float:
    """Poll `cond` until it is truthy; the seconds it took, or an AssertionError naming `what`."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s")
        time.sleep(every_s)


# -- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class PgServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1:port that can be stopped and started again
    on the same data directory and port."""

    bindir: str
    root: str
    port: int
    user: str
    running: bool = False

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def url(self) -> str:
        """The store URL (the cluster's `postgres` database)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            _as_pg_user([f"{self.bindir}/pg_ctl", "-D", self.data, *args]),
            check=check,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=on"
        self._ctl("-o", opts, "-w", "-t", "60", "-l", f"{self.root}/log", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m fast`: sessions are cut off, open transactions rolled back."""
        self._ctl("-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one query, on a connection of its own (not the gateway's)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            return list(conn.execute(query, params).fetchall())


@pytest.fixture
def pg() -> Iterator[PgServer]:
    """A PostgreSQL server of this test alone, started; stopped and removed at teardown."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL binaries not found (/usr/lib/postgresql/*/bin); run `make system-deps`"
        )
    root = tempfile.mkdtemp(prefix="ownlm-faults-pg-")
    os.chmod(root, 0o755)
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    server = PgServer(bindir, root, free_port(), user)
    try:
        subprocess.run(
            _as_pg_user(
                [f"{bindir}/initdb", "-D", server.data, "-U", user, "-A", "trust", "--no-sync"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        server.start()
        yield server
    finally:
        server._ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


# -- the gateway as a subprocess -------------------------------------------------------------


def gateway_config(upstream_url: str, store_url: str, tmp_path: Path, **overrides: Any) -> dict:
    """A config dict: the mock upstream, a few models on it, the static key KEY; overrides win."""
    cfg: dict[str, Any] = {
        "store_url": store_url,
        "flush_interval_ms": 20,
        "spill_path": str(tmp_path / "spill.jsonl"),  # PostgreSQL's default is the cwd
        "upstreams": {
            "mock": {
                "base_url": upstream_url,
                "timeout_s": 10.0,
                "max_retries": 0,
                "retry_backoff_s": 0.0,
            }
        },
        "models": {
            "chat": {"upstream": "mock", "model": "mock-chat"},
            "endless": {"upstream": "mock", "model": "mock-endless"},
            "delayed": {
                "upstream": "mock",
                "model": "mock-delay",
                "price_in_usd_per_mtok": 1000.0,
                "price_out_usd_per_mtok": 2000.0,
            },
        },
        "keys": [{"name": "user", "key_sha256": sha(KEY), "rate_per_s": 1e6, "burst": 10**6}],
    }
    cfg.update(overrides)
    return cfg


@dataclass
class GatewayProc:
    """A running `ownlm serve` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    key: str = KEY

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.root_url + "/health", timeout=10) as resp:
            return json.loads(resp.read())

    def rss_kb(self) -> int:
        """The process's resident set (VmRSS), in kB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/<pid>/status")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def traces_settled(self) -> bool:
        """Nothing queued and nothing waiting in the spill."""
        t = self.health()["traces"]
        return t["queued"] == 0 and not t.get("spilled")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def start_gateway(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """start_gateway(cfg_dict) -> GatewayProc: writes the YAML, runs `ownlm serve` on a free
    port, waits for /health. Every gateway started is killed (SIGKILL) at teardown."""
    started: list[GatewayProc] = []

    def start(cfg: dict[str, Any]) -> GatewayProc:
        n = len(started)
        cfg_path = tmp_path / f"gateway{n}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        log_path = tmp_path / f"gateway{n}.log"
        port = free_port()
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ownlm", "serve", "--config", str(cfg_path)]
                + ["--set", f"port={port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        gw = GatewayProc(proc, port, log_path)
        started.append(gw)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                gw.health()
                return gw
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None:
                    raise AssertionError(
                        f"gateway exited ({proc.returncode}):\n{gw.log_tail()}"
                    ) from None
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"gateway not up in {START_TIMEOUT_S:g} s:\n{gw.log_tail()}"
                    ) from None
                time.sleep(0.1)

    yield start
    failed = getattr(request.node, "rep_call", None)
    for gw in started:
        gw.kill()
        if failed is not None and failed.failed:
            print(f"\n--- gateway log tail ({gw.log_path.name}) ---\n{gw.log_tail()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (start_gateway prints logs on failure)."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
