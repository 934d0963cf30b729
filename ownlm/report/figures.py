"""The report's figures, computed from the store's summed rows: pure functions, no database.

TFP (token factor productivity) = value produced / tokens consumed, where tokens = prompt +
completion. The value of a trace is the feedback `value` when one was given (money), else
`value_per_success_usd` when the trace succeeded (thumbs up, or score >= the threshold),
`value_per_failure_usd` (zero or negative: what a wrong answer costs the app) when it was rated
and failed, else 0. TFP is also given per dollar: value produced per USD of token spend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ownlm.store.trace_store import UsageTotals

MTOK = 1_000_000


@dataclass(frozen=True)
class Pricing:
    """What turns summed rows into money: own models, value rule, own and reference prices."""

    own_models: frozenset[str]  # variant or upstream names served by the own model
    value_per_success_usd: float = 0.0
    value_per_failure_usd: float = 0.0  # <= 0
    own_serving_usd_per_mtok: float = 0.0
    reference_in_usd_per_mtok: float | None = None  # None: no reference, no savings
    reference_out_usd_per_mtok: float | None = None


@dataclass
class Figures:
    """Totals and ratios of one slice of traffic (a model, a route, a time bucket, or all)."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: int = 0
    cost_usd: float = 0.0  # actual: recorded cost, plus own serving cost for own-model traces
    reference_cost_usd: float | None = None  # had the reference model answered every request
    savings_usd: float | None = None  # reference_cost_usd - cost_usd
    rated: int = 0
    successes: int = 0
    value_usd: float = 0.0
    own_requests: int = 0
    own_tokens: int = 0
    tfp_usd_per_mtok: float | None = None  # value per 1M tokens
    value_per_usd: float | None = None  # value per USD of token spend ("$1 of tokens -> $X")
    net_value_usd: float = 0.0  # value - cost
    successes_per_mtok: float | None = None
    success_rate: float | None = None  # successes / rated
    cost_per_success_usd: float | None = None
    tokens_per_request: float | None = None
    own_request_share: float | None = None
    own_token_share: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


def is_own(row: UsageTotals, pricing: Pricing) -> bool:
    """True when the own model answered the row's traces (named by variant or upstream)."""
    return row.variant in pricing.own_models or row.upstream in pricing.own_models


def row_value_usd(row: UsageTotals, pricing: Pricing) -> float:
    """Values given in feedback plus the configured values of successes and failures that gave
    none."""
    return (
        row.value_usd
        + pricing.value_per_success_usd * row.unvalued_successes
        + pricing.value_per_failure_usd * row.unvalued_failures
    )


def row_cost_usd(row: UsageTotals, pricing: Pricing) -> float:
    """Recorded cost, plus the own serving cost per token when the own model answered."""
    tokens = row.prompt_tokens + row.completion_tokens
    own = pricing.own_serving_usd_per_mtok * tokens / MTOK if is_own(row, pricing) else 0.0
    return row.cost_usd + own


def row_reference_cost_usd(row: UsageTotals, pricing: Pricing) -> float | None:
    """The row's tokens priced at the reference model's prices (an estimate), or None."""
    if pricing.reference_in_usd_per_mtok is None or pricing.reference_out_usd_per_mtok is None:
        return None
    return (
        row.prompt_tokens * pricing.reference_in_usd_per_mtok
        + row.completion_tokens * pricing.reference_out_usd_per_mtok
    ) / MTOK


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def figures_of(
    rows: Iterable[UsageTotals], pricing: Pricing, latencies_ms: list[float] | None = None
) -> Figures:
    """Sum rows into one Figures and derive its ratios."""
    f = Figures()
    ref_total = 0.0
    has_ref = False
    for row in rows:
        tokens = row.prompt_tokens + row.completion_tokens
        f.requests += row.requests
        f.errors += row.errors
        f.prompt_tokens += row.prompt_tokens
        f.completion_tokens += row.completion_tokens
        f.tokens += tokens
        f.cost_usd += row_cost_usd(row, pricing)
        f.rated += row.rated
        f.successes += row.successes
        f.value_usd += row_value_usd(row, pricing)
        if is_own(row, pricing):
            f.own_requests += row.requests
            f.own_tokens += tokens
        ref = row_reference_cost_usd(row, pricing)
        if ref is not None:
            ref_total += ref
            has_ref = True
    if has_ref:
        f.reference_cost_usd = ref_total
        f.savings_usd = ref_total - f.cost_usd
    f.tfp_usd_per_mtok = _ratio(f.value_usd * MTOK, f.tokens)
    f.value_per_usd = _ratio(f.value_usd, f.cost_usd)
    f.net_value_usd = f.value_usd - f.cost_usd
    f.successes_per_mtok = _ratio(f.successes * MTOK, f.tokens)
    f.success_rate = _ratio(f.successes, f.rated)
    f.cost_per_success_usd = _ratio(f.cost_usd, f.successes)
    f.tokens_per_request = _ratio(f.tokens, f.requests)
    f.own_request_share = _ratio(f.own_requests, f.requests)
    f.own_token_share = _ratio(f.own_tokens, f.tokens)
    if latencies_ms:
        f.latency_p50_ms = percentile(latencies_ms, 0.5)
        f.latency_p95_ms = percentile(latencies_ms, 0.95)
    return f
