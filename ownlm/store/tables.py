"""SQL tables of the store (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Migrations are a list of versioned steps, applied in order and recorded in `schema_version`.
We chose this over alembic: the schema is small, it must be created with no set-up on first
start of `ownlm serve`, and a list of `(version, fn)` is readable in one screen. Each step is
written as the DDL of its version (frozen: never today's table definitions; a test checks that
a fresh migration equals the tables). On PostgreSQL the steps run in one transaction with the
version rows, so a failed step leaves the database at the old version. SQLite's driver commits
DDL that runs before the first row is written, so there a failed migration can leave a step's
tables behind without its version row: every step checks what exists first, so the next start
finishes it.
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


def _create_table(conn: Connection, name: str, columns: str, *indexes: str) -> None:
    """CREATE TABLE name (columns) and its indexes, unless the table exists (as create_all did:
    a database made by hand, or by a step of the create_all era, may have it already)."""
    if inspect(conn).has_table(name):
        return
    conn.execute(text(f"CREATE TABLE {name} ({columns})"))
    for index in indexes:
        conn.execute(text(index))


def _add_columns(conn: Connection, table: str, *columns: tuple[str, str]) -> None:
    """ALTER TABLE ADD COLUMN for each (name, type) the table lacks. Steps of the create_all era
    created today's tables, so a database they made may have a later version's columns."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, sql_type in columns:
        if name not in have:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))


# Each step below is the DDL of its version as written then (reconstructed from the create_all
# steps' tables at that commit), in SQL that SQLite and PostgreSQL both run. Never change a
# step to match a later table: add a step. tests/store/test_tables.py checks that the steps in
# order give today's Table definitions. "user" is quoted: it is reserved in PostgreSQL.


def _create_v1(conn: Connection) -> None:
    """Version 1 (95025d5): traces, feedback, experiments, model versions, API keys."""
    _create_table(
        conn,
        "traces",
        "trace_id VARCHAR(32) NOT NULL, created_at FLOAT NOT NULL, endpoint VARCHAR(32) NOT NULL, "
        "alias VARCHAR(200) NOT NULL, variant VARCHAR(200) NOT NULL, "
        "upstream VARCHAR(200) NOT NULL, upstream_model VARCHAR(200) NOT NULL, "
        "request JSON NOT NULL, response JSON, status INTEGER NOT NULL, error TEXT, "
        "stream BOOLEAN NOT NULL, prompt_tokens INTEGER NOT NULL, "
        "completion_tokens INTEGER NOT NULL, latency_ms FLOAT NOT NULL, ttft_ms FLOAT, "
        'cost_usd FLOAT NOT NULL, "user" VARCHAR(200), session VARCHAR(200), '
        "tags JSON NOT NULL, metadata JSON NOT NULL, key_id VARCHAR(32), "
        "cache_hit BOOLEAN NOT NULL, reason TEXT NOT NULL, experiment VARCHAR(200), "
        "arm VARCHAR(200), PRIMARY KEY (trace_id)",
        "CREATE INDEX ix_traces_created_at ON traces (created_at)",
        "CREATE INDEX ix_traces_experiment_arm ON traces (experiment, arm)",
        "CREATE INDEX ix_traces_key_id ON traces (key_id)",
    )
    _create_table(
        conn,
        "feedback",
        "feedback_id VARCHAR(32) NOT NULL, trace_id VARCHAR(32) NOT NULL, "
        "created_at FLOAT NOT NULL, thumbs INTEGER, score FLOAT, value FLOAT, comment TEXT, "
        '"user" VARCHAR(200), key_id VARCHAR(32), PRIMARY KEY (feedback_id)',
        "CREATE INDEX ix_feedback_trace_id ON feedback (trace_id)",
    )
    _create_experiments_v1(conn)
    _create_table(
        conn,
        "model_versions",
        "name VARCHAR(200) NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, "
        "base_model VARCHAR(200) NOT NULL, status VARCHAR(32) NOT NULL, "
        "metrics JSON NOT NULL, created_at FLOAT NOT NULL, PRIMARY KEY (name, version)",
    )
    _create_table(
        conn,
        "api_keys",
        "key_id VARCHAR(32) NOT NULL, key_sha256 VARCHAR(64) NOT NULL, "
        "name VARCHAR(200) NOT NULL, rate_per_s FLOAT NOT NULL, burst INTEGER NOT NULL, "
        "budget_usd FLOAT, disabled BOOLEAN NOT NULL, created_at FLOAT NOT NULL, "
        "PRIMARY KEY (key_id), UNIQUE (key_sha256)",
    )


def _create_experiments_v1(conn: Connection) -> None:
    """The experiments table of version 1 (version 4 adds `eliminated`)."""
    _create_table(
        conn,
        "experiments",
        "name VARCHAR(200) NOT NULL, alias VARCHAR(200) NOT NULL, arms JSON NOT NULL, "
        "weights JSON NOT NULL, status VARCHAR(32) NOT NULL, created_at FLOAT NOT NULL, "
        "PRIMARY KEY (name)",
    )


def _registry_v2(conn: Connection) -> None:
    """Version 2 (5e94865): lineage columns on model versions; gate decisions; deployments."""
    _add_columns(conn, "model_versions", ("parent", "VARCHAR(200)"), ("lineage", "JSON"))
    _create_table(
        conn,
        "gate_decisions",
        "decision_id VARCHAR(32) NOT NULL, created_at FLOAT NOT NULL, "
        "name VARCHAR(200) NOT NULL, version INTEGER NOT NULL, "
        "incumbent VARCHAR(400) NOT NULL, promote BOOLEAN NOT NULL, reasons JSON NOT NULL, "
        "metrics JSON NOT NULL, PRIMARY KEY (decision_id)",
        "CREATE INDEX ix_gate_decisions_model ON gate_decisions (name, version)",
    )
    # seq numbers the rows: SERIAL on PostgreSQL; on SQLite an INTEGER primary key is the rowid,
    # which numbers them (the types create_all gave it)
    seq_type = "SERIAL" if conn.dialect.name == "postgresql" else "INTEGER"
    _create_table(
        conn,
        "deployments",
        f"seq {seq_type} NOT NULL, created_at FLOAT NOT NULL, alias VARCHAR(200) NOT NULL, "
        "arms JSON NOT NULL, models JSON NOT NULL, experiment JSON, canary VARCHAR(200), "
        "incumbent VARCHAR(200) NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (seq)",
        "CREATE INDEX ix_deployments_alias ON deployments (alias, seq)",
    )


def _escalations_v3(conn: Connection) -> None:
    """Version 3 (3176ac3): deployments carry the own models' escalation (confidence routing)."""
    _add_columns(conn, "deployments", ("escalations", "JSON"))


def _eliminated_v4(conn: Connection) -> None:
    """Version 4 (329d924): experiments keep the arms their test eliminated (decisions outlive a
    restart)."""
    _create_experiments_v1(conn)  # a version-1 file made by hand may lack the table
    _add_columns(conn, "experiments", ("eliminated", "JSON"))


def _served_models_v5(conn: Connection) -> None:
    """Version 5: the models the gateway serves, with kind and prices (read by the report)."""
    _create_table(
        conn,
        "served_models",
        "name VARCHAR(200) NOT NULL PRIMARY KEY, kind VARCHAR(32) NOT NULL, "
        "price_in_usd_per_mtok FLOAT NOT NULL, price_out_usd_per_mtok FLOAT NOT NULL, "
        "updated_at FLOAT NOT NULL",
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
