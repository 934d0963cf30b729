"""TraceWriter: batching off the caller's thread, flush on close, feedback on a queued trace."""

from __future__ import annotations

import threading
import time

from ownlm.store.schema import Feedback, Trace
from ownlm.store.trace_store import TraceStore
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
