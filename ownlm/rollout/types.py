"""Plain types the rollout stage hands to train and eval: sampling settings and sampled groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # After this many tokens inside <think>, the sampler writes the close tag itself and the model
    # answers. None: no budget. The forced tokens are in `tokens` but have completion_mask 0.
    thinking_budget_tokens: int | None = None


@dataclass
class Completions:
    """n samples for each of P prompts, rows ordered prompt-major: row i is prompt i // n.

    tokens/logprobs/completion_mask are right-padded to the longest completion T.
    """

    prompt_ids: list[list[int]]  # P prompts, unpadded
    n: int
    tokens: torch.Tensor  # (P*n, T) long, pad = tokenizer.pad_token_id
    logprobs: torch.Tensor  # (P*n, T) float32, log p of each sampled token under the sampler
    completion_mask: torch.Tensor  # (P*n, T) bool: True where the policy chose the token
    texts: list[str]  # P*n decoded completions (special tokens and stop string removed)
    finish_reasons: list[str]  # "stop" (eos or stop string) or "length"
    stats: dict[str, float] = field(default_factory=dict)  # e.g. rollout/tokens_per_s
    # With sample_completions(keep_kv=True): per row, the rollout.kv.PrefixKV of its prompt and
    # every token but the last, for a next call that continues the row.
    kv: list[Any] | None = None
