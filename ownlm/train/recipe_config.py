"""The knobs shared by the recipes that learn from a JSONL file (SFT, DPO, reward model).

Each recipe's config class subclasses `FileRecipeConfig`, sets its own defaults (run_dir,
max_steps, lr, eval and save intervals) and adds its own knobs (DPO's beta). A shared field set
rather than three copies: the fields, their checks and the resume keys must stay the same in all
three, and they had started to drift (one lacked the `threads` note). The recipes themselves
stay separate functions; nothing here runs a step.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import model_validator

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

    model: str = "smollm2-135m"
    train_file: str
    eval_file: str | None = None  # None: hold out eval_fraction of train_file
    eval_fraction: float = 0.1
    run_dir: str
    seed: int = 0
    max_seq_len: int = 512
    batch_size: int = 8  # examples per optimizer step
    micro_batch_size: int = 4  # examples per forward/backward; batch_size / this = accumulation
    max_steps: int = 50
    lr: float
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoraSpec | None = LoraSpec()  # None (`lora: null`): train all weights
    eval_every_steps: int = 10
    save_every_steps: int = 25
    keep_last_checkpoints: int = 2
    resume: bool = True  # continue from the newest step_N/ in run_dir if there is one
    # torch CPU threads; None keeps torch's default. On a busy shared machine 1 can be 3x faster
    # than 2, because threads of one op wait for each other at every barrier.
    threads: int | None = None
    progress: bool = True

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
