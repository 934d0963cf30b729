"""Figures from summed rows, worked out by hand: TFP, cost per success, shares, savings."""

from __future__ import annotations

import pytest

from ownlm.report.figures import Pricing, figures_of, percentile
from ownlm.store.trace_store import UsageTotals


def row(
    variant: str, upstream: str, requests: int, pt: int, ct: int, cost: float, **kw: float
) -> UsageTotals:
    fields = dict(rated=0, successes=0, value_usd=0.0, unvalued_successes=0)
    fields.update(kw)
    return UsageTotals(
        0.0, variant, "chat", upstream, requests, 0, pt, ct, cost,
        int(fields["rated"]), int(fields["successes"]), float(fields["value_usd"]),
        int(fields["unvalued_successes"]), 0.0, 0.0,
    )  # fmt: skip


ROWS = [
    # 2 requests on the upstream: 1 success without a value, 1 failure
    row("strong", "openai", 2, 2000, 1000, 0.015, rated=2, successes=1, unvalued_successes=1),
    # 2 on the own model: one success worth 0.30 USD given in feedback
    row("mini", "local", 2, 2500, 1500, 0.0, rated=1, successes=1, value_usd=0.30),
]


def test_tfp_cost_per_success_and_share_by_hand() -> None:
    f = figures_of(ROWS, Pricing(frozenset({"mini"}), value_per_success_usd=0.10))
    assert f.tokens == 7000 and f.requests == 4
    # value 0.10 (a success with no value) + 0.30 given = 0.40 USD over 7000 tokens
    assert f.value_usd == pytest.approx(0.40)
    assert f.tfp_usd_per_mtok == pytest.approx(0.40 / 7000 * 1e6)  # 57.14
    assert f.successes_per_mtok == pytest.approx(2 / 7000 * 1e6)
    assert f.success_rate == pytest.approx(2 / 3)
    assert f.cost_per_success_usd == pytest.approx(0.015 / 2)
    assert f.tokens_per_request == 1750
    assert f.own_request_share == 0.5 and f.own_token_share == pytest.approx(4000 / 7000)
    assert f.reference_cost_usd is None and f.savings_usd is None


def test_savings_against_a_reference_and_own_serving_cost() -> None:
    pricing = Pricing(
        frozenset({"local"}),  # named by upstream this time
        own_serving_usd_per_mtok=1.0,
        reference_in_usd_per_mtok=2.5,
        reference_out_usd_per_mtok=10.0,
    )
    f = figures_of(ROWS, pricing)
    # all on the reference: (4500 * 2.5 + 2500 * 10) / 1e6 = 0.03625
    assert f.reference_cost_usd == pytest.approx(0.03625)
    # actual: 0.015 upstream + 4000 own tokens at 1 USD per 1M = 0.019
    assert f.cost_usd == pytest.approx(0.019)
    assert f.savings_usd == pytest.approx(0.03625 - 0.019)
    assert f.own_requests == 2


def test_empty_slice_has_no_ratios() -> None:
    f = figures_of([], Pricing(frozenset()))
    assert f.requests == 0
    assert f.tfp_usd_per_mtok is None and f.success_rate is None and f.cost_per_success_usd is None


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([100.0, 300.0], 0.5) == 200.0
    assert percentile([100.0, 300.0], 0.95) == pytest.approx(290.0)
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) is None
