"""Eval: Wilson and difference intervals by hand; run_eval end to end on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from ownlm.envs.reasoning_gym import ReasoningGymConfig
from ownlm.errors import ConfigError
from ownlm.eval.accuracy import EvalConfig, diff_ci, paired_gain, run_eval, wilson_interval


def test_wilson_hand_values() -> None:
    # k=5, n=10, z=2: centre = (0.5 + 4/20) / (1 + 4/10) = 0.5,
    # half = 2 * sqrt(0.025 + 4/400) / 1.4 = 2 * sqrt(0.035) / 1.4
    low, high = wilson_interval(5, 10, z=2.0)
    half = 2 * math.sqrt(0.035) / 1.4
    assert low == pytest.approx(0.5 - half) and high == pytest.approx(0.5 + half)
    # k=0: the interval starts at 0 and is not empty: (0, z^2/n / (1 + z^2/n)) = (0, 4/14)
    low, high = wilson_interval(0, 10, z=2.0)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(4 / 14)
    # 38/100 at z=1.96: centre 0.39921/1.038416 = 0.38444, half 1.96*0.049518/1.038416 = 0.09346
    low, high = wilson_interval(38, 100)
    assert (round(low, 3), round(high, 3)) == (0.291, 0.478)


def test_wilson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(3, 2)


def test_diff_ci_unpaired_hand_values() -> None:
    # 0.3 -> 0.5 at n=100 each: se = sqrt(0.21/100 + 0.25/100) = sqrt(0.0046)
    d, low, high = diff_ci(0.3, 100, 0.5, 100, z=2.0)
    half = 2 * math.sqrt(0.0046)
    assert d == pytest.approx(0.2)
    assert (low, high) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert low > 0  # "gain CI excludes zero"


def test_diff_ci_paired_is_narrower_when_models_agree() -> None:
    a = [False] * 4 + [True] * 4
    b = [True] * 2 + [False] * 2 + [True] * 4  # two problems gained, none lost
    # per-problem diffs: [1, 1, 0, 0, 0, 0, 0, 0]; mean 0.25, sample var = 2*(0.75^2)+6*(0.25^2) / 7
    d, low, high = diff_ci(0.5, 8, 0.75, 8, paired=(a, b), z=2.0)
    var = (2 * 0.75**2 + 6 * 0.25**2) / 7
    assert d == pytest.approx(0.25)
    assert high - d == pytest.approx(2 * math.sqrt(var / 8))
    _, ulow, uhigh = diff_ci(0.5, 8, 0.75, 8, z=2.0)
    assert high - low < uhigh - ulow
    with pytest.raises(ValueError, match="equal length"):
        diff_ci(0.5, 8, 0.75, 8, paired=(a, b[:-1]))


def test_paired_gain_joins_rows_by_id(tmp_path: Path) -> None:
    def write(name: str, correct: dict[str, bool]) -> Path:
        path = tmp_path / name
        path.write_text(
            "".join(json.dumps({"id": k, "correct": v}) + "\n" for k, v in correct.items())
        )
        return path

    a = write("a.jsonl", {"p1": False, "p2": False, "p3": True, "p4": True})
    b = write("b.jsonl", {"p4": True, "p3": True, "p2": True, "p1": False})  # other order
    gain, low, high = paired_gain(a, b)
    assert gain == pytest.approx(0.25)  # diffs [0, 1, 0, 0]
    assert (low, high) == pytest.approx(
        diff_ci(0.5, 4, 0.75, 4, paired=([0, 0, 1, 1], [0, 1, 1, 1]))[1:]
    )
    c = write("c.jsonl", {"p1": True})
    with pytest.raises(ConfigError, match="same problems"):
        paired_gain(a, c)


@pytest.mark.parametrize("thinking", [False, True])
def test_run_eval_on_a_tiny_model(tiny: tuple[Any, Any], tmp_path: Path, thinking: bool) -> None:
    model, tok = tiny
    out = tmp_path / "rows.jsonl"
    cfg = EvalConfig(
        model="tiny",
        env=ReasoningGymConfig(test_pool_size=6),
        n_problems=6,
        max_new_tokens=4,
        batch_size=4,
        enable_thinking=thinking,
        thinking_budget_tokens=2 if thinking else None,
        out_path=str(out),
    )
    report = run_eval(cfg, model=model, tokenizer=tok)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert report.n == len(rows) == 6
    assert report.correct == sum(r["correct"] for r in rows)
    assert report.accuracy == report.correct / 6
    assert (report.ci95_low, report.ci95_high) == wilson_interval(report.correct, 6)
    assert report.mean_completion_tokens == pytest.approx(
        sum(r["completion_tokens"] for r in rows) / 6
    )
    assert 0 < report.mean_completion_tokens <= 4
    assert report.enable_thinking is thinking
    assert [r["id"] for r in rows] == [f"chain_sum/test/{i}" for i in range(6)]


def test_run_eval_is_deterministic_greedy(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    cfg = EvalConfig(env=ReasoningGymConfig(test_pool_size=3), n_problems=3, max_new_tokens=3)
    a = run_eval(cfg, model=model, tokenizer=tok)
    b = run_eval(cfg.model_copy(update={"batch_size": 1}), model=model, tokenizer=tok)
    assert (a.correct, a.mean_completion_tokens) == (b.correct, b.mean_completion_tokens)


def test_eval_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="n_problem"):
        EvalConfig(n_problem=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        EvalConfig(n_problems=0)
