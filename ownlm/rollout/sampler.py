"""Batched KV-cache sampler over any Hugging Face causal LM: n samples per prompt, with logprobs.

Each prompt is prefilled once (prompts left-padded into one batch) and its KV cache is repeated
for its n samples. Decoding draws one token per row per step by inverse CDF (a cumulative sum
and one uniform draw, ~50x cheaper than `torch.multinomial` at a 49k vocabulary), and rows that
finish leave the batch, so later steps cost less. Stop strings and the thinking budget are checked
on incrementally decoded text, only when they are set.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from ownlm.errors import ConfigError, DataError
from ownlm.models.chat import THINK_CLOSE, THINK_OPEN, think_close_ids
from ownlm.rollout.kv import PrefixKV, batch_cache, take_row
from ownlm.rollout.types import Completions, SamplingParams


@dataclass
class _Row:
    """Everything one sample accumulates while it decodes."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)
    finish: str | None = None
    stop_hit: str | None = None
    # Incremental detokenization (the prefix/read offsets of TGI and vLLM): text grows as tokens
    # arrive; a token that ends inside a multi-byte character waits for the next one.
    text: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    scan_from: int = 0  # text before this index is not searched again (e.g. forced tokens)
    thinking: bool = False
    think_tokens: int = 0
    forced: deque[int] = field(default_factory=deque)


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    n: int,
    params: SamplingParams,
    *,
    past: list[PrefixKV | None] | None = None,
    keep_kv: bool = False,
) -> Completions:
    """Sample n completions for each prompt; rows come out prompt-major (row i is prompt i // n).

    past[i], if given, holds the keys and values of the first tokens of prompt i: only the rest
    is fed. keep_kv: `Completions.kv[row]` holds the keys and values of the row's prompt and all
    its tokens but the last (the next call's past for that row; see rollout/kv.py).
    """
    _check_request(model, prompt_ids, n, params)
    if past is not None:
        _check_past(prompt_ids, past)
    device = next(model.parameters()).device
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    stop_ids = set(eos_ids)
    watch_text = bool(params.stop) or params.thinking_budget_tokens is not None
    forced_close = think_close_ids(tokenizer)
    generator = _make_generator(params.seed, device)

    rows = [_Row() for _ in range(len(prompt_ids) * n)]
    if params.thinking_budget_tokens is not None:
        for i, ids in enumerate(prompt_ids):
            tail = tokenizer.decode(ids[-32:], skip_special_tokens=False)
            open_thought = tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE)
            for row in rows[i * n : (i + 1) * n]:
                row.thinking = open_thought

    start = time.perf_counter()
    with torch.inference_mode(), _grouped_query_sdpa(device):
        cache, logits, attn_mask, positions, prompt_width = _prefill(
            model, prompt_ids, n, params.max_new_tokens, device, past
        )
        prefill_s = time.perf_counter() - start
        active = list(range(len(rows)))  # row index of each batch slot
        kept: list[PrefixKV | None] = [None] * len(rows)
        for step in range(params.max_new_tokens):
            token_t, logp_t = draw_tokens(logits, params.temperature, params.top_p, generator)
            tokens, logps = token_t.tolist(), logp_t.tolist()
            keep: list[int] = []
            for slot, r in enumerate(active):
                row = rows[r]
                if row.forced:
                    tokens[slot] = row.forced.popleft()
                    _append(row, tokens[slot], 0.0, False)
                else:
                    _append(row, tokens[slot], logps[slot], True)
                _update_row(row, tokenizer, params, stop_ids, forced_close, watch_text)
                if row.finish is None and step + 1 == params.max_new_tokens:
                    row.finish = "length"
                if row.finish is None:
                    keep.append(slot)
                elif keep_kv:  # the cache holds the prompt and every token but this last one
                    cols = None if attn_mask is None else attn_mask[slot, : prompt_width + step]
                    kept[r] = take_row(cache, slot, None if cols is None else cols.nonzero()[:, 0])
            if not keep:
                break
            next_tokens = torch.tensor([tokens[s] for s in keep], device=device).unsqueeze(1)
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                positions = positions.index_select(0, index)
                if attn_mask is not None:
                    attn_mask = attn_mask.index_select(0, index)
                    # Once the padded prompts' rows are done, the rest need no mask at all.
                    attn_mask = None if bool(attn_mask.all()) else attn_mask
                active = [active[s] for s in keep]
            positions = positions + 1
            # Columns seen so far: the padded prompt plus the step + 1 tokens fed until now.
            seen = prompt_width + step + 1
            out = model(
                input_ids=next_tokens,
                attention_mask=None if attn_mask is None else attn_mask[:, :seen],
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1, :].float()
    time_s = time.perf_counter() - start
    out = _collect(rows, prompt_ids, n, tokenizer, pad_id, time_s, prefill_s)
    if keep_kv:
        out.kv = kept
    return out


@contextmanager
def _grouped_query_sdpa(device: torch.device) -> Iterator[None]:
    """On CPU, let transformers call SDPA with enable_gqa even when a padding mask is given.

    By default it then copies K/V to every query head (repeat_kv) in each layer and step, ~10% of
    a decode step here; torch's CPU kernel takes the mask and grouped heads directly. Transformers
    reads TRANSFORMERS_SDPA_FORCE_GQA at every call; CUDA keeps the default, where a mask with
    grouped heads would fall back to the slow math kernel.
    """
    key = "TRANSFORMERS_SDPA_FORCE_GQA"
    previous = os.environ.get(key)
    if device.type == "cpu":
        os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def draw_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from logits (B, V); return tokens (B,) and their logprobs (B,).

    The logprob is under softmax(logits / temperature), before top-p truncation (plain softmax
    for temperature 0, which picks the argmax).
    """
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
        logp = torch.log_softmax(logits, dim=-1)
        return tokens, logp.gather(1, tokens[:, None]).squeeze(1)
    logp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        cdf = sorted_probs.masked_fill(outside, 0.0).cumsum(dim=-1)
    else:
        order, cdf = None, probs.cumsum(dim=-1)
    # Inverse CDF: the first index whose cumulative mass exceeds u * total. Scaling u by the
    # total absorbs float32 rounding in the cumsum and the mass top-p removed.
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    index = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
    tokens = (index if order is None else order.gather(1, index)).squeeze(1)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def _prefill(
    model: Any,
    prompt_ids: list[list[int]],
    n: int,
    max_new_tokens: int,
    device: torch.device,
    past: list[PrefixKV | None] | None,
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
    """Run all prompts once; return the cache, logits, mask, positions per row and cache width.

    Without a past, prompts are left-padded into one block. With one, each row's past is
    right-aligned in the cache and the rest of its prompt right-aligned in the query block
    (rollout/kv.py). The mask has room for max_new_tokens more columns (all ones), so decode
    steps slice it instead of concatenating; it is None when nothing is padded.
    """
    past_lens = [0 if p is None else p.length for p in past or [None] * len(prompt_ids)]
    news = [ids[k:] for ids, k in zip(prompt_ids, past_lens, strict=True)]
    lengths = torch.tensor([len(x) for x in news], device=device)
    width = int(lengths.max())
    input_ids = torch.zeros(len(news), width, dtype=torch.long, device=device)
    for i, ids in enumerate(news):
        input_ids[i, width - len(ids) :] = torch.tensor(ids, device=device)
    pad = torch.arange(width, device=device)[None, :] < (width - lengths)[:, None]  # (P, L)
    mask = (~pad).long()
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    past_width = max(past_lens)
    if past_width:
        assert past is not None
        done = torch.tensor(past_lens, device=device)
        held = torch.arange(past_width, device=device)[None, :] >= (past_width - done)[:, None]
        mask = torch.cat([held.long(), mask], dim=1)
        positions = positions + done[:, None]
        cache = batch_cache(model, past, past_width)
    else:
        cache = DynamicCache(config=model.config)
    # With a cache, always pass the mask: a query block after cached columns is not the
    # top-left causal mask SDPA assumes without one.
    padded = bool(pad.any()) or past_width > 0
    out = model(
        input_ids=input_ids,
        attention_mask=mask if padded else None,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)
    cache.batch_repeat_interleave(n)
    last_positions = positions[:, -1:].repeat_interleave(n, dim=0)  # (P*n, 1)
    full_mask = None
    if padded:
        full_mask = torch.cat([mask, mask.new_ones(len(prompt_ids), max_new_tokens)], dim=1)
        full_mask = full_mask.repeat_interleave(n, dim=0)
    return cache, logits, full_mask, last_positions, past_width + width


def _append(row: _Row, token: int, logprob: float, sampled: bool) -> None:
    row.tokens.append(token)
    row.logprobs.append(logprob)
    row.mask.append(sampled)


def _update_row(
    row: _Row,
    tokenizer: Any,
    params: SamplingParams,
    stop_ids: set[int],
    forced_close: list[int],
    watch_text: bool,
) -> None:
    """Apply eos, stop strings and the thinking budget after a row took a token."""
    sampled = row.mask[-1]
    if sampled and row.tokens[-1] in stop_ids:
        row.finish = "stop"
        return
    if not watch_text:
        return
    old_len = len(row.text)
    row.text += _new_text(row, tokenizer)
    if not sampled:
        row.scan_from = len(row.text)
        return
    for stop in params.stop:
        if stop in row.text[max(row.scan_from, old_len - len(stop) + 1) :]:
            row.finish, row.stop_hit = "stop", stop
            return
    budget = params.thinking_budget_tokens
    if budget is None:
        return
    marker = THINK_CLOSE if row.thinking else THINK_OPEN
    if marker in row.text[max(row.scan_from, old_len - len(marker) + 1) :]:
        row.thinking, row.think_tokens = not row.thinking, 0
        row.scan_from = len(row.text)
    elif row.thinking:
        row.think_tokens += 1
        if row.think_tokens >= budget:
            row.forced.extend(forced_close)
            row.thinking = False


def _new_text(row: _Row, tokenizer: Any) -> str:
    """Text added by the row's last token, or "" while it ends inside a multi-byte character."""
    prefix = tokenizer.decode(row.tokens[row.prefix_offset : row.read_offset])
    full = tokenizer.decode(row.tokens[row.prefix_offset :])
    if len(full) > len(prefix) and not full.endswith("\ufffd"):
        row.prefix_offset, row.read_offset = row.read_offset, len(row.tokens)
        return full[len(prefix) :]
    return ""


def _collect(
    rows: list[_Row],
    prompt_ids: list[list[int]],
    n: int,
    tokenizer: Any,
    pad_id: int,
    time_s: float,
    prefill_s: float,
) -> Completions:
    """Right-pad the rows into tensors and decode their texts."""
    width = max(len(row.tokens) for row in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    logprobs = torch.zeros(len(rows), width, dtype=torch.float32)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    texts, reasons = [], []
    for i, row in enumerate(rows):
        k = len(row.tokens)
        tokens[i, :k] = torch.tensor(row.tokens, dtype=torch.long)
        logprobs[i, :k] = torch.tensor(row.logprobs, dtype=torch.float32)
        mask[i, :k] = torch.tensor(row.mask, dtype=torch.bool)
        text = tokenizer.decode(row.tokens, skip_special_tokens=True)
        if row.stop_hit is not None:
            # The stop string was found as soon as a token completed it: its last occurrence.
            cut = text.rfind(row.stop_hit)
            text = text[:cut] if cut >= 0 else text
        texts.append(text)
        reasons.append(row.finish or "length")
    total = int(sum(len(row.tokens) for row in rows))
    stats = {
        "rollout/tokens": float(total),
        "rollout/time_s": time_s,
        "rollout/prefill_s": prefill_s,
        "rollout/tokens_per_s": total / time_s if time_s > 0 else 0.0,
    }
    return Completions(
        prompt_ids=[list(p) for p in prompt_ids],
        n=n,
        tokens=tokens,
        logprobs=logprobs,
        completion_mask=mask,
        texts=texts,
        finish_reasons=reasons,
        stats=stats,
    )


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a completion: the tokenizer's and model's eos, and <|im_end|>."""
    ids: list[int] = []
    generation_config = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.append(source)
        elif isinstance(source, list | tuple):
            ids.extend(int(t) for t in source)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.append(im_end)
    if not ids:
        raise ConfigError("the tokenizer has no eos token; set tokenizer.eos_token before sampling")
    return list(dict.fromkeys(ids))


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator for the draws; without a seed it takes one from torch's global generator."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _check_past(prompt_ids: list[list[int]], past: list[PrefixKV | None]) -> None:
    """A past must come one per prompt and leave at least one prompt token to feed."""
    if len(past) != len(prompt_ids):
        raise ConfigError(f"past has {len(past)} entries for {len(prompt_ids)} prompts")
    for i, (ids, p) in enumerate(zip(prompt_ids, past, strict=True)):
        if p is not None and p.length >= len(ids):
            raise ConfigError(
                f"past of prompt {i} covers {p.length} tokens of its {len(ids)}: leave at least "
                "one token to feed"
            )


def _check_request(model: Any, prompt_ids: list[list[int]], n: int, params: SamplingParams) -> None:
    """Refuse requests that cannot run, naming the value and the fix."""
    if not prompt_ids:
        raise DataError("no prompts to sample from; pass at least one prompt")
    if any(len(p) == 0 for p in prompt_ids):
        empty = next(i for i, p in enumerate(prompt_ids) if len(p) == 0)
        raise DataError(f"prompt {empty} has no tokens; drop it or give it text")
    if n < 1:
        raise ConfigError(f"samples per prompt must be at least 1, got {n}")
    if params.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {params.top_p}")
    if params.thinking_budget_tokens is not None and params.thinking_budget_tokens < 1:
        raise ConfigError(
            f"thinking_budget_tokens must be at least 1 (or None), got "
            f"{params.thinking_budget_tokens}"
        )
    vocab = model.get_input_embeddings().num_embeddings
    for i, ids in enumerate(prompt_ids):
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise DataError(
                f"prompt {i} has token id {bad[0]} outside the vocabulary (0..{vocab - 1})"
            )
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(p) for p in prompt_ids)
    if limit is not None and longest + params.max_new_tokens > limit:
        raise ConfigError(
            f"prompt of {longest} tokens + max_new_tokens {params.max_new_tokens} exceeds the "
            f"model's context of {limit}; shorten the prompt or lower max_new_tokens"
        )
