"""TraceStore on SQLite and PostgreSQL: round trips, feedback rules, arm stats, keys, migrations."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from ownlm.errors import StoreError
from ownlm.store.registry import Registry
from ownlm.store.schema import Deployment, Experiment, Feedback, ModelVersion, Trace
from ownlm.store.tables import LATEST_VERSION
from ownlm.store.trace_store import (
    DatabaseFailure,
    TraceStore,
    UnknownTraceError,
    engine_url,
    hash_key,
)


def test_trace_round_trip(store_url: str) -> None:
    store = TraceStore(store_url)
    tr = Trace(
        alias="chat",
        variant="small",
        request={"model": "chat", "messages": [{"role": "user", "content": "hé"}], "x": [1]},
        response={"choices": [{"message": {"content": "hi"}}]},
        prompt_tokens=3,
        completion_tokens=1,
        cost_usd=0.25,
        user="u1",
        tags=["a", "b"],
        metadata={"tier": "pro"},
        ttft_ms=1.5,
    )
    store.write_traces([tr, Trace(alias="chat")])
    got = store.get_trace(tr.trace_id)
    assert got == tr
    assert store.count_traces() == 2
    assert store.get_trace("0" * 32) is None
    store.close()


def test_feedback_needs_existing_trace(store_url: str) -> None:
    store = TraceStore(store_url)
    tr = Trace(alias="chat")
    store.write_traces([tr])
    store.add_feedback(Feedback(trace_id=tr.trace_id, thumbs=1, comment="good"))
    with pytest.raises(UnknownTraceError, match="no trace with id"):
        store.add_feedback(Feedback(trace_id="f" * 32, thumbs=1))
    rows = store.list_feedback(tr.trace_id)
    assert [(r.thumbs, r.comment) for r in rows] == [(1, "good")]
    store.close()


def test_arm_stats_by_hand(store_url: str) -> None:
    # arm a: 3 traces (cost 1+1+1), feedback up, down, score 0.5 -> rewards 1, 0, 0.5
    # arm b: 1 trace (cost 2), no feedback. Another experiment's trace must not count.
    store = TraceStore(store_url)
    a = [Trace(experiment="e1", arm="a", cost_usd=1.0) for _ in range(3)]
    b = Trace(experiment="e1", arm="b", cost_usd=2.0)
    other = Trace(experiment="e2", arm="a", cost_usd=9.0)
    store.write_traces([*a, b, other])
    store.add_feedback(Feedback(trace_id=a[0].trace_id, thumbs=1))
    store.add_feedback(Feedback(trace_id=a[1].trace_id, thumbs=-1))
    store.add_feedback(Feedback(trace_id=a[2].trace_id, score=0.5))
    store.add_feedback(Feedback(trace_id=other.trace_id, thumbs=1))
    stats = {s.arm: s for s in store.arm_stats("e1")}
    assert set(stats) == {"a", "b"}
    sa, sb = stats["a"], stats["b"]
    assert (sa.n_traces, sa.n_feedback, sa.successes, sa.failures) == (3, 3, 1, 1)
    assert sa.reward_sum == pytest.approx(1.5)
    assert sa.reward_sq_sum == pytest.approx(1.25)
    assert sa.cost_usd == pytest.approx(3.0)
    assert (sb.n_traces, sb.n_feedback, sb.reward_sum, sb.cost_usd) == (1, 0, 0.0, 2.0)
    assert store.arm_stats("nope") == []
    store.close()


def test_keys_experiments_versions(store_url: str) -> None:
    store = TraceStore(store_url)
    key, secret = store.create_key("app", rate_per_s=5.0, burst=10, budget_usd=1.0)
    assert secret.startswith("sk-ownlm-")
    listed = store.list_keys()
    assert [k.key_sha256 for k in listed] == [hash_key(secret)]
    assert secret not in repr(listed)
    assert store.disable_key(key.key_id) and not store.disable_key("missing")
    assert store.list_keys()[0].disabled
    store.write_traces(
        [Trace(key_id=key.key_id, cost_usd=0.5), Trace(key_id=key.key_id, cost_usd=0.25)]
    )
    assert store.spend_by_key() == {key.key_id: pytest.approx(0.75)}
    store.save_experiment(Experiment("e1", "chat", ["a", "b"], [0.5, 0.5]))
    store.save_experiment(Experiment("e1", "chat", ["a", "b"], [0.9, 0.1]))
    assert [e.weights for e in store.list_experiments()] == [[0.9, 0.1]]
    store.add_model_version(ModelVersion("bot", 1, "runs/x", metrics={"acc": 0.5}))
    with pytest.raises(StoreError, match="already registered"):
        store.add_model_version(ModelVersion("bot", 1, "runs/y"))
    assert store.list_model_versions("bot")[0].metrics == {"acc": 0.5}
    store.close()


def test_reopen_keeps_data_and_version(store_url: str) -> None:
    store = TraceStore(store_url)
    assert store.version == LATEST_VERSION
    store.write_traces([Trace(alias="x")])
    store.close()
    again = TraceStore(store_url)
    assert again.version == LATEST_VERSION and again.count_traces() == 1
    again.close()


def test_bad_url_is_a_store_error(tmp_path: object) -> None:
    with pytest.raises(StoreError, match="cannot"):
        TraceStore("nosuchdb://x")
    with pytest.raises(StoreError, match="cannot open the store"):
        TraceStore("sqlite:////nonexistent-dir/x/y.db")


def test_engine_url_uses_psycopg() -> None:
    assert engine_url("postgresql://u@h:1/d") == "postgresql+psycopg://u@h:1/d"
    assert engine_url("sqlite:///a.db") == "sqlite:///a.db"


def test_every_database_error_is_one_plain_store_error(store_url: str) -> None:
    """The engine's one hook turns any database error into a DatabaseFailure: a StoreError that
    says what failed without the SQL or its values, and tells a bad row from a bad database."""
    store = TraceStore(store_url)
    tr = Trace(alias="chat", user="secret-user")
    store.write_traces([tr])
    with pytest.raises(DatabaseFailure) as dup:
        store.write_traces([tr])  # the same trace id again
    assert isinstance(dup.value, StoreError) and dup.value.row_error
    assert "INSERT" not in str(dup.value) and "secret-user" not in str(dup.value)
    store.add_model_version(ModelVersion(name="m", version=1, path="p"))
    with pytest.raises(StoreError, match="m v1 is already registered"):
        store.add_model_version(ModelVersion(name="m", version=1, path="p"))
    store.close()


def test_a_read_only_sqlite_store_fails_in_plain_words(tmp_path: Path) -> None:
    TraceStore(f"sqlite:///{tmp_path}/ro.db").close()
    store = TraceStore(f"sqlite:///file:{tmp_path}/ro.db?mode=ro&uri=true")
    with pytest.raises(DatabaseFailure) as info:
        store.write_traces([Trace(alias="chat")])
    assert not info.value.row_error
    assert str(info.value) == "OperationalError: the database is read-only"
    with pytest.raises(StoreError, match="deployment of 'a': OperationalError: .* read-only"):
        Registry(store).deploy(Deployment("a", {"x": 1.0}, incumbent="x", reason="test"))
    store.close()


def test_postgresql_gives_up_on_a_statement_after_the_timeout(pg_url: str) -> None:
    store = TraceStore(pg_url, timeout_s=0.3)
    with psycopg.connect(pg_url) as other:  # holds the table locked, as a stuck writer would
        other.execute("LOCK TABLE traces IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        with pytest.raises(DatabaseFailure) as info:
            store.write_traces([Trace(alias="chat")])
        waited = time.monotonic() - t0
    assert 0.25 < waited < 5.0
    assert str(info.value).endswith(": the database did not answer in time")
    assert not info.value.row_error
    store.write_traces([Trace(alias="chat")])  # the lock is gone: the store works again
    assert store.count_traces() == 1
    store.close()
