"""JSONL files the stages hand each other: one reader, one error format, and the RL prompt row.

Every JSONL ownlm reads (datasets for SFT, DPO and the reward model, RL prompt sets, router
labels, a search corpus and its questions) goes through `read_jsonl`, so a bad file is
reported the same way wherever it is read: `<path>: no such file; <what to do>`,
`<path> line 7: not valid JSON (Expecting value)`, `<path> line 7: expected a JSON object, got
list`, `<path>: the file is empty; <what to do>`. A reader then checks its own fields and says
what is wrong the same way (`<path> line 7: ...`).

`PromptRow` is the RL prompt-set row: `ownlm export` (data) writes it, the prompt-set env
(envs) reads it. It sits here, upstream of both, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ownlm.errors import DataError


def read_jsonl(
    path: str | Path, *, hint: str, allow_empty: bool = False
) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; `hint` says what to do about a missing
    or empty file (e.g. "write one with `ownlm export`")."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DataError(f"{p}: no such file; {hint}") from err
    except IsADirectoryError as err:
        raise DataError(f"{p}: is a directory, not a JSONL file; {hint}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{p}: cannot read it as UTF-8 text ({err})") from err
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{p} line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(obj, dict):
            raise DataError(f"{p} line {number}: expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows and not allow_empty:
        raise DataError(f"{p}: the file is empty; {hint}")
    return rows


class PromptRow(BaseModel):
    """One RL prompt: the conversation up to the last user turn, and how to score an answer.

    {"id": str, "messages": [chat messages], "answer": str | null, "verifier": str,
     "metadata": {"alias", "created_at", "tags", "served_variant", "served_answer", ...}}
    """

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(None, description="the trace id it came from")
    messages: list[dict[str, Any]] = Field(min_length=1)
    answer: str | None = Field(None, description="the reference answer, if the trace had one")
    verifier: str = Field("exact", description="e.g. reasoning_gym:chain_sum")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def parse(cls, row: dict[str, Any], where: str) -> PromptRow:
        """The row as a PromptRow, or a DataError that names `where` and the field."""
        if "answer" in row and isinstance(row["answer"], int | float):
            row = {**row, "answer": str(row["answer"])}  # a number written as JSON
        try:
            return cls.model_validate(row)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(x) for x in first["loc"]) or "row"
            if field == "messages":
                raise DataError(
                    f"{where}: a prompt-set row needs a non-empty 'messages' list"
                ) from None
            raise DataError(f"{where}: '{field}': {first['msg']}") from None
