"""Migrations on SQLite and a real PostgreSQL: an empty database to LATEST_VERSION, a database
at each older version, one made by the pre-freeze (create_all) steps, idempotence, a failed step;
and the frozen steps compared with today's Table definitions, so the two cannot drift apart."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, insert, inspect, select, text

from ownlm.store import tables as t
from ownlm.store.registry import Registry
from ownlm.store.schema import Deployment
from ownlm.store.trace_store import TraceStore, engine_url

NewDatabase = Callable[[], str]


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> NewDatabase:
    """A factory of URLs of fresh, empty databases on one back end."""
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path}/{uuid.uuid4().hex[:8]}.db"
    server = str(request.getfixturevalue("pg_server"))

    def create() -> str:
        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(server + "/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"{server}/{name}"

    return create


class Opened:
    """Engines and stores a test opens, all disposed of when it ends (a failed assert too)."""

    def __init__(self) -> None:
        self._engines: list[Engine] = []

    def engine(self, url: str) -> Engine:
        self._engines.append(create_engine(engine_url(url)))
        return self._engines[-1]

    def store(self, url: str) -> TraceStore:
        store = TraceStore(url)
        self._engines.append(store.engine)
        return store

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()


@pytest.fixture
def opened() -> Iterator[Opened]:
    o = Opened()
    yield o
    o.close()


def schema_of(conn: Connection) -> dict[str, dict[str, Any]]:
    """Every table as the database reports it: columns (type, nullability, default), primary
    key, indexes, unique and check constraints. Column order is left out: ALTER TABLE appends,
    and the code reads columns by name."""
    insp = inspect(conn)
    out: dict[str, dict[str, Any]] = {}
    for name in insp.get_table_names():
        columns = {
            c["name"]: (
                c["type"].compile(dialect=conn.dialect),
                c["nullable"],
                c.get("default"),
                c.get("autoincrement"),
            )
            for c in insp.get_columns(name)
        }
        out[name] = {
            "columns": columns,
            "primary_key": insp.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted(
                (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                for ix in insp.get_indexes(name)
            ),
            "unique": sorted(
                (str(u["name"]), tuple(u["column_names"]))
                for u in insp.get_unique_constraints(name)
            ),
            "checks": sorted(str(c["sqltext"]) for c in insp.get_check_constraints(name)),
        }
    return out


def todays_schema(engine: Engine) -> dict[str, dict[str, Any]]:
    """The schema today's Table definitions create (metadata.create_all), read back."""
    with engine.begin() as conn:
        t.metadata.create_all(conn)
        return schema_of(conn)


def migrate_to(conn: Connection, version: int) -> None:
    """What migrate() does, stopping at `version`: a database created by a gateway of then."""
    t.metadata.create_all(conn, tables=[t.schema_version])
    for v, step in t.MIGRATIONS:
        if v <= version:
            step(conn)
            conn.execute(insert(t.schema_version).values(version=v, applied_at=0.0))


def versions(conn: Connection) -> list[int]:
    return list(conn.execute(select(t.schema_version.c.version).order_by("version")).scalars())


def columns(conn: Connection) -> set[tuple[str, str]]:
    insp = inspect(conn)
    return {
        (table, c["name"])
        for table in insp.get_table_names()
        if table != "schema_version"
        for c in insp.get_columns(table)
    }


# -- the frozen steps against today's tables ---------------------------------------------------


def test_a_fresh_migrate_gives_todays_tables(new_database: NewDatabase, opened: Opened) -> None:
    expected = todays_schema(opened.engine(new_database()))
    assert set(expected) == {tb.name for tb in t.metadata.sorted_tables}
    with opened.engine(new_database()).begin() as conn:
        assert t.migrate(conn, 0.0) == t.LATEST_VERSION
        got = schema_of(conn)
    assert sorted(got) == sorted(expected)
    for table in expected:  # table by table, so a failure names the one that drifted
        assert got[table] == expected[table], table


# the version each column came in (a table's "*": all its columns); all others are version 1's
ADDED_IN = {
    ("model_versions", "parent"): 2,
    ("model_versions", "lineage"): 2,
    ("gate_decisions", "*"): 2,
    ("deployments", "*"): 2,
    ("deployments", "escalations"): 3,
    ("experiments", "eliminated"): 4,
    ("served_models", "*"): 5,
}


def columns_at(version: int) -> set[tuple[str, str]]:
    """The (table, column) pairs a database at `version` has, from today's tables and ADDED_IN."""
    return {
        (tb.name, c.name)
        for tb in t.metadata.sorted_tables
        if tb.name != "schema_version"
        for c in tb.columns
        if ADDED_IN.get((tb.name, c.name), ADDED_IN.get((tb.name, "*"), 1)) <= version
    }


def test_each_step_creates_only_what_its_version_had(
    new_database: NewDatabase, opened: Opened
) -> None:
    """The frozen steps: a column of a later version is not in an earlier version's database
    (create_all of today's tables in step 1 gave version 1 `eliminated` and `parent`)."""
    assert t.LATEST_VERSION == max(ADDED_IN.values()), "a new version: add its columns to ADDED_IN"
    assert columns_at(t.LATEST_VERSION) == {
        (tb.name, c.name) for tb in t.metadata.sorted_tables for c in tb.columns
    } - {("schema_version", "version"), ("schema_version", "applied_at")}
    for version in range(1, t.LATEST_VERSION + 1):
        with opened.engine(new_database()).begin() as conn:
            migrate_to(conn, version)
            assert columns(conn) == columns_at(version), version


# -- from older versions -----------------------------------------------------------------------


def rows_at(conn: Connection, version: int) -> None:
    """Rows a gateway at `version` would have written, in the columns it had."""
    conn.execute(
        text(
            "INSERT INTO traces (trace_id, created_at, endpoint, alias, variant, upstream, "
            "upstream_model, request, status, stream, prompt_tokens, completion_tokens, "
            'latency_ms, cost_usd, "user", tags, metadata, cache_hit, reason) VALUES '
            "(:id, 1.0, 'chat', 'app', 'strong', 'up', 'gpt', '{}', 200, :f, 3, 2, 5.0, 0.25, "
            "'u1', '[]', '{}', :f, 'default')"
        ),
        {"id": "a" * 32, "f": False},
    )
    conn.execute(
        text(
            "INSERT INTO model_versions (name, version, path, base_model, status, metrics, "
            "created_at) VALUES ('own', 1, '/runs/a', 'base', 'approved', '{\"acc\": 0.5}', 1.0)"
        )
    )
    conn.execute(
        text(
            "INSERT INTO experiments (name, alias, arms, weights, status, created_at) VALUES "
            "('ab', 'app', '[\"a\", \"b\"]', '[0.5, 0.5]', 'running', 1.0)"
        )
    )
    if version >= 2:
        conn.execute(
            text(
                "INSERT INTO deployments (created_at, alias, arms, models, incumbent, reason) "
                "VALUES (1.0, 'app', '{\"strong\": 1.0}', '{}', 'strong', 'baseline')"
            )
        )


@pytest.mark.parametrize("version", range(0, t.LATEST_VERSION))
def test_a_database_at_each_older_version_migrates_with_its_rows(
    new_database: NewDatabase, opened: Opened, version: int
) -> None:
    expected = todays_schema(opened.engine(new_database()))
    url = new_database()
    with opened.engine(url).begin() as conn:
        migrate_to(conn, version)
        if version >= 1:
            rows_at(conn, version)
    store = opened.store(url)  # migrates, as `ownlm serve` does on start
    assert store.version == t.LATEST_VERSION
    with store.engine.connect() as conn:
        assert versions(conn) == list(range(1, t.LATEST_VERSION + 1))
        assert schema_of(conn) == expected
    if version >= 1:
        trace = store.get_trace("a" * 32)
        assert trace is not None and (trace.user, trace.cost_usd) == ("u1", 0.25)
        mv = Registry(store).get("own@1")
        assert (mv.path, mv.metrics, mv.parent) == ("/runs/a", {"acc": 0.5}, None)
        (exp,) = store.list_experiments()
        assert (exp.arms, exp.weights, exp.eliminated) == (["a", "b"], [0.5, 0.5], None)
        store.set_eliminated("ab", ["b"])  # a column of version 4 takes writes
        assert store.list_experiments()[0].eliminated == ["b"]
    reg = Registry(store)
    if version >= 2:
        live = reg.current("app")
        assert live is not None and live.arms == {"strong": 1.0} and live.escalations is None
    # the SERIAL / rowid sequence goes on numbering deployments after the migration
    seq = reg.deploy(Deployment("app", {"strong": 1.0}, "strong", "after")).seq
    assert seq == (2 if version >= 2 else 1)


# The pre-freeze steps (ownlm/store/tables.py before the DDL was frozen): create_all with the
# Table definitions of the day, so a database they made has later versions' columns already.


def _old_create_v1(conn: Connection) -> None:
    t.metadata.create_all(
        conn, tables=[t.traces, t.feedback, t.experiments, t.model_versions, t.api_keys]
    )


def _old_registry_v2(conn: Connection) -> None:
    have = {c["name"] for c in inspect(conn).get_columns("model_versions")}
    for name, sql_type in (("parent", "VARCHAR(200)"), ("lineage", "JSON")):
        if name not in have:
            conn.execute(text(f"ALTER TABLE model_versions ADD COLUMN {name} {sql_type}"))
    t.metadata.create_all(conn, tables=[t.gate_decisions, t.deployments])


def _old_escalations_v3(conn: Connection) -> None:
    have = {c["name"] for c in inspect(conn).get_columns("deployments")}
    if "escalations" not in have:
        conn.execute(text("ALTER TABLE deployments ADD COLUMN escalations JSON"))


def _old_eliminated_v4(conn: Connection) -> None:
    if not inspect(conn).has_table("experiments"):
        t.metadata.create_all(conn, tables=[t.experiments])
        return
    have = {c["name"] for c in inspect(conn).get_columns("experiments")}
    if "eliminated" not in have:
        conn.execute(text("ALTER TABLE experiments ADD COLUMN eliminated JSON"))


OLD_STEPS = [_old_create_v1, _old_registry_v2, _old_escalations_v3, _old_eliminated_v4]


@pytest.mark.parametrize("version", range(1, len(OLD_STEPS) + 1))
def test_a_database_made_by_the_old_steps_migrates(
    new_database: NewDatabase, opened: Opened, version: int
) -> None:
    expected = todays_schema(opened.engine(new_database()))
    url = new_database()
    with opened.engine(url).begin() as conn:
        t.metadata.create_all(conn, tables=[t.schema_version])
        for v, step in enumerate(OLD_STEPS[:version], start=1):
            step(conn)
            conn.execute(insert(t.schema_version).values(version=v, applied_at=0.0))
        rows_at(conn, version)
        # what they wrote in columns the frozen step of that version would not have made
        conn.execute(text("UPDATE experiments SET eliminated = '[\"b\"]'"))
    with opened.engine(url).begin() as conn:
        assert t.migrate(conn, 0.0) == t.LATEST_VERSION
        assert schema_of(conn) == expected
        assert versions(conn) == list(range(1, t.LATEST_VERSION + 1))
    store = opened.store(url)
    assert store.list_experiments()[0].eliminated == ["b"]


def test_a_hand_made_version_1_file_without_most_tables_migrates(
    new_database: NewDatabase, opened: Opened
) -> None:
    """Only schema_version and model_versions (test_registry's old file, on both back ends):
    the steps create what is missing rather than assume it."""
    url = new_database()
    with opened.engine(url).begin() as conn:
        t.metadata.create_all(conn, tables=[t.schema_version])
        conn.execute(insert(t.schema_version).values(version=1, applied_at=0.0))
        conn.execute(
            text(
                "CREATE TABLE model_versions (name VARCHAR(200) NOT NULL, version INTEGER NOT "
                "NULL, path TEXT NOT NULL, base_model VARCHAR(200) NOT NULL, status VARCHAR(32) "
                "NOT NULL, metrics JSON NOT NULL, created_at FLOAT NOT NULL, "
                "PRIMARY KEY (name, version))"
            )
        )
    with opened.engine(url).begin() as conn:
        assert t.migrate(conn, 0.0) == t.LATEST_VERSION
        have = set(inspect(conn).get_table_names())
    # experiments (version 4's guard) and the tables of versions 2 and 5; no traces: version 1
    # is recorded as applied, so its step does not run again
    assert have == {
        "schema_version",
        "model_versions",
        "experiments",
        "gate_decisions",
        "deployments",
        "served_models",
    }


# -- idempotence and failure -------------------------------------------------------------------


def test_migrate_twice_and_every_step_again_change_nothing(
    new_database: NewDatabase, opened: Opened
) -> None:
    engine = opened.engine(new_database())
    with engine.begin() as conn:
        assert t.migrate(conn, 1.0) == t.LATEST_VERSION
        first = schema_of(conn)
    with engine.begin() as conn:
        assert t.migrate(conn, 2.0) == t.LATEST_VERSION
        applied = conn.execute(select(t.schema_version.c.applied_at)).scalars().all()
        assert applied == [1.0] * t.LATEST_VERSION  # no step ran and no row was added
        for _, step in t.MIGRATIONS:  # the guards: a step finds its tables and columns there
            step(conn)
        assert schema_of(conn) == first


def test_a_failed_step_leaves_the_old_version_and_a_rerun_finishes(
    new_database: NewDatabase, opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = opened.engine(new_database())
    expected = todays_schema(opened.engine(new_database()))

    def broken_v5(conn: Connection) -> None:
        raise RuntimeError("step 5 failed")

    steps = [(v, broken_v5 if v == 5 else step) for v, step in t.MIGRATIONS]
    monkeypatch.setattr(t, "MIGRATIONS", steps)
    with pytest.raises(RuntimeError, match="step 5 failed"):
        with engine.begin() as conn:
            t.migrate(conn, 0.0)
    with engine.connect() as conn:
        left = set(inspect(conn).get_table_names())
        if conn.dialect.name == "postgresql":  # transactional DDL: nothing is left
            assert left == set()
        else:
            # pysqlite opens its transaction at the first INSERT: the DDL before it (the
            # schema_version table, step 1's tables) stays, the version rows do not. The
            # guards in the steps make the rerun finish.
            assert left == {"schema_version", *(tb for tb, _ in columns_at(1))}
            assert versions(conn) == []
    monkeypatch.undo()
    with engine.begin() as conn:
        assert t.migrate(conn, 0.0) == t.LATEST_VERSION
        assert schema_of(conn) == expected
