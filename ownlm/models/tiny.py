"""Tiny random Llama models with the real SmolLM2 tokenizer, for fast offline unit tests.

    model, tokenizer = tiny_model(seed=0)   # ~3.3M params, loads in well under a second

The tokenizer comes from the converted SmolLM2 cache dir when it exists; otherwise only the
tokenizer is read from the GGUF (~10 s, once) and saved to `<cache>/tokenizers/smollm2-135m`,
which avoids the full 45 s model conversion in a fresh test environment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ownlm.models.load import (
    SMOLLM2_DIR,
    cache_dir,
    prepare_tokenizer,
    smollm2_gguf_path,
)


def smollm2_tokenizer_dir() -> Path:
    """A dir holding the SmolLM2 tokenizer files, creating the tokenizer-only cache if needed."""
    full = cache_dir() / "models" / SMOLLM2_DIR
    if (full / "tokenizer.json").is_file():
        return full
    out = cache_dir() / "tokenizers" / "smollm2-135m"
    if (out / "tokenizer.json").is_file():
        return out
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "tokenizer.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_smollm2_tokenizer() -> Any:
    """The SmolLM2 tokenizer (ChatML template, pad set, left padding), offline."""
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir())))


def tiny_model(
    seed: int = 0,
    *,
    vocab_size: int | None = None,
    hidden_size: int = 64,
    layers: int = 2,
) -> tuple[Any, Any]:
    """A random LlamaForCausalLM (fp32, eval mode) and the SmolLM2 tokenizer.

    vocab_size defaults to the tokenizer's (49,152); a smaller one is allowed for tests that
    build token ids by hand, but then the tokenizer can produce ids the model cannot embed.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
