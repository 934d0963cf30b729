"""Tests for ownlm.rollout.vllm_backend against a stand-in `vllm` module (no GPU needed).

The stand-in engine answers every prompt by repeating the prompt's last token until max_tokens,
with logprob -1 per token, so the expected rows can be written down by hand.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ownlm.models.chat import THINK_FORCED_CLOSE
from ownlm.rollout.backend import make_backend
from ownlm.rollout.types import SamplingParams


class FakeLLM:
    """Records what the backend asks of vLLM's offline engine."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.model_dir, self.kwargs = model, kwargs
        self.calls: list[list[Any]] = []
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self.prefix_cache_resets = 0

    def generate(self, prompts: list[dict[str, Any]], sampling: list[Any], use_tqdm: bool) -> Any:
        self.calls.append(sampling)
        outputs = []
        for prompt, sp in zip(prompts, sampling, strict=True):
            token = prompt["prompt_token_ids"][-1]
            samples = [
                SimpleNamespace(
                    index=i,
                    token_ids=[token] * sp.max_tokens,
                    logprobs=[{token: SimpleNamespace(logprob=-1.0)}] * sp.max_tokens,
                    finish_reason="length",
                    stop_reason=None,
                )
                for i in range(sp.n)
            ]
            outputs.append(SimpleNamespace(outputs=samples[::-1]))  # any order: sorted by index
        return outputs

    def apply_model(self, func: Any) -> list[Any]:
        return [func(SimpleNamespace(load_weights=lambda weights: self.loaded.extend(weights)))]

    def reset_prefix_cache(self) -> None:
        self.prefix_cache_resets += 1


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = lambda **kw: SimpleNamespace(**kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)


def test_rows_are_prompt_major_with_logprobs(
    fake_vllm: None, tiny_llama: Any, char_tokenizer: Any
) -> None:
    backend: Any = make_backend("vllm", tiny_llama, char_tokenizer, gpu_memory_utilization=0.2)
    assert backend.llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert backend.llm.kwargs["gpu_memory_utilization"] == 0.2
    prompts = [char_tokenizer.encode("ab"), char_tokenizer.encode("xyz")]
    out = backend.sample(prompts, 2, SamplingParams(max_new_tokens=3, temperature=0.5, seed=9))
    b, z = char_tokenizer.convert_tokens_to_ids(["b", "z"])
    assert out.tokens.tolist() == [[b] * 3, [b] * 3, [z] * 3, [z] * 3]
    assert out.texts == ["bbb", "bbb", "zzz", "zzz"]
    assert (out.logprobs == -1.0).all() and out.completion_mask.all()
    assert out.finish_reasons == ["length"] * 4
    sp = backend.llm.calls[0][0]
    assert (sp.n, sp.temperature, sp.max_tokens, sp.logprobs, sp.seed) == (2, 0.5, 3, 0, 9)
    assert sp.stop_token_ids == [2]  # <|im_end|>


def test_thinking_budget_closes_the_thought_then_answers(
    fake_vllm: None, tiny_llama: Any, char_tokenizer: Any
) -> None:
    backend: Any = make_backend("vllm", tiny_llama, char_tokenizer)
    thinking = char_tokenizer.encode("Q<think>\n")
    plain = char_tokenizer.encode("Qa")
    params = SamplingParams(max_new_tokens=20, thinking_budget_tokens=4)
    out = backend.sample([thinking, plain], 1, params)
    newline, a = char_tokenizer.convert_tokens_to_ids(["\n", "a"])
    forced = char_tokenizer.encode(THINK_FORCED_CLOSE)
    answer = [newline] * (20 - 4 - len(forced))  # continues from the forced tag's last token
    assert out.tokens[0].tolist() == [newline] * 4 + forced + answer
    assert out.completion_mask[0].tolist() == [True] * 4 + [False] * len(forced) + [True] * len(
        answer
    )
    assert out.logprobs[0, 4 : 4 + len(forced)].eq(0).all()
    assert out.tokens[1].tolist() == [a] * 20 and out.completion_mask[1].all()
    think_call = next(c for c in backend.llm.calls if c[0].max_tokens == 4)
    assert "</think>" in think_call[0].stop


def test_update_weights_loads_every_tensor_and_drops_the_prefix_cache(
    fake_vllm: None, tiny_llama: Any, char_tokenizer: Any
) -> None:
    backend: Any = make_backend("vllm", tiny_llama, char_tokenizer)
    backend.update_weights(tiny_llama)
    assert [name for name, _ in backend.llm.loaded] == list(tiny_llama.state_dict())
    assert backend.llm.prefix_cache_resets == 1
