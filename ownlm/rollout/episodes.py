"""Multi-turn batched rollout: many tool-using episodes at once, one token row per episode.

    out = run_episodes(model, tokenizer, env, tasks, n=4, params=SamplingParams(...),
                       max_episode_tokens=384)
    out.completions      # a Completions: GRPO's loss and logprob code take it unchanged
    out.episodes[0]      # turns, tool calls, malformed calls, finish reason, transcript

Each round samples one assistant turn for every live episode in one `sample_completions` call
(prompt = the episode's prompt + all its tokens so far, stop at `</tool_call>`), then runs the
calls and appends the tool results. The row of an episode is its tokens after the prompt, in the
order the policy saw them: sampled tokens (completion_mask True, the sampler's logprobs), then
the tokens ownlm inserts (end of turn, the tool message, the next assistant header: mask False,
no gradient). Nothing is re-encoded from text, so the training forward over prompt + row sees
exactly what the sampler saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ownlm.envs.base import Message, MultiTurnEnv, Task
from ownlm.envs.tools import (
    TOOL_CALL_CLOSE,
    ToolCallError,
    parse_tool_call,
)
from ownlm.models.chat import THINK_ON_PREFIX, encode_prompt, render_prompt, split_thinking
from ownlm.rollout.kv import PrefixKV, common_prefix_length, prefix_kv, supports_kv_reuse
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import Completions, SamplingParams

_MARK = "\x00ownlm-turn-end\x00"


@dataclass
class Episode:
    """One multi-turn rollout: what happened, and the messages after the prompt."""

    task_id: str
    transcript: list[Message] = field(default_factory=list)
    turns: int = 0  # assistant turns sampled
    tool_calls: int = 0  # calls made, malformed ones included
    malformed: int = 0  # calls that could not run (bad JSON, unknown tool, bad arguments, ...)
    finish_reason: str | None = None  # "answer", "max_turns" or "max_tokens"
    answer: str = ""  # the last assistant turn without its thought


@dataclass
class EpisodeBatch:
    """Episodes of P tasks x n samples, rows prompt-major as in Completions."""

    completions: Completions
    episodes: list[Episode]

    def stats(self) -> dict[str, float]:
        """Rollout metrics: tool-use rate, mean turns and calls, malformed rate, finish reasons."""
        eps = self.episodes
        calls = sum(e.tool_calls for e in eps)
        return {
            "rollout/tool_use_rate": sum(e.tool_calls > 0 for e in eps) / len(eps),
            "rollout/turns_mean": sum(e.turns for e in eps) / len(eps),
            "rollout/tool_calls_mean": calls / len(eps),
            "rollout/malformed_rate": sum(e.malformed for e in eps) / calls if calls else 0.0,
            "rollout/max_turns_frac": sum(e.finish_reason == "max_turns" for e in eps) / len(eps),
            "rollout/max_tokens_frac": sum(e.finish_reason == "max_tokens" for e in eps) / len(eps),
        }


@dataclass
class _Row:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def run_episodes(
    model: Any,
    tokenizer: Any,
    env: MultiTurnEnv,
    tasks: list[Task],
    n: int,
    params: SamplingParams,
    *,
    max_episode_tokens: int,
    enable_thinking: bool = False,
    kv_reuse: bool = True,
) -> EpisodeBatch:
    """Run n episodes per task to an answer, max_turns or the token limit (see module doc).

    params.max_new_tokens bounds one assistant turn; max_episode_tokens bounds the whole row
    (sampled and inserted tokens). params.seed, if set, is offset by the round number.
    kv_reuse (when the model's cache allows it): the prefix all prompts share is read once, each
    task's prompt once for its n episodes, and each episode keeps its keys and values between
    rounds, so a round reads only the tokens inserted since the last (rollout/kv.py).
    """
    start = time.perf_counter()
    prompts = [
        encode_prompt(tokenizer, env.reset(t), enable_thinking=enable_thinking) for t in tasks
    ]
    rows = [_Row() for _ in range(len(tasks) * n)]
    episodes = [Episode(task_id=tasks[i // n].id) for i in range(len(rows))]
    stop = tuple(dict.fromkeys((*params.stop, TOOL_CALL_CLOSE)))
    live = list(range(len(rows)))
    sampled_tokens, rounds = 0, 0
    reuse = kv_reuse and supports_kv_reuse(model)
    kvs: list[PrefixKV | None] = [None] * len(rows)
    shared = _shared_prefix(model, prompts) if reuse else None
    while live:
        left = [max_episode_tokens - len(rows[r].tokens) for r in live]
        turn_params = SamplingParams(
            max_new_tokens=max(1, min(params.max_new_tokens, max(left))),
            temperature=params.temperature,
            top_p=params.top_p,
            stop=stop,
            seed=None if params.seed is None else params.seed + 7919 * rounds,
            thinking_budget_tokens=params.thinking_budget_tokens,
        )
        if reuse and rounds == 0:  # each prompt once for its n episodes
            past = [shared] * len(prompts)
            comps = sample_completions(
                model, tokenizer, prompts, n, turn_params, past=past, keep_kv=True
            )
        else:
            comps = sample_completions(
                model,
                tokenizer,
                [prompts[r // n] + rows[r].tokens for r in live],
                1,
                turn_params,
                past=[kvs[r] for r in live] if reuse else None,
                keep_kv=reuse,
            )
        rounds += 1
        still: list[int] = []
        for j, r in enumerate(live):
            row, ep, task = rows[r], episodes[r], tasks[r // n]
            kvs[r] = None  # kept below only if the episode goes on
            k = _row_length(comps, j)
            new = comps.tokens[j, :k].tolist()
            cut = min(k, left[j])
            row.tokens += new[:cut]
            row.logprobs += comps.logprobs[j, :cut].tolist()
            row.mask += comps.completion_mask[j, :cut].tolist()
            sampled_tokens += cut
            ep.turns += 1
            text = comps.texts[j]
            reason = comps.finish_reasons[j]
            calls = reason == "stop" and TOOL_CALL_CLOSE in tokenizer.decode(new)
            if calls:
                text += TOOL_CALL_CLOSE
            # the turn of a thinking prompt starts inside the thought: keep its open tag
            content = THINK_ON_PREFIX + text if enable_thinking else text
            ep.transcript.append({"role": "assistant", "content": content})
            ep.answer = split_thinking(content)[1]
            if cut < k or reason == "length":
                ep.finish_reason = "max_tokens"
                continue
            if not calls:  # ended by end-of-turn: the answer (an unclosed call scores as one)
                ep.finish_reason = "answer"
                continue
            result = _run_call(env, task, ep, row, ep.answer)
            ep.transcript.append({"role": "tool", "content": result})
            if ep.turns >= env.max_turns:
                ep.finish_reason = "max_turns"
                continue
            glue = _tool_glue(tokenizer, result, enable_thinking)
            if len(row.tokens) + len(glue) >= max_episode_tokens:
                ep.finish_reason = "max_tokens"
                continue
            row.tokens += glue
            row.logprobs += [0.0] * len(glue)
            row.mask += [False] * len(glue)
            kvs[r] = comps.kv[j] if comps.kv is not None else None
            still.append(r)
        live = still
    return EpisodeBatch(
        completions=_collect(rows, episodes, prompts, n, tokenizer, start, sampled_tokens),
        episodes=episodes,
    )


def _shared_prefix(model: Any, prompts: list[list[int]]) -> PrefixKV | None:
    """Keys and values of the tokens all prompts start with (a system prompt), if any."""
    k = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
    return prefix_kv(model, prompts[0][:k]) if k > 0 else None


def _row_length(comps: Completions, j: int) -> int:
    """Tokens row j of a sampler result really has (its tail is right padding)."""
    mask = comps.completion_mask[j]
    idx = mask.nonzero()
    # Sampled rows end at their last sampled token (forced thinking-budget tokens are followed
    # by sampled ones, so the last True marks the end).
    return int(idx[-1]) + 1 if len(idx) else 0


def _run_call(env: MultiTurnEnv, task: Task, ep: Episode, row: _Row, answer: str) -> str:
    """Parse and run the turn's tool call; a call that cannot run returns its error as text."""
    ep.tool_calls += 1
    try:
        call = parse_tool_call(answer, env.tools)
        return env.step(task, call, row.state)
    except ToolCallError as err:
        ep.malformed += 1
        return f"Error: {err}"


def _tool_glue(tokenizer: Any, result: str, enable_thinking: bool) -> list[int]:
    """Tokens after a tool-calling turn: end of turn, the tool message, the next assistant header.

    Found from the chat template itself: render a conversation whose assistant turn is a marker,
    followed by the tool message and the generation prompt, and keep what follows the marker.
    """
    text = render_prompt(
        tokenizer,
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": _MARK},
            {"role": "tool", "content": result},
        ],
        enable_thinking=enable_thinking,
    )
    glue = text[text.find(_MARK) + len(_MARK) :]
    return list(tokenizer.encode(glue, add_special_tokens=False))


def _collect(
    rows: list[_Row],
    episodes: list[Episode],
    prompts: list[list[int]],
    n: int,
    tokenizer: Any,
    start: float,
    sampled_tokens: int,
) -> Completions:
    """Right-pad the episode rows into a Completions (finish reason: stop = answered)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(1, max(len(r.tokens) for r in rows))
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    logprobs = torch.zeros(len(rows), width, dtype=torch.float32)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        k = len(row.tokens)
        tokens[i, :k] = torch.tensor(row.tokens, dtype=torch.long)
        logprobs[i, :k] = torch.tensor(row.logprobs, dtype=torch.float32)
        mask[i, :k] = torch.tensor(row.mask, dtype=torch.bool)
    time_s = time.perf_counter() - start
    return Completions(
        prompt_ids=[list(p) for p in prompts],
        n=n,
        tokens=tokens,
        logprobs=logprobs,
        completion_mask=mask,
        texts=[tokenizer.decode(r.tokens, skip_special_tokens=False) for r in rows],
        finish_reasons=["stop" if e.finish_reason == "answer" else "length" for e in episodes],
        stats={
            "rollout/tokens": float(sampled_tokens),
            "rollout/time_s": time_s,
            "rollout/tokens_per_s": sampled_tokens / time_s if time_s > 0 else 0.0,
        },
    )
