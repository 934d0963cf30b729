"""Tests for ownlm.rollout.backend: the torch backend and make_backend's choices and errors."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from ownlm.errors import ConfigError, ModelLoadError
from ownlm.rollout.backend import TorchBackend, make_backend
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import SamplingParams


def test_torch_backend_samples_like_the_sampler_in_eval_mode(
    tiny_llama: Any, char_tokenizer: Any
) -> None:
    backend = make_backend("torch", tiny_llama, char_tokenizer)
    assert isinstance(backend, TorchBackend)
    prompts = [char_tokenizer.encode("abc"), char_tokenizer.encode("hello you")]
    params = SamplingParams(max_new_tokens=6, seed=4)
    tiny_llama.train()
    try:
        got = backend.sample(prompts, 2, params)
        assert tiny_llama.training  # the trainer's mode is given back
    finally:
        tiny_llama.eval()
    want = sample_completions(tiny_llama, char_tokenizer, prompts, 2, params)
    assert torch.equal(got.tokens, want.tokens)
    torch.testing.assert_close(got.logprobs, want.logprobs)
    backend.update_weights(tiny_llama)  # shares the model: nothing to copy, nothing fails


def test_make_backend_refuses_unknown_names_and_options(
    tiny_llama: Any, char_tokenizer: Any
) -> None:
    with pytest.raises(ConfigError, match="unknown rollout backend 'vlm'; use 'torch' or 'vllm'"):
        make_backend("vlm", tiny_llama, char_tokenizer)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="takes no options, got gpu_memory_utilization"):
        make_backend("torch", tiny_llama, char_tokenizer, gpu_memory_utilization=0.5)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_says_how_to_install(
    tiny_llama: Any, char_tokenizer: Any
) -> None:
    with pytest.raises(ModelLoadError, match=r"pip install ownlm\[vllm\]` and a GPU"):
        make_backend("vllm", tiny_llama, char_tokenizer)
