"""`ownlm report`: TFP, cost per success, own-model share and savings from the trace store.

ownlm report --config report.yaml --set bucket=hour --set out=report.html

The CLI prints the compact table of `ownlm/report/summary.py`.

`build_report(cfg)` reads the store (two summed queries, plus two for a before/after split),
returns a `Report` of plain dataclasses, and writes the HTML dashboard (`out`) and the JSON
figures (`json_out`) when asked. `ownlm serve` serves the same dashboard at GET /dashboard
(`report.dashboard.live_dashboard`, handed to the gateway by the CLI). Which models are own and
what each costs come from the store: the gateway records the models it serves, with their
upstream's kind and prices, when it starts and when a deployment changes them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ownlm.config import Config
from ownlm.errors import ConfigError, DataError
from ownlm.report.figures import Figures, Pricing, figures_of, is_own
from ownlm.store.registry import Registry
from ownlm.store.trace_store import TraceStore, UsageTotals

BUCKET_S = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
WHOLE_WINDOW_S = 1e12  # one bucket holds every trace: per-group totals
MAX_BUCKETS = 2000  # points per series; more makes a slow, unreadable page


class ModelPrice(Config):
    """Prices of one model, USD per 1M tokens."""

    in_usd_per_mtok: float = Field(ge=0, description="USD per million prompt tokens")
    out_usd_per_mtok: float = Field(ge=0, description="USD per million output tokens")


class ReportConfig(Config):
    """Everything `ownlm report` needs."""

    store_url: str = Field("sqlite:///ownlm.db", description="where the traces are")
    own_models: list[str] = Field(
        default_factory=list,
        description="variant or upstream names served by the own model, added to the models "
        "the gateway recorded as own (an own-model engine) and those of `ownlm promote`",
    )
    reference_variant: str | None = Field(
        None, description="the all-upstream baseline; default: the priciest priced model"
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description="per variant; overrides the prices the gateway recorded"
    )
    own_serving_usd_per_mtok: float = Field(0.0, ge=0, description="added to own-model traces")
    value_per_success_usd: float = Field(0.0, ge=0, description="value of a success with none")
    value_per_failure_usd: float = Field(
        0.0, le=0, description="value of a rated failure with none: what a wrong answer costs"
    )
    success_min_score: float = Field(0.5, description="a score >= this is a success")
    bucket: Literal["auto", "minute", "hour", "day"] = Field(
        "auto", description="time bucket of the dashboard's series"
    )
    since: datetime | None = Field(None, description="ISO time or unix seconds; naive = UTC")
    until: datetime | None = Field(None, description="traces before this time")
    split_at: datetime | None = Field(None, description="TFP before/after this time")
    split_at_variant: str | None = Field(None, description="... or the first trace of this one")
    title: str = Field("ownlm: TFP and savings", description="the dashboard's title")
    out: str | None = Field(None, description="write the HTML dashboard here")
    json_out: str | None = Field(None, description="write the figures as JSON here")

    @model_validator(mode="before")
    @classmethod
    def _no_gateway_config(cls, data: object) -> object:
        if isinstance(data, dict) and "gateway_config" in data:
            raise ValueError(
                "gateway_config was removed: the report reads the models and prices the gateway "
                "serves from the store (`ownlm serve` records them when it starts); drop the "
                "key, and set prices or own_models only to override"
            )
        return data

    @model_validator(mode="after")
    def _one_split(self) -> ReportConfig:
        if self.split_at is not None and self.split_at_variant is not None:
            raise ValueError("set split_at or split_at_variant, not both")
        return self


@dataclass
class TimePoint:
    """One time bucket: all traffic and each model's."""

    start: float  # unix seconds
    total: Figures
    by_model: dict[str, Figures]


@dataclass
class ArmRow:
    """One arm of an A/B experiment, from `TraceStore.arm_stats`."""

    experiment: str
    alias: str
    arm: str
    weight: float
    requests: int
    traffic_share: float | None
    rated: int
    successes: int
    failures: int
    success_rate: float | None  # thumbs up / (up + down)
    reward_mean: float | None
    cost_usd: float
    cost_per_success_usd: float | None


@dataclass
class Split:
    """Figures before and after a time (given, or the first trace of a variant)."""

    at: float
    label: str
    before: Figures
    after: Figures


@dataclass
class Report:
    """All figures of one report; plain data, JSON-serializable with `report_json`."""

    title: str
    generated_at: float
    first_trace_at: float
    last_trace_at: float
    bucket: str
    bucket_s: float
    own_models: list[str]  # variants in the window counted as own
    reference_variant: str | None
    reference_in_usd_per_mtok: float | None
    reference_out_usd_per_mtok: float | None
    value_per_success_usd: float
    value_per_failure_usd: float
    total: Figures
    by_model: dict[str, Figures]
    by_route: dict[str, Figures]
    by_time: list[TimePoint]
    split: Split | None
    experiments: list[ArmRow]
    notes: list[str]


def build_report(cfg: ReportConfig) -> Report:
    """Read the store at cfg.store_url; write the dashboard and JSON when asked; return figures."""
    store = TraceStore(cfg.store_url)
    try:
        report = collect_report(store, cfg)
    finally:
        store.close()
    if cfg.out is not None:
        from ownlm.report.dashboard import render_dashboard

        _write(cfg.out, render_dashboard(report))
    if cfg.json_out is not None:
        _write(cfg.json_out, report_json(report))
    return report


def collect_report(store: TraceStore, cfg: ReportConfig) -> Report:
    """All figures from an open store (the gateway passes its own)."""
    since, until = _ts(cfg.since), _ts(cfg.until)
    groups = store.usage_totals(
        bucket_s=WHOLE_WINDOW_S, success_min_score=cfg.success_min_score, since=since, until=until
    )
    if not groups:
        window = "" if since is None and until is None else f" between {cfg.since} and {cfg.until}"
        raise DataError(
            f"no chat traces in the store at {cfg.store_url}{window}; point your app's OpenAI "
            "client at `ownlm serve` (base_url http://<host>:8400/v1) to capture traffic"
            + (", or widen since/until" if window else "")
        )
    notes: list[str] = []
    served = store.served_models()
    own = set(cfg.own_models) | {n for n, m in served.items() if m.own}
    own |= {v for dep in Registry(store).deployments() for v in dep.models}
    if not own:
        notes.append(
            "no own model named: serve one through `ownlm serve` (an own-model engine) or set "
            "own_models"
        )
    prices = {
        n: (m.price_in_usd_per_mtok, m.price_out_usd_per_mtok)
        for n, m in served.items()
        if m.price_in_usd_per_mtok or m.price_out_usd_per_mtok
    }
    prices.update({n: (p.in_usd_per_mtok, p.out_usd_per_mtok) for n, p in cfg.prices.items()})
    variants = sorted({g.variant for g in groups})
    reference = _pick_reference(cfg.reference_variant, prices, variants, set(served), notes)
    ref_in, ref_out = prices[reference] if reference is not None else (None, None)
    pricing = Pricing(
        frozenset(own),
        cfg.value_per_success_usd,
        cfg.value_per_failure_usd,
        cfg.own_serving_usd_per_mtok,
        ref_in,
        ref_out,
    )
    first = min(g.first_at for g in groups)
    last = max(g.last_at for g in groups)
    bucket = cfg.bucket if cfg.bucket != "auto" else _auto_bucket(last - first)
    n_buckets = int(last // BUCKET_S[bucket] - first // BUCKET_S[bucket]) + 1
    if n_buckets > MAX_BUCKETS:
        raise ConfigError(
            f"bucket={bucket} gives {n_buckets} time points over this window (at most "
            f"{MAX_BUCKETS}); pick a larger bucket or narrow since/until"
        )
    lat_model: dict[str, list[float]] = defaultdict(list)
    lat_route: dict[str, list[float]] = defaultdict(list)
    for variant, alias, ms in store.latencies(since, until):
        lat_model[variant].append(ms)
        lat_route[alias].append(ms)
    by_model = {
        v: figures_of([g for g in groups if g.variant == v], pricing, lat_model[v])
        for v in variants
    }
    by_route = {
        a: figures_of([g for g in groups if g.alias == a], pricing, lat_route[a])
        for a in sorted({g.alias for g in groups})
    }
    total = figures_of(groups, pricing, [ms for v in lat_model.values() for ms in v])
    timed = store.usage_totals(
        bucket_s=BUCKET_S[bucket], success_min_score=cfg.success_min_score, since=since, until=until
    )
    by_time = _time_points(timed, pricing)
    split = _split(store, cfg, groups, pricing, since, until)
    experiments = _arm_rows(store)
    return Report(
        title=cfg.title,
        generated_at=time.time(),
        first_trace_at=first,
        last_trace_at=last,
        bucket=bucket,
        bucket_s=BUCKET_S[bucket],
        own_models=[
            v for v in variants if any(is_own(g, pricing) for g in groups if g.variant == v)
        ],
        reference_variant=reference,
        reference_in_usd_per_mtok=ref_in,
        reference_out_usd_per_mtok=ref_out,
        value_per_success_usd=cfg.value_per_success_usd,
        value_per_failure_usd=cfg.value_per_failure_usd,
        total=total,
        by_model=by_model,
        by_route=by_route,
        by_time=by_time,
        split=split,
        experiments=experiments,
        notes=notes,
    )


def report_json(report: Report) -> str:
    """The report as indented JSON."""
    return json.dumps(dataclasses.asdict(report), indent=2)


def _write(path: str, text: str) -> None:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    except OSError as err:
        raise ConfigError(f"cannot write {p}: {err.strerror}; pick another path") from err


def _ts(when: datetime | None) -> float | None:
    if when is None:
        return None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


def _auto_bucket(span_s: float) -> str:
    """Minutes up to 3 hours of traffic, hours up to a week, days beyond (<= ~180 points)."""
    if span_s <= 3 * 3600:
        return "minute"
    return "hour" if span_s <= 7 * 86400 else "day"


def _pick_reference(
    name: str | None,
    prices: dict[str, tuple[float, float]],
    variants: list[str],
    configured: set[str],
    notes: list[str],
) -> str | None:
    """The reference variant: the one named (it must be known and priced), else the priciest."""
    if name is None:
        if not prices:
            notes.append(
                "no model prices known: serve the models through `ownlm serve` (it records "
                "their prices) or set prices to see savings"
            )
            return None
        return max(sorted(prices), key=lambda n: prices[n][0] + prices[n][1])
    known = sorted(set(variants) | set(prices) | configured)
    if name not in known:
        raise ConfigError(
            f"reference_variant '{name}' is not a known variant; known: {', '.join(known)}"
        )
    if name not in prices:
        raise ConfigError(
            f"reference_variant '{name}' has no price; set prices.{name}.in_usd_per_mtok and "
            f"out_usd_per_mtok, or its price_*_usd_per_mtok in the gateway's config"
        )
    return name


def _time_points(rows: list[UsageTotals], pricing: Pricing) -> list[TimePoint]:
    per_bucket: dict[float, list[UsageTotals]] = defaultdict(list)
    for row in rows:
        per_bucket[row.bucket_start].append(row)
    points = []
    for start in sorted(per_bucket):
        in_bucket = per_bucket[start]
        models = sorted({r.variant for r in in_bucket})
        by_model = {
            v: figures_of([r for r in in_bucket if r.variant == v], pricing) for v in models
        }
        points.append(TimePoint(start, figures_of(in_bucket, pricing), by_model))
    return points


def _split(
    store: TraceStore,
    cfg: ReportConfig,
    groups: list[UsageTotals],
    pricing: Pricing,
    since: float | None,
    until: float | None,
) -> Split | None:
    if cfg.split_at is not None:
        at, label = _ts(cfg.split_at), cfg.split_at.isoformat()
    elif cfg.split_at_variant is not None:
        seen = [g.first_at for g in groups if g.variant == cfg.split_at_variant]
        if not seen:
            known = ", ".join(sorted({g.variant for g in groups}))
            raise ConfigError(
                f"split_at_variant '{cfg.split_at_variant}' has no traces in the window; "
                f"variants with traces: {known}"
            )
        at, label = min(seen), f"first trace of {cfg.split_at_variant}"
    else:
        return None
    assert at is not None
    halves = []
    for lo, hi in ((since, at), (at, until)):
        rows = store.usage_totals(
            bucket_s=WHOLE_WINDOW_S, success_min_score=cfg.success_min_score, since=lo, until=hi
        )
        latencies = [ms for _, _, ms in store.latencies(lo, hi)]
        halves.append(figures_of(rows, pricing, latencies))
    return Split(at, label, halves[0], halves[1])


def _arm_rows(store: TraceStore) -> list[ArmRow]:
    rows = []
    for exp in store.list_experiments():
        stats = {s.arm: s for s in store.arm_stats(exp.name)}
        n_all = sum(s.n_traces for s in stats.values())
        for arm, weight in zip(exp.arms, exp.weights, strict=False):
            s = stats.get(arm)
            n = s.n_traces if s else 0
            ok, bad = (s.successes, s.failures) if s else (0, 0)
            rows.append(
                ArmRow(
                    experiment=exp.name,
                    alias=exp.alias,
                    arm=arm,
                    weight=weight,
                    requests=n,
                    traffic_share=n / n_all if n_all else None,
                    rated=s.n_feedback if s else 0,
                    successes=ok,
                    failures=bad,
                    success_rate=ok / (ok + bad) if ok + bad else None,
                    reward_mean=s.reward_sum / s.n_feedback if s and s.n_feedback else None,
                    cost_usd=s.cost_usd if s else 0.0,
                    cost_per_success_usd=s.cost_usd / ok if s and ok else None,
                )
            )
    return rows
