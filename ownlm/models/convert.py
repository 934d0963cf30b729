"""`ownlm models convert`: turn the pip-shipped SmolLM2 GGUF (or any GGUF) into a trainable
safetensors HF directory, and check that its greedy output equals the GGUF-loaded model's.

    ownlm models convert                                    # into the cache (done once)
    ownlm models convert --set gguf_path=m.gguf --set out_dir=models/m --set overwrite=true
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from ownlm.config import Config
from ownlm.errors import ModelLoadError
from ownlm.models.load import (
    SMOLLM2_DIR,
    cache_dir,
    convert_gguf,
    load_gguf,
    load_model,
    smollm2_gguf_path,
)

CHECK_PROMPT = [{"role": "user", "content": "What is 12 + 7?"}]


class ConvertConfig(Config):
    """Which GGUF to convert and where; None means the SmolLM2 GGUF and the cache dir."""

    gguf_path: str | None = Field(None, description="the GGUF to read; null: SmolLM2's")
    out_dir: str | None = Field(None, description="where the safetensors go; null: the cache dir")
    overwrite: bool = Field(False, description="convert again even if out_dir holds a model")
    verify: bool = Field(
        True, description="compare greedy tokens of the converted and the GGUF-loaded model"
    )
    verify_new_tokens: int = Field(16, description="tokens compared by verify")


class ConvertSummary(BaseModel):
    """Where the converted model is and whether it matched the GGUF."""

    gguf_path: str
    out_dir: str
    converted: bool  # False when out_dir already held a converted model
    verified: bool | None
    time_s: float


def greedy_tokens(model: object, tokenizer: object, new_tokens: int) -> list[int]:
    """Greedy continuation of CHECK_PROMPT, for comparing two copies of a model."""
    ids = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        CHECK_PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(  # type: ignore[attr-defined]
            **ids,
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
        )
    return out[0].tolist()


def convert_model(cfg: ConvertConfig) -> ConvertSummary:
    """Convert (unless already done) and optionally verify greedy equality with the GGUF."""
    start = time.perf_counter()
    gguf = Path(cfg.gguf_path) if cfg.gguf_path else smollm2_gguf_path()
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist; pass gguf_path=<file.gguf>")
    out = Path(cfg.out_dir) if cfg.out_dir else cache_dir() / "models" / SMOLLM2_DIR
    existed = (out / "config.json").is_file()
    convert_gguf(gguf, out, overwrite=cfg.overwrite)
    verified = None
    if cfg.verify:
        ref, ref_tok = load_gguf(gguf)
        model, tok = load_model(str(out))
        verified = greedy_tokens(ref, ref_tok, cfg.verify_new_tokens) == greedy_tokens(
            model, tok, cfg.verify_new_tokens
        )
        if not verified:
            raise ModelLoadError(
                f"converted model in {out} does not reproduce the greedy output of {gguf}; "
                f"delete {out} and run `ownlm models convert --set overwrite=true`"
            )
    return ConvertSummary(
        gguf_path=str(gguf),
        out_dir=str(out),
        converted=cfg.overwrite or not existed,
        verified=verified,
        time_s=time.perf_counter() - start,
    )
