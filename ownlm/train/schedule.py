"""What happens at which step, shared by the recipes: the learning-rate schedule (linear warm-up,
then constant or cosine to 0), the optimizer step, the eval/save intervals and the progress bar."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
from tqdm import tqdm

if TYPE_CHECKING:
    from ownlm.train.recipe_config import RunConfig


def lr_factor(
    step: int, *, warmup_steps: int, steps: int, schedule: Literal["constant", "cosine"]
) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based) of `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_with_schedule(
    params: Iterable[torch.nn.Parameter],
    cfg: RunConfig,
    *,
    schedule: Literal["constant", "cosine"] = "constant",
    fused: bool | None = None,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on params with cfg's lr, betas and weight decay, and a scheduler that applies
    `lr_factor` (cfg's warm-up, then `schedule`) each optimizer step. fused: torch's choice."""
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused
    )
    warmup_steps, steps = cfg.warmup_steps, cfg.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, warmup_steps=warmup_steps, steps=steps, schedule=schedule),
    )
    return optimizer, scheduler


def optimizer_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float | None,
) -> tuple[float, float]:
    """Clip the accumulated gradients (None: no clipping), step optimizer and schedule, clear the
    gradients. Returns (grad_norm before clipping, learning rate this step used)."""
    # An infinite limit scales every gradient by exactly 1.0 and still measures the norm.
    limit = math.inf if max_grad_norm is None else max_grad_norm
    grad_norm = torch.nn.utils.clip_grad_norm_(params, limit)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), lr


def is_due(done: int, every: int, steps: int) -> bool:
    """Whether an eval or save falls after `done` of `steps` steps: every `every` steps (0: never)
    and at the end."""
    return (every > 0 and done % every == 0) or done == steps


def step_bar(start_step: int, steps: int, *, enabled: bool, desc: str) -> Any:
    """The steps start_step..steps-1 as a tqdm progress bar (silent when not enabled)."""
    return tqdm(
        range(start_step, steps),
        initial=start_step,
        total=steps,
        disable=not enabled,
        desc=desc,
    )
