"""ReasoningGymEnv: seeded disjoint splits, prompts, rewards for each outcome, config errors."""

from __future__ import annotations

import pytest

from ownlm.envs.base import Task
from ownlm.envs.reasoning_gym import ReasoningGymConfig, ReasoningGymEnv
from ownlm.errors import ConfigError

CHAIN_SUM = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
SMALL = ReasoningGymConfig(task="chain_sum", task_kwargs=CHAIN_SUM, test_pool_size=50)


def test_splits_are_seeded_distinct_and_disjoint() -> None:
    env = ReasoningGymEnv(SMALL)
    test, train = env.tasks("test", 50), env.tasks("train", 300)
    assert len(test) == 50 and len(train) == 300
    assert len({t.question for t in test}) == 50
    assert len({t.question for t in train}) == 300
    assert not {t.question for t in test} & {t.question for t in train}
    again = ReasoningGymEnv(SMALL)
    assert again.tasks("test", 50) == test
    assert again.tasks("train", 10) == train[:10]


def test_test_split_is_a_prefix_of_the_pool() -> None:
    env = ReasoningGymEnv(SMALL)
    assert env.tasks("test", 5) == env.tasks("test", 50)[:5]


def test_answers_are_right() -> None:
    env = ReasoningGymEnv(SMALL)
    for t in env.tasks("test", 20):
        expr = t.question.split(":")[-1].rstrip("= ")
        assert int(t.answer) == eval(expr)  # chain_sum questions are plain integer sums


def test_reset_puts_the_format_instruction_after_the_question() -> None:
    env = ReasoningGymEnv(SMALL)
    t = Task(id="x", question="What is 2 + 3 =", answer="5")
    msgs = env.reset(t)
    assert msgs[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert msgs[1]["role"] == "user"
    assert msgs[1]["content"].startswith("What is 2 + 3 =\n")
    assert "Answer: <answer>" in msgs[1]["content"]


@pytest.mark.parametrize(
    ("completion", "reward", "correct", "well_formed"),
    [
        ("2 + 3 = 5\nAnswer: 5", 1.0, True, True),
        ("Answer: 5.0", 1.0, True, True),
        ("Answer: 6", 0.1, False, True),
        ("2 + 3 = 5", 1.0, True, True),
        ("2 + 3 = 6.", 0.1, False, True),
        ("I am not sure, maybe 5 or so", 0.0, False, False),
        ("", 0.0, False, False),
    ],
)
def test_score(completion: str, reward: float, correct: bool, well_formed: bool) -> None:
    env = ReasoningGymEnv(SMALL)
    s = env.score(Task(id="x", question="2 + 3 =", answer="5"), completion)
    assert (s.reward, s.correct, s.well_formed) == (reward, correct, well_formed)


def test_reward_values_are_configurable() -> None:
    cfg = ReasoningGymConfig(
        test_pool_size=10, reward_correct=2.0, reward_wrong=-0.5, reward_malformed=-1.0
    )
    env = ReasoningGymEnv(cfg)
    t = Task(id="x", question="q", answer="5")
    assert [env.score(t, c).reward for c in ("Answer: 5", "Answer: 4", "no idea")] == [
        2.0,
        -0.5,
        -1.0,
    ]


def test_reasoning_gym_checker_is_consulted() -> None:
    cfg = ReasoningGymConfig(
        task="number_sorting",
        task_kwargs={"min_numbers": 3, "max_numbers": 3},
        test_pool_size=5,
    )
    env = ReasoningGymEnv(cfg)
    t = env.tasks("test", 1)[0]
    assert env.score(t, f"Answer: {t.answer}").correct
    assert not env.score(t, "Answer: ['1']").correct


def test_too_small_question_space_is_a_clear_error() -> None:
    cfg = ReasoningGymConfig(
        task_kwargs={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
        test_pool_size=500,
    )
    with pytest.raises(ConfigError, match="distinct test questions"):
        ReasoningGymEnv(cfg).tasks("test", 10)


def test_bad_task_split_and_key_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="no_such_task"):
        ReasoningGymEnv(ReasoningGymConfig(task="no_such_task"))
    with pytest.raises(ConfigError, match="did you mean 'leg_counting'"):
        ReasoningGymEnv(ReasoningGymConfig(task="leg_countin"))
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        ReasoningGymEnv(SMALL).tasks("dev", 1)
    with pytest.raises(ConfigError, match="test_pool_size"):
        ReasoningGymEnv(SMALL).tasks("test", 51)
    with pytest.raises(ValueError, match="rewad_correct"):
        ReasoningGymConfig(rewad_correct=1.0)  # type: ignore[call-arg]
