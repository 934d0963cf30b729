"""The Env protocol: tasks, messages and rewards that rollout and train speak.

A single-turn env: `reset(task)` gives the opening messages, the model answers once and
`score(task, completion)` gives the reward. Multi-turn envs add `step` (a later issue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, Any]  # OpenAI chat message: {"role": ..., "content": ...}


@dataclass(frozen=True)
class Task:
    """One problem: what to ask and what counts as right."""

    id: str
    question: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """Reward of one completion, with the facts behind it."""

    reward: float
    correct: bool
    well_formed: bool
    extracted: str | None = None


class Env(Protocol):
    """What rollout, train and eval need from an environment."""

    name: str

    def tasks(self, split: str, n: int) -> list[Task]:
        """n seeded tasks of a split ("train" or "test"); splits never overlap."""
        ...

    def reset(self, task: Task) -> list[Message]:
        """Opening messages for a task (system prompt with the answer format, then the question)."""
        ...

    def score(self, task: Task, completion: str) -> Score:
        """Reward of one completion (answer text; any <think> block already removed)."""
        ...
