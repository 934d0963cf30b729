"""A single-turn `Env` over a reasoning-gym task generator: seeded, offline, exact rewards.

    env = ReasoningGymEnv(ReasoningGymConfig())          # the default task (docs/task_choice.md)
    tasks = env.tasks("test", 200)
    messages = env.reset(tasks[0])
    env.score(tasks[0], "Answer: 7").reward              # 1.0, 0.1 or 0.0

Train and test come from different generator seeds. Test is the first `test_pool_size` distinct
questions of the test seed; train skips every question in that pool, so no test question is
ever trained on, even for tasks whose question space is small.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ownlm.config import Config
from ownlm.envs.answer import FORMAT_INSTRUCTIONS, answers_match, extract_answer
from ownlm.envs.base import Message, Score, Task
from ownlm.errors import ConfigError

# Chosen by measuring SmolLM2-135M-Instruct greedy, thinking off, 48 new tokens: 37.5% on the 200
# test problems (Wilson 95% CI 31.1-44.4%). Candidates and numbers: docs/task_choice.md.
DEFAULT_TASK = "chain_sum"
DEFAULT_TASK_KWARGS: dict[str, Any] = {
    "min_terms": 2,
    "max_terms": 2,
    "min_digits": 1,
    "max_digits": 2,
}
BASE_ACCURACY_NOTE = (
    "SmolLM2-135M-Instruct base accuracy on the default task: see docs/task_choice.md"
)

SYSTEM_PROMPT = "You are a helpful assistant."


class ReasoningGymConfig(Config):
    """Which reasoning-gym task, how hard, and the reward for each outcome."""

    kind: Literal["reasoning_gym"] = "reasoning_gym"
    task: str = Field(DEFAULT_TASK, description="reasoning-gym task name, e.g. chain_sum")
    task_kwargs: dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_TASK_KWARGS),
        description="the task generator's settings (its difficulty)",
    )
    # reasoning-gym seeds item i with seed + i, so nearby seeds draw the same questions one apart:
    # the train seed sits far from the test seed so train questions fall outside the test pool.
    train_seed: int = Field(1_000_000, description="generator seed of the training questions")
    test_seed: int = Field(2, description="generator seed of the test questions")
    test_pool_size: int = Field(
        1000, description="distinct test questions; training skips all of them"
    )
    reward_correct: float = Field(1.0, description="reward of a right answer")
    reward_wrong: float = Field(0.1, description="an answer was found but it is not the right one")
    reward_malformed: float = Field(0.0, description="no final answer in the expected format")
    system_prompt: str = Field(SYSTEM_PROMPT, description="the system turn of every prompt")
    # The format instruction goes after the question in the user turn, where SmolLM2 follows it.
    format_instruction: str = Field(
        FORMAT_INSTRUCTIONS["answer_line"], description="appended to the question in the user turn"
    )


def _create_dataset(task: str, seed: int, size: int, kwargs: dict[str, Any]) -> Any:
    import difflib

    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        near = difflib.get_close_matches(task, list(DATASETS), n=3)
        hint = f"did you mean {', '.join(repr(n) for n in near)}? " if near else ""
        raise ConfigError(
            f"reasoning-gym has no task '{task}'; {hint}"
            f"the {len(DATASETS)} tasks are listed by reasoning_gym.factory.DATASETS"
        )
    try:
        return reasoning_gym.create_dataset(task, seed=seed, size=size, **kwargs)
    except (ValueError, TypeError, AssertionError, KeyError) as err:
        raise ConfigError(
            f"reasoning-gym task '{task}' with task_kwargs {kwargs} cannot be created: {err}; "
            f"check the task name and its config fields in reasoning_gym"
        ) from err


class ReasoningGymEnv:
    """Env protocol over one reasoning-gym task (see module docstring for the split rule)."""

    def __init__(self, cfg: ReasoningGymConfig | None = None) -> None:
        self.cfg = cfg or ReasoningGymConfig()
        self.name = f"reasoning_gym/{self.cfg.task}"
        self._test: list[Task] | None = None
        self._scorer = _create_dataset(self.cfg.task, self.cfg.test_seed, 1, self.cfg.task_kwargs)

    def _distinct(self, split: str, seed: int, n: int, exclude: set[str]) -> list[Task]:
        # Generate in chunks of growing size until n distinct allowed questions are found; give
        # up after 20x n draws, which means the task's question space is too small.
        out: list[Task] = []
        if n == 0:
            return out
        seen = set(exclude)
        limit = max(20 * n, 200)
        ds = _create_dataset(self.cfg.task, seed, limit, self.cfg.task_kwargs)
        for idx in range(limit):
            entry = ds[idx]
            q = entry["question"]
            if q in seen:
                continue
            seen.add(q)
            out.append(
                Task(
                    id=f"{self.cfg.task}/{split}/{idx}",
                    question=q,
                    answer=str(entry["answer"]),
                    metadata=dict(entry.get("metadata", {})),
                )
            )
            if len(out) == n:
                return out
        raise ConfigError(
            f"task '{self.cfg.task}' with task_kwargs {self.cfg.task_kwargs} gives only "
            f"{len(out)} distinct {split} questions in {limit} draws (asked for {n}); make the "
            f"task harder (more digits or terms) or ask for fewer problems"
        )

    def _test_pool(self) -> list[Task]:
        if self._test is None:
            self._test = self._distinct("test", self.cfg.test_seed, self.cfg.test_pool_size, set())
        return self._test

    def tasks(self, split: str, n: int) -> list[Task]:
        """n seeded tasks of a split ("train" or "test"); no train question is a test question."""
        if n < 0:
            raise ConfigError(f"number of problems must be >= 0, got {n}")
        if split == "test":
            if n > self.cfg.test_pool_size:
                raise ConfigError(
                    f"asked for {n} test problems but test_pool_size is "
                    f"{self.cfg.test_pool_size}; raise test_pool_size"
                )
            return self._test_pool()[:n]
        if split == "train":
            exclude = {t.question for t in self._test_pool()}
            return self._distinct("train", self.cfg.train_seed, n, exclude)
        raise ConfigError(f"unknown split '{split}'; use 'train' or 'test'")

    def reset(self, task: Task) -> list[Message]:
        """System prompt, then the question followed by the answer-format instruction."""
        user = f"{task.question.rstrip()}\n{self.cfg.format_instruction}".strip()
        messages: list[Message] = []
        if self.cfg.system_prompt:
            messages.append({"role": "system", "content": self.cfg.system_prompt})
        messages.append({"role": "user", "content": user})
        return messages

    def score(self, task: Task, completion: str) -> Score:
        """Reward of a completion: correct, well formed but wrong, or no final answer."""
        extracted = extract_answer(completion)
        if extracted is None:
            return Score(reward=self.cfg.reward_malformed, correct=False, well_formed=False)
        correct = answers_match(extracted, task.answer) or self._rg_correct(task, extracted)
        reward = self.cfg.reward_correct if correct else self.cfg.reward_wrong
        return Score(reward=reward, correct=correct, well_formed=True, extracted=extracted)

    def _rg_correct(self, task: Task, extracted: str) -> bool:
        # reasoning-gym's own checker knows task-specific equivalences (e.g. unordered lists).
        entry = {"question": task.question, "answer": task.answer, "metadata": task.metadata}
        try:
            return float(self._scorer.score_answer(extracted, entry)) >= 1.0
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            return False
