"""Stand-ins for the rollout tests: a character tokenizer and a tiny random Llama."""

from __future__ import annotations

import string
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_ID, EOS_ID = 0, 2


def make_char_tokenizer() -> Any:
    """One token per printable character, SmolLM2's special tokens first (pad 0, eos 2)."""
    chars = list(string.printable[:95]) + ["\n"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )


def make_tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with grouped-query attention; a wide init keeps greedy argmaxes clear."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    return model


@pytest.fixture(scope="session")
def char_tokenizer() -> Any:
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(char_tokenizer: Any) -> LlamaForCausalLM:
    return make_tiny_llama(len(char_tokenizer))
