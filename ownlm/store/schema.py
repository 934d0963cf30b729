"""Rows the store keeps and other stages read: Trace, Feedback, Experiment, ModelVersion, ArmStats.

Plain dataclasses, no database types: the gateway writes `Trace` and `Feedback`, the router reads
`ArmStats`, `data/` reads traces and feedback, `eval/` writes `ModelVersion`. The SQL tables that
hold them live in `ownlm/store/tables.py`; this module is the contract between stages.

Reward of one feedback row (used by `ArmStats`): `score` when given, else 1.0 for thumbs up and
0.0 for thumbs down; a row with neither counts in `n_feedback` but adds no reward.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_id() -> str:
    """A fresh random id (32 hex chars), used for trace and feedback ids."""
    return uuid.uuid4().hex


@dataclass
class Trace:
    """One captured request to the gateway and its response (streamed ones reassembled)."""

    trace_id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)  # unix seconds
    endpoint: str = "chat.completions"  # or "responses", "embeddings"
    alias: str = ""  # the model name the client asked for
    variant: str = ""  # the variant the router picked
    upstream: str = ""  # name of the upstream that answered (after fallbacks)
    upstream_model: str = ""  # model name sent to that upstream
    request: dict[str, Any] = field(default_factory=dict)  # the request body as received
    response: dict[str, Any] | None = None  # chat.completion object (streams reassembled)
    status: int = 200  # HTTP status returned to the client
    error: str | None = None  # error message when status >= 400
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0  # request received -> last byte sent
    ttft_ms: float | None = None  # request received -> first content chunk (streams only)
    cost_usd: float = 0.0  # from the price table of the answering upstream
    user: str | None = None
    session: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    key_id: str | None = None  # API key that made the call (its id, never the secret)
    cache_hit: bool = False
    reason: str = ""  # the router's reason for picking `variant`
    experiment: str | None = None  # A/B experiment this call took part in
    arm: str | None = None  # the experiment arm it was assigned to


@dataclass
class Feedback:
    """A score or label a user attached to a trace (thumbs, score, money value, comment)."""

    trace_id: str
    feedback_id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)
    thumbs: int | None = None  # +1 up, -1 down
    score: float | None = None  # any scale the app picks, e.g. 0..1
    value: float | None = None  # free-form number, e.g. money earned by the answer
    comment: str | None = None
    user: str | None = None
    key_id: str | None = None


@dataclass
class Experiment:
    """An A/B experiment on one alias: arms are variants, weights are the initial traffic split."""

    name: str
    alias: str
    arms: list[str]
    weights: list[float]
    status: str = "running"  # "running" | "stopped"
    created_at: float = field(default_factory=time.time)
    eliminated: list[str] | None = None  # arms the test showed worse (None: none yet)


@dataclass
class ModelVersion:
    """A registry entry: a trained model that eval gated and that can be served as a variant."""

    name: str  # e.g. "support-bot"
    version: int
    path: str  # run directory or model directory
    base_model: str = ""
    status: str = "candidate"  # see VERSION_STATUSES
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    parent: str | None = None  # "name@version" it was trained from, or the base model's name
    lineage: dict[str, Any] = field(default_factory=dict)  # data hashes, recipe, config


# candidate: trained, not gated; approved / rejected: the gate's decision; canary: serving a
# share of traffic in an A/B; promoted: won it (or promoted by hand); rolled_back: lost or was
# rolled back; retired: replaced by a newer promoted version.
VERSION_STATUSES = (
    "candidate",
    "approved",
    "rejected",
    "canary",
    "promoted",
    "rolled_back",
    "retired",
)


@dataclass
class GateDecision:
    """What the gate decided for a model version, and the figures behind it."""

    name: str
    version: int
    incumbent: str  # what it was compared with ("name@version" or a base model)
    promote: bool
    reasons: list[str]  # one line per rule, passed or failed
    metrics: dict[str, float]  # accuracies, gains, CI bounds
    decision_id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)


@dataclass
class Deployment:
    """How the gateway routes one alias; the newest row per alias is live, older rows are history.

    arms: variant -> share of traffic (one arm: all traffic). models: variants served by an own
    model that the gateway config does not list, variant -> model path (the gateway loads them).
    experiment: ExperimentConfig fields (metric, alpha, ...) when there are 2+ arms.
    escalations: own variant -> EscalateConfig fields ({"to", "min_confidence"}), the
    confidence routing the gate calibrated for it.
    """

    alias: str
    arms: dict[str, float]
    incumbent: str  # the variant that had the traffic before
    reason: str
    models: dict[str, str] = field(default_factory=dict)
    experiment: dict[str, Any] | None = None
    canary: str | None = None  # the variant on trial, if any
    created_at: float = field(default_factory=time.time)
    seq: int = 0  # assigned by the store
    escalations: dict[str, dict[str, Any]] | None = None


@dataclass
class ArmStats:
    """Per-arm totals of an experiment, read by the router's decision rule."""

    experiment: str
    arm: str
    n_traces: int
    n_feedback: int
    reward_sum: float
    reward_sq_sum: float
    successes: int  # thumbs up
    failures: int  # thumbs down
    cost_usd: float


@dataclass
class ServedModel:
    """A model the gateway serves, as it wrote it at start (the report reads prices and which
    models are own from these rows, not from the gateway's config file)."""

    name: str  # the variant name clients and traces use
    kind: str  # the upstream's kind: openai (a provider or server) or an own-model engine
    price_in_usd_per_mtok: float = 0.0
    price_out_usd_per_mtok: float = 0.0
    updated_at: float = field(default_factory=time.time)

    @property
    def own(self) -> bool:
        return self.kind != "openai"


@dataclass
class ApiKey:
    """A gateway API key as stored: only the sha256 of the secret, never the secret itself."""

    key_id: str
    key_sha256: str
    name: str
    rate_per_s: float  # token bucket refill rate, requests per second
    burst: int  # token bucket size
    budget_usd: float | None = None  # None: no spend limit
    disabled: bool = False
    created_at: float = field(default_factory=time.time)
