"""The knobs shared by the recipes that learn from a JSONL file (SFT, DPO, reward model).

Each recipe's config class subclasses `FileRecipeConfig`, sets its own defaults (run_dir,
max_steps, lr, eval and save intervals) and adds its own knobs (DPO's beta). A shared field set
rather than three copies: the fields, their checks and the resume keys must stay the same in all
three, and they had started to drift (one lacked the `threads` note). The recipes themselves
stay separate functions; nothing here runs a step.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import Field, model_validator

from ownlm.config import Config
from ownlm.errors import ConfigError
from ownlm.train.lora import LoraSpec


class FileRecipeConfig(Config):
    """Knobs of a recipe that trains on examples (chats or pairs) read from train_file."""

    # Keys that change a run's numbers: a resumed run must agree with its checkpoint on them.
    resume_keys: ClassVar[tuple[str, ...]] = (
        "model", "train_file", "eval_file", "eval_fraction", "seed", "max_seq_len", "batch_size",
        "micro_batch_size", "max_steps", "lr", "lr_schedule", "warmup_steps", "weight_decay",
        "max_grad_norm", "lora",
    )  # fmt: skip

    model: str = Field(
        "smollm2-135m", description="base model: an HF model dir, a run dir or 'smollm2-135m'"
    )
    train_file: str = Field(description="training JSONL (`ownlm export` writes it)")
    eval_file: str | None = Field(None, description="held-out JSONL; null: hold out eval_fraction")
    eval_fraction: float = Field(0.1, description="share of train_file held out when no eval_file")
    run_dir: str = Field(description="checkpoints, metrics.jsonl and final/ go here")
    seed: int = Field(0, description="data order, held-out split and init")
    max_seq_len: int = Field(512, description="tokens per example; longer ones are cut or skipped")
    batch_size: int = Field(8, description="examples per optimizer step")
    micro_batch_size: int = Field(
        4, description="examples per forward/backward; batch_size / this = accumulation"
    )
    max_steps: int = Field(50, description="optimizer steps")
    lr: float = Field(description="peak learning rate (AdamW)")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="after warmup: constant, or cosine decay to 0 at max_steps"
    )
    warmup_steps: int = Field(0, description="linear warmup from 0 to lr")
    weight_decay: float = Field(0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, description="gradient clipping norm")
    lora: LoraSpec | None = Field(LoraSpec(), description="LoRA adapters; null: train all weights")
    eval_every_steps: int = Field(
        10, description="evaluate on the held-out set every this many steps"
    )
    save_every_steps: int = Field(25, description="checkpoint step_N/ every this many steps")
    keep_last_checkpoints: int = Field(2, description="older step_N/ dirs are deleted")
    resume: bool = Field(True, description="continue from the newest step_N/ in run_dir if any")
    # On a busy shared machine 1 thread can be 3x faster than 2, because threads of one op wait
    # for each other at every barrier.
    threads: int | None = Field(None, description="torch CPU threads; null: torch's default")
    progress: bool = Field(True, description="show a progress bar")

    @model_validator(mode="after")
    def _check_sizes(self) -> Self:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        for key in ("max_steps", "batch_size", "micro_batch_size", "eval_every_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        return self


def check_max_seq_len(model: Any, max_seq_len: int) -> None:
    """Stop when max_seq_len is longer than the model's position table."""
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and max_seq_len > max_pos:
        raise ConfigError(
            f"max_seq_len {max_seq_len} exceeds the model's {max_pos} positions; lower it"
        )
