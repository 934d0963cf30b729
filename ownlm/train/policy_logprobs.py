"""The training forward: log p of sampled completion tokens, with each group's prompt run once.

For P prompts x n completions the prompt's forward (its KV cache, with grad) is computed once
per prompt and shared by its n completions (the cache is repeated n times, which autograd sums
back), and the LM head is applied only at positions whose token is counted in the loss. Result
equals a plain full-sequence forward's log_softmax gathered at the tokens (tests check values
and gradients).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache


def pad_prompts_left(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, L) left-padded ids and (P, L) long attention mask; L = longest prompt."""
    length = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, length - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, length - len(p) :] = 1
    return ids, mask


def token_logprobs(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """log_softmax(lm_head(hidden) / temperature)[target] for hidden (N, H), targets (N,): (N,).

    With chunk_rows, the vocabulary-sized logits exist for only chunk_rows rows at a time
    (recomputed in backward), which bounds memory at the cost of one more head matmul.
    """
    if chunk_rows is None or hidden.shape[0] <= chunk_rows:
        return _head_logprobs(hidden, lm_head, targets, temperature)
    parts = [
        torch.utils.checkpoint.checkpoint(
            _head_logprobs, h, lm_head, t, temperature, use_reentrant=False
        )
        for h, t in zip(hidden.split(chunk_rows), targets.split(chunk_rows), strict=True)
    ]
    return torch.cat(parts)


def _head_logprobs(
    h: torch.Tensor, lm_head: torch.nn.Module, t: torch.Tensor, temperature: float
) -> torch.Tensor:
    weight = getattr(lm_head, "weight", None)
    if isinstance(lm_head, torch.nn.Linear) and lm_head.bias is None and h.dtype == torch.float32:
        return _LinearLogprob.apply(h, weight, t, temperature)
    logits = lm_head(h).float()  # (N, V)
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(1, t.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=1)


class _LinearLogprob(torch.autograd.Function):
    """log_softmax(h @ W.T / temperature)[t] with one (N, V) buffer, reused in place.

    Autograd's version keeps the logits, makes a new tensor for exp(logits - lse) in backward and
    another for the gather's scatter; here the buffer becomes the softmax in forward and its
    gradient in backward (measured: the head's softmax work roughly halves).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, t: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        buf = h @ weight.t()  # (N, V) logits
        if temperature != 1.0:
            buf.div_(temperature)
        picked = buf.gather(1, t.unsqueeze(1)).squeeze(1)
        top = buf.amax(dim=1, keepdim=True)
        buf.sub_(top).exp_()
        total = buf.sum(dim=1, keepdim=True)
        buf.div_(total)  # softmax
        ctx.save_for_backward(h, weight, t, buf)
        ctx.temperature = temperature
        return picked - top.squeeze(1) - total.log().squeeze(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        h, weight, t, buf = ctx.saved_tensors
        # d logp_t / d logits = onehot(t) - softmax, times grad, over temperature
        g = grad.unsqueeze(1)
        buf.mul_(-g)
        buf.scatter_add_(1, t.unsqueeze(1), g)
        if ctx.temperature != 1.0:
            buf.div_(ctx.temperature)
        grad_h = buf @ weight if ctx.needs_input_grad[0] else None
        grad_w = buf.t() @ h if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None


def completion_logprobs(
    model: Any,
    prompt_ids: list[list[int]],
    tokens: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    *,
    pad_id: int,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """log p of each completion token under `model`, (P*n, T); 0 where mask is False.

    With temperature, the logits are divided by it first (the policy the sampler drew from).

    prompt_ids: P unpadded prompts; tokens, mask: (P*n, T) completions, prompt-major (row i
    belongs to prompt i // n), right-padded. Gradients flow to the model's parameters.
    """
    full_shape = tokens.shape
    assert full_shape[0] == len(prompt_ids) * n, (full_shape, len(prompt_ids), n)
    # columns after the last counted token are never needed, not even as inputs
    counted = mask.any(dim=0).nonzero()
    t_len = int(counted[-1]) + 1 if len(counted) else 1
    tokens, mask = tokens[:, :t_len], mask[:, :t_len]
    body = model.get_decoder()
    lm_head = model.get_output_embeddings()
    device = tokens.device

    # 1. each prompt once: (P, L) left-padded, so the last column is every prompt's last token
    p_ids, p_mask = pad_prompts_left(prompt_ids, pad_id)
    p_ids, p_mask = p_ids.to(device), p_mask.to(device)
    p_pos = (p_mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = body(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, past_key_values=cache)
    last_hidden = out.last_hidden_state[:, -1]  # (P, H): predicts completion token 0

    # 2. the n completions of each prompt on its repeated cache; the last token predicts nothing
    cache.batch_repeat_interleave(n)
    lengths = p_mask.sum(dim=1).repeat_interleave(n)  # (P*n,)
    c_pos = lengths.unsqueeze(1) + torch.arange(t_len - 1, device=device)  # (P*n, T-1)
    full_mask = torch.cat(
        [p_mask.repeat_interleave(n, dim=0), torch.ones_like(tokens[:, :-1])], dim=1
    )
    if t_len > 1:
        out = body(
            input_ids=tokens[:, :-1],
            attention_mask=full_mask,
            position_ids=c_pos,
            past_key_values=cache,
        )
        hidden = torch.cat(
            [last_hidden.repeat_interleave(n, dim=0).unsqueeze(1), out.last_hidden_state], dim=1
        )  # (P*n, T, H)
    else:
        hidden = last_hidden.repeat_interleave(n, dim=0).unsqueeze(1)

    # 3. the LM head only where a token counts
    keep = mask.bool()
    picked = token_logprobs(
        hidden[keep], lm_head, tokens[keep], temperature=temperature, chunk_rows=chunk_rows
    )
    logp = torch.zeros(full_shape, dtype=picked.dtype, device=device)
    keep_full = torch.zeros(full_shape, dtype=torch.bool, device=device)
    keep_full[:, :t_len] = keep
    return logp.masked_scatter(keep_full, picked)
