"""The demo's plumbing end to end on a tiny random model: traffic, loop, A/B, report.

The real run (`make demo`) uses SmolLM2 and takes minutes; here a tiny model keeps it fast, and
the gate is replaced by an approving one (a random model cannot gain) so the A/B path runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ownlm.config import validate_config
from ownlm.demo.app import check_legs
from ownlm.demo.flywheel import DemoConfig, run_demo
from ownlm.demo.strong import solve_leg_counting
from ownlm.envs.base import Task


def test_solver_and_verifier_agree_with_reasoning_gym() -> None:
    from ownlm.demo.app import app_env

    env = app_env(seed=50_000)
    for task in env.tasks("train", 50):
        answer = solve_leg_counting(task.question)
        assert answer is not None and answer.endswith(f"Answer: {task.answer}")
        assert check_legs(task, answer).correct
        assert not check_legs(task, f"Answer: {int(task.answer) + 1}").correct
    assert not check_legs(Task("t", "if you have 2 cows?", ""), "no idea").well_formed
    assert solve_leg_counting("What is 2 + 2?") is None


def test_demo_runs_the_whole_story_on_a_tiny_model(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ownlm.eval.gate as gate

    real_decide = gate.decide

    def lenient(domain: Any, general: Any, cfg: Any) -> Any:
        _, reasons, metrics = real_decide(domain, general, cfg)
        return True, ["pass: approved by the test"], metrics

    monkeypatch.setattr(gate, "decide", lenient)
    cfg = validate_config(
        DemoConfig,
        {
            "work_dir": str(tmp_path / "demo"),
            "baseline_requests": 24,
            "ab_requests": 16,
            "after_requests": 4,
            "max_tokens": 4,
            "threads": 1,
            "strong_ttft_s": 0.01,  # the published latency would add ~10 s to the test
            "strong_output_tokens_per_s": 10_000,
            "loop": {
                "base_model": str(tiny_model_dir),
                "export": {
                    "kinds": ["sft", "rl"],
                    "eval_fraction": 0.25,
                    "dedupe": {"near_threshold": None},
                    "rl": {"verifier": "ownlm.demo.app:check_legs"},
                },
                "sft": {
                    "steps": 1,
                    "batch_size": 2,
                    "micro_batch_size": 2,
                    "lora": None,
                    "progress": False,
                    "eval_every_steps": 1,
                },
                "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
                "domain_problems": 3,
                "gate": {
                    "routing": None,  # 3 domain problems cannot calibrate a threshold
                    "max_new_tokens": 4,
                    "general": [{"name": "g", "env": {"task": "chain_sum"}, "n_problems": 2}],
                },
                "promote": {"incumbent": "strong", "canary_weight": 0.5},
            },
        },
        "test",
    )
    figures = run_demo(cfg)
    assert figures["before"]["requests"] == 24 and figures["before"]["own_share"] == 0.0
    assert figures["before"]["accuracy_by_model"] == {"gpt-4.1": 1.0}  # the solver is right
    assert figures["gate"]["promote"]
    assert 0.0 < figures["ab"]["own_share"] < 1.0  # the canary served part of the traffic
    assert set(figures["ab"]["requests_by_model"]) == {"gpt-4.1", "zoology-own-v1"}
    report = figures["report"]
    assert report["before"]["own_request_share"] == 0.0
    assert report["after"]["own_request_share"] > 0.0
    assert report["before"]["tfp_usd_per_mtok"] > 0.0
    assert report["decided"]["requests"] == 4  # the routing the test left: the after phase alone
    html = Path(figures["dashboard"]).read_text()
    assert "<svg" in html
    saved = json.loads((tmp_path / "demo" / "figures.json").read_text())
    assert saved["gate"]["promote"] is True


def test_oracle_stand_in_answers_any_task_from_the_generator_and_nothing_else() -> None:
    from ownlm.demo.app import app_env
    from ownlm.demo.flywheel import _oracle_table, _phase_envs
    from ownlm.demo.strong import completion, standin_latency_s

    cfg = validate_config(
        DemoConfig,
        {"task": "basic_arithmetic", "baseline_requests": 10, "ab_requests": 10,
         "after_requests": 0},
        "test",
    )  # fmt: skip
    envs = _phase_envs(cfg)
    table = _oracle_table(cfg, envs)
    env = app_env(10_000, "basic_arithmetic")
    for task in env.tasks("train", 10):
        reply = completion("gpt-4.1", env.reset(task), table)
        text = reply["choices"][0]["message"]["content"]
        assert text == f"Answer: {task.answer}" and env.score(task, text).correct
    other = completion("gpt-4.1", [{"role": "user", "content": "What is the time?"}], table)
    assert other["choices"][0]["message"]["content"] == "I cannot answer that."
    # GPT-4.1's published latency: 0.52 s to the first token, then 89 tokens/s
    assert standin_latency_s(90, 0.52, 89.0) == pytest.approx(1.52)


def test_unknown_task_and_a_solver_for_another_task_are_refused(tmp_path: Path) -> None:
    from ownlm.errors import ConfigError

    bad = validate_config(DemoConfig, {"task": "leg_countin", "work_dir": str(tmp_path)}, "t")
    with pytest.raises(ConfigError, match="no task 'leg_countin'; did you mean 'leg_counting'"):
        run_demo(bad)
    wrong = validate_config(
        DemoConfig, {"task": "basic_arithmetic", "standin": "solver", "work_dir": str(tmp_path)},
        "t",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="standin 'solver' answers leg_counting only"):
        run_demo(wrong)


def test_standin_bills_tokens_as_gpt41_counts_them() -> None:
    from ownlm.demo.strong import completion, count_tokens

    # o200k_base, the published example of tiktoken's README
    assert count_tokens("tiktoken is great!") == 6
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": "How many legs are there in total if you have 1 starfish, 2 sheep?",
        },
    ]
    usage = completion("gpt-4.1", messages)["usage"]
    text = completion("gpt-4.1", messages)["choices"][0]["message"]["content"]
    assert usage["completion_tokens"] == count_tokens(text) > len(text) / 4
    # 3 per message + role + content, 3 to prime the reply (OpenAI's cookbook)
    contents = sum(count_tokens(m["content"]) for m in messages)
    assert usage["prompt_tokens"] == 3 + 2 * (3 + 1) + contents
