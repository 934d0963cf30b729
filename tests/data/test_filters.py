"""Trace filters, the feedback rule and the reward of a trace's feedback."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ownlm.data.filters import FilterConfig, drop_reason, passes_feedback, trace_reward
from ownlm.store.schema import Feedback, Trace

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def trace(**fields: object) -> Trace:
    base = {"created_at": T0, "alias": "support", "variant": "big", "upstream_model": "gpt-big"}
    return Trace(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "cfg", "reason"),
    [
        ({}, {}, None),
        ({"endpoint": "embeddings"}, {}, "endpoint"),
        ({"status": 502}, {}, "status"),
        ({"alias": "other"}, {"aliases": ["support"]}, "alias"),
        ({}, {"variants": ["small"]}, "variant"),
        ({}, {"upstream_models": ["gpt-big", "gpt-mini"]}, None),
        ({}, {"upstream_models": ["gpt-mini"]}, "upstream_model"),
        ({}, {"since": "2026-01-01T00:00:01"}, "since"),
        ({}, {"since": "2026-01-01T00:00:00"}, None),
        ({}, {"until": "2026-01-01T00:00:00Z"}, "until"),
        ({}, {"until": T0 + 1}, None),
        ({"tags": ["beta", "eu"]}, {"tags": ["eu", "us"]}, None),
        ({"tags": ["beta"]}, {"tags": ["eu"]}, "tags"),
        ({"cost_usd": 0.02}, {"max_cost_usd": 0.01}, "max_cost_usd"),
        ({"cost_usd": 0.01}, {"max_cost_usd": 0.01}, None),
    ],
)
def test_drop_reason(fields: dict[str, object], cfg: dict[str, object], reason: str | None) -> None:
    assert drop_reason(trace(**fields), FilterConfig.model_validate(cfg)) == reason


def fb(thumbs: int | None = None, score: float | None = None) -> Feedback:
    return Feedback(trace_id="t", thumbs=thumbs, score=score)


@pytest.mark.parametrize(
    ("rows", "any_", "not_negative", "positive"),
    [
        ([], True, True, False),
        ([fb(1)], True, True, True),
        ([fb(-1)], True, False, False),
        ([fb(1), fb(-1)], True, False, False),
        ([fb(score=0.2)], True, True, False),
    ],
)
def test_feedback_rules(
    rows: list[Feedback], any_: bool, not_negative: bool, positive: bool
) -> None:
    assert passes_feedback(rows, "any") is any_
    assert passes_feedback(rows, "not_negative") is not_negative
    assert passes_feedback(rows, "positive") is positive


def test_trace_reward_by_hand() -> None:
    assert trace_reward([]) is None
    assert trace_reward([fb(1), fb(-1)]) == 0.5
    assert trace_reward([fb(score=0.9), fb(-1)]) == pytest.approx(0.45)
    assert trace_reward([fb(thumbs=None)]) is None  # a comment-only row adds no reward
