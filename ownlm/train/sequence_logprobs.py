"""Log-probabilities of the counted tokens of right-padded sequences (SFT and DPO share this).

The LM head runs only at positions whose next token counts in the loss: for short answers after
long prompts that skips most of the (vocab 49,152) head's work and memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _backbone_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    # A peft model injects its adapters into the base model's modules, so calling the base
    # model's decoder still runs them (and skips them inside `disable_adapter()`).
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def counted_token_logprobs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token) at every counted position, and the row each one belongs to.

    input_ids, attention_mask, loss_mask: (B, T). Token t is predicted from position t - 1, so
    the first token of a row is never counted. Returns (logp (N,), row (N,)).
    """
    backbone, head = _backbone_and_head(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    counted = loss_mask[:, 1:].bool()  # (B, T-1)
    h = hidden[:, :-1][counted]  # (N, H)
    targets = input_ids[:, 1:][counted]  # (N,)
    logits = head(h).float()  # (N, V)
    logp = -F.cross_entropy(logits, targets, reduction="none")
    rows = torch.arange(input_ids.shape[0]).unsqueeze(1).expand_as(counted)[counted]
    return logp, rows


def sequence_logprobs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Sum of log p over each row's counted tokens, (B,)."""
    logp, rows = counted_token_logprobs(model, input_ids, attention_mask, loss_mask)
    return torch.zeros(input_ids.shape[0], dtype=logp.dtype).index_add(0, rows, logp)
