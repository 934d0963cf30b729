"""The shared-prefix training forward equals a plain full-sequence forward, values and grads."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ownlm.train.policy_logprobs import completion_logprobs, pad_prompts_left

PAD = 0


def tiny_llama(tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(cfg).float()


def plain_logprobs(model, prompts, tokens, mask, n, temperature=1.0) -> torch.Tensor:
    """One unpadded full-sequence forward per row, log_softmax gathered at the tokens."""
    rows = []
    for i in range(tokens.shape[0]):
        p = prompts[i // n]
        t_len = int(mask[i].sum())
        ids = torch.tensor(p + tokens[i, :t_len].tolist()).unsqueeze(0)
        logits = model(input_ids=ids).logits[0]
        lp = torch.log_softmax(logits[len(p) - 1 : len(p) - 1 + t_len] / temperature, dim=-1)
        row = torch.zeros(tokens.shape[1])
        row = row.index_put((torch.arange(t_len),), lp.gather(1, ids[0, len(p) :, None])[:, 0])
        rows.append(row)
    return torch.stack(rows)


def make_batch(n: int = 3, t_len: int = 5):
    g = torch.Generator().manual_seed(1)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]  # different lengths: left padding is exercised
    tokens = torch.randint(1, 64, (len(prompts) * n, t_len), generator=g)
    lengths = torch.tensor([5, 3, 1, 5, 4, 2])[: len(prompts) * n]
    mask = torch.arange(t_len).unsqueeze(0) < lengths.unsqueeze(1)
    tokens = tokens.masked_fill(~mask, PAD)
    return prompts, tokens, mask


def test_pad_prompts_left() -> None:
    ids, mask = pad_prompts_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize(
    ("chunk_rows", "tie", "temperature"),
    [(None, True, 1.0), (4, True, 1.0), (None, False, 1.0), (4, False, 0.7), (None, True, 0.7)],
)
def test_shared_prefix_forward_equals_plain_forward(chunk_rows, tie, temperature) -> None:
    model = tiny_llama(tie)
    prompts, tokens, mask = make_batch()
    weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(2))

    ours = completion_logprobs(
        model, prompts, tokens, mask, 3, pad_id=PAD, chunk_rows=chunk_rows, temperature=temperature
    )
    (ours * weights).sum().backward()
    ours_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()

    ref = plain_logprobs(model, prompts, tokens, mask, 3, temperature)
    (ref * weights).sum().backward()

    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    assert (ours[~mask] == 0).all()
    for k, p in model.named_parameters():
        assert torch.allclose(ours_grads[k], p.grad, atol=1e-5), k


def test_single_token_completions() -> None:
    model = tiny_llama()
    prompts, tokens, mask = make_batch(n=2, t_len=1)
    mask = torch.ones_like(mask)
    ours = completion_logprobs(model, prompts, tokens, mask, 2, pad_id=PAD)
    ref = plain_logprobs(model, prompts, tokens, mask, 2)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_trailing_uncounted_columns_are_trimmed() -> None:
    model = tiny_llama()
    prompts, tokens, mask = make_batch()
    mask = mask.clone()
    mask[:, 3:] = False  # e.g. forced or padded tokens at the end: not needed as inputs
    ours = completion_logprobs(model, prompts, tokens, mask, 3, pad_id=PAD)
    ref = plain_logprobs(model, prompts, tokens, mask, 3)
    assert ours.shape == tokens.shape
    assert torch.allclose(ours, ref, atol=1e-5)
    assert (ours[:, 3:] == 0).all()
