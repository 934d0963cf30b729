"""SQL tables of the store (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Migrations are a list of versioned steps, applied in order and recorded in `schema_version`.
We chose this over alembic: the schema is small, it must be created with no set-up on first
start of `ownlm serve`, and a list of `(version, fn)` is readable in one screen. The steps run
in one transaction with the version row, so a failed step leaves the database at the old version.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

traces = Table(
    "traces",
    metadata,
    Column("trace_id", String(32), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("alias", String(200), nullable=False),
    Column("variant", String(200), nullable=False),
    Column("upstream", String(200), nullable=False),
    Column("upstream_model", String(200), nullable=False),
    Column("request", JSON, nullable=False),
    Column("response", JSON),
    Column("status", Integer, nullable=False),
    Column("error", Text),
    Column("stream", Boolean, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("cost_usd", Float, nullable=False),
    Column("user", String(200)),
    Column("session", String(200)),
    Column("tags", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("key_id", String(32)),
    Column("cache_hit", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("experiment", String(200)),
    Column("arm", String(200)),
    Index("ix_traces_created_at", "created_at"),
    Index("ix_traces_experiment_arm", "experiment", "arm"),
    Index("ix_traces_key_id", "key_id"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("feedback_id", String(32), primary_key=True),
    Column("trace_id", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("thumbs", Integer),
    Column("score", Float),
    Column("value", Float),
    Column("comment", Text),
    Column("user", String(200)),
    Column("key_id", String(32)),
    Index("ix_feedback_trace_id", "trace_id"),
)

experiments = Table(
    "experiments",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("alias", String(200), nullable=False),
    Column("arms", JSON, nullable=False),
    Column("weights", JSON, nullable=False),
    Column("status", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("eliminated", JSON),  # version 4: arms the test has shown worse, kept over restarts
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("path", Text, nullable=False),
    Column("base_model", String(200), nullable=False),
    Column("status", String(32), nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    # added in version 2
    Column("parent", String(200)),  # "name@version" it was trained from, or a base model
    Column("lineage", JSON),  # data manifest hashes, recipe, config
)

# version 2: gate decisions and deployments (the routing of an alias, newest row wins)
gate_decisions = Table(
    "gate_decisions",
    metadata,
    Column("decision_id", String(32), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("incumbent", String(400), nullable=False),
    Column("promote", Boolean, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Index("ix_gate_decisions_model", "name", "version"),
)

deployments = Table(
    "deployments",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),
    Column("alias", String(200), nullable=False),
    Column("arms", JSON, nullable=False),
    Column("models", JSON, nullable=False),
    Column("experiment", JSON),
    Column("canary", String(200)),
    Column("incumbent", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("escalations", JSON),  # version 3
    Index("ix_deployments_alias", "alias", "seq"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("key_sha256", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("rate_per_s", Float, nullable=False),
    Column("burst", Integer, nullable=False),
    Column("budget_usd", Float),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
)


served_models = Table(
    "served_models",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("price_in_usd_per_mtok", Float, nullable=False),
    Column("price_out_usd_per_mtok", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def _create_v1(conn: Connection) -> None:
    """Version 1: traces, feedback, experiments, model versions, API keys."""
    metadata.create_all(conn, tables=[traces, feedback, experiments, model_versions, api_keys])


def _registry_v2(conn: Connection) -> None:
    """Version 2: lineage columns on model versions; gate decisions; deployments."""
    have = {c["name"] for c in inspect(conn).get_columns("model_versions")}
    for name, sql_type in (("parent", "VARCHAR(200)"), ("lineage", "JSON")):
        if name not in have:  # a database created at version 2 already has them
            conn.execute(text(f"ALTER TABLE model_versions ADD COLUMN {name} {sql_type}"))
    metadata.create_all(conn, tables=[gate_decisions, deployments])


def _escalations_v3(conn: Connection) -> None:
    """Version 3: deployments carry the own models' escalation (confidence routing)."""
    have = {c["name"] for c in inspect(conn).get_columns("deployments")}
    if "escalations" not in have:  # a database created at version 2+ by create_all has it
        conn.execute(text("ALTER TABLE deployments ADD COLUMN escalations JSON"))


def _eliminated_v4(conn: Connection) -> None:
    """Version 4: experiments keep the arms their test eliminated (decisions outlive a restart)."""
    if not inspect(conn).has_table("experiments"):  # a version-1 file made by hand, say
        metadata.create_all(conn, tables=[experiments])
        return
    have = {c["name"] for c in inspect(conn).get_columns("experiments")}
    if "eliminated" not in have:  # a database created at version 4+ by create_all has it
        conn.execute(text("ALTER TABLE experiments ADD COLUMN eliminated JSON"))


def _served_models_v5(conn: Connection) -> None:
    """Version 5: the models the gateway serves, with kind and prices (read by the report).
    The DDL as written for this version, not today's table definition."""
    if not inspect(conn).has_table("served_models"):
        conn.execute(
            text(
                "CREATE TABLE served_models (name VARCHAR(200) NOT NULL PRIMARY KEY, "
                "kind VARCHAR(32) NOT NULL, price_in_usd_per_mtok FLOAT NOT NULL, "
                "price_out_usd_per_mtok FLOAT NOT NULL, updated_at FLOAT NOT NULL)"
            )
        )


# (version, step). Append new steps at the end; never edit an applied one.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _create_v1),
    (2, _registry_v2),
    (3, _escalations_v3),
    (4, _eliminated_v4),
    (5, _served_models_v5),
]
LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(conn: Connection, now: float) -> int:
    """Apply the steps newer than the database's version; return the version it is at."""
    metadata.create_all(conn, tables=[schema_version])
    current = conn.execute(
        select(schema_version.c.version).order_by(schema_version.c.version.desc())
    )
    row = current.first()
    at = row[0] if row is not None else 0
    for version, step in MIGRATIONS:
        if version > at:
            step(conn)
            conn.execute(insert(schema_version).values(version=version, applied_at=now))
            at = version
    return at
