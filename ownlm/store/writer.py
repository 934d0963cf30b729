"""TraceWriter: takes traces off the request path and writes them to the store in batches.

`record()` appends to an in-memory queue and returns (no lock, no I/O, no parsing); a background
thread wakes every `flush_interval_ms` (or when `max_batch` traces wait), builds the rows and
inserts them in one transaction. This is the one place that decides when a write counts:

- a trace counts as stored once its batch commits; `close()` writes everything still queued;
- on a hard crash (kill -9, power loss) the traces recorded in the last `flush_interval_ms`,
  plus the batch being written, are lost: at most `max_queue` traces (see docs/gateway.md);
- feedback is acknowledged only after its own synchronous commit; if the trace it names is
  still queued, that trace is written first, so acknowledged feedback always has its trace;
- a batch the database refuses for its data (a value too long for its column, a duplicate id)
  is written again row by row: the good rows are stored, each bad one is logged and counted
  as quarantined, so one bad trace never loses the others;
- a batch refused for any other reason (the database is down, locked, read-only or full) is
  retried 3 times within ~0.15 s, then kept in the local spill (`ownlm/store/spill.py`: append
  + fsync, bounded) and replayed in order once the store answers again (tried every
  `replay_interval_s`); while traces wait there, later batches join them so the order holds.
  `store_error` says what failed, without SQL or parameters, until a write succeeds. Without a
  spill (or when it is full) such a batch is retried 5 times with backoff, then counted failed;
- with `timeout_s`, a database that does not answer at all (a stopped server, a dead link: no
  error ever comes) counts as failed after that long: writes go to the spill and feedback is
  refused while the hung call is still out (one call at a time waits on a hung store, on a
  daemon thread). A hung write may still commit when the database wakes; the replay skips
  the traces it wrote.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ownlm.errors import StoreError
from ownlm.store.schema import Feedback, Trace
from ownlm.store.spill import Spill
from ownlm.store.trace_store import DatabaseFailure, TraceStore

log = logging.getLogger("ownlm.store")
T = TypeVar("T")


class TraceBuilder(Protocol):
    """A trace whose row is built in the writer thread (e.g. a stream still to reassemble)."""

    trace_id: str

    def build(self) -> Trace: ...


class Deadline:
    """Runs store calls with a deadline on a daemon thread. While a call that ran past it is
    still out (the database hangs), later calls fail at once instead of queueing behind it."""

    def __init__(self, timeout_s: float | None, what: str) -> None:
        self.timeout_s = timeout_s
        self.what = what
        self._stuck: threading.Thread | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.timeout_s is None:
            return fn(*args)
        stuck = self._stuck
        if stuck is not None and stuck.is_alive():
            raise self._hung()
        out: list[Any] = []

        def call() -> None:
            try:
                out.append((True, fn(*args)))
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                out.append((False, err))

        worker = threading.Thread(target=call, name=f"ownlm-{self.what}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self._stuck = worker
            log.warning("the store did not answer a %s in %.1f s", self.what, self.timeout_s)
            raise self._hung()
        ok, value = out[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _hung(self) -> DatabaseFailure:
        reason = f"TimeoutError: the database did not answer in {self.timeout_s:g} s"
        return DatabaseFailure(reason, row_error=False, detail=reason)


class TraceWriter:
    """Queue + background thread that batches trace inserts; see the module docstring."""

    def __init__(
        self,
        store: TraceStore,
        flush_interval_ms: float = 100.0,
        max_batch: int = 500,
        max_queue: int = 20_000,
        on_written: Callable[[list[Trace]], None] | None = None,
        on_built: Callable[[Trace | TraceBuilder, Trace | None], None] | None = None,
        on_batch: Callable[[], None] | None = None,
        spill: Spill | None = None,
        replay_interval_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._writes = Deadline(timeout_s, "trace write")
        self._feedback = Deadline(timeout_s, "feedback write")
        self.flush_interval_s = flush_interval_ms / 1000.0
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.on_written = on_written
        self.on_built = on_built  # each item and its row (None: could not build), before writing
        self.on_batch = on_batch  # after on_built of every item of a batch
        self.dropped = 0  # traces refused because the queue was full
        self.failed = 0  # traces lost to a store error
        self.quarantined = 0  # traces the database refused for their data (logged, not stored)
        self.written = 0
        self.spill = spill
        self.replay_interval_s = replay_interval_s
        self.store_error: str | None = None  # the last write's failure, until one succeeds
        self._spilled_ids: set[str] = set()
        self._next_replay_s = 0.0
        # feedback on a spilled trace waits this long for a replay
        self.feedback_wait_s = 5.0 if timeout_s is None else timeout_s
        self._queue: collections.deque[Trace | TraceBuilder] = collections.deque()
        self._pending: set[str] = set()  # ids queued and not yet committed
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._recorded = 0  # count of traces ever queued (for flush)
        self._settled = 0  # count of traces written, failed or dropped by the thread
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="ownlm-trace-writer", daemon=True)
        self._thread.start()

    def record(self, item: Trace | TraceBuilder) -> bool:
        """Queue a trace for writing; never blocks. False: the queue is full, the trace is
        dropped (and counted)."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return False
        self._pending.add(item.trace_id)
        self._recorded += 1
        self._queue.append(item)
        if len(self._queue) >= self.max_batch:
            self._wake.set()
        return True

    @property
    def queued(self) -> int:
        """Traces waiting in the queue."""
        return len(self._queue)

    def is_pending(self, trace_id: str) -> bool:
        """True while the trace is queued and not yet committed."""
        return trace_id in self._pending

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until every trace queued before this call is committed (or failed)."""
        target = self._recorded
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        with self._done:
            while self._settled < target and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._done.wait(min(left, 0.05))
                self._wake.set()

    def add_feedback(self, fb: Feedback, made_by: str | None = None) -> None:
        """Commit feedback synchronously (writing its trace first if still queued); with
        `made_by`, only on a trace made by that key id (`TraceStore.add_feedback`)."""
        wait_s = 30.0 if self.timeout_s is None else self.timeout_s
        if fb.trace_id in self._pending:
            self.flush(wait_s)
        if fb.trace_id in self._spilled_ids:
            self._next_replay_s = 0.0  # the writer replays at its next wake-up
            self.flush(wait_s)
            with self._done:
                self._done.wait_for(
                    lambda: fb.trace_id not in self._spilled_ids, timeout=self.feedback_wait_s
                )
            if fb.trace_id in self._spilled_ids:
                raise StoreError(
                    f"the store is unavailable ({self.store_error}); trace {fb.trace_id} is kept "
                    "in the gateway's spill until it is back: retry the feedback then"
                )
        if fb.trace_id in self._pending:  # its write is slow or hung
            raise StoreError(
                f"the store did not take trace {fb.trace_id} in {wait_s:g} s; retry the feedback"
            )
        self._feedback.run(self.store.add_feedback, fb, made_by)

    def close(self) -> None:
        """Write everything queued, then stop the thread."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=60.0)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop
            while self._queue:
                self._write_batch()
            if self.spill is not None and self.spill.count and (stopping or self._replay_due()):
                self._replay()  # the last chance before a stop, else every replay_interval_s
            if stopping:
                return

    def _write_batch(self) -> None:
        items = []
        while self._queue and len(items) < self.max_batch:
            items.append(self._queue.popleft())
        rows = []
        for item in items:
            row: Trace | None = item if isinstance(item, Trace) else None
            if row is None:
                try:
                    row = item.build()
                except Exception:  # a bug in one builder must not lose the whole batch
                    log.exception("could not build trace %s; it is not stored", item.trace_id)
                    self.failed += 1
            if self.on_built is not None:
                self.on_built(item, row)
            if row is not None:
                rows.append(row)
        if self.on_batch is not None:
            try:
                self.on_batch()
            except Exception:  # e.g. the shared state is down: the batch is written anyway
                log.exception("the after-batch step failed")
        if (
            self.spill is not None
            and self.spill.count
            and not (self._replay_due() and self._replay())
        ):
            self._keep(rows)  # the store has not taken the spill yet: these go after it
        else:
            self._insert_with_retry(rows)
        for item in items:
            self._pending.discard(item.trace_id)
        with self._done:
            self._settled += len(items)
            self._done.notify_all()

    def _insert_with_retry(self, rows: list[Trace], *, isolate: bool = True) -> None:
        attempts = 3 if self.spill is not None else 5
        for attempt in range(attempts):
            try:
                self._write(rows)
            except DatabaseFailure as err:
                if err.row_error and isolate:
                    self._insert_one_by_one(rows)
                    return
                self._store_failed(err)
                if attempt + 1 < attempts:
                    time.sleep(0.05 * 2**attempt)
                continue
            self.store_error = None
            self._count_written(rows)
            return
        if self.spill is not None:
            self._keep(rows)
            return
        self.failed += len(rows)
        log.error("lost %d traces after 5 failed writes to %s", len(rows), self.store.url)

    def _store_failed(self, err: DatabaseFailure) -> None:
        first = self.store_error is None
        self.store_error = str(err)
        if first:
            log.warning("the store failed a write: %s", err.detail)

    def _keep(self, rows: list[Trace]) -> None:
        """Spill rows the store cannot take now; lost (and counted) when the spill is full."""
        assert self.spill is not None
        if not rows:
            return
        if self.spill.append(rows):
            self._spilled_ids.update(r.trace_id for r in rows)
            return
        self.failed += len(rows)
        log.error(
            "lost %d traces: the store is unavailable (%s) and the spill %s is full (%d of %d "
            "bytes)", len(rows), self.store_error, self.spill.path, self.spill.size_bytes,
            self.spill.max_bytes,
        )  # fmt: skip

    def _write(self, rows: list[Trace]) -> None:
        self._writes.run(self.store.write_traces, rows)

    def _write_skipping_existing(self, rows: list[Trace]) -> None:
        self._writes.run(lambda: self.store.write_traces(rows, skip_existing=True))

    def _replay_due(self) -> bool:
        return time.monotonic() >= self._next_replay_s

    def _replay(self) -> bool:
        """Write the spill to the store in order; True when it is all committed (and emptied)."""
        assert self.spill is not None
        self._next_replay_s = time.monotonic() + self.replay_interval_s
        rows = self.spill.read()
        for i in range(0, len(rows), self.max_batch):
            chunk = rows[i : i + self.max_batch]
            try:
                self._write_skipping_existing(chunk)
            except DatabaseFailure as err:
                if err.row_error:  # a row the store refuses for its data: quarantine it
                    _, _, err = self._isolate(chunk, self._write_skipping_existing)
                if err is not None:
                    self._store_failed(err)
                    return False
        self.spill.clear()
        self.store_error = None
        log.warning("replayed %d spilled traces into the store", len(rows))
        self._count_written(rows)
        with self._done:
            self._spilled_ids.clear()
            self._done.notify_all()
        return True

    def _insert_one_by_one(self, rows: list[Trace]) -> None:
        """Write each row in its own transaction after the batch was refused for its data."""
        good, stopped_at, _ = self._isolate(rows, self._write)
        self._count_written(good)
        if stopped_at is not None:  # the store failed mid-way: retry the rest whole
            self._insert_with_retry(rows[stopped_at:], isolate=False)

    def _isolate(
        self, rows: list[Trace], write: Callable[[list[Trace]], None]
    ) -> tuple[list[Trace], int | None, DatabaseFailure | None]:
        """Write rows one by one, quarantining (logged, counted) each the store refuses for its
        data. Returns the rows written, and the index and error of the first row the store
        failed for another reason (None, None when it took them all)."""
        good: list[Trace] = []
        for i, row in enumerate(rows):
            try:
                write([row])
            except DatabaseFailure as err:
                if not err.row_error:
                    return good, i, err
                self.quarantined += 1
                log.error(
                    "trace %s (alias %r, key %s) quarantined, not stored: the store refused "
                    "its data: %s",
                    row.trace_id,
                    row.alias,
                    row.key_id,
                    err.detail,
                )
                continue
            good.append(row)
        return good, None, None

    def _count_written(self, rows: list[Trace]) -> None:
        self.written += len(rows)
        if rows and self.on_written is not None:
            self.on_written(rows)
