"""The writer's spill: a store outage loses no trace; replayed in order, once, after restarts."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from ownlm.errors import StoreError
from ownlm.store.schema import Feedback, Trace
from ownlm.store.spill import Spill
from ownlm.store.trace_store import TraceStore, database_failure
from ownlm.store.writer import TraceWriter


class Hang:
    """Makes a store's trace writes and feedback block, as a stopped database server does (no
    error ever comes), while `hung` is clear; `wake()` lets every held call finish."""

    def __init__(self, store: TraceStore) -> None:
        self.awake = threading.Event()
        self.awake.set()
        self._write, self._feedback = store.write_traces, store.add_feedback
        store.write_traces = self.write  # type: ignore[method-assign]
        store.add_feedback = self.feedback  # type: ignore[method-assign]

    def write(self, rows: list[Trace], **kw: Any) -> None:
        self.awake.wait()
        self._write(rows, **kw)

    def feedback(self, *args: Any) -> None:
        self.awake.wait()
        self._feedback(*args)


class Outage:
    """Makes a store's writes fail like an unreachable database while `down` is set; with
    `commit_then_fail`, the first failing write commits before it reports the error (the
    acknowledgement was lost), so a replay must not write it twice."""

    def __init__(self, store: TraceStore) -> None:
        self.down = False
        self.commit_then_fail = False
        self._write = store.write_traces
        store.write_traces = self.write  # type: ignore[method-assign]

    def write(self, rows: list[Trace], **kw: Any) -> None:
        if self.down:
            if self.commit_then_fail:
                self.commit_then_fail = False
                self._write(rows, **kw)
            raise database_failure(
                OperationalError(
                    "INSERT INTO traces ...", {"user": "secret"}, Exception("connection refused")
                )
            )
        self._write(rows, **kw)


def wait_until(cond: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cond()


def test_an_outage_spills_and_the_store_gets_every_trace_once_in_order(
    store_url: str, tmp_path: Path
) -> None:
    store = TraceStore(store_url)
    outage = Outage(store)
    spill = Spill(tmp_path / "spill.jsonl", max_bytes=10_000_000)
    writer = TraceWriter(
        store, flush_interval_ms=20, max_batch=10, spill=spill, replay_interval_s=0.1
    )
    writer.feedback_wait_s = 0.3
    outage.down, outage.commit_then_fail = True, True
    first = [Trace(alias="a", created_at=1000.0 + i) for i in range(30)]
    for tr in first:
        writer.record(tr)
    writer.flush()
    assert spill.count == 30 and writer.failed == 0  # the first batch is also stored: once
    assert writer.store_error == "Exception: the database cannot be reached"
    with pytest.raises(StoreError, match="kept in the gateway's spill"):
        writer.add_feedback(Feedback(trace_id=first[3].trace_id, thumbs=1))
    outage.down = False
    later = [Trace(alias="b", created_at=2000.0 + i) for i in range(10)]
    for tr in later:
        writer.record(tr)
    wait_until(lambda: spill.count == 0 and store.count_traces() == 40)
    writer.add_feedback(Feedback(trace_id=first[3].trace_id, thumbs=1))
    writer.close()
    assert writer.store_error is None and writer.failed == 0
    ids = [t.trace_id for t in store.list_traces(limit=100)]
    assert ids == [t.trace_id for t in first + later]  # all, once, in order
    assert spill.path.stat().st_size == 0
    store.close()


def test_a_spill_left_by_a_killed_gateway_is_replayed_at_the_next_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    store = TraceStore(url)
    outage = Outage(store)
    outage.down = True
    spill = Spill(tmp_path / "spill.jsonl", max_bytes=10_000_000)
    writer = TraceWriter(store, flush_interval_ms=20, spill=spill, replay_interval_s=0.1)
    kept = [Trace(alias="k", request={"messages": [{"role": "user", "content": "Jürgen"}]})]
    kept += [Trace(alias="k", tags=["t"], metadata={"m": "v"}) for _ in range(4)]
    for tr in kept:
        writer.record(tr)
    writer.close()  # the store is still down: the spill keeps them
    store.close()
    with (tmp_path / "spill.jsonl").open("ab") as f:
        f.write(b'{"trace_id": "torn')  # a kill mid-append: this batch was never acknowledged
    store = TraceStore(url)
    spill = Spill(tmp_path / "spill.jsonl", max_bytes=10_000_000)
    assert spill.count == 5
    writer = TraceWriter(store, flush_interval_ms=20, spill=spill, replay_interval_s=0.1)
    wait_until(lambda: store.count_traces() == 5)
    writer.close()
    got = store.get_trace(kept[0].trace_id)
    assert got is not None and got.request == kept[0].request
    assert store.get_trace(kept[1].trace_id).metadata == {"m": "v"}  # type: ignore[union-attr]
    store.close()


def test_a_full_spill_counts_what_it_loses(tmp_path: Path) -> None:
    store = TraceStore(f"sqlite:///{tmp_path}/f.db")
    outage = Outage(store)
    outage.down = True
    spill = Spill(tmp_path / "spill.jsonl", max_bytes=3000)
    writer = TraceWriter(store, flush_interval_ms=20, max_batch=5, spill=spill)
    for _ in range(40):
        writer.record(Trace(alias="x" * 50))
    writer.flush()
    assert 0 < spill.count < 40 and spill.count + writer.failed == 40
    assert spill.size_bytes <= 3000 and spill.count % 5 == 0  # whole batches, never half
    kept = spill.count
    outage.down = False
    writer.close()  # the store is back: the last replay before the stop writes the spill
    assert store.count_traces() == kept and spill.count == 0
    store.close()


def test_a_hung_store_spills_and_refuses_feedback_in_time(store_url: str, tmp_path: Path) -> None:
    store = TraceStore(store_url)
    hang = Hang(store)
    spill = Spill(tmp_path / "spill.jsonl", max_bytes=10_000_000)
    writer = TraceWriter(
        store, flush_interval_ms=20, spill=spill, replay_interval_s=0.1, timeout_s=0.3
    )
    writer.feedback_wait_s = 0.3
    rated = Trace(alias="r")
    writer.record(rated)
    writer.flush()
    hang.awake.clear()  # the database stops answering
    held = [Trace(alias="h", created_at=3000.0 + i) for i in range(20)]
    for tr in held:
        writer.record(tr)
    t0 = time.monotonic()
    writer.flush()
    assert time.monotonic() - t0 < 3.0  # the writer is not stuck behind the hung call
    assert spill.count == 20 and writer.failed == 0
    assert writer.store_error == "TimeoutError: the database did not answer in 0.3 s"
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="did not answer in 0.3 s"):
        writer.add_feedback(Feedback(trace_id=rated.trace_id, thumbs=1))
    with pytest.raises(StoreError):  # refused at once while a hung call is out
        writer.add_feedback(Feedback(trace_id=rated.trace_id, thumbs=1))
    assert time.monotonic() - t0 < 2.0
    hang.awake.set()  # the database answers again: the hung write commits, the replay skips it
    wait_until(lambda: spill.count == 0)
    writer.add_feedback(Feedback(trace_id=rated.trace_id, thumbs=1))
    writer.close()
    assert store.count_traces() == 21 and writer.store_error is None
    assert [t.trace_id for t in store.list_traces(limit=100)][:-1] == [t.trace_id for t in held]
    assert len(store.list_feedback(rated.trace_id)) >= 1
    store.close()
