"""The HTML dashboard: four plots with drawn marks (checked in headless Chromium too), the
headline cards, self-containment, and GET /dashboard through the gateway app in-process."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from ownlm.gateway.app import Gateway
from ownlm.gateway.config import GatewayConfig
from ownlm.report.build import ModelPrice, ReportConfig, build_report
from ownlm.report.dashboard import live_dashboard
from ownlm.store.trace_store import TraceStore

PLOTS = {"tfp", "share", "cost", "success"}
STRONG = {"strong": ModelPrice(in_usd_per_mtok=2.5, out_usd_per_mtok=10.0)}


class PlotMarks(HTMLParser):
    """Per `<svg class="plot" data-plot=...>`: its attributes and how many marks it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: dict[str, dict[str, Any]] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and a.get("class") == "plot":
            self._current = str(a["data-plot"])
            self.plots[self._current] = {**a, "marks": 0}
        elif self._current is not None and "mark" in (a.get("class") or "").split():
            self.plots[self._current]["marks"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._current = None


def plots_of(html: str) -> dict[str, dict[str, Any]]:
    parser = PlotMarks()
    parser.feed(html)
    return parser.plots


def dashboard(url: str, tmp_path: Path) -> Path:
    out = tmp_path / "dashboard.html"
    cfg = ReportConfig(
        store_url=url, own_models=["mini"], prices=STRONG, bucket="hour",
        value_per_success_usd=0.1, split_at_variant="mini", out=str(out),
    )  # fmt: skip
    build_report(cfg)
    return out


def test_four_plots_with_marks_and_the_headline(tiny_store_url: str, tmp_path: Path) -> None:
    html = dashboard(tiny_store_url, tmp_path).read_text()
    plots = plots_of(html)
    assert set(plots) == PLOTS
    # tfp: strong and mini have one point each (no line); share: 2 series x (2 points + line);
    # cost: actual and all-strong x (2 + line); success: a bar per model
    assert {k: p["marks"] for k, p in plots.items()} == {
        "tfp": 2, "share": 6, "cost": 6, "success": 2,
    }  # fmt: skip
    assert "TFP before → after" in html and "33.33 → 75.00" in html
    assert "Money saved" in html and "$0.0212" in html and "50.0%" in html
    # self-contained: no scripts, no stylesheets or images fetched from anywhere
    assert not re.search(r"<script|<link|<img|src=|@import|url\(", html)


def test_same_colour_for_a_model_in_every_plot(tiny_store_url: str, tmp_path: Path) -> None:
    html = dashboard(tiny_store_url, tmp_path).read_text()
    strong_colors = set(re.findall(r'data-series="strong"[^>]*?(?:stroke|fill)="(#\w+)"', html))
    assert len(strong_colors) == 1


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian chromium not installed; `make system-deps` installs it (make test runs it)",
)
def test_headless_chromium_draws_every_plot(tiny_store_url: str, tmp_path: Path) -> None:
    page = dashboard(tiny_store_url, tmp_path)
    # a copy of the page that measures, after layout, each plot's width and its marks that
    # have a drawn size, and writes both into the DOM that --dump-dom prints
    probe = (
        "<script>for(const s of document.querySelectorAll('svg.plot')){let n=0;"
        "for(const m of s.querySelectorAll('.mark')){const b=m.getBBox();"
        "if(b.width>0||b.height>0)n++}s.setAttribute('data-drawn',n);"
        "s.setAttribute('data-width',Math.round(s.getBoundingClientRect().width))}</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
    run = subprocess.run(
        ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--window-size=1280,1600",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    plots = plots_of(run.stdout)
    assert set(plots) == PLOTS
    for name, p in plots.items():
        assert int(p["data-width"]) > 300, name
        assert int(p["data-drawn"]) == p["marks"] > 0, name


ADMIN = "sk-admin-test"


def call(gw: Gateway, path: str, query: bytes = b"", key: str | None = None) -> tuple[int, str]:
    """One GET through the ASGI app, in-process: (status, body)."""
    sent: list[dict[str, Any]] = []
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query,
             "headers": headers}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def go() -> None:
        await gw.start()
        try:
            await gw(scope, receive, send)
        finally:
            await gw.stop()

    asyncio.run(go())
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    head = next(m for m in sent if m["type"] == "http.response.start")
    if head["status"] == 200:
        assert dict(head["headers"])[b"content-type"].startswith(b"text/html")
    return head["status"], body.decode()


def gateway(url: str, require_keys: bool = True, dashboard: bool = True) -> Gateway:
    cfg = GatewayConfig.model_validate(
        {
            "store_url": url,
            "require_keys": require_keys,
            "admin_key_sha256": hashlib.sha256(ADMIN.encode()).hexdigest(),
            "upstreams": {
                "openai": {"base_url": "http://127.0.0.1:9/v1"}, "local": {"kind": "local"},
            },
            "models": {
                "strong": {"upstream": "openai", "price_in_usd_per_mtok": 2.5,
                           "price_out_usd_per_mtok": 10.0},
                "mini": {"upstream": "local"},
            },
        }
    )  # fmt: skip
    return Gateway(cfg, upstreams={}, dashboard=live_dashboard if dashboard else None)


def test_gateway_serves_the_dashboard_to_the_admin(tiny_store_url: str) -> None:
    status, html = call(gateway(tiny_store_url), "/dashboard", key=ADMIN)
    assert status == 200 and set(plots_of(html)) == PLOTS
    # own model and prices as the gateway recorded them at start: mini is local, strong priced
    assert "own model: mini" in html and "Money saved" in html
    status, page = call(gateway(tiny_store_url, dashboard=False), "/dashboard", key=ADMIN)
    assert status == 404 and "serves no dashboard" in page
    assert call(gateway(tiny_store_url), "/dashboard")[0] == 401
    status, page = call(gateway(tiny_store_url), "/dashboard", b"bucket=week", key=ADMIN)
    assert status == 400 and "bucket" in page


def test_gateway_dashboard_open_without_keys_and_on_an_empty_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    TraceStore(url).close()
    status, html = call(gateway(url, require_keys=False), "/dashboard")
    assert status == 200 and "no chat traces" in html and "ownlm serve" in html
