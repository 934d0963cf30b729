"""What happens at which step, shared by the recipes: the learning-rate schedule (linear warm-up,
then constant or cosine to 0), the optimizer step, the eval/save intervals and the progress bar."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from tqdm import tqdm


def lr_factor(
    step: int, *, warmup_steps: int, max_steps: int, schedule: Literal["constant", "cosine"]
) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_with_schedule(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    max_steps: int,
    schedule: Literal["constant", "cosine"],
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on params and a scheduler that applies `lr_factor` each optimizer step."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, warmup_steps=warmup_steps, max_steps=max_steps, schedule=schedule),
    )
    return optimizer, scheduler


def optimizer_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
) -> tuple[float, float]:
    """Clip the accumulated gradients, step optimizer and schedule, clear the gradients.

    Returns (grad_norm before clipping, learning rate this step used)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), lr


def is_due(done: int, every: int, max_steps: int) -> bool:
    """Whether an eval or save falls after `done` steps: every `every` steps and at the end."""
    return done % every == 0 or done == max_steps


def step_bar(start_step: int, max_steps: int, *, enabled: bool, desc: str) -> Any:
    """The steps start_step..max_steps-1 as a tqdm progress bar (silent when not enabled)."""
    return tqdm(
        range(start_step, max_steps),
        initial=start_step,
        total=max_steps,
        disable=not enabled,
        desc=desc,
    )
