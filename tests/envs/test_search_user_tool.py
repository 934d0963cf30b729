"""The README's user-defined tool and verifier (examples/calculator_env.py) runs: its code is the
README's, the tool computes, and episodes with a tiny model score through it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from ownlm.envs.base import is_multi_turn
from ownlm.envs.tools import ToolCallError
from ownlm.models.tiny import tiny_model
from ownlm.rollout import episodes as episodes_module
from ownlm.rollout.episodes import run_episodes
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import Completions, SamplingParams

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "calculator_env", ROOT / "examples/calculator_env.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_shows_the_example_code(example: ModuleType) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Train a tool-using agent") :]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None
    source = (ROOT / "examples/calculator_env.py").read_text()
    for line in block.group(1).splitlines():
        assert line in source, line


def test_calculator_tool_and_verifier(example: ModuleType) -> None:
    assert example.calculate("12*34") == 408
    assert example.calculate("2 + 3 * 4") == 14
    with pytest.raises(ToolCallError, match="cannot compute"):
        example.calculate("2 ** 64")
    with pytest.raises(ToolCallError, match="not an expression"):
        example.calculate("12 *")
    env = example.CalculatorEnv()
    assert is_multi_turn(env)
    train, test = env.tasks("train", 5), env.tasks("test", 5)
    assert not {t.question for t in train} & {t.question for t in test}


def test_episodes_run_through_the_user_env(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    model, tok = tiny_model(seed=0)
    env = example.CalculatorEnv()
    tasks = env.tasks("test", 2)

    def scripted(
        m: Any, tokenizer: Any, prompt_ids: list[list[int]], n: int, p: Any, **_kv: Any
    ) -> Any:
        """Turn 1 calls the calculator on the question; turn 2 copies the tool result."""
        texts = []
        for ids in [ids for ids in prompt_ids for _ in range(n)]:
            prompt = tokenizer.decode(ids)
            if "<|im_start|>tool" not in prompt:
                a, b = re.findall(r"What is (\d+) \* (\d+)", prompt)[0]
                texts.append(
                    f'<tool_call>{{"name": "calculator", "arguments": '
                    f'{{"expression": "{a}*{b}"}}}}</tool_call>'
                )
            else:
                result = re.findall(r"<\|im_start\|>tool\n(\d+)<\|im_end\|>", prompt)[-1]
                texts.append(f"Answer: {result}<|im_end|>")
        rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        width = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            tokens[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), True
        clean = [t.replace("</tool_call>", "").replace("<|im_end|>", "") for t in texts]
        return Completions(prompt_ids, n, tokens, torch.zeros(tokens.shape), mask, clean,
                           ["stop"] * len(rows))  # fmt: skip

    monkeypatch.setattr(episodes_module, "sample_completions", scripted)
    out = run_episodes(model, tok, env, tasks, 1, SamplingParams(), max_episode_tokens=256)
    for task, ep in zip(tasks, out.episodes, strict=True):
        assert ep.finish_reason == "answer" and ep.tool_calls == 1
        assert env.score(task, ep.transcript).correct
        assert env.score(task, ep.transcript).reward == pytest.approx(1.1)
    # and with the real sampler (a random model): episodes end cleanly and score
    monkeypatch.setattr(episodes_module, "sample_completions", sample_completions)
    params = SamplingParams(max_new_tokens=8, seed=0)
    out = run_episodes(model, tok, env, tasks, 2, params, max_episode_tokens=64)
    assert all(ep.finish_reason in ("answer", "max_tokens") for ep in out.episodes)
    assert all(env.score(tasks[i // 2], ep.transcript).reward >= 0 for i, ep in
               enumerate(out.episodes))  # fmt: skip
