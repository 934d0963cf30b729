"""The knobs every recipe shares, under one name each: `RunConfig` (SFT, DPO, reward model, GRPO)
and `FileRecipeConfig` (the recipes that learn from a JSONL file: SFT, DPO, reward model).

Each recipe's config class subclasses one of them, sets its own defaults (run_dir, steps, lr,
intervals) and adds its own knobs (DPO's beta, GRPO's groups). One field set rather than four
copies: the names, checks and resume keys must stay the same in every recipe, and they had
drifted (`steps`/`max_steps`, `checkpoint_every_steps`/`save_every_steps`,
`keep_checkpoints`/`keep_last_checkpoints`, `grad_clip`/`max_grad_norm`). A config that still
uses an old name is refused with the new one (`renamed_keys`). The recipes themselves stay
separate functions; nothing here runs a step.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import Field, model_validator

from ownlm.config import Config
from ownlm.errors import ConfigError
from ownlm.train.lora import LoraSpec


class RunConfig(Config):
    """Knobs of every training run: length, optimizer, clipping, checkpoints, resume, threads."""

    # The names these knobs had in one recipe or another; a config that uses one is refused
    # with the new name (ownlm/config.py).
    renamed_keys: ClassVar[dict[str, str]] = {
        "max_steps": "steps",
        "checkpoint_every_steps": "save_every_steps",
        "keep_last_checkpoints": "keep_checkpoints",
        "grad_clip": "max_grad_norm",
    }
    # Keys that change a run's numbers: a resumed run must agree with its checkpoint on them.
    # `steps` is not one here: a GRPO run may be continued past its planned end; a recipe whose
    # schedule depends on it (cosine) adds it.
    resume_keys: ClassVar[tuple[str, ...]] = (
        "model", "seed", "lr", "betas", "weight_decay", "warmup_steps", "max_grad_norm", "lora",
    )  # fmt: skip

    model: str = Field(
        "smollm2-135m", description="model to start from: an HF model dir, a run dir or a name"
    )
    run_dir: str = Field(description="checkpoints, metrics.jsonl and final/ go here")
    seed: int = Field(0, description="data order, sampling, held-out split and init")
    steps: int = Field(50, description="optimizer steps")
    lr: float = Field(description="peak learning rate (AdamW)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    weight_decay: float = Field(0.0, description="AdamW weight decay")
    warmup_steps: int = Field(0, description="linear warm-up from 0 to lr over this many steps")
    max_grad_norm: float | None = Field(
        1.0, description="clip the gradient norm to this; null: no clipping"
    )
    lora: LoraSpec | None = Field(LoraSpec(), description="LoRA adapters; null: train all weights")
    save_every_steps: int = Field(
        25, description="checkpoint step_N/ every this many steps and at the last; 0: last only"
    )
    keep_checkpoints: int = Field(2, description="older step_N/ dirs are deleted")
    resume: bool = Field(True, description="continue from the newest step_N/ in run_dir if any")
    # On a busy shared machine 1 thread can be 3x faster than 2, because threads of one op wait
    # for each other at every barrier.
    threads: int | None = Field(None, description="torch CPU threads; null: torch's default")
    progress: bool = Field(True, description="show a progress bar")

    @model_validator(mode="after")
    def _check_run(self) -> Self:
        for key in ("steps", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "save_every_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be 0 or more, got {getattr(self, key)}")
        return self


class FileRecipeConfig(RunConfig):
    """Knobs of a recipe that trains on examples (chats or pairs) read from train_file."""

    resume_keys: ClassVar[tuple[str, ...]] = (
        *RunConfig.resume_keys,
        "train_file", "eval_file", "eval_fraction", "max_seq_len", "batch_size",
        "micro_batch_size", "steps", "lr_schedule",
    )  # fmt: skip

    train_file: str = Field(description="training JSONL (`ownlm export` writes it)")
    eval_file: str | None = Field(None, description="held-out JSONL; null: hold out eval_fraction")
    eval_fraction: float = Field(0.1, description="share of train_file held out when no eval_file")
    max_seq_len: int = Field(512, description="tokens per example; longer ones are cut or skipped")
    batch_size: int = Field(8, description="examples per optimizer step")
    micro_batch_size: int = Field(
        4, description="examples per forward/backward; batch_size / this = accumulation"
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="after warm-up: constant, or cosine decay to 0 at the last step"
    )
    eval_every_steps: int = Field(
        10, description="evaluate on the held-out set every this many steps (and at 0 and the last)"
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> Self:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        for key in ("batch_size", "micro_batch_size", "eval_every_steps"):
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
