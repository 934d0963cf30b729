"""LoRA adapters (peft) for every recipe: one config class and one way to attach or resume them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ownlm.config import Config
from ownlm.models.load import load_model


class LoraSpec(Config):
    """LoRA adapters instead of full fine-tuning (a recipe's `lora: null` trains all weights)."""

    r: int = Field(16, description="adapter rank")
    alpha: int = Field(32, description="scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.0, description="dropout on the adapter input")
    targets: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names that get adapters",
    )


def add_lora(model: Any, spec: LoraSpec, resume_from: str | Path | None = None) -> Any:
    """Wrap model in trainable LoRA adapters: new ones from spec, or a checkpoint's to resume."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if resume_from is not None:
        return PeftModel.from_pretrained(model, str(resume_from), is_trainable=True)
    lora = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def load_trainable_model(
    name: str, spec: LoraSpec | None, resume_from: Path | None
) -> tuple[Any, Any]:
    """(model, tokenizer) to train: name's weights wrapped in LoRA adapters (spec), or all
    weights (spec None); when resuming, the checkpoint's adapters or weights."""
    if spec is None:
        model, tokenizer = load_model(str(resume_from) if resume_from is not None else name)
        # A LoRA run dir loads merged, with the base weights still frozen by peft: unfreeze all.
        return model.requires_grad_(True), tokenizer
    model, tokenizer = load_model(name)
    return add_lora(model, spec, resume_from), tokenizer
