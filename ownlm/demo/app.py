"""The demo's simulated app and its users: reasoning-gym questions, verifier-based thumbs.

The app is a small "zoology helper" that asks its model reasoning-gym `leg_counting` questions
(or any other reasoning-gym task, `ownlm demo --set task=...`) through the gateway with the
official openai client. Each simulated user checks the answer the way a user with the facts would
(the verifier below, or the task's own scorer) and sends thumbs up or down through
`POST /v1/feedback`, with the money value of a correct answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ownlm.demo.strong import solve_leg_counting
from ownlm.envs.answer import answers_match, extract_answer
from ownlm.envs.base import Score, Task
from ownlm.envs.reasoning_gym import ReasoningGymConfig, ReasoningGymEnv

TASK_KWARGS: dict[str, Any] = {
    "min_animals": 1,
    "max_animals": 2,
    "min_instances": 1,
    "max_instances": 3,
}


def app_env(
    seed: int, task: str = "leg_counting", task_kwargs: dict[str, Any] | None = None
) -> ReasoningGymEnv:
    """The app's question source (a reasoning-gym generator at one seed)."""
    if task_kwargs is None:
        task_kwargs = dict(TASK_KWARGS) if task == "leg_counting" else {}
    return ReasoningGymEnv(
        ReasoningGymConfig(task=task, task_kwargs=dict(task_kwargs), train_seed=seed)
    )


def app_verifier(task: str) -> str:
    """The verifier reference the export writes into the app's RL prompt set."""
    return "ownlm.demo.app:check_legs" if task == "leg_counting" else f"reasoning_gym:{task}"


def check_legs(task: Task, completion: str) -> Score:
    """The app's verifier: the final answer equals the true number of legs in the question.

    Used by the simulated users for their thumbs and, referenced as
    `ownlm.demo.app:check_legs`, as the verifier of the exported RL prompt set.
    """
    solved = solve_leg_counting(task.question)
    truth = solved.rsplit("Answer: ", 1)[1] if solved else task.answer
    got = extract_answer(completion)
    if got is None:
        return Score(reward=0.0, correct=False, well_formed=False)
    ok = answers_match(got, truth)
    return Score(reward=float(ok), correct=ok, well_formed=True, extracted=got)


@dataclass
class Outcome:
    """One app request as the demo saw it."""

    variant: str  # the model that answered (the gateway's upstream model name)
    correct: bool
    seconds: float


def ask_and_rate(
    client: Any, alias: str, task: Task, messages: list[dict[str, Any]], user: str,
    session: str, value_usd: float, max_tokens: int,
    verify: Callable[[Task, str], Score] = check_legs, label_answer: bool = False,
) -> Outcome:  # fmt: skip
    """Send one question through the gateway, check the answer, send the user's feedback.

    label_answer: the app knows each question's reference answer (a quiz, a graded exercise)
    and labels the request with it (`metadata.answer`), so the exported prompts carry it for a
    verifier that needs it (reasoning-gym's own scorers do)."""
    import time

    t0 = time.perf_counter()
    metadata = {"session_id": session, "app": "zoology-helper"}
    if label_answer and task.answer is not None:
        metadata["answer"] = str(task.answer)
    raw = client.chat.completions.with_raw_response.create(
        model=alias,
        messages=messages,
        user=user,
        metadata=metadata,
        max_tokens=max_tokens,
        temperature=0.0,
    )
    reply = raw.parse()
    text = reply.choices[0].message.content or ""
    ok = verify(task, text).correct
    body: dict[str, Any] = {
        "trace_id": raw.headers["x-ownlm-trace-id"],
        "thumbs": "up" if ok else "down",
    }
    if ok:
        body["value"] = value_usd
    client.post("/feedback", body=body, cast_to=object)
    return Outcome(reply.model, ok, time.perf_counter() - t0)


def user_schedule(
    n_requests: int, questions_per_user: int, seed: int, prefix: str
) -> list[tuple[str, str]]:
    """(user, session) for each request: users ask a few questions each, in one session."""
    rng = random.Random(seed)
    out = []
    for i in range(n_requests):
        u = i // questions_per_user
        out.append((f"{prefix}-user-{u}", f"{prefix}-session-{u}"))
    rng.shuffle(out)
    return out
