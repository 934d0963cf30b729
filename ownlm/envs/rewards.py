"""Reward sources any env can use: a verifier function, a trained reward model, an LLM judge.

    reward = make_reward(VerifierReward(function="numeric"))
    reward([task], ["Answer: 7"])                   # [Score(reward=1.0, correct=True, ...)]
    env = EnvWithReward(ReasoningGymEnv(), reward)  # same tasks and prompts, this reward

A reward function is batched, `RewardFn = (tasks, completions) -> scores`, because the reward
model and the judge are much faster on a batch. `RewardConfig` is the union of the three config
classes, told apart by `kind`. Details and measured figures: docs/rewards.md.

The prompt a completion answers is `task.metadata["messages"]` when a task carries one (a prompt
set exported from traces does), else one user turn with `task.question`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ownlm.config import Config
from ownlm.envs.answer import answers_match, clean_answer, extract_answer, parse_number
from ownlm.envs.base import Env, Message, Score, Task
from ownlm.errors import ConfigError

RewardFn = Callable[[list[Task], list[str]], list[Score]]
VerifierFn = Callable[[Task, str], "float | bool | Score"]

BUILTIN_VERIFIERS = ("exact", "numeric", "reasoning_gym:<task>")


class VerifierReward(Config):
    """Reward from a Python function `(task, completion) -> float | bool | Score`.

    `function` is a builtin (`exact`, `numeric`, `reasoning_gym:<task>`), an importable
    `package.module:function`, or a file `path/to/file.py:function`.
    """

    kind: Literal["verifier"] = "verifier"
    function: str = Field(
        "exact",
        description="exact, numeric, reasoning_gym:<task>, package.module:function or "
        "path/to/file.py:function",
    )
    correct_threshold: float = Field(
        1.0, description="a float reward counts as correct at or above this"
    )


class RewardModelReward(Config):
    """Reward from a reward model trained by `ownlm train rm` (a run's final/ or step_N/ dir).

    normalize: `none` keeps the raw score (any real number); `sigmoid` maps it to (0, 1), the
    Bradley-Terry probability of beating a completion scored 0; `group_z` z-scores it within each
    group of consecutive completions of one task (mean 0, std 1; a group of one gets 0).
    """

    kind: Literal["reward_model"] = "reward_model"
    path: str = Field(description="a reward-model run's final/ or step_N/ dir")
    normalize: Literal["none", "sigmoid", "group_z"] = Field(
        "sigmoid", description="none: raw score; sigmoid: to (0, 1); group_z: z-score per group"
    )
    batch_size: int = Field(8, description="completions scored at once")
    max_seq_len: int = Field(512, description="tokens of prompt and completion scored")
    correct_threshold: float = Field(0.5, description="on the normalized reward")

    @model_validator(mode="after")
    def _check(self) -> RewardModelReward:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        return self


DEFAULT_RUBRIC = (
    "You grade an assistant's response to a user's request. Judge whether it is correct, "
    "helpful and to the point; if a reference answer is given, a response that disagrees with "
    "it is wrong."
)


class JudgeReward(Config):
    """Reward from an LLM judge behind any OpenAI-compatible endpoint (e.g. the ownlm gateway).

    The judge gets the rubric, the question, the reference answer (if any and
    `include_reference`) and the response, and must end its reply with `Grade: <n>`, n in
    [scale_min, scale_max]; reward = (n - scale_min) / (scale_max - scale_min). A reply with no
    grade in range, or a call that fails after its retries, gives reward 0 and well_formed False.
    """

    kind: Literal["judge"] = "judge"
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="env var holding the key; null: the endpoint needs none"
    )
    model: str = Field(description="the judge model's name at base_url")
    rubric: str = Field(DEFAULT_RUBRIC, description="what the judge is told to grade on")
    scale_min: int = Field(1, description="lowest grade; reward 0")
    scale_max: int = Field(10, description="highest grade; reward 1")
    include_reference: bool = Field(True, description="show the judge the reference answer")
    temperature: float = 0.0
    max_tokens: int = Field(256, description="of the judge's reply")
    concurrency: int = Field(8, description="judge calls in flight at once")
    timeout_s: float = Field(60.0, description="per judge call")
    retries: int = Field(2, description="extra tries of a failed call")
    correct_threshold: float = Field(0.5, description="on the [0, 1] reward")

    @model_validator(mode="after")
    def _check(self) -> JudgeReward:
        if self.scale_max <= self.scale_min:
            raise ValueError(f"scale_max {self.scale_max} must be above scale_min {self.scale_min}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("retries must be >= 0 and timeout_s > 0")
        return self


RewardConfig = Annotated[
    VerifierReward | RewardModelReward | JudgeReward, Field(discriminator="kind")
]


def prompt_messages(task: Task) -> list[Message]:
    """The conversation a completion answers: task.metadata['messages'] or the question."""
    messages = task.metadata.get("messages")
    if isinstance(messages, list) and messages:
        return [dict(m) for m in messages]
    return [{"role": "user", "content": task.question}]


# --- verifier ---------------------------------------------------------------------------------


def score_exact(task: Task, completion: str) -> Score:
    """The final answer (or the whole completion when none is marked) equals the reference."""
    extracted = extract_answer(completion) or clean_answer(completion)
    if extracted is None:
        return Score(reward=0.0, correct=False, well_formed=False)
    ok = answers_match(extracted, task.answer)
    return Score(reward=float(ok), correct=ok, well_formed=True, extracted=extracted)


def score_numeric(task: Task, completion: str) -> Score:
    """The final answer is a number equal to the reference number (1/2 == 0.5 == 0.50)."""
    expected = parse_number(task.answer)
    if expected is None:
        raise ValueError(f"task {task.id}: reference answer {task.answer!r} is not a number")
    extracted = extract_answer(completion)
    value = parse_number(extracted) if extracted is not None else None
    if value is None:
        return Score(reward=0.0, correct=False, well_formed=False, extracted=extracted)
    ok = value == expected
    return Score(reward=float(ok), correct=ok, well_formed=True, extracted=extracted)


def reasoning_gym_verifier(task_name: str) -> VerifierFn:
    """reasoning-gym's own `score_answer` for a task (partial credit where the task gives it)."""
    from ownlm.envs.reasoning_gym import _create_dataset

    scorer = _create_dataset(task_name, 0, 1, {})

    def score(task: Task, completion: str) -> Score:
        extracted = extract_answer(completion)
        answer = extracted if extracted is not None else completion.strip()
        entry = {"question": task.question, "answer": task.answer, "metadata": task.metadata}
        reward = float(scorer.score_answer(answer, entry))
        return Score(
            reward=reward,
            correct=reward >= 1.0,
            well_formed=extracted is not None,
            extracted=answer,
        )

    return score


def _import_function(ref: str) -> Any:
    """The object named by `module.path:name` or `path/to/file.py:name`."""
    if ":" not in ref:
        raise ConfigError(
            f"verifier function {ref!r} is not a builtin ({', '.join(BUILTIN_VERIFIERS)}) and has "
            f"no ':'; write it as 'package.module:function' or 'path/to/file.py:function'"
        )
    where, name = ref.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"verifier {ref!r}: no file {path}; check the path")
        mod_name = f"ownlm_verifier_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"verifier {ref!r}: {path} cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's file may raise anything on import
            del sys.modules[mod_name]
            raise ConfigError(
                f"verifier {ref!r}: importing {path} failed: {type(err).__name__}: {err}"
            ) from err
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ConfigError(
                f"verifier {ref!r}: cannot import module {where!r} ({err}); check the name and "
                f"that it is on PYTHONPATH, or give a file path 'path/to/file.py:{name}'"
            ) from err
    fn = getattr(module, name, None)
    if fn is None:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ConfigError(
            f"verifier {ref!r}: {where} has no {name!r}; callables there: "
            f"{', '.join(public[:10]) or 'none'}"
        )
    return fn


def load_verifier(ref: str) -> VerifierFn:
    """A builtin verifier by name, or a user function by reference, checked to take (task, text)."""
    if ref == "exact":
        return score_exact
    if ref == "numeric":
        return score_numeric
    if ref.startswith("reasoning_gym:"):
        return reasoning_gym_verifier(ref.split(":", 1)[1])
    fn = _import_function(ref)
    if not callable(fn):
        raise ConfigError(f"verifier {ref!r} is a {type(fn).__name__}, not a function")
    try:
        inspect.signature(fn).bind(Task("t", "q", "a"), "completion")
    except TypeError as err:
        raise ConfigError(
            f"verifier {ref!r} has signature {inspect.signature(fn)}, which cannot be called as "
            f"fn(task, completion); give it two positional parameters ({err})"
        ) from err
    except ValueError:
        pass  # a builtin without an introspectable signature: trust it
    return fn


def to_score(value: Any, correct_threshold: float, where: str) -> Score:
    """A verifier's return value (Score, bool or number) as a Score."""
    if isinstance(value, Score):
        return value
    if isinstance(value, bool):
        return Score(reward=float(value), correct=value, well_formed=True)
    if isinstance(value, int | float) and math.isfinite(float(value)):
        reward = float(value)
        return Score(reward=reward, correct=reward >= correct_threshold, well_formed=True)
    raise TypeError(f"{where} returned {value!r}; return a float, a bool or an ownlm Score")


def verifier_reward(cfg: VerifierReward) -> RewardFn:
    """The batched reward of a verifier function (called once per completion)."""
    fn = load_verifier(cfg.function)

    def reward(tasks: list[Task], completions: list[str]) -> list[Score]:
        _check_lengths(tasks, completions)
        return [
            to_score(fn(t, c), cfg.correct_threshold, f"verifier {cfg.function!r}")
            for t, c in zip(tasks, completions, strict=True)
        ]

    return reward


def _check_lengths(tasks: list[Task], completions: list[str]) -> None:
    if len(tasks) != len(completions):
        raise ValueError(f"{len(tasks)} tasks but {len(completions)} completions; pass one each")


# --- dispatch and the env wrapper -------------------------------------------------------------


def make_reward(cfg: VerifierReward | RewardModelReward | JudgeReward) -> RewardFn:
    """The batched reward function a config describes."""
    if isinstance(cfg, VerifierReward):
        return verifier_reward(cfg)
    if isinstance(cfg, RewardModelReward):
        return RewardModelScorer(cfg)
    if isinstance(cfg, JudgeReward):
        return JudgeScorer(cfg)
    raise ConfigError(f"unknown reward config {type(cfg).__name__}")


class EnvWithReward:
    """An env whose tasks and prompts come from `env` and whose reward comes from `reward_fn`."""

    def __init__(self, env: Env, reward_fn: RewardFn) -> None:
        self.env = env
        self.reward_fn = reward_fn
        self.name = env.name

    def tasks(self, split: str, n: int) -> list[Task]:
        """The wrapped env's tasks."""
        return self.env.tasks(split, n)

    def reset(self, task: Task) -> list[Message]:
        """The wrapped env's opening messages."""
        return self.env.reset(task)

    def score(self, task: Task, completion: str) -> Score:
        """Reward of one completion from reward_fn."""
        return self.reward_fn([task], [completion])[0]

    def score_batch(self, tasks: list[Task], completions: list[str]) -> list[Score]:
        """Rewards of many completions in one reward_fn call (fast for the RM and the judge)."""
        return self.reward_fn(tasks, completions)


# --- reward model -----------------------------------------------------------------------------


class RewardModelScorer:
    """RewardFn of a trained reward model: prompt messages + completion -> normalized score."""

    def __init__(self, cfg: RewardModelReward) -> None:
        from ownlm.models.reward import load_reward_model

        self.cfg = cfg
        self.model = load_reward_model(cfg.path, max_seq_len=cfg.max_seq_len)

    def __call__(self, tasks: list[Task], completions: list[str]) -> list[Score]:
        _check_lengths(tasks, completions)
        convs = [
            prompt_messages(t) + [{"role": "assistant", "content": c}]
            for t, c in zip(tasks, completions, strict=True)
        ]
        raw = self.model.score_texts(convs, batch_size=self.cfg.batch_size)
        rewards = normalize_scores(raw, [t.id for t in tasks], self.cfg.normalize)
        return [
            Score(reward=r, correct=r >= self.cfg.correct_threshold, well_formed=True)
            for r in rewards
        ]


def normalize_scores(raw: list[float], group_ids: list[str], how: str) -> list[float]:
    """none: raw; sigmoid: 1/(1+e^-x); group_z: z-score within runs of equal consecutive ids."""
    if how == "none":
        return list(raw)
    if how == "sigmoid":
        return [1.0 / (1.0 + math.exp(-x)) if x >= -500 else 0.0 for x in raw]
    out: list[float] = []
    i = 0
    while i < len(raw):
        j = i
        while j < len(raw) and group_ids[j] == group_ids[i]:
            j += 1
        group = raw[i:j]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / len(group))
        out.extend((x - mean) / std if std > 1e-8 else 0.0 for x in group)
        i = j
    return out


# --- LLM judge --------------------------------------------------------------------------------

_GRADE = re.compile(r"grade\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*\d+)?\s*\.?\s*$")


def parse_grade(reply: str, scale_min: int, scale_max: int) -> float | None:
    """The last `Grade: n` in reply (or a reply that is only a number), None when absent or
    outside [scale_min, scale_max]."""
    found = _GRADE.findall(reply)
    text = found[-1] if found else None
    if text is None:
        bare = _BARE.match(reply)
        text = bare.group(1) if bare else None
    if text is None:
        return None
    value = float(text)
    return value if scale_min <= value <= scale_max else None


def judge_messages(cfg: JudgeReward, task: Task, completion: str) -> list[Message]:
    """The judge's conversation: rubric and grading instruction, then the case to grade."""
    system = (
        f"{cfg.rubric.strip()}\n\nGive a short reason, then end your reply with a line "
        f"'Grade: <n>', where n is an integer from {cfg.scale_min} (worst) to {cfg.scale_max} "
        f"(best)."
    )
    conv = prompt_messages(task)
    question = "\n\n".join(f"[{m['role']}] {m['content']}" for m in conv if m["role"] != "system")
    parts = [f"# Request\n{question}"]
    if cfg.include_reference and task.answer:
        parts.append(f"# Reference answer\n{task.answer}")
    parts.append(f"# Response to grade\n{completion}")
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


class JudgeScorer:
    """RewardFn of an LLM judge; calls run `concurrency` at a time. Counts what went wrong in
    `counts`: calls, unparseable replies, failed calls (after retries)."""

    def __init__(self, cfg: JudgeReward) -> None:
        import os

        from openai import OpenAI

        self.cfg = cfg
        key = "none"
        if cfg.api_key_env is not None:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise ConfigError(
                    f"judge: environment variable {cfg.api_key_env} is not set; export the "
                    f"gateway's API key there, or set api_key_env: null for an open endpoint"
                )
        self.client = OpenAI(
            base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_s, max_retries=cfg.retries
        )
        self.counts = {"calls": 0, "unparseable": 0, "failed": 0}
        self._lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def _grade_one(self, task: Task, completion: str) -> Score:
        import openai

        try:
            resp = self.client.chat.completions.create(
                model=self.cfg.model,
                messages=judge_messages(self.cfg, task, completion),  # type: ignore[arg-type]
                temperature=self.cfg.temperature,
                max_tokens=self.cfg.max_tokens,
            )
            reply = resp.choices[0].message.content or "" if resp.choices else ""
        except (openai.OpenAIError, ValueError, KeyError, TypeError) as err:
            self._count("failed")
            return Score(reward=0.0, correct=False, well_formed=False, extracted=f"error: {err}")
        grade = parse_grade(reply, self.cfg.scale_min, self.cfg.scale_max)
        if grade is None:
            self._count("unparseable")
            return Score(reward=0.0, correct=False, well_formed=False, extracted=reply[-200:])
        reward = (grade - self.cfg.scale_min) / (self.cfg.scale_max - self.cfg.scale_min)
        return Score(
            reward=reward,
            correct=reward >= self.cfg.correct_threshold,
            well_formed=True,
            extracted=f"{grade:g}",
        )

    def __call__(self, tasks: list[Task], completions: list[str]) -> list[Score]:
        _check_lengths(tasks, completions)
        with self._lock:
            self.counts["calls"] += len(tasks)
        workers = min(self.cfg.concurrency, max(1, len(tasks)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._grade_one, tasks, completions))
