"""Hand-computed checks of the loss math: DPO, group advantages, GRPO/Dr.GRPO/DAPO, KL."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from ownlm.train.losses import (
    GRPO_LOSSES,
    LossName,
    batch_normalizer,
    clip_fraction,
    dpo_loss,
    group_advantages,
    grpo_loss,
    kl_k3,
    zero_variance_groups,
)


def test_dpo_loss_and_margin_by_hand() -> None:
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -3.0])
    rc, rr = torch.tensor([-1.5, -3.0]), torch.tensor([-1.5, -3.0])
    loss, margin = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # pair 0: 0.1 * ((-1 + 1.5) - (-2 + 1.5)) = 0.1 -> log(1 + e^-0.1); pair 1: 0 -> log 2
    expected = (math.log(1 + math.exp(-0.1)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert margin.item() == pytest.approx(0.05, abs=1e-7)


def test_dpo_loss_gradient_pushes_chosen_up() -> None:
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-1.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, torch.tensor([-1.0]), torch.tensor([-1.0]), beta=1.0)
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.5)  # -beta * sigmoid(-0) = -0.5
    assert pr.grad.item() == pytest.approx(0.5)


REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])


def test_group_advantages_grpo_without_std() -> None:
    adv = group_advantages(REWARDS, 3, scale_by_std=False)
    assert torch.allclose(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]))


def test_group_advantages_grpo_with_std() -> None:
    adv = group_advantages(REWARDS, 3, scale_by_std=True)
    std = math.sqrt(1 / 3)  # sample std of (1, 0, 0)
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0]) / torch.tensor(
        [std + 1e-4] * 3 + [1e-4] * 3
    )
    assert torch.allclose(adv, expected, atol=1e-6)
    assert adv[3:].abs().max().item() == 0.0  # an all-equal group gives 0, not NaN


def test_group_advantages_rloo_leave_one_out() -> None:
    adv = group_advantages(REWARDS, 3, scale_by_std=False, estimator="rloo")
    # r0: 1 - mean(0, 0) = 1; r1: 0 - mean(1, 0) = -0.5
    assert torch.allclose(adv, torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0, 0.0]))


def test_group_advantages_rejects_groups_of_one() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(4), 1, scale_by_std=False)
    with pytest.raises(ValueError, match="do not split"):
        group_advantages(torch.ones(5), 2, scale_by_std=False)


def test_zero_variance_groups() -> None:
    assert zero_variance_groups(REWARDS, 3).tolist() == [False, True]


# 2 x 3 batch, ratio 1: per-token loss is -A on every counted token.
LOGP = torch.zeros(2, 3)
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_grpo_variant_means_per_sequence_then_over_sequences() -> None:
    loss = grpo_loss(LOGP, LOGP, ADV, MASK, variant="grpo")
    assert loss.item() == pytest.approx((-1 + 2) / 2)


def test_dr_grpo_variant_divides_by_constant() -> None:
    loss = grpo_loss(LOGP, LOGP, ADV, MASK, variant="dr_grpo", max_tokens=3)
    assert loss.item() == pytest.approx((-1 - 1 + 2 + 2 + 2) / (2 * 3))
    with pytest.raises(ValueError, match="max_tokens"):
        grpo_loss(LOGP, LOGP, ADV, MASK, variant="dr_grpo")


def test_dapo_variant_token_level_mean() -> None:
    loss = grpo_loss(LOGP, LOGP, ADV, MASK, variant="dapo")
    assert loss.item() == pytest.approx(4 / 5)


@pytest.mark.parametrize("variant", ["grpo", "dr_grpo", "dapo"])
def test_normalizer_lets_micro_batches_add_up(variant: str) -> None:
    full = grpo_loss(LOGP, LOGP, ADV, MASK, variant=variant, max_tokens=3)
    denom = {"grpo": 2, "dr_grpo": 6, "dapo": 5}[variant]
    parts = sum(
        grpo_loss(
            LOGP[i : i + 1],
            LOGP[i : i + 1],
            ADV[i : i + 1],
            MASK[i : i + 1],
            variant=variant,
            max_tokens=3,
            normalizer=denom,
        )
        for i in range(2)
    )
    assert parts.item() == pytest.approx(full.item())


def test_clip_higher_by_hand() -> None:
    old = torch.zeros(2, 3)
    logp = torch.full((2, 3), math.log(1.5), requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 3)
    loss = grpo_loss(logp, old, adv, mask, variant="grpo", clip_eps_low=0.2, clip_eps_high=0.28)
    # A=+1: min(1.5, 1.28) -> -1.28; A=-1: min(-1.5, -1.28) = -1.5 -> +1.5
    assert loss.item() == pytest.approx((-1.28 + 1.5) / 2)
    sym = grpo_loss(logp, old, adv, mask, variant="grpo", clip_eps_low=0.2)
    assert sym.item() == pytest.approx((-1.2 + 1.5) / 2)
    loss.backward()
    # clipped row has no gradient; unclipped row: d(ratio)/d(logp) = 1.5, / 3 tokens / 2 seqs
    assert torch.allclose(logp.grad[0], torch.zeros(3))
    assert torch.allclose(logp.grad[1], torch.full((3,), 0.25))
    frac = clip_fraction(logp, old, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    assert frac == pytest.approx(1.0)


def test_kl_k3_by_hand_and_beta() -> None:
    ref = torch.full((2, 3), math.log(0.5))
    kl = kl_k3(LOGP, ref)
    assert torch.allclose(kl, torch.full((2, 3), 0.5 + math.log(2) - 1))
    with_kl = grpo_loss(LOGP, LOGP, ADV, MASK, variant="dapo", ref_logp=ref, beta=0.1)
    assert with_kl.item() == pytest.approx(4 / 5 + 0.1 * (0.5 + math.log(2) - 1), abs=1e-6)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(LOGP, LOGP, ADV, MASK, beta=0.1)


@pytest.mark.parametrize("variant", ["grpo", "dr_grpo", "dapo"])
def test_batch_normalizer_is_the_whole_batch_denominator(variant: str) -> None:
    # MASK: 2 sequences, 5 counted tokens; max_tokens 3 (the denominators above)
    rows, tokens = MASK.shape[0], int(MASK.sum())
    assert batch_normalizer(variant, rows=rows, tokens=tokens, max_tokens=3) == {
        "grpo": 2, "dr_grpo": 6, "dapo": 5
    }[variant]  # fmt: skip


def test_every_loss_name_has_one_row_in_the_table() -> None:
    assert set(GRPO_LOSSES) == set(typing.get_args(LossName))
    # the rows as the papers define them
    assert [n for n, s in GRPO_LOSSES.items() if s.scale_by_std] == ["grpo", "dapo"]
    assert [n for n, s in GRPO_LOSSES.items() if s.drop_flat_groups] == ["dapo"]
    assert {n: s.reduction for n, s in GRPO_LOSSES.items()} == {
        "grpo": "grpo", "dr_grpo": "dr_grpo", "dapo": "dapo", "rloo": "grpo"
    }  # fmt: skip
    assert {n: s.estimator for n, s in GRPO_LOSSES.items()}["rloo"] == "rloo"
    assert GRPO_LOSSES["dapo"].clip_eps_high == 0.28
