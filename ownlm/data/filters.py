"""Which traces an export uses: config of the filters, the first filter a trace fails, rewards.

Always applied: endpoint chat.completions or responses, status 200. Optional (an empty list or
null means no filter): alias, variant, upstream_model, created_at range, tags (any of), max
cost, and feedback on the trace:
- any: every trace;
- not_negative: no thumbs-down row;
- positive: at least one thumbs-up row and no thumbs-down row.
The feedback filter applies to SFT and RL rows. Pairs need rated answers on both sides, so they
are built from every trace that passes the other filters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from ownlm.config import Config
from ownlm.store.schema import Feedback, Trace

FeedbackRule = Literal["any", "not_negative", "positive"]


class FilterConfig(Config):
    """Trace filters; every list is 'any of', an empty list or null disables that filter."""

    aliases: list[str] = Field([], description="model names the app called")
    variants: list[str] = Field([], description="variants that answered")
    upstream_models: list[str] = Field([], description="model names sent upstream")
    since: datetime | None = Field(
        None, description="ISO time or unix seconds; created_at >= since"
    )
    until: datetime | None = Field(None, description="created_at < until")
    tags: list[str] = Field([], description="keep traces with at least one of these tags")
    max_cost_usd: float | None = Field(None, description="drop traces that cost more")
    feedback: FeedbackRule = Field(
        "not_negative",
        description="any; not_negative: no thumbs-down; positive: a thumbs-up, none down",
    )


def unix_seconds(when: datetime) -> float:
    """Unix seconds of a config time; a time without a zone is read as UTC."""
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


def drop_reason(trace: Trace, cfg: FilterConfig) -> str | None:
    """Name of the first filter (other than feedback) the trace fails, or None to keep it."""
    if trace.endpoint not in ("chat.completions", "responses"):
        return "endpoint"
    if trace.status != 200:
        return "status"
    if cfg.aliases and trace.alias not in cfg.aliases:
        return "alias"
    if cfg.variants and trace.variant not in cfg.variants:
        return "variant"
    if cfg.upstream_models and trace.upstream_model not in cfg.upstream_models:
        return "upstream_model"
    if cfg.since is not None and trace.created_at < unix_seconds(cfg.since):
        return "since"
    if cfg.until is not None and trace.created_at >= unix_seconds(cfg.until):
        return "until"
    if cfg.tags and not set(cfg.tags) & set(trace.tags):
        return "tags"
    if cfg.max_cost_usd is not None and trace.cost_usd > cfg.max_cost_usd:
        return "max_cost_usd"
    return None


def passes_feedback(rows: list[Feedback], rule: FeedbackRule) -> bool:
    """Whether a trace with these feedback rows passes the feedback rule."""
    if rule == "any":
        return True
    down = any(f.thumbs is not None and f.thumbs < 0 for f in rows)
    up = any(f.thumbs is not None and f.thumbs > 0 for f in rows)
    return not down and (up or rule == "not_negative")


def trace_reward(rows: list[Feedback]) -> float | None:
    """Mean reward of a trace's feedback (score, else 1.0 up / 0.0 down); None when unrated."""
    rewards = [
        f.score if f.score is not None else (1.0 if f.thumbs > 0 else 0.0)
        for f in rows
        if f.score is not None or (f.thumbs is not None and f.thumbs != 0)
    ]
    return sum(rewards) / len(rewards) if rewards else None
