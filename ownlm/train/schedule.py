"""Learning-rate schedule shared by the recipes: linear warm-up, then constant or cosine to 0."""

from __future__ import annotations

import math
from typing import Literal


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
