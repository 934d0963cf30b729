"""The Env protocol: tasks, messages and rewards that rollout and train speak.

A single-turn env: `reset(task)` gives the opening messages, the model answers once and
`score(task, completion)` gives the reward.

A multi-turn env (`MultiTurnEnv`) also has `tools` (OpenAI schemas, listed in its system prompt)
and `step(task, call, state)`, which runs one tool call and returns the result text; the episode
ends when the model answers without a call or at `max_turns`. `score(task, transcript)` then
scores the whole episode. The loop itself lives in `ownlm/rollout/episodes.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ownlm.envs.tools import Tool, ToolCall

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


@dataclass(frozen=True)
class EpisodeScore(Score):
    """Score of a multi-turn episode: `correct` is the env's headline (e.g. right and cited)."""

    answer_correct: bool = False  # the answer alone, whatever it cites
    cited: bool = False  # cites the document that holds the answer


class MultiTurnEnv(Protocol):
    """An env whose episodes call tools between the question and the answer."""

    name: str
    tools: list[Tool]
    max_turns: int  # assistant turns per episode, the answering turn included

    def tasks(self, split: str, n: int) -> list[Task]:
        """n seeded tasks of a split ("train" or "test"); splits never overlap."""
        ...

    def reset(self, task: Task) -> list[Message]:
        """Opening messages: system prompt (tools, answer format), then the question."""
        ...

    def step(self, task: Task, call: ToolCall, state: dict[str, Any]) -> str:
        """Run one well-formed call; the returned text is the tool result the model sees next.

        `state` is one dict per episode (empty at the start) for envs that keep state. Raise
        `ToolCallError` for a call that cannot run (e.g. an unknown document): its message is
        returned to the model and the episode continues.
        """
        ...

    def score(self, task: Task, transcript: list[Message]) -> EpisodeScore:
        """Reward of an episode; transcript is every message after `reset`'s (assistant, tool)."""
        ...


def is_multi_turn(env: Any) -> bool:
    """Whether an env takes tool calls (has `tools` and `step`)."""
    return hasattr(env, "tools") and callable(getattr(env, "step", None))
