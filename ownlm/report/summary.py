"""The compact text table `ownlm report` prints: headline figures, one line per model and route.

ownlm report --config report.yaml
"""

from __future__ import annotations

from datetime import UTC, datetime

from ownlm.report.build import Report, ReportConfig, build_report

__all__ = ["ReportConfig", "format_summary", "print_report"]


def print_report(cfg: ReportConfig) -> None:
    """The CLI's `ownlm report`: build (writing out/json_out when set), print the table."""
    print(format_summary(build_report(cfg)))


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def format_summary(report: Report) -> str:
    """A compact text table: headline figures, then one line per model and per route."""
    t = report.total
    unit = "USD" if report.total.value_usd else "successes"
    lines = [
        f"{report.title}  ({_when(report.first_trace_at)} .. {_when(report.last_trace_at)} UTC)",
        f"requests {t.requests}  tokens {t.tokens}  cost ${t.cost_usd:.4f}  "
        f"own-model share {_fmt(t.own_request_share, '.1%')} of requests, "
        f"{_fmt(t.own_token_share, '.1%')} of tokens",
        f"TFP {_fmt(t.tfp_usd_per_mtok, '.2f')} USD/1M tok, "
        f"{_fmt(t.successes_per_mtok, '.1f')} successes/1M tok; "
        f"cost per success ${_fmt(t.cost_per_success_usd, '.5f')}",
    ]
    if t.savings_usd is not None:
        lines.append(
            f"savings vs all-{report.reference_variant}: ${t.savings_usd:.4f} "
            f"(all-upstream estimate ${t.reference_cost_usd:.4f})"
        )
    if report.split is not None:
        b, a = report.split.before, report.split.after
        key = "tfp_usd_per_mtok" if unit == "USD" else "successes_per_mtok"
        lines.append(
            f"TFP before/after {report.split.label}: {_fmt(getattr(b, key), '.2f')} -> "
            f"{_fmt(getattr(a, key), '.2f')} {unit}/1M tok"
        )
    header = (
        f"{'':<22}{'requests':>9}{'tokens':>10}{'cost $':>10}{'success':>9}"
        f"{'$/success':>11}{'TFP $/Mtok':>11}{'succ/Mtok':>10}{'p50 ms':>8}{'p95 ms':>8}"
    )
    for title, table in (("model", report.by_model), ("route", report.by_route)):
        lines += ["", f"by {title}", header]
        for name, f in table.items():
            own = "*" if name in report.own_models else ""
            lines.append(
                f"{(name + own)[:21]:<22}{f.requests:>9}{f.tokens:>10}{f.cost_usd:>10.4f}"
                f"{_fmt(f.success_rate, '.1%'):>9}{_fmt(f.cost_per_success_usd, '.5f'):>11}"
                f"{_fmt(f.tfp_usd_per_mtok, '.2f'):>11}{_fmt(f.successes_per_mtok, '.1f'):>10}"
                f"{_fmt(f.latency_p50_ms, '.0f'):>8}{_fmt(f.latency_p95_ms, '.0f'):>8}"
            )
    lines += ["(* own model)"] + [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")
