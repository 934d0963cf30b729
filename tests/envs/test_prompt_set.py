"""PromptSetEnv: exported RL rows become tasks, row verifiers grade, bad files get clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownlm.config import validate_config
from ownlm.envs.prompt_set import PromptSetConfig, PromptSetEnv
from ownlm.envs.registry import make_env
from ownlm.errors import ConfigError, DataError
from ownlm.train.grpo import GRPOConfig


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {
        "id": "t1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 12 + 30?"},
        ],
        "answer": "42",
        "verifier": "exact",
        "metadata": {"session": "s1"},
    },
    {
        "id": "t2",
        "messages": [{"role": "user", "content": "What is 3 + 4?"}],
        "answer": "7",
        "verifier": "reasoning_gym:chain_sum",
        "metadata": {},
    },
]


def test_rows_become_tasks_and_row_verifiers_grade(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "rl.jsonl", ROWS)
    env = make_env(
        validate_config(
            GRPOConfig, {"env": {"kind": "prompt_set", "train_path": str(path)}}, "t"
        ).env
    )
    assert isinstance(env, PromptSetEnv)
    tasks = env.tasks("train", 10)
    assert [t.id for t in tasks] == ["t1", "t2"]
    assert env.reset(tasks[0]) == ROWS[0]["messages"]
    assert tasks[0].question == "What is 12 + 30?"
    right, wrong, none = (env.score(tasks[0], c) for c in ("Answer: 42", "Answer: 41", ""))
    assert (right.reward, right.correct) == (1.0, True)
    assert (wrong.reward, wrong.correct, wrong.well_formed) == (0.1, False, True)
    assert (none.reward, none.well_formed) == (0.0, False)
    assert env.score(tasks[1], "3 + 4 = 7").correct
    assert not env.score(tasks[1], "3 + 4 = 8").correct


def test_bad_prompt_sets_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing.jsonl: no such file; write one with `ownlm"):
        PromptSetEnv(PromptSetConfig(train_path=str(tmp_path / "missing.jsonl"))).tasks("train", 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 1: .*non-empty 'messages'"):
        PromptSetEnv(PromptSetConfig(train_path=str(bad))).tasks("train", 1)
    bad.write_text('{"messages": [{"role": "user", "content": "q"}], "verifier": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 1: 'verifier': Input should be a valid"):
        PromptSetEnv(PromptSetConfig(train_path=str(bad))).tasks("train", 1)
    bad.write_text("[1, 2]\n")  # the one reader's format, as for every JSONL ownlm reads
    with pytest.raises(DataError, match=r"bad.jsonl line 1: expected a JSON object, got list"):
        PromptSetEnv(PromptSetConfig(train_path=str(bad))).tasks("train", 1)
    ok = write_rows(tmp_path / "ok.jsonl", [dict(ROWS[0], verifier="nope")])
    env = PromptSetEnv(PromptSetConfig(train_path=str(ok)))
    with pytest.raises(ConfigError, match="verifier function .nope. is not a builtin"):
        env.score(env.tasks("train", 1)[0], "Answer: 42")
    with pytest.raises(ConfigError, match="no test split"):
        env.tasks("test", 1)


def test_env_kind_defaults_to_reasoning_gym_and_suggests_keys() -> None:
    cfg = validate_config(GRPOConfig, {"env": {"task": "chain_sum"}}, "t")
    assert cfg.env.kind == "reasoning_gym"
    with pytest.raises(ConfigError, match="did you mean 'train_path'"):
        validate_config(GRPOConfig, {"env": {"kind": "prompt_set", "train_pth": "x"}}, "t")
