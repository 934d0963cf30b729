"""Loss math for the recipes as pure tensor functions: DPO, group advantages, the GRPO family.

Shapes: B sequences, T completion tokens. `logp` is log p of each sampled token, (B, T);
`mask` is 1 where a token counts in the loss (the policy chose it), 0 on padding.

GRPO family: what each `loss:` choice means is one row of `GRPO_LOSSES` (std scaling, advantage
estimator, dropping groups without signal, reduction, default upper clip); the recipe reads it
from there and nowhere else. The reductions (`variant` of `grpo_loss`):
- "grpo"    (Shao et al. 2024): mean over a sequence's tokens, then mean over sequences.
- "dr_grpo" (Liu et al. 2025): sum over tokens divided by a constant (max_tokens), no
  per-sequence length normalisation; Dr. GRPO also drops the std scaling of advantages.
- "dapo"    (Yu et al. 2025): token-level mean over all tokens of the batch; DAPO also uses
  clip-higher (eps_low 0.2, eps_high 0.28) and drops zero-variance groups.
"rloo" (Ahmadian et al. 2024) is the leave-one-out baseline with the "grpo" reduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Variant = Literal["grpo", "dr_grpo", "dapo"]  # how token losses add up to the batch's loss
Estimator = Literal["grpo", "rloo"]
LossName = Literal["grpo", "dr_grpo", "dapo", "rloo"]


@dataclass(frozen=True)
class GRPOLoss:
    """What one `loss:` choice of the GRPO family does at each step of the recipe."""

    scale_by_std: bool  # advantages divided by the group's reward std
    estimator: Estimator  # baseline: the group's mean, or the mean of the other samples (rloo)
    drop_flat_groups: bool  # groups whose rewards are all equal leave the loss and its denominator
    reduction: Variant  # grpo_loss's variant
    clip_eps_high: float | None  # default upper ratio clip; None: the lower one (clip_eps_low)


GRPO_LOSSES: dict[LossName, GRPOLoss] = {
    "grpo": GRPOLoss(
        scale_by_std=True, estimator="grpo", drop_flat_groups=False, reduction="grpo",
        clip_eps_high=None,
    ),
    "dr_grpo": GRPOLoss(
        scale_by_std=False, estimator="grpo", drop_flat_groups=False, reduction="dr_grpo",
        clip_eps_high=None,
    ),
    "dapo": GRPOLoss(
        scale_by_std=True, estimator="grpo", drop_flat_groups=True, reduction="dapo",
        clip_eps_high=0.28,
    ),
    "rloo": GRPOLoss(
        scale_by_std=False, estimator="rloo", drop_flat_groups=False, reduction="grpo",
        clip_eps_high=None,
    ),
}  # fmt: skip

# Added to the group std before dividing, as TRL does, so an all-equal group gives 0, not NaN.
STD_EPS = 1e-4


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al. 2023) on sequence-level summed logps, each (B,).

    Returns (loss, margin): the mean of -log sigmoid(beta * ((pc - rc) - (pr - rr))) and the
    mean implicit reward margin beta * ((pc - rc) - (pr - rr)), detached.
    """
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    loss = -F.logsigmoid(logits).mean()
    return loss, logits.detach().mean()


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale_by_std: bool,
    estimator: Estimator = "grpo",
) -> torch.Tensor:
    """Advantages of rewards (P*G,) ordered group-major (row i belongs to group i // G).

    "grpo": r - mean(group); "rloo": r - mean of the other G-1 rewards of the group
    (Ahmadian et al. 2024), which equals G/(G-1) * (r - mean). With scale_by_std the result is
    divided by the group's sample std (+1e-4).
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 to compare samples, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # (P, G)
    mean = r.mean(dim=1, keepdim=True)
    if estimator == "grpo":
        adv = r - mean
    elif estimator == "rloo":
        baseline = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
        adv = r - baseline
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r}; use 'grpo' or 'rloo'")
    if scale_by_std:
        adv = adv / (r.std(dim=1, keepdim=True) + STD_EPS)
    return adv.reshape(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P,) bool: True for groups whose rewards are all equal (DAPO drops them)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(dim=1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || ref): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    variant: Variant = "grpo",
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    max_tokens: int | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Clipped policy-gradient loss of the GRPO family (scalar).

    logp, old_logp, mask: (B, T); adv: (B,). Per token: -min(ratio * A, clip(ratio) * A)
    (+ beta * k3 KL to ref_logp), ratio = exp(logp - old_logp), clipped to
    [1 - clip_eps_low, 1 + clip_eps_high] (clip_eps_high defaults to clip_eps_low).
    `normalizer` replaces the batch denominator (sequences for grpo, sequences * max_tokens for
    dr_grpo, tokens for dapo) so that micro-batches of one batch add up to the batch's loss.
    """
    eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    a = adv.to(logp.dtype).unsqueeze(1)  # (B, 1)
    per_token = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_eps_low, 1 + eps_high) * a)
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp (the reference model's token logps)")
        per_token = per_token + beta * kl_k3(logp, ref_logp)
    masked = per_token * m  # (B, T)
    if variant == "grpo":
        per_seq = masked.sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return per_seq.sum() / (normalizer if normalizer is not None else logp.shape[0])
    if variant == "dr_grpo":
        if max_tokens is None:
            raise ValueError("dr_grpo divides by a constant: pass max_tokens (max_new_tokens)")
        denom = normalizer if normalizer is not None else logp.shape[0] * max_tokens
        return masked.sum() / denom
    if variant == "dapo":
        denom = normalizer if normalizer is not None else m.sum().clamp(min=1)
        return masked.sum() / denom
    raise ValueError(f"unknown loss variant {variant!r}; use 'grpo', 'dr_grpo' or 'dapo'")


def batch_normalizer(reduction: Variant, *, rows: int, tokens: int, max_tokens: int) -> float:
    """The denominator grpo_loss would use for a whole batch of `rows` sequences with `tokens`
    counted tokens; passed as `normalizer`, it makes the batch's micro-batch losses add up."""
    if reduction == "grpo":
        return float(rows)
    if reduction == "dr_grpo":
        return float(rows) * max_tokens
    return float(tokens)


def clip_fraction(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
) -> float:
    """Share of counted tokens whose ratio lies outside [1 - eps_low, 1 + eps_high]."""
    ratio = torch.exp(logp.detach() - old_logp)
    out = ((ratio < 1 - clip_eps_low) | (ratio > 1 + clip_eps_high)) & mask.bool()
    return float(out.sum()) / max(int(mask.sum()), 1)
