"""Reward sources: verifiers (builtin and user functions), the env wrapper, the LLM judge against a
loopback mock OpenAI server, and score normalization."""

from __future__ import annotations

import asyncio
import math
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import web
from pydantic import TypeAdapter

from ownlm.envs.base import Message, Score, Task
from ownlm.envs.rewards import (
    EnvWithReward,
    JudgeReward,
    RewardConfig,
    RewardModelReward,
    VerifierReward,
    judge_messages,
    make_reward,
    normalize_scores,
    parse_grade,
)
from ownlm.errors import ConfigError
from ownlm.gateway.loopback import serve_in_thread

TASK = Task(id="t1", question="What is 3 + 4?", answer="7")


def test_builtin_numeric_and_exact() -> None:
    numeric = make_reward(VerifierReward(function="numeric"))
    got = numeric([TASK] * 4, ["Answer: 7", "Answer: 7.0", "Answer: 8", "I do not know"])
    assert [s.reward for s in got] == [1.0, 1.0, 0.0, 0.0]
    assert [s.well_formed for s in got] == [True, True, True, False]
    exact = make_reward(VerifierReward(function="exact"))
    paris = Task(id="p", question="Capital of France?", answer="Paris")
    got = exact([paris, paris, paris], ["paris", "Answer: Paris.", "Lyon"])
    assert [s.correct for s in got] == [True, True, False]


def test_builtin_reasoning_gym_uses_its_scorer() -> None:
    fn = make_reward(VerifierReward(function="reasoning_gym:chain_sum"))
    task = Task(id="c", question="What is 12 + 7?", answer="19")
    good, bad = fn([task, task], ["12 + 7 = 19", "Answer: 20"])
    assert good.reward == 1.0 and good.correct
    assert bad.reward < 1.0 and not bad.correct


def test_user_function_from_file_returns_float_bool_or_score(tmp_path: Path) -> None:
    path = tmp_path / "my_rewards.py"
    path.write_text(
        textwrap.dedent(
            """
            from ownlm.envs.base import Score

            def length(task, completion):
                return min(len(completion), 10) / 10

            def polite(task, completion):
                return "please" in completion

            def full(task, completion):
                return Score(reward=0.25, correct=False, well_formed=True, extracted="x")

            NOT_A_FUNCTION = 3

            def one_arg(completion):
                return 1.0
            """
        )
    )
    length = make_reward(VerifierReward(function=f"{path}:length", correct_threshold=0.5))
    assert [(s.reward, s.correct) for s in length([TASK, TASK], ["abcd", "abcdefghijkl"])] == [
        (0.4, False),
        (1.0, True),
    ]
    polite = make_reward(VerifierReward(function=f"{path}:polite"))
    assert [s.reward for s in polite([TASK, TASK], ["yes please", "no"])] == [1.0, 0.0]
    full = make_reward(VerifierReward(function=f"{path}:full"))
    assert full([TASK], ["a"])[0] == Score(0.25, False, True, "x")
    with pytest.raises(ConfigError, match="not a function"):
        make_reward(VerifierReward(function=f"{path}:NOT_A_FUNCTION"))
    with pytest.raises(ConfigError, match=r"cannot be called as fn\(task, completion\)"):
        make_reward(VerifierReward(function=f"{path}:one_arg"))
    with pytest.raises(ConfigError, match="has no 'missing'; callables there: .*length"):
        make_reward(VerifierReward(function=f"{path}:missing"))


def test_user_function_by_module_path() -> None:
    fn = make_reward(VerifierReward(function="ownlm.envs.rewards:score_numeric"))
    assert fn([TASK], ["Answer: 7"])[0].correct


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("justaname", "is not a builtin .* and has no ':'"),
        ("does/not/exist.py:fn", "no file does/not/exist.py"),
        ("reasoning_gym:no_such_task", "reasoning-gym has no task 'no_such_task'"),
    ],
)
def test_verifier_import_errors(ref: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_reward(VerifierReward(function=ref))


def test_verifier_file_that_fails_to_import(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import no_such_module_xyz\n")
    with pytest.raises(ConfigError, match="importing .*broken.py failed: ModuleNotFoundError"):
        make_reward(VerifierReward(function=f"{path}:fn"))


def test_verifier_wrong_return_type_is_a_type_error(tmp_path: Path) -> None:
    path = tmp_path / "bad_return.py"
    path.write_text("def fn(task, completion):\n    return 'yes'\n")
    fn = make_reward(VerifierReward(function=f"{path}:fn"))
    with pytest.raises(TypeError, match="returned 'yes'; return a float, a bool or an ownlm Score"):
        fn([TASK], ["x"])


def test_reward_config_union_picks_by_kind() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(RewardConfig)
    assert isinstance(adapter.validate_python({"kind": "verifier"}), VerifierReward)
    judge = adapter.validate_python({"kind": "judge", "model": "m"})
    assert isinstance(judge, JudgeReward) and judge.scale_max == 10
    with pytest.raises(ValueError, match="extra"):
        adapter.validate_python({"kind": "verifier", "functoin": "exact"})


class ConstantEnv:
    """A toy env whose own reward is always 0.5."""

    name = "constant"

    def tasks(self, split: str, n: int) -> list[Task]:
        return [Task(id=f"{split}/{i}", question=f"{i} + 1 =", answer=str(i + 1)) for i in range(n)]

    def reset(self, task: Task) -> list[Message]:
        return [{"role": "user", "content": task.question}]

    def score(self, task: Task, completion: str) -> Score:
        return Score(reward=0.5, correct=False, well_formed=True)


def test_env_with_reward_replaces_the_reward_only() -> None:
    env = ConstantEnv()
    wrapped = EnvWithReward(env, make_reward(VerifierReward(function="numeric")))
    tasks = wrapped.tasks("train", 3)
    assert tasks == env.tasks("train", 3)
    assert wrapped.reset(tasks[2]) == env.reset(tasks[2])
    assert wrapped.name == "constant"
    assert wrapped.score(tasks[2], "Answer: 3").reward == 1.0
    assert wrapped.score(tasks[2], "Answer: 4").reward == 0.0
    batch = wrapped.score_batch(tasks, ["1", "2", "9"])
    assert [s.reward for s in batch] == [1.0, 1.0, 0.0]


def test_normalize_scores_by_hand() -> None:
    assert normalize_scores([0.0, 2.0], ["a", "a"], "none") == [0.0, 2.0]
    sig = normalize_scores([0.0, 2.0], ["a", "a"], "sigmoid")
    assert sig[0] == 0.5 and sig[1] == pytest.approx(0.8808, abs=1e-4)
    # groups a: [1, 3] -> mean 2, std 1 -> [-1, 1]; b: [5] alone -> 0; c: [4, 4] -> std 0 -> 0
    z = normalize_scores([1.0, 3.0, 5.0, 4.0, 4.0], ["a", "a", "b", "c", "c"], "group_z")
    assert z == [-1.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("reply", "grade"),
    [
        ("Clear and right.\nGrade: 7", 7.0),
        ("grade = 3 ... on reflection Grade: **9**", 9.0),
        ("8", 8.0),
        ("8/10", 8.0),
        ("Grade: 11", None),  # outside the 1-10 scale
        ("I would say it is good.", None),
        ("", None),
    ],
)
def test_parse_grade(reply: str, grade: float | None) -> None:
    assert parse_grade(reply, 1, 10) == grade


# A loopback mock of the OpenAI chat completions endpoint. The model name picks the behaviour:
#   judge-echo  replies with the last user message (so the completion under test decides the grade)
#   judge-slow  sleeps 2 s before replying (longer than the judge's timeout in the test)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MockJudgeServer:
    """What the mock received."""

    def __init__(self) -> None:
        self.base_url = ""  # set once the server runs
        self.bodies: list[dict[str, Any]] = []


MOCK = web.AppKey("mock", MockJudgeServer)


async def _chat(request: web.Request) -> web.Response:
    mock = request.app[MOCK]
    body = await request.json()
    mock.bodies.append(body)
    if body["model"] == "judge-slow":
        await asyncio.sleep(2)
    text = str(body["messages"][-1]["content"])
    return web.json_response(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    )


@pytest.fixture(scope="module")
def mock_judge() -> Iterator[MockJudgeServer]:
    app = web.Application()
    app[MOCK] = mock = MockJudgeServer()
    app.router.add_post("/v1/chat/completions", _chat)
    with serve_in_thread(app, _free_port()) as base_url:
        mock.base_url = base_url
        yield mock


def test_judge_grades_parse_and_failures_are_counted(
    mock_judge: MockJudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-judge")
    cfg = JudgeReward(
        base_url=mock_judge.base_url, api_key_env="JUDGE_TEST_KEY", model="judge-echo"
    )
    judge = make_reward(cfg)
    completions = ["Seven.\nGrade: 10", "Grade: 1", "Grade: 4", "no verdict here", "Grade: 42"]
    scores = judge([TASK] * 5, completions)
    assert [s.reward for s in scores] == [1.0, 0.0, pytest.approx(1 / 3), 0.0, 0.0]
    assert [s.well_formed for s in scores] == [True, True, True, False, False]
    assert [s.correct for s in scores] == [True, False, False, False, False]
    assert judge.counts == {"calls": 5, "unparseable": 2, "failed": 0}  # type: ignore[attr-defined]
    body = mock_judge.bodies[-1]
    assert body["temperature"] == 0.0 and body["model"] == "judge-echo"
    assert "Grade: <n>" in body["messages"][0]["content"]
    assert "# Reference answer\n7" in body["messages"][1]["content"]


def test_judge_timeout_is_reward_zero_not_a_crash(mock_judge: MockJudgeServer) -> None:
    cfg = JudgeReward(
        base_url=mock_judge.base_url, api_key_env=None, model="judge-slow", timeout_s=0.3,
        retries=0,
    )  # fmt: skip
    judge = make_reward(cfg)
    scores = judge([TASK, TASK], ["Grade: 9", "Grade: 9"])
    assert [(s.reward, s.well_formed) for s in scores] == [(0.0, False), (0.0, False)]
    assert judge.counts["failed"] == 2  # type: ignore[attr-defined]


def test_judge_missing_api_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_ABSENT_KEY", raising=False)
    with pytest.raises(ConfigError, match="JUDGE_ABSENT_KEY is not set"):
        make_reward(JudgeReward(model="m", api_key_env="JUDGE_ABSENT_KEY"))


def test_judge_prompt_uses_task_messages_when_present() -> None:
    cfg = JudgeReward(model="m", include_reference=False)
    task = Task(
        id="x",
        question="ignored",
        answer="42",
        metadata={
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
        },
    )
    msgs = judge_messages(cfg, task, "hello")
    assert msgs[1]["content"] == "# Request\n[user] hi\n\n# Response to grade\nhello"


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Any, Any]) -> Path:
    """An untrained reward model in the layout `ownlm train rm` writes: a tiny Llama, the SmolLM2
    tokenizer and a seeded scalar head."""
    from safetensors.torch import save_file

    from ownlm.models.reward import HEAD_FILE, new_head

    model, tokenizer = tiny
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    head = new_head(model.config.hidden_size, seed=0)
    with torch.no_grad():
        head.bias.fill_(0.25)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / HEAD_FILE))
    return out


def test_reward_model_source_scores_prompt_and_completion(rm_dir: Path) -> None:
    from ownlm.models.reward import load_reward_model

    tasks = [
        Task(id="a", question="2 + 2?", answer="4"),
        Task(id="a", question="2 + 2?", answer="4"),
        Task(
            id="b",
            question="unused",
            answer="",
            metadata={"messages": [{"role": "user", "content": "Say hi"}]},
        ),
    ]
    completions = ["It is 4.", "No idea, go away.", "hi"]
    raw = load_reward_model(rm_dir).score_texts(
        [
            [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": c}]
            for c in completions[:2]
        ]
        + [[{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]]
    )
    assert raw[0] != raw[1]
    none = make_reward(RewardModelReward(path=str(rm_dir), normalize="none"))(tasks, completions)
    assert [s.reward for s in none] == pytest.approx(raw, abs=1e-5)
    sig = make_reward(RewardModelReward(path=str(rm_dir)))(tasks, completions)
    assert [s.reward for s in sig] == pytest.approx([1 / (1 + math.exp(-x)) for x in raw], abs=1e-5)
    assert [s.correct for s in sig] == [s.reward >= 0.5 for s in sig]
    z = make_reward(RewardModelReward(path=str(rm_dir), normalize="group_z"))(tasks, completions)
    # task a's two completions z-score to -1 and +1 (in order of their raw scores); b alone -> 0
    assert sorted(s.reward for s in z[:2]) == pytest.approx([-1.0, 1.0]) and z[2].reward == 0.0
