"""The HTML dashboard: one self-contained file (inline CSS and SVG, no script, no network).

Plots: TFP over time per model, share of traffic on the own model over time, cumulative cost
(actual vs all-upstream), success rate per model; then tables per model, per route and per
experiment arm. Why inline SVG and not a JS plotting library: see docs/report.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from ownlm.config import validate_config
from ownlm.errors import ConfigError, DataError
from ownlm.report.build import Report, ReportConfig, collect_report
from ownlm.report.figures import Figures
from ownlm.report.svg import bar_chart, line_chart
from ownlm.store.trace_store import TraceStore

# colour-blind-safe (Okabe-Ito), one per model in the order of report.by_model
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8}
header{background:#14213d;color:#fff;padding:20px 32px}
header h1{margin:0 0 4px;font-size:22px} header .sub{opacity:.75;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;padding:16px 32px}
.card{background:#fff;border-radius:8px;padding:12px 16px;min-width:170px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.card .k{font-size:12px;color:#5b6475;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:24px;font-weight:600;margin-top:2px} .card .d{font-size:12px;color:#5b6475}
.up{color:#0a7d4f} .down{color:#b42318}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px;
padding:0 32px}
figure.chart{background:#fff;border-radius:8px;margin:0;padding:12px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
figcaption{font-weight:600;margin-bottom:6px} svg.plot{width:100%;height:auto}
.grid{stroke:#e4e7ec;stroke-width:1} .tick,.legend{font-size:11px;fill:#5b6475}
.line{fill:none;stroke-width:2.2} .empty{font-size:14px;fill:#98a2b3;text-anchor:middle}
section{padding:16px 32px} h2{font-size:16px;margin:8px 0}
table{border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;
box-shadow:0 1px 3px rgba(0,0,0,.08);font-variant-numeric:tabular-nums}
th,td{padding:6px 12px;text-align:right;border-bottom:1px solid #eef0f3}
th:first-child,td:first-child{text-align:left} th{background:#f0f2f5;font-size:12px}
.dot{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.notes{color:#5b6475;font-size:12px}
"""


def _money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4f}"


def _num(x: float | None, spec: str = ",.1f") -> str:
    return "-" if x is None else f"{x:{spec}}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def model_colors(report: Report) -> dict[str, str]:
    """One colour per model, the same in every plot and table."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(report.by_model)}


def _uses_money(report: Report) -> bool:
    return report.total.value_usd > 0


def _tfp(f: Figures, money: bool) -> float | None:
    return f.tfp_usd_per_mtok if money else f.successes_per_mtok


def _card(key: str, value: str, detail: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{escape(key)}</div><div class="v">{value}</div>'
        f'<div class="d">{detail}</div></div>'
    )


def _cards(report: Report) -> str:
    t, money = report.total, _uses_money(report)
    unit = "USD / 1M tokens" if money else "successes / 1M tokens"
    cards = []
    if report.split is not None:
        before, after = _tfp(report.split.before, money), _tfp(report.split.after, money)
        change = ""
        if before and after is not None:
            rel = after / before - 1
            change = f' <span class="{"up" if rel >= 0 else "down"}">({rel:+.0%})</span>'
        cards.append(
            _card(
                "TFP before → after",
                f"{_num(before, ',.2f')} → {_num(after, ',.2f')}{change}",
                f"{unit}; split at {escape(report.split.label)}",
            )
        )
    else:
        cards.append(_card("TFP", _num(_tfp(t, money), ",.2f"), unit))
    cards.append(
        _card(
            "Share on own model",
            _pct(t.own_request_share),
            f"of requests; {_pct(t.own_token_share)} of tokens",
        )
    )
    if t.savings_usd is not None and t.reference_cost_usd is not None:
        share = t.savings_usd / t.reference_cost_usd if t.reference_cost_usd else None
        cards.append(
            _card(
                "Money saved",
                _money(t.savings_usd),
                f"{_pct(share)} of all-{escape(str(report.reference_variant))} "
                f"({_money(t.reference_cost_usd)}, estimate)",
            )
        )
    cards.append(
        _card("Cost per success", _money(t.cost_per_success_usd), f"{t.successes} successes")
    )
    cards.append(_card("Success rate", _pct(t.success_rate), f"of {t.rated:,} rated traces"))
    cards.append(_card("Requests", f"{t.requests:,}", f"{t.tokens:,} tokens, {_money(t.cost_usd)}"))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _charts(report: Report, colors: dict[str, str]) -> str:
    money = _uses_money(report)
    tfp_series: dict[str, list[tuple[float, float]]] = {name: [] for name in report.by_model}
    for p in report.by_time:
        for name, f in p.by_model.items():
            v = _tfp(f, money)
            if v is not None:
                tfp_series[name].append((p.start, v))
    share = {
        "requests": [(p.start, 100 * (p.total.own_request_share or 0.0)) for p in report.by_time],
        "tokens": [(p.start, 100 * (p.total.own_token_share or 0.0)) for p in report.by_time],
    }
    cost: dict[str, list[tuple[float, float]]] = {"actual": []}
    ref_name = f"all-{report.reference_variant}"
    if report.reference_variant is not None:
        cost[ref_name] = []
    actual = reference = 0.0
    for p in report.by_time:
        actual += p.total.cost_usd
        cost["actual"].append((p.start, actual))
        if p.total.reference_cost_usd is not None and ref_name in cost:
            reference += p.total.reference_cost_usd
            cost[ref_name].append((p.start, reference))
    # not from PALETTE, so no series here looks like a model
    fixed = {"requests": "#14213d", "tokens": "#8a94a6", "actual": "#14213d", ref_name: "#b42318"}
    unit = "USD per 1M tokens" if money else "successes per 1M tokens"
    bucket = report.bucket
    # the split time, moved to the start of its bucket so it lines up with the points
    split = None
    if report.split is not None:
        at = report.split.at - report.split.at % report.bucket_s
        split = (at, "split")
    return (
        '<div class="charts">'
        + line_chart(
            "tfp", f"TFP per model ({unit}), per {bucket}", tfp_series, colors,
            bucket=bucket, y_format=lambda v: f"{v:,.4g}", marker=split,
        )
        + line_chart(
            "share", f"Share of traffic on the own model (%), per {bucket}", share, fixed,
            bucket=bucket, y_format=lambda v: f"{v:.0f}%", y_max=100.0,
        )
        + line_chart(
            "cost", "Cumulative cost: actual vs all-upstream (USD)", cost, fixed,
            bucket=bucket, y_format=lambda v: f"${v:,.4g}",
        )
        + bar_chart(
            "success", "Success rate per model (of rated traces)",
            {n: f.success_rate for n, f in report.by_model.items()}, colors,
            x_format=lambda v: f"{v:.1%}", x_max=1.0,
        )
        + "</div>"
    )  # fmt: skip


def _figures_table(
    title: str, rows: dict[str, Figures], colors: dict[str, str], own: set[str]
) -> str:
    head = (
        f"<tr><th>{escape(title)}</th><th>requests</th><th>tokens/req</th><th>cost</th>"
        "<th>success</th><th>cost/success</th><th>TFP $/1M tok</th><th>successes/1M tok</th>"
        "<th>p50 ms</th><th>p95 ms</th></tr>"
    )
    body = []
    for name, f in rows.items():
        dot = (
            f'<span class="dot" style="background:{colors[name]}"></span>' if name in colors else ""
        )
        tag = " (own)" if name in own else ""
        body.append(
            f"<tr><td>{dot}{escape(name)}{tag}</td><td>{f.requests:,}</td>"
            f"<td>{_num(f.tokens_per_request, ',.0f')}</td><td>{_money(f.cost_usd)}</td>"
            f"<td>{_pct(f.success_rate)}</td><td>{_money(f.cost_per_success_usd)}</td>"
            f"<td>{_num(f.tfp_usd_per_mtok, ',.2f')}</td><td>{_num(f.successes_per_mtok)}</td>"
            f"<td>{_num(f.latency_p50_ms, ',.0f')}</td>"
            f"<td>{_num(f.latency_p95_ms, ',.0f')}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _split_table(report: Report) -> str:
    """Before and after the split, side by side: quality, cost, TFP both ways, latency."""
    if report.split is None:
        return '<p class="notes">no split time: set split_at or split_at_variant</p>'
    head = (
        "<tr><th></th><th>requests</th><th>success</th><th>cost/success</th>"
        "<th>TFP $/1M tok</th><th>value per $1 of tokens</th><th>tokens/req</th>"
        "<th>own share</th><th>p50 ms</th><th>p95 ms</th></tr>"
    )
    body = []
    for label, f in (("before", report.split.before), ("after", report.split.after)):
        body.append(
            f"<tr><td>{label}</td><td>{f.requests:,}</td><td>{_pct(f.success_rate)}</td>"
            f"<td>{_money(f.cost_per_success_usd)}</td><td>{_num(f.tfp_usd_per_mtok, ',.2f')}</td>"
            f"<td>{_money(f.value_per_usd)}</td><td>{_num(f.tokens_per_request, ',.0f')}</td>"
            f"<td>{_pct(f.own_request_share)}</td><td>{_num(f.latency_p50_ms, ',.0f')}</td>"
            f"<td>{_num(f.latency_p95_ms, ',.0f')}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _arms_table(report: Report) -> str:
    if not report.experiments:
        return '<p class="notes">no A/B experiments recorded</p>'
    head = (
        "<tr><th>experiment / arm</th><th>weight</th><th>requests</th><th>traffic</th>"
        "<th>rated</th><th>success</th><th>mean reward</th><th>cost</th><th>cost/success</th></tr>"
    )
    body = [
        f"<tr><td>{escape(a.experiment)} / {escape(a.arm)}</td><td>{a.weight:g}</td>"
        f"<td>{a.requests:,}</td><td>{_pct(a.traffic_share)}</td><td>{a.rated:,}</td>"
        f"<td>{_pct(a.success_rate)}</td><td>{_num(a.reward_mean, '.3f')}</td>"
        f"<td>{_money(a.cost_usd)}</td><td>{_money(a.cost_per_success_usd)}</td></tr>"
        for a in report.experiments
    ]
    return f"<table>{head}{''.join(body)}</table>"


def render_dashboard(report: Report) -> str:
    """The whole dashboard as one HTML string."""
    colors = model_colors(report)
    own = set(report.own_models)
    ref = ""
    if report.reference_variant is not None:
        ref = (
            f"; all-upstream = every request priced at {escape(report.reference_variant)} "
            f"(${report.reference_in_usd_per_mtok:g} in / ${report.reference_out_usd_per_mtok:g}"
            " out per 1M tokens, using each trace's own token counts: an estimate)"
        )
    notes = "".join(f"<p>note: {escape(n)}</p>" for n in report.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(report.title)}</title><style>{CSS}</style></head>
<body>
<header><h1>{escape(report.title)}</h1>
<div class="sub">{_when(report.first_trace_at)} – {_when(report.last_trace_at)} UTC ·
{report.total.requests:,} requests · per {report.bucket} ·
own model: {escape(", ".join(report.own_models) or "none")} ·
generated {_when(report.generated_at)} UTC</div></header>
{_cards(report)}
{_charts(report, colors)}
<section><h2>Before and after</h2>{_split_table(report)}</section>
<section><h2>Per model</h2>{_figures_table("model", report.by_model, colors, own)}</section>
<section><h2>Per route</h2>{_figures_table("route", report.by_route, {}, set())}</section>
<section><h2>A/B experiments</h2>{_arms_table(report)}</section>
<section class="notes"><p>TFP = value produced / tokens consumed (prompt + completion).
A trace's value is its feedback value when given, else ${report.value_per_success_usd:g} per
success (thumbs up or score at the threshold) and ${report.value_per_failure_usd:g} per rated
failure{ref}. Value per $1 of tokens = value / cost.</p>{notes}</section>
</body></html>
"""


# what GET /dashboard?key=value may change; never paths or the store (the page writes nothing)
QUERY_KEYS = (
    "bucket",
    "since",
    "until",
    "reference_variant",
    "split_at",
    "split_at_variant",
    "value_per_success_usd",
    "success_min_score",
)


def _message_page(title: str, message: str) -> str:
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f"</title><style>{CSS}</style></head><body><header><h1>{escape(title)}</h1></header>"
        f"<section><p>{escape(message)}</p></section></body></html>"
    )


def dashboard_page(store: TraceStore, cfg: ReportConfig, query: dict[str, str]) -> tuple[int, str]:
    """(HTTP status, HTML) of the live dashboard; `query` may override the keys in QUERY_KEYS.

    An empty store is a 200 page saying how to capture traffic; a bad query value is a 400.
    """
    unknown = sorted(set(query) - set(QUERY_KEYS))
    if unknown:
        return 400, _message_page(
            "bad query", f"unknown query keys {unknown}; known: {', '.join(QUERY_KEYS)}"
        )
    try:
        merged = validate_config(ReportConfig, {**cfg.model_dump(), **query}, "query")
        return 200, render_dashboard(collect_report(store, merged))
    except ConfigError as err:
        return 400, _message_page("bad query", str(err))
    except DataError as err:
        return 200, _message_page(cfg.title, str(err))


def live_dashboard(store: TraceStore, query: dict[str, str]) -> tuple[int, str]:
    """The page `ownlm serve` answers GET /dashboard with: `dashboard_page` on the gateway's own
    store (models, prices and own models as the gateway recorded them there)."""
    return dashboard_page(store, ReportConfig(store_url=store.url), query)
