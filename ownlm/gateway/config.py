"""GatewayConfig: the `ownlm.yaml` file that `ownlm serve` reads (example: examples/ownlm.yaml).

Upstreams are servers; models are the names clients send (and the variants the router picks),
each mapped to an upstream, the upstream's model name, a price and fallbacks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ownlm.config import Config
from ownlm.models.llama_cpp import UBATCH_TOKENS, Quantization
from ownlm.router.policy import RouterConfig


class UpstreamConfig(Config):
    """A server that answers chat requests."""

    kind: Literal["openai", "llama_cpp", "local"] = Field(
        "openai",
        description="openai: an OpenAI-compatible URL; llama_cpp: an own model on a managed "
        "llama-server; local: an own model on the in-process torch sampler",
    )
    base_url: str = Field("", description="e.g. https://api.openai.com/v1 (kind openai)")
    api_key_env: str | None = Field(None, description="env var holding the upstream's API key")
    timeout_s: float = Field(60.0, gt=0, description="whole reply; for streams, between chunks")
    connect_timeout_s: float = Field(5.0, gt=0, description="to open a connection")
    max_retries: int = Field(1, ge=0, description="extra tries on connect errors, 429 and 5xx")
    retry_backoff_s: float = Field(0.05, ge=0, description="wait before the first retry")
    max_connections: int = Field(1000, ge=1, description="connection pool size")
    model_path: str | None = Field(
        None, description="kinds llama_cpp and local: model dir, run dir, .gguf or 'smollm2-135m'"
    )
    quantization: Quantization = Field(
        "f16",
        description="kind llama_cpp: GGUF type; f16 (the default) decodes like the checkpoint "
        "and was the fastest at 4 clients here (bench/serve_own_model.py)",
    )
    parallel_slots: int = Field(
        4, ge=1, description="kind llama_cpp: requests decoded together (continuous batching)"
    )
    context_tokens_per_slot: int = Field(2048, ge=64, description="kind llama_cpp")
    threads: int | None = Field(None, ge=1, description="kind llama_cpp: default all cores")
    ubatch_tokens: int = Field(
        UBATCH_TOKENS, ge=1, description="kind llama_cpp: micro-batch (llama.cpp's default: 512)"
    )
    start_timeout_s: float = Field(120.0, gt=0, description="kind llama_cpp: until healthy")

    @model_validator(mode="after")
    def _check_kind(self) -> UpstreamConfig:
        if self.kind == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        return self


class EscalateConfig(Config):
    """Quality-preserving routing: an unsure own model hands the request to another model."""

    to: str = Field(description="the model that answers when the own model is unsure")
    min_confidence: float = Field(
        ge=0.0,
        le=2.0,
        description="the own model keeps answers whose confidence (geometric-mean token "
        "probability) is at least this; calibrated by the gate; above 1: never",
    )


class ModelConfig(Config):
    """A model name clients may send and the router may pick (a variant)."""

    upstream: str = Field(description="a name in upstreams")
    model: str | None = Field(None, description="name sent upstream; default: this entry's name")
    fallbacks: list[str] = Field(default_factory=list, description="models tried on failure")
    cache: bool = Field(False, description="exact-match cache for every request to this model")
    price_in_usd_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens")
    price_out_usd_per_mtok: float = Field(0.0, ge=0, description="USD per million output tokens")
    escalate: EscalateConfig | None = Field(
        None, description="own models on llama_cpp: send unsure answers' requests elsewhere"
    )


class KeyConfig(Config):
    """A static API key from the config file (created keys live in the store)."""

    name: str = Field(description="shown on traces and in errors")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the key")
    rate_per_s: float = Field(50.0, gt=0, description="requests per second (token bucket)")
    burst: int = Field(100, ge=1, description="requests allowed at once above the rate")
    budget_usd: float | None = Field(None, ge=0, description="spend limit; null: none")


class LabelLimits(Config):
    """How long a request's labels may be. Checked when the request arrives (a 400 naming the
    field), so every trace fits the store's columns and one request cannot sink a batch."""

    max_user_chars: int = Field(
        200, ge=1, le=200, description="`user` (body or x-ownlm-user); the store column is 200"
    )
    max_session_chars: int = Field(
        200, ge=1, le=200, description="x-ownlm-session or metadata.session_id; column is 200"
    )
    max_tags: int = Field(16, ge=0, description="tags per request (x-ownlm-tags, metadata.tags)")
    max_tag_chars: int = Field(64, ge=1, description="characters in one tag")
    max_metadata_keys: int = Field(
        16, ge=0, description="keys of body metadata plus x-ownlm-tag-* headers (OpenAI: 16)"
    )
    max_metadata_key_chars: int = Field(64, ge=1, description="characters in a key (OpenAI: 64)")
    max_metadata_value_chars: int = Field(
        512, ge=1, description="characters in a value (OpenAI: 512)"
    )


class GatewayConfig(Config):
    """Everything `ownlm serve` needs."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8400, ge=0, le=65535, description="port to listen on")
    store_url: str = Field("sqlite:///ownlm.db", description="where traces and feedback go")
    shared_state_url: str | None = Field(
        None,
        description="Valkey or Redis (redis://host:6379/0) holding rate limits, budgets, the "
        "cache and the decision lease, for several gateway replicas on one PostgreSQL store; "
        "null: this process keeps them (one gateway per store)",
    )
    key_refresh_s: float = Field(
        1.0, gt=0, description="replicas: how often created and disabled keys are read"
    )
    store_timeout_s: float = Field(
        5.0,
        gt=0,
        description="a store call that takes longer counts as failed: traces go to the spill, "
        "feedback gets a 503 (PostgreSQL also cancels the statement)",
    )
    upstreams: dict[str, UpstreamConfig] = Field(
        default_factory=dict, description="servers that answer, by name"
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=dict, description="model names clients send (variants), by name"
    )
    router: RouterConfig = Field(
        default_factory=RouterConfig, description="routes, policies and A/B experiments"
    )
    require_keys: bool = Field(True, description="false: anyone may call /v1 (local use)")
    admin_key_env: str = Field("OWNLM_ADMIN_KEY", description="env var holding the admin key")
    admin_key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the admin key, instead of env"
    )
    keys: list[KeyConfig] = Field(default_factory=list, description="static API keys")
    default_rate_per_s: float = Field(50.0, gt=0, description="for keys created by the admin")
    default_burst: int = Field(100, ge=1, description="for keys created by the admin")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger requests get a 413")
    max_json_depth: int = Field(
        64,
        ge=2,
        le=250,
        description="request bodies nested deeper get a 400 (the store's JSON encoder stops at "
        "254 levels)",
    )
    max_header_bytes: int = Field(
        65536, ge=1024, description="a request whose line and headers pass this gets a 431"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a connection whose request headers are not all in this long after it "
        "opened (or after the last response) gets a 408 and is closed (slowloris, idle sockets)",
    )
    max_authorization_bytes: int = Field(
        4096, ge=64, description="a longer Authorization (or api-key) header is a 401, unread"
    )
    labels: LabelLimits = Field(
        default_factory=LabelLimits, description="limits on user, session, tags and metadata"
    )
    max_feedback_value_usd: float = Field(
        1_000_000.0, gt=0, description="feedback `value` must lie within plus or minus this"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="browser origins allowed to call the gateway (CORS), e.g. "
        "['https://app.example'], or ['*'] for any; empty: CORS off",
    )
    cors_max_age_s: int = Field(600, ge=0, description="how long browsers cache a CORS preflight")
    stream_deadline_s: float = Field(
        600.0,
        gt=0,
        description="a streamed reply is cut off (and its upstream closed) after this long",
    )
    budget_default_output_tokens: int = Field(
        4096,
        ge=1,
        description="output tokens a request without max_tokens reserves against its key's "
        "budget until its cost is known",
    )
    cache_max_entries: int = Field(10_000, ge=0, description="exact-match cache size")
    cache_ttl_s: float = Field(3600.0, gt=0, description="a cached reply expires after this")
    flush_interval_ms: float = Field(100.0, gt=0, description="trace writer batch interval")
    max_batch: int = Field(500, ge=1, description="traces per store write")
    max_queue: int = Field(20_000, ge=1, description="traces waiting beyond this are dropped")
    spill_path: str | None = Field(
        None,
        description="file that keeps traces while the store is unavailable, replayed when it "
        "is back; null: next to a SQLite store (<db>.spill.jsonl), else ownlm-spill.jsonl "
        "in the working directory",
    )
    spill_max_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="the spill's bound; 0: no spill (traces are lost)"
    )
    arm_stats_interval_s: float = Field(
        5.0, gt=0, description="how often A/B arm stats are read and tested"
    )
    deploy_refresh_s: float = Field(
        2.0, gt=0, description="how often the deployment log (ownlm promote) is read"
    )
    own_engine: UpstreamConfig = Field(
        default_factory=lambda: UpstreamConfig(kind="llama_cpp"),
        description="how promoted own models are served: kind llama_cpp (default) or local; "
        "model_path is filled in from the deployment",
    )
    own_price_in_usd_per_mtok: float = Field(
        0.0, ge=0, description="price of deployed own models, for cost and savings reports"
    )
    own_price_out_usd_per_mtok: float = Field(0.0, ge=0, description="output tokens")

    @model_validator(mode="after")
    def _check_replicas(self) -> GatewayConfig:
        if self.shared_state_url is not None and not self.store_url.startswith(
            ("postgresql://", "postgres://", "postgresql+")
        ):
            raise ValueError(
                "shared_state_url is for gateway replicas, and replicas share one PostgreSQL "
                f"store; store_url is {self.store_url!r}: set it to "
                "postgresql://user@host:5432/db, or drop shared_state_url for one gateway"
            )
        return self

    @model_validator(mode="after")
    def _check_names(self) -> GatewayConfig:
        problems = []
        for name, m in self.models.items():
            if m.upstream not in self.upstreams:
                problems.append(
                    f"models.{name}.upstream '{m.upstream}' is not defined in upstreams "
                    f"(known: {sorted(self.upstreams)})"
                )
            for fb in m.fallbacks:
                if fb not in self.models or fb == name:
                    problems.append(f"models.{name}.fallbacks names '{fb}', not another model")
            if m.escalate is not None:
                if m.escalate.to not in self.models or m.escalate.to == name:
                    problems.append(
                        f"models.{name}.escalate.to names '{m.escalate.to}', not another model"
                    )
                elif (
                    m.upstream in self.upstreams and self.upstreams[m.upstream].kind != "llama_cpp"
                ):
                    problems.append(
                        f"models.{name}.escalate needs a kind llama_cpp upstream (it reads the "
                        f"answer's token log-probabilities); '{m.upstream}' is "
                        f"{self.upstreams[m.upstream].kind}"
                    )
        for origin in self.cors_origins:
            scheme, sep, host = origin.partition("://")
            if origin != "*" and (
                scheme not in ("http", "https") or not sep or not host or "/" in host
            ):
                problems.append(
                    f"cors_origins: {origin!r} is not an origin; write scheme://host[:port] "
                    "with no path or trailing '/' (e.g. 'https://app.example'), or '*'"
                )
        if self.own_engine.kind == "openai":
            problems.append("own_engine.kind must be llama_cpp or local")
        if problems:
            raise ValueError("; ".join(problems))
        return self
