"""TraceWriter: batching off the caller's thread, flush on close, feedback on a queued trace,
and a bad row quarantined alone while connection errors retry the batch whole."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError

from ownlm.store.schema import Feedback, Trace
from ownlm.store.trace_store import TraceStore, database_failure, is_row_error
from ownlm.store.writer import TraceWriter


class SlowBuilder:
    """A trace built in the writer thread, as the gateway does for streams."""

    def __init__(self) -> None:
        self.trace_id = Trace().trace_id
        self.built_in: str | None = None

    def build(self) -> Trace:

        self.built_in = threading.current_thread().name
        return Trace(trace_id=self.trace_id, alias="built")


def test_close_flushes_everything(store_url: str) -> None:
    store = TraceStore(store_url)
    seen: list[int] = []
    writer = TraceWriter(
        store, flush_interval_ms=10_000, max_batch=7, on_written=lambda r: seen.append(len(r))
    )
    builder = SlowBuilder()
    for _ in range(20):
        writer.record(Trace(alias="a"))
    writer.record(builder)
    writer.close()
    assert store.count_traces() == 21
    assert sum(seen) == 21 and max(seen) <= 7
    assert builder.built_in == "ownlm-trace-writer"
    assert store.get_trace(builder.trace_id).alias == "built"  # type: ignore[union-attr]
    store.close()


def test_record_does_not_write_on_caller_thread(tmp_path: object) -> None:
    store = TraceStore(f"sqlite:///{tmp_path}/w.db")
    writer = TraceWriter(store, flush_interval_ms=10_000)
    t0 = time.perf_counter()
    for _ in range(100):
        writer.record(Trace())
    assert store.count_traces() == 0  # nothing written yet: interval not reached
    assert time.perf_counter() - t0 < 0.05
    writer.flush()
    assert store.count_traces() == 100
    writer.close()
    store.close()


def test_feedback_on_queued_trace_writes_trace_first(store_url: str) -> None:
    store = TraceStore(store_url)
    writer = TraceWriter(store, flush_interval_ms=10_000)
    tr = Trace(alias="a")
    writer.record(tr)
    assert writer.is_pending(tr.trace_id)
    writer.add_feedback(Feedback(trace_id=tr.trace_id, score=1.0))
    assert not writer.is_pending(tr.trace_id)
    assert [f.score for f in store.list_feedback(tr.trace_id)] == [1.0]
    writer.close()
    store.close()


def test_full_queue_drops_and_counts(tmp_path: object) -> None:
    store = TraceStore(f"sqlite:///{tmp_path}/w.db")
    writer = TraceWriter(store, flush_interval_ms=10_000, max_queue=3, max_batch=100)
    for _ in range(5):
        writer.record(Trace())
    assert writer.dropped == 2
    writer.close()
    assert store.count_traces() == 3
    store.close()


# -- one bad row never sinks its batch -----------------------------------------------------------


def write_one_batch(store: TraceStore, rows: list[Trace]) -> tuple[TraceWriter, list[str]]:
    """Record `rows` and write them as one batch; the writer and the ids on_written saw."""
    seen: list[str] = []
    writer = TraceWriter(
        store,
        flush_interval_ms=10_000,
        max_batch=len(rows),
        on_written=lambda written: seen.extend(r.trace_id for r in written),
    )
    for row in rows:
        writer.record(row)
    writer.close()
    return writer, seen


@pytest.mark.parametrize(
    "bad",
    [{"user": "u" * 201}, {"session": "s" * 300}, {"user": "a\x00b"}],
    ids=["user too long", "session too long", "NUL in user"],
)
def test_a_row_over_a_column_limit_is_quarantined_alone(
    pg_url: str, bad: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL enforces VARCHAR(200) (SQLite does not): 29 of 30 stored, 1 quarantined."""
    store = TraceStore(pg_url)
    rows = [Trace(alias="a", user=f"u{i}", session=f"s{i}") for i in range(30)]
    rows[17] = Trace(alias="a", **bad)  # type: ignore[arg-type]
    writer, seen = write_one_batch(store, rows)
    assert store.count_traces() == 29
    assert store.get_trace(rows[17].trace_id) is None
    assert store.get_trace(rows[16].trace_id) is not None
    assert (writer.written, writer.quarantined, writer.failed) == (29, 1, 0)
    assert sorted(seen) == sorted(r.trace_id for i, r in enumerate(rows) if i != 17)
    assert f"trace {rows[17].trace_id} (alias 'a', key None) quarantined" in caplog.text
    assert "INSERT" not in caplog.text  # the driver's message, not the SQL and its values
    store.close()


def test_a_repeated_trace_id_is_quarantined_alone(store_url: str) -> None:
    """Both back ends refuse a primary key twice: the rest of the batch is stored."""
    store = TraceStore(store_url)
    first = Trace(alias="first")
    store.write_traces([first])
    rows = [Trace(alias="a") for _ in range(30)]
    rows[3] = Trace(trace_id=first.trace_id, alias="again")
    writer, seen = write_one_batch(store, rows)
    assert store.count_traces() == 30  # first + 29
    assert store.get_trace(first.trace_id).alias == "first"  # type: ignore[union-attr]
    assert (writer.written, writer.quarantined, writer.failed) == (29, 1, 0)
    assert first.trace_id not in seen
    store.close()


class FlakyStore:
    """Fails `write_traces` with the planned errors in turn, then writes to a list."""

    url = "flaky://"

    def __init__(self, errors: list[Exception | None]) -> None:
        self.errors = errors
        self.calls: list[int] = []  # the size of each write asked for
        self.rows: list[Trace] = []

    def write_traces(self, rows: list[Trace]) -> None:
        self.calls.append(len(rows))
        err = self.errors.pop(0) if self.errors else None
        if err is not None:
            raise database_failure(err)  # what the store's engine raises for it
        self.rows.extend(rows)


def gone() -> OperationalError:
    return OperationalError("INSERT INTO traces", {}, Exception("server closed the connection"))


def test_connection_errors_retry_the_batch_whole() -> None:
    store = FlakyStore([gone(), gone()])
    writer, seen = write_one_batch(store, [Trace() for _ in range(5)])  # type: ignore[arg-type]
    assert store.calls == [5, 5, 5]  # retried whole, never row by row
    assert (writer.written, writer.quarantined, writer.failed) == (5, 0, 0)
    assert len(seen) == 5


def test_store_lost_while_writing_row_by_row_retries_the_rest_whole() -> None:
    too_long = DataError("INSERT INTO traces", {}, Exception("value too long"))
    store = FlakyStore([too_long, None, gone()])
    writer, seen = write_one_batch(store, [Trace() for _ in range(5)])  # type: ignore[arg-type]
    # the batch, row 0 alone (stored), row 1 alone (connection lost), rows 1-4 whole
    assert store.calls == [5, 1, 1, 4]
    assert (writer.written, writer.quarantined, writer.failed) == (5, 0, 0)
    assert len(store.rows) == len(seen) == 5


def test_is_row_error_tells_data_from_connection() -> None:
    assert is_row_error(DataError("x", {}, Exception("too long")))
    assert is_row_error(IntegrityError("x", {}, Exception("duplicate key")))
    assert is_row_error(StatementError("cannot encode", "x", {}, TypeError("Recursion limit")))
    assert not is_row_error(gone())
    assert not is_row_error(OperationalError("x", {}, Exception("database is locked")))
