"""The offline easy/hard labelled set: both labels, every spec, same file for the same seed."""

from __future__ import annotations

import json
from pathlib import Path

from ownlm.router.difficulty_set import SPECS, DifficultySetConfig, write_difficulty_set


def test_writes_both_labels_deterministically(tmp_path: Path) -> None:
    a = write_difficulty_set(DifficultySetConfig(out=str(tmp_path / "a.jsonl"), per_spec=2))
    write_difficulty_set(DifficultySetConfig(out=str(tmp_path / "b.jsonl"), per_spec=2))
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert a.n_rows == len(rows) == 2 * len(SPECS)
    assert a.n_hard == 2 * sum(label for _, _, label in SPECS)
    assert {r["label"] for r in rows} == {0, 1}
    assert all(isinstance(r["text"], str) and r["text"] for r in rows)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    # a family at both settings: the easy prompt is shorter than the hard one
    chain = [r for r in rows if r["family"] == "chain_sum"]
    easy = max(len(r["text"]) for r in chain if r["label"] == 0)
    assert easy < min(len(r["text"]) for r in chain if r["label"] == 1)
