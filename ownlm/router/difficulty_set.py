"""An offline labelled set for the difficulty classifier: easy vs hard reasoning-gym prompts.

    ownlm router labels --set out=runs/router/labelled.jsonl --set per_spec=40

Each task family appears at an easy setting (label 0: two one-digit terms, three words, ...) and
at a hard one (label 1: six four-digit terms, fifteen words, ...), plus multi-step puzzle
families that are only hard (knights and knaves, zebra puzzles, countdown, ...). So the
classifier cannot pass by recognising the task family alone: within a family it has to see
the size of the problem. Seeded, so the same config writes the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ownlm.config import Config

# (family, reasoning-gym config overrides, label)
SPECS: tuple[tuple[str, dict[str, Any], int], ...] = (
    (
        "basic_arithmetic",
        {
            "min_terms": 2,
            "max_terms": 2,
            "max_digits": 1,
            "allow_parentheses": False,
            "allow_negation": False,
        },
        0,
    ),
    ("basic_arithmetic", {"min_terms": 5, "max_terms": 6, "min_digits": 3, "max_digits": 4}, 1),
    ("chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1}, 0),
    ("chain_sum", {"min_terms": 6, "max_terms": 8, "min_digits": 3, "max_digits": 4}, 1),
    ("products", {"max_digits": 1}, 0),
    ("products", {"min_digits": 4, "max_digits": 5}, 1),
    ("letter_counting", {"min_words": 3, "max_words": 5}, 0),
    ("letter_counting", {"min_words": 20, "max_words": 30}, 1),
    ("number_sorting", {"min_numbers": 3, "max_numbers": 3, "max_decimals": 0}, 0),
    (
        "number_sorting",
        {"min_numbers": 12, "max_numbers": 15, "min_decimals": 2, "max_decimals": 3},
        1,
    ),
    ("word_sorting", {"min_words": 3, "max_words": 3}, 0),
    ("word_sorting", {"min_words": 12, "max_words": 15}, 1),
    ("gcd", {"max_value": 20}, 0),
    ("gcd", {"min_numbers": 3, "max_numbers": 4, "min_value": 1000, "max_value": 100000}, 1),
    ("simple_equations", {"min_terms": 2, "max_terms": 2, "max_value": 10}, 0),
    ("simple_equations", {"min_terms": 4, "max_terms": 4, "min_value": 50, "max_value": 500}, 1),
    ("spell_backward", {"max_word_len": 4}, 0),
    ("knights_knaves", {"n_people": 3}, 1),
    ("zebra_puzzles", {}, 1),
    ("countdown", {}, 1),
    ("family_relationships", {}, 1),
    ("tower_of_hanoi", {"min_disks": 5, "max_disks": 7}, 1),
)


class DifficultySetConfig(Config):
    """`ownlm router labels`: how many prompts per (family, setting) and where to write them."""

    out: str = Field("runs/router/labelled.jsonl", description="the labelled JSONL")
    per_spec: int = Field(default=40, ge=1, description="prompts per (family, setting)")
    seed: int = Field(0, description="of the reasoning-gym generators")


class DifficultySetSummary(BaseModel):
    """What write_difficulty_set wrote."""

    out: str
    n_rows: int
    n_hard: int


def build_difficulty_set(per_spec: int, seed: int) -> list[dict[str, Any]]:
    """Rows {"text", "label", "family"}: per_spec prompts for each entry of SPECS."""
    import reasoning_gym  # type: ignore[import-untyped]

    rows = []
    for i, (family, overrides, label) in enumerate(SPECS):
        ds = reasoning_gym.create_dataset(family, size=per_spec, seed=seed * 1000 + i, **overrides)
        rows += [
            {"text": ds[j]["question"], "label": label, "family": family} for j in range(per_spec)
        ]
    return rows


def write_difficulty_set(cfg: DifficultySetConfig) -> DifficultySetSummary:
    """Write the labelled set as JSONL, the input format of `ownlm router train`."""
    rows = build_difficulty_set(cfg.per_spec, cfg.seed)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return DifficultySetSummary(out=cfg.out, n_rows=len(rows), n_hard=sum(r["label"] for r in rows))
