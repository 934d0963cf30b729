"""Prefix caching: a sampler call given the keys and values of a prompt's start (or of a row it
sampled before) draws what a full prefill draws."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ownlm.errors import ConfigError
from ownlm.rollout.kv import common_prefix_length, prefix_kv, supports_kv_reuse
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import Completions, SamplingParams

PROMPTS = ["Hello there", "Q: 2+2?", "A much longer prompt, to force left padding."]


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def rows(out: Completions) -> list[list[int]]:
    """Each row's tokens, right padding removed."""
    lengths = [int(m.nonzero().max()) + 1 if m.any() else 0 for m in out.completion_mask]
    return [out.tokens[i, :k].tolist() for i, k in enumerate(lengths)]


def assert_same_draws(a: Completions, b: Completions) -> None:
    assert rows(a) == rows(b)
    assert a.finish_reasons == b.finish_reasons
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)


def test_past_of_any_length_gives_the_full_prefill_draws(
    tiny_llama: Any, char_tokenizer: Any
) -> None:
    prompts = [encode(char_tokenizer, p) for p in PROMPTS]
    # rows stop at different steps (stop strings), so finished rows leave the batch mid-way
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3, stop=("e", "o"))
    plain = sample_completions(tiny_llama, char_tokenizer, prompts, 2, params)
    past = [prefix_kv(tiny_llama, prompts[0][:4]), None, prefix_kv(tiny_llama, prompts[2][:30])]
    cached = sample_completions(tiny_llama, char_tokenizer, prompts, 2, params, past=past)
    assert_same_draws(plain, cached)
    assert len({len(r) for r in rows(plain)}) > 1  # the rows really did end at different steps


def test_kept_kv_continues_each_row(tiny_llama: Any, char_tokenizer: Any) -> None:
    prompts = [encode(char_tokenizer, p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=5, stop=("a", "t"))
    first = sample_completions(tiny_llama, char_tokenizer, prompts, 2, params, keep_kv=True)
    assert first.kv is not None and len(first.kv) == 6
    tool = encode(char_tokenizer, " -> tool says 42. ")
    nexts = [prompts[i // 2] + r + tool for i, r in enumerate(rows(first))]
    for i, r in enumerate(rows(first)):  # the kept cache: the prompt and all but the last token
        assert first.kv[i].length == len(prompts[i // 2]) + len(r) - 1
    again = SamplingParams(max_new_tokens=10, temperature=1.0, seed=6)
    plain = sample_completions(tiny_llama, char_tokenizer, nexts, 1, again)
    cached = sample_completions(tiny_llama, char_tokenizer, nexts, 1, again, past=first.kv)
    assert_same_draws(plain, cached)


def test_a_shared_prefix_read_once(tiny_llama: Any, char_tokenizer: Any) -> None:
    system = "You are terse. Answer in one word. "
    prompts = [encode(char_tokenizer, system + q) for q in ("Why?", "Who is she?")]
    k = common_prefix_length(prompts)
    assert k == len(encode(char_tokenizer, system + "Wh"))
    shared = prefix_kv(tiny_llama, prompts[0][:k])
    params = SamplingParams(max_new_tokens=8, temperature=0)
    plain = sample_completions(tiny_llama, char_tokenizer, prompts, 3, params)
    cached = sample_completions(tiny_llama, char_tokenizer, prompts, 3, params, past=[shared] * 2)
    assert_same_draws(plain, cached)


def test_a_past_must_leave_a_token_to_feed(tiny_llama: Any, char_tokenizer: Any) -> None:
    prompt = encode(char_tokenizer, "Hello")
    whole = prefix_kv(tiny_llama, prompt)
    with pytest.raises(ConfigError, match="leave at least one token"):
        sample_completions(tiny_llama, char_tokenizer, [prompt], 1, SamplingParams(), past=[whole])
    with pytest.raises(ConfigError, match="1 entries for 2 prompts"):
        sample_completions(
            tiny_llama, char_tokenizer, [prompt, prompt], 1, SamplingParams(), past=[None]
        )
    assert supports_kv_reuse(tiny_llama)
