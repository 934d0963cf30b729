"""GRPO on a multi-turn env with a tiny random model: episodes with tool calls train, log the
tool metrics, and a run resumed at step 2 logs what an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ownlm.envs.base import EpisodeScore, Message, Task
from ownlm.envs.tools import ToolCall, function_tool
from ownlm.models.tiny import tiny_model
from ownlm.rollout import episodes as episodes_module
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import Completions
from ownlm.train.grpo import GRPOConfig, train_grpo

pytestmark = pytest.mark.usefixtures("one_thread")
CALL = '<tool_call>{"name": "lookup", "arguments": {"key": "x"}}</tool_call>'
TIMING_KEYS = {
    "time/step_s", "time/rollout_s", "time/train_s", "time/optimizer_s", "rollout/tokens_per_s"
}  # fmt: skip


class LookupEnv:
    """Toy tool env: reward 1 when the final answer has an even length (a random model: ~half)."""

    name = "lookup"
    tools = [function_tool("lookup", "look a key up", {"key": ("string", "a key")}, ["key"])]
    max_turns = 3

    def tasks(self, split: str, n: int) -> list[Task]:
        return [Task(id=f"{split}-{i}", question=f"question {i}", answer="1") for i in range(n)]

    def reset(self, task: Task) -> list[Message]:
        return [{"role": "user", "content": task.question}]

    def step(self, task: Task, call: ToolCall, state: dict[str, Any]) -> str:
        return f"value of {call.arguments['key']} is 7"

    def score(self, task: Task, transcript: list[Message]) -> EpisodeScore:
        final = transcript[-1]["content"] if transcript[-1]["role"] == "assistant" else ""
        ok = len(final) % 2 == 0
        return EpisodeScore(reward=float(ok), correct=ok, well_formed=True)


def first_turn_calls(model: Any, tokenizer: Any, prompt_ids: list[list[int]], n: int,
                     params: Any, **_kv: Any) -> Completions:  # fmt: skip
    """The first assistant turn of every episode is a fixed tool call (a random model never
    writes one); later turns are sampled by the real sampler."""
    if any("<|im_start|>tool" in tokenizer.decode(p) for p in prompt_ids):
        return sample_completions(model, tokenizer, prompt_ids, n, params)
    toks = tokenizer.encode(CALL, add_special_tokens=False)
    rows, lps = [], []
    with torch.no_grad():
        for ids in [ids for ids in prompt_ids for _ in range(n)]:
            logits = model(input_ids=torch.tensor([ids + toks])).logits[0, len(ids) - 1 : -1]
            lp = torch.log_softmax(logits.float() / params.temperature, -1)
            lps.append(lp.gather(1, torch.tensor(toks)[:, None])[:, 0])
            rows.append(toks)
    k = len(prompt_ids) * n
    return Completions(
        prompt_ids, n, torch.tensor(rows), torch.stack(lps), torch.ones(k, len(toks), dtype=bool),
        [CALL.replace("</tool_call>", "")] * k, ["stop"] * k,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tok = tiny_model(seed=0)
    out = tmp_path_factory.mktemp("tiny-smol")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def config(tiny_dir: Path, run_dir: Path, **kw: Any) -> GRPOConfig:
    base: dict[str, Any] = {
        "model": str(tiny_dir), "run_dir": str(run_dir), "steps": 3, "prompts_per_step": 2,
        "group_size": 4, "max_new_tokens": 8, "max_episode_tokens": 96, "lr": 1e-3,
        "train_problems": 8, "save_every_steps": 1, "threads": 1,
    }  # fmt: skip
    base.update(kw)
    return GRPOConfig.model_validate(base)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMING_KEYS} for ln in lines]


def test_multiturn_grpo_trains_and_resumes(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loss = "grpo"
    monkeypatch.setattr(episodes_module, "sample_completions", first_turn_calls)
    full = tmp_path / "full"
    train_grpo(config(tiny_dir, full, loss=loss), env=LookupEnv())
    metrics = read_metrics(full)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["rollout/tool_use_rate"] == 1.0 for m in metrics)
    assert all(m["rollout/malformed_rate"] == 0.0 for m in metrics)
    assert all(m["rollout/turns_mean"] >= 2.0 for m in metrics)
    assert any(m["train/grad_norm"] > 0 for m in metrics)  # some group had signal

    part = tmp_path / "part"
    train_grpo(config(tiny_dir, part, loss=loss, steps=2), env=LookupEnv())
    summary = train_grpo(config(tiny_dir, part, loss=loss), env=LookupEnv())
    assert summary.resumed_from_step == 2
    resumed = read_metrics(part)
    assert len(resumed) == 3
    for a, b in zip(metrics, resumed, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize(
    ("loss", "thinking"), [("dapo", True), ("dr_grpo", False), ("rloo", False)]
)
def test_multiturn_grpo_other_losses_and_thinking(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loss: str, thinking: bool
) -> None:
    monkeypatch.setattr(episodes_module, "sample_completions", first_turn_calls)
    budget = 4 if thinking else None
    cfg = config(tiny_dir, tmp_path / loss, steps=1, enable_thinking=thinking,
                 thinking_budget_tokens=budget, loss=loss)  # fmt: skip
    summary = train_grpo(cfg, env=LookupEnv())
    assert summary.last_metrics["rollout/tool_use_rate"] == 1.0
    assert summary.last_metrics["rollout/turns_mean"] >= 2.0
