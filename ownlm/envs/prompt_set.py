"""An env over an exported RL prompt set: the app's own prompts as an RL task.

`ownlm export` (kind `rl`) writes one JSON object per line (docs/export.md):

    {"id": "...", "messages": [...], "answer": "42" | null, "verifier": "reasoning_gym:chain_sum",
     "metadata": {...}}

`reset` returns the row's messages as the app sent them; `score` grades a completion with the
reward source in the config, or, when the config names none, with the row's own `verifier`:
any verifier of ownlm/envs/rewards.py: `exact`, `numeric`, `reasoning_gym:<task>`, or a Python
function the user writes (`package.module:function` or `path/to/file.py:function`). A row
verifier's outcome is rewarded like the reasoning_gym env: correct 1.0, answered but wrong 0.1,
no final answer 0.0 (configurable). A reward model or an LLM judge set as `reward` replaces the
row verifiers and gives its own reward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ownlm.config import Config
from ownlm.envs.base import Message, Score, Task
from ownlm.envs.rewards import (
    RewardConfig,
    RewardFn,
    VerifierFn,
    load_verifier,
    make_reward,
    to_score,
)
from ownlm.errors import ConfigError, DataError
from ownlm.jsonl import PromptRow, read_jsonl


class PromptSetConfig(Config):
    """Where the prompt set is and how completions are rewarded."""

    kind: Literal["prompt_set"] = "prompt_set"
    train_path: str = Field(description="rl_train.jsonl written by `ownlm export`")
    test_path: str | None = Field(None, description="rl_eval.jsonl; default: no test split")
    reward: RewardConfig | None = Field(
        None, description="reward model or judge; default: each row's verifier"
    )
    # rewards of a row verifier's outcome (as the reasoning_gym env gives them)
    reward_correct: float = Field(1.0, description="reward of a right answer (row verifier)")
    reward_wrong: float = Field(0.1, description="an answer was found but it is not the right one")
    reward_malformed: float = Field(0.0, description="no final answer")


def read_prompt_set(path: str | Path) -> list[Task]:
    """Tasks of a prompt-set JSONL (`ownlm.jsonl.PromptRow` rows); errors name the file and
    line."""
    p = Path(path)
    tasks = []
    for number, obj in read_jsonl(p, hint="write one with `ownlm export`"):
        where = f"{p} line {number}"
        row = PromptRow.parse(obj, where)
        users = [
            m.get("content")
            for m in row.messages
            if isinstance(m, dict) and m.get("role") == "user"
        ]
        if not users or not isinstance(users[-1], str):
            raise DataError(f"{where}: the messages have no user turn with text content")
        tasks.append(
            Task(
                id=row.id if row.id is not None else f"{p.stem}/{number}",
                question=users[-1],
                answer="" if row.answer is None else row.answer,
                metadata={"messages": row.messages, "verifier": row.verifier, **row.metadata},
            )
        )
    return tasks


class PromptSetEnv:
    """Env protocol over a prompt set (see module docstring)."""

    def __init__(self, cfg: PromptSetConfig) -> None:
        self.cfg = cfg
        self.name = f"prompt_set/{Path(cfg.train_path).stem}"
        self._splits: dict[str, list[Task]] = {}
        self._verifiers: dict[str, VerifierFn] = {}
        self._reward: RewardFn | None = None

    def _split(self, split: str) -> list[Task]:
        if split not in self._splits:
            if split == "train":
                path = self.cfg.train_path
            elif split == "test":
                if self.cfg.test_path is None:
                    raise ConfigError("this prompt set has no test split; set env.test_path")
                path = self.cfg.test_path
            else:
                raise ConfigError(f"unknown split '{split}'; use 'train' or 'test'")
            self._splits[split] = read_prompt_set(path)
        return self._splits[split]

    def tasks(self, split: str, n: int) -> list[Task]:
        """The first n rows of a split (all of them when it has fewer)."""
        if n < 0:
            raise ConfigError(f"number of problems must be >= 0, got {n}")
        return self._split(split)[:n]

    def reset(self, task: Task) -> list[Message]:
        """The messages the app sent, as exported."""
        return [dict(m) for m in task.metadata["messages"]]

    def score_batch(self, tasks: list[Task], completions: list[str]) -> list[Score]:
        """Many completions at once: one call of a reward model or judge set as env.reward."""
        if self.cfg.reward is None:
            return [self.score(t, c) for t, c in zip(tasks, completions, strict=True)]
        if self._reward is None:
            self._reward = make_reward(self.cfg.reward)
        return self._reward(tasks, completions)

    def score(self, task: Task, completion: str) -> Score:
        """Grade with env.reward when set, else with the row's verifier (module docstring)."""
        if self.cfg.reward is not None:
            if self._reward is None:
                self._reward = make_reward(self.cfg.reward)
            return self._reward([task], [completion])[0]
        name = str(task.metadata.get("verifier", "exact"))
        verify = self._verifiers.get(name)
        if verify is None:
            verify = self._verifiers[name] = load_verifier(name)
        s = to_score(verify(task, completion), 1.0, f"verifier {name!r}")
        if s.correct:
            return Score(self.cfg.reward_correct, True, True, s.extracted)
        if s.well_formed:
            return Score(self.cfg.reward_wrong, False, True, s.extracted)
        return Score(self.cfg.reward_malformed, False, False, s.extracted)
