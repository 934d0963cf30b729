"""Tests for ownlm.rollout.sampler on a tiny random Llama and a character tokenizer."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from ownlm.errors import ConfigError, DataError
from ownlm.models.chat import THINK_FORCED_CLOSE, encode_prompt, think_close_ids
from ownlm.rollout.sampler import draw_tokens, sample_completions
from ownlm.rollout.types import Completions, SamplingParams

PAD_ID, EOS_ID = 0, 2  # the character tokenizer of conftest.py


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def teacher_forced_logprobs(
    model: Any, prompt: list[int], completion: list[int], temperature: float
) -> torch.Tensor:
    """log p of each completion token under one plain forward of prompt + completion."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    scaled = logits if temperature == 0 else logits / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    return logp.gather(1, torch.tensor(completion)[:, None]).squeeze(1)


def row_tokens(out: Completions, i: int) -> list[int]:
    """The tokens row i actually produced (its padding removed by length, not by pad id)."""
    length = int(out.completion_mask[i].nonzero().max()) + 1 if out.completion_mask[i].any() else 0
    return out.tokens[i, :length].tolist()


class EosAtPosition(LlamaForCausalLM):
    """The tiny Llama, except that from position `eos_from` on it (almost) surely says eos."""

    eos_from = 10**9

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(*args, **kwargs)
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(kwargs["input_ids"].shape[1])[None, :]
        positions = positions[:, -out.logits.shape[1] :]  # (B, T) of the positions with logits
        out.logits[..., EOS_ID] += torch.where(positions + 1 >= self.eos_from, 100.0, 0.0)
        return out


PROMPTS = ["Hello there", "Q: 2+2?", "A much longer prompt, to force left padding."]


def test_greedy_equals_generate_with_padding(tiny_llama: Any, char_tokenizer: Any) -> None:
    prompts = [encode(char_tokenizer, p) for p in PROMPTS]
    out = sample_completions(
        tiny_llama, char_tokenizer, prompts, 1, SamplingParams(max_new_tokens=12, temperature=0)
    )
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in prompts])
    pads = torch.tensor([width - len(p) for p in prompts])
    mask = torch.arange(width)[None, :] >= pads[:, None]
    expected = tiny_llama.generate(
        input_ids=ids, attention_mask=mask.long(), do_sample=False, max_new_tokens=12
    )[:, width:]
    assert out.tokens.shape == expected.shape
    assert torch.equal(out.tokens, expected)
    assert out.finish_reasons == ["length"] * 3
    assert out.completion_mask.all()


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_logprobs_equal_teacher_forced_forward(
    tiny_llama: Any, char_tokenizer: Any, temperature: float
) -> None:
    prompts = [encode(char_tokenizer, p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=10, temperature=temperature, seed=3)
    out = sample_completions(tiny_llama, char_tokenizer, prompts, 2, params)
    assert out.tokens.shape == (6, 10)
    for i in range(6):
        ref = teacher_forced_logprobs(tiny_llama, prompts[i // 2], row_tokens(out, i), temperature)
        torch.testing.assert_close(out.logprobs[i], ref, atol=1e-4, rtol=0)


def test_rows_are_prompt_major_and_share_their_prompt(tiny_llama: Any, char_tokenizer: Any) -> None:
    prompts = [encode(char_tokenizer, p) for p in PROMPTS]
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    one = sample_completions(tiny_llama, char_tokenizer, prompts, 1, greedy)
    three = sample_completions(tiny_llama, char_tokenizer, prompts, 3, greedy)
    assert three.tokens.shape == (9, 8)
    for i in range(9):
        assert torch.equal(three.tokens[i], one.tokens[i // 3])
    assert three.prompt_ids == prompts and three.n == 3


def test_same_seed_same_samples_other_seed_other_samples(
    tiny_llama: Any, char_tokenizer: Any
) -> None:
    prompts = [encode(char_tokenizer, "Tell me a story")]
    draws = [
        sample_completions(
            tiny_llama, char_tokenizer, prompts, 4, SamplingParams(max_new_tokens=16, seed=s)
        ).tokens
        for s in (7, 7, 8)
    ]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])
    assert len({tuple(row.tolist()) for row in draws[0]}) > 1  # the 4 samples differ


def test_rows_stop_at_eos_and_leave_the_batch(tiny_llama: Any, char_tokenizer: Any) -> None:
    model = copy.deepcopy(tiny_llama)
    model.__class__ = EosAtPosition
    model.eos_from = 14  # prompt lengths 6 and 11: eos as the 9th and the 4th token
    prompts = [encode(char_tokenizer, "abcdef"), encode(char_tokenizer, "abcdefghijk")]
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=0)
    out = sample_completions(model, char_tokenizer, prompts, 2, params)
    assert out.finish_reasons == ["stop"] * 4
    assert out.tokens.shape == (4, 9)
    for i, length in enumerate([9, 9, 4, 4]):
        assert out.tokens[i, length - 1] == EOS_ID
        assert out.completion_mask[i].sum() == length
        assert (out.tokens[i, length:] == PAD_ID).all()
        ref = teacher_forced_logprobs(model, prompts[i // 2], row_tokens(out, i), 1.0)
        torch.testing.assert_close(out.logprobs[i, :length], ref, atol=1e-4, rtol=0)
    assert out.stats["rollout/tokens"] == 26


def test_stop_string_cuts_text(tiny_llama: Any, char_tokenizer: Any) -> None:
    prompts = [encode(char_tokenizer, "Once upon a time")]
    base = SamplingParams(max_new_tokens=30, temperature=1.0, seed=11)
    free = sample_completions(tiny_llama, char_tokenizer, prompts, 1, base)
    text = free.texts[0]
    stop = text[12:14]
    first = text.index(stop)
    params = SamplingParams(max_new_tokens=30, temperature=1.0, seed=11, stop=("zzzz", stop))
    out = sample_completions(tiny_llama, char_tokenizer, prompts, 1, params)
    assert out.texts == [text[:first]]
    assert out.finish_reasons == ["stop"]
    assert out.tokens.shape[1] == first + len(stop)  # the stop string's tokens stay in tokens
    assert free.finish_reasons == ["length"]


def test_thinking_budget_forces_the_close_tag(tiny_llama: Any, char_tokenizer: Any) -> None:
    thinking = encode(char_tokenizer, "<|im_start|>assistant\n<think>\n")
    plain = encode(char_tokenizer, "<|im_start|>assistant\n")
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=5, thinking_budget_tokens=5)
    out = sample_completions(tiny_llama, char_tokenizer, [thinking, plain], 1, params)
    forced = encode(char_tokenizer, THINK_FORCED_CLOSE)
    assert out.tokens[0, 5 : 5 + len(forced)].tolist() == forced
    expected_mask = [True] * 5 + [False] * len(forced) + [True] * (24 - 5 - len(forced))
    assert out.completion_mask[0].tolist() == expected_mask
    assert (out.logprobs[0, 5 : 5 + len(forced)] == 0).all()
    assert "\n</think>\n\n" in out.texts[0]
    assert out.completion_mask[1].all()  # no open thought in the prompt: nothing forced
    assert "</think>" not in out.texts[1]
    # After the forced tag the model answers, and its logprobs are still its own.
    ref = teacher_forced_logprobs(tiny_llama, thinking, out.tokens[0].tolist(), 1.0)
    sampled = out.completion_mask[0]
    torch.testing.assert_close(out.logprobs[0][sampled], ref[sampled], atol=1e-4, rtol=0)


def test_draw_tokens_follows_top_p_and_reports_untruncated_logprobs() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)
    tokens, logp = draw_tokens(logits, 1.0, 0.6, generator)  # keeps {0, 1}: 0.5 < 0.6 <= 0.8
    counts = torch.bincount(tokens, minlength=3).float() / 20000
    assert counts[2] == 0
    assert abs(counts[0].item() - 0.5 / 0.8) < 0.02
    torch.testing.assert_close(logp, probs.log()[tokens])
    tokens, _ = draw_tokens(logits, 1.0, 1.0, generator)
    counts = torch.bincount(tokens, minlength=3).float() / 20000
    torch.testing.assert_close(counts, probs, atol=0.02, rtol=0)


def test_draw_tokens_greedy_and_temperature() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    generator = torch.Generator().manual_seed(0)
    tokens, logp = draw_tokens(logits, 0.0, 1.0, generator)
    assert tokens.tolist() == [1]
    expected = 3.0 - math.log(math.exp(1.0) + math.exp(3.0) + math.exp(2.0))
    assert logp.item() == pytest.approx(expected, abs=1e-6)
    tokens, logp = draw_tokens(logits, 2.0, 1.0, generator)
    scaled = [0.5, 1.5, 1.0]
    norm = math.log(sum(math.exp(s) for s in scaled))
    assert logp.item() == pytest.approx(scaled[tokens.item()] - norm, abs=1e-6)


def test_bad_requests_say_what_to_fix(tiny_llama: Any, char_tokenizer: Any) -> None:
    ok = [encode(char_tokenizer, "hi")]
    with pytest.raises(DataError, match="prompt 1 has no tokens"):
        sample_completions(tiny_llama, char_tokenizer, [ok[0], []], 1, SamplingParams())
    with pytest.raises(ConfigError, match="top_p must be in"):
        sample_completions(tiny_llama, char_tokenizer, ok, 1, SamplingParams(top_p=0.0))
    with pytest.raises(ConfigError, match="exceeds the model's context of 256"):
        sample_completions(tiny_llama, char_tokenizer, ok, 1, SamplingParams(max_new_tokens=255))
    with pytest.raises(DataError, match="token id 500 outside the vocabulary"):
        sample_completions(tiny_llama, char_tokenizer, [[5, 500]], 1, SamplingParams())


def test_thinking_budget_with_the_smollm2_tokenizer(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    messages = [{"role": "user", "content": "What is 2+3?"}]
    on = encode_prompt(tokenizer, messages, enable_thinking=True)
    off = encode_prompt(tokenizer, messages, enable_thinking=False)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=1, thinking_budget_tokens=3)
    out = sample_completions(model, tokenizer, [on, off], 2, params)
    forced = think_close_ids(tokenizer)
    assert out.finish_reasons == ["length"] * 4
    for i in (0, 1):  # thinking on: 3 thought tokens, then the tag's several tokens
        assert out.tokens[i, 3 : 3 + len(forced)].tolist() == forced
        assert out.completion_mask[i].sum() == 16 - len(forced)
        assert "\n</think>\n\n" in out.texts[i]
    assert out.completion_mask[2:].all()  # thinking off: the prompt already closed the thought
