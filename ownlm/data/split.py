"""Train/eval split without leakage: whole sessions land on one side.

A trace's group key is its session, else its user, else its own trace id. A row built from
several traces (a preference pair) joins their groups, and so does every other row touching one
of them (union-find), so no session, and no user without sessions, is split across train and
eval. Each joined group goes to eval when sha256(seed, smallest key) falls below
`eval_fraction`; the split is a pure function of (keys, seed, fraction), stable across runs and
across stores that grow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from ownlm.store.schema import Trace

Side = Literal["train", "eval"]


def group_key(trace: Trace) -> str:
    """'session:<id>', else 'user:<id>', else 'trace:<id>': the unit that never splits."""
    if trace.session:
        return f"session:{trace.session}"
    if trace.user:
        return f"user:{trace.user}"
    return f"trace:{trace.trace_id}"


def side_of(key: str, seed: int, eval_fraction: float) -> Side:
    """'eval' for a share eval_fraction of keys, picked by a seeded hash; else 'train'."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "eval" if unit < eval_fraction else "train"


def assign_sides(row_keys: Sequence[Sequence[str]], seed: int, eval_fraction: float) -> list[Side]:
    """The side of each row, given the group keys of the traces it was built from."""
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for keys in row_keys:
        roots = sorted({find(k) for k in keys})
        for other in roots[1:]:
            parent[other] = roots[0]  # the smallest key stays the root
    return [side_of(find(keys[0]), seed, eval_fraction) for keys in row_keys]
