"""tiny_model: small, seeded, offline, and usable with the chat template."""

from __future__ import annotations

from typing import Any

import torch

from ownlm.models.chat import encode_prompt
from ownlm.models.tiny import tiny_model


def test_tiny_is_small_and_runs_a_chat_prompt(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert model.config.vocab_size == len(tok) == 49152
    ids = encode_prompt(tok, [{"role": "user", "content": "hi"}])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 49152)
    assert tok.pad_token_id is not None and tok.padding_side == "left"


def test_same_seed_same_weights_other_seed_differs() -> None:
    rng = torch.get_rng_state()
    a, _ = tiny_model(seed=3, hidden_size=32, layers=1)
    b, _ = tiny_model(seed=3, hidden_size=32, layers=1)
    c, _ = tiny_model(seed=4, hidden_size=32, layers=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_custom_sizes() -> None:
    model, _ = tiny_model(vocab_size=128, hidden_size=32, layers=3)
    assert model.config.vocab_size == 128
    assert len(model.model.layers) == 3 and model.config.hidden_size == 32
