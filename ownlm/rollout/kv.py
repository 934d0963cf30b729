"""Keys and values of a token prefix, kept between sampler calls (prefix caching).

A multi-turn episode samples a turn, appends a tool result and samples again: without a kept
cache every round re-reads the whole episode from its first token, and on a CPU the prefill is
most of a round (a 135M model reads ~300 tokens/s per thread). `sample_completions(...,
past=..., keep_kv=True)` takes a `PrefixKV` per prompt (the keys and values of its first
`length` tokens), feeds only the rest, and hands back one per row for the next round.
`prefix_kv` computes the one shared by many prompts (a system prompt with the tool list).

Rows of different lengths share one batch the way left-padded prompts do: each row's past is
right-aligned in the cache and its new tokens right-aligned in the query block, the padding
columns are masked out, and every row carries its own position ids, so the holes change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class PrefixKV:
    """Per layer, keys and values (1, kv_heads, length, head_dim) of the first `length` tokens."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])


def supports_kv_reuse(model: Any) -> bool:
    """True when the model caches plain full attention (no sliding window, no recurrent state)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    cache = DynamicCache(config=config)
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


@torch.inference_mode()
def prefix_kv(model: Any, ids: list[int]) -> PrefixKV:
    """Run `ids` once and keep their keys and values."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    model(
        input_ids=torch.tensor([ids], device=device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return PrefixKV(
        keys=[layer.keys.clone() for layer in cache.layers],
        values=[layer.values.clone() for layer in cache.layers],
    )


def common_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with."""
    first, k = prompts[0], min(len(p) for p in prompts)
    for p in prompts[1:]:
        i = 0
        while i < k and p[i] == first[i]:
            i += 1
        k = i
    return k


def batch_cache(model: Any, pasts: list[PrefixKV | None], width: int) -> DynamicCache:
    """One cache of `width` columns, each row's past right-aligned (zeros in front, masked)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    template = next(p for p in pasts if p is not None)
    data = []
    for layer in range(len(template.keys)):
        heads, dim = template.keys[layer].shape[1], template.keys[layer].shape[3]
        k = torch.zeros(len(pasts), heads, width, dim, dtype=dtype, device=device)
        v = torch.zeros_like(k)
        for i, past in enumerate(pasts):
            if past is not None and past.length:
                k[i, :, width - past.length :] = past.keys[layer][0]
                v[i, :, width - past.length :] = past.values[layer][0]
        data.append((k, v))
    return DynamicCache(ddp_cache_data=data, config=model.config)


def take_row(cache: DynamicCache, slot: int, columns: torch.Tensor | None) -> PrefixKV:
    """Row `slot` of a batch cache as a PrefixKV: its unmasked columns (all when None), copied."""
    keys, values = [], []
    for layer in cache.layers:
        k, v = layer.keys[slot : slot + 1], layer.values[slot : slot + 1]
        if columns is None:
            k, v = k.clone(), v.clone()
        else:  # index_select already copies
            k, v = k.index_select(2, columns), v.index_select(2, columns)
        keys.append(k)
        values.append(v)
    return PrefixKV(keys=keys, values=values)
