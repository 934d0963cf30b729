"""The trace writer's local spill: traces the store cannot take now, kept on disk until it can.

When the store is down, locked, read-only or full, the writer appends each batch it cannot
write to one file, as JSON lines, and fsyncs it before it counts the batch as kept; the writer
replays the file in order once the store answers again, and empties it only after the whole
file is committed. A replay cut short (the store fails again, or the process is killed) is
sent again from the start: rows already stored are skipped by their trace id, so nothing is
written twice. The file is bounded (`max_bytes`): a batch that does not fit is lost and
counted, never half-written. Hand-written because it is the writer's own durability edge: one
file, one writer thread, append + fsync, no format beyond a JSON object per line.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from ownlm.store.schema import Trace

_FIELDS = tuple(f.name for f in fields(Trace))


class Spill:
    """An append-only, fsynced, bounded file of traces (one writer thread uses it)."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size_bytes = self.path.stat().st_size if self.path.exists() else 0
        self.count = 0
        if self.size_bytes:
            self.size_bytes, self.count = self._drop_torn_tail()

    def append(self, rows: list[Trace]) -> bool:
        """Keep `rows` durably; False (nothing written) when they would pass `max_bytes`."""
        data = b"".join(orjson.dumps({k: getattr(r, k) for k in _FIELDS}) + b"\n" for r in rows)
        if self.size_bytes + len(data) > self.max_bytes:
            return False
        with self.path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.size_bytes += len(data)
        self.count += len(rows)
        return True

    def read(self) -> list[Trace]:
        """Every kept trace, oldest first."""
        if not self.size_bytes:
            return []
        with self.path.open("rb") as f:
            return [_trace(orjson.loads(line)) for line in f if line.strip()]

    def clear(self) -> None:
        """Forget every kept trace (after all of them are committed to the store)."""
        with self.path.open("wb") as f:
            os.fsync(f.fileno())
        self.size_bytes = 0
        self.count = 0

    def _drop_torn_tail(self) -> tuple[int, int]:
        """A kill mid-append can leave a last line without its newline: cut it off (that batch
        was never counted as kept). Returns (bytes, traces) left."""
        raw = self.path.read_bytes()
        keep = raw[: raw.rfind(b"\n") + 1]
        if len(keep) != len(raw):
            with self.path.open("r+b") as f:
                f.truncate(len(keep))
                os.fsync(f.fileno())
        return len(keep), keep.count(b"\n")


def _trace(obj: dict[str, Any]) -> Trace:
    return Trace(**{k: obj[k] for k in _FIELDS if k in obj})
