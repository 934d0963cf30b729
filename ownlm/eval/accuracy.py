"""Held-out accuracy of a model on an env's test split, with a 95% confidence interval.

    ownlm eval --set model=runs/grpo --set n_problems=200
    ownlm eval --set model=smollm2-135m --set enable_thinking=true --set thinking_budget_tokens=64

Greedy by default. The interval is Wilson's (good at small n and near 0 or 1); `diff_ci` gives
the interval of a gain between two evals, paired by problem when both saw the same problems
(both live in `ownlm/stats.py`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ownlm.config import Config
from ownlm.envs.base import is_multi_turn
from ownlm.envs.registry import EnvConfig, env_field, make_env
from ownlm.errors import ConfigError
from ownlm.models.chat import encode_prompt, split_thinking
from ownlm.models.llama_cpp import Quantization
from ownlm.models.load import load_model, load_tokenizer
from ownlm.rollout.episodes import run_episodes
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import SamplingParams
from ownlm.stats import diff_ci, wilson_interval


class EvalConfig(Config):
    """What to evaluate, on which problems, and how to sample."""

    model: str = Field(
        "smollm2-135m", description="model dir, run dir, .gguf (engine llama_cpp) or a name"
    )
    env: EnvConfig = env_field()
    n_problems: int = Field(default=200, ge=1, description="problems scored")
    split: str = Field("test", description="the env's split: test or train")
    enable_thinking: bool = Field(False, description="let the chat template open a <think> block")
    max_new_tokens: int = Field(
        default=48, ge=1, description="per answer; per assistant turn in multi-turn envs"
    )
    max_episode_tokens: int = Field(
        default=384, ge=1, description="multi-turn envs: a whole episode"
    )
    thinking_budget_tokens: int | None = Field(
        default=None, ge=1, description="close the <think> block after this many tokens"
    )
    temperature: float = Field(default=0.0, ge=0.0, description="0: greedy")
    batch_size: int = Field(default=32, ge=1, description="problems decoded together")
    seed: int = 0
    out_path: str | None = Field(None, description="write per-problem rows here as JSONL")
    engine: Literal["torch", "llama_cpp"] = Field(
        "torch",
        description="torch: ownlm's sampler on the fp32 weights; llama_cpp: the GGUF on "
        "llama-server, as the gateway serves it",
    )
    quantization: Quantization = Field("f16", description="engine llama_cpp: the GGUF type")
    parallel_slots: int = Field(8, ge=1, description="engine llama_cpp: requests decoded at once")
    threads: int | None = Field(None, ge=1, description="engine llama_cpp: default all cores")


class EvalReport(BaseModel):
    """Summary of one eval; `rows_path` holds the per-problem rows when asked for."""

    model: str
    env: str
    split: str
    n: int
    correct: int
    accuracy: float
    ci95_low: float
    ci95_high: float
    mean_reward: float
    format_rate: float
    mean_completion_tokens: float
    truncated_rate: float
    enable_thinking: bool
    time_s: float
    rows_path: str | None = None
    # multi-turn envs only: the answer alone, the citation alone, episodes that called a tool
    answer_accuracy: float | None = None
    citation_accuracy: float | None = None
    tool_use_rate: float | None = None
    turns_mean: float | None = None
    malformed_rate: float | None = None  # of tool calls


def paired_gain(rows_a: str | Path, rows_b: str | Path) -> tuple[float, float, float]:
    """(gain, low, high) of B over A from two eval row files, paired by problem id.

    Both files must hold the same problem ids (the same env, split and n_problems).
    """
    outcomes = []
    for path in (rows_a, rows_b):
        try:
            rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read eval rows {path}: {err}") from err
        outcomes.append({r["id"]: bool(r["correct"]) for r in rows})
    a, b = outcomes
    if set(a) != set(b) or not a:
        raise ConfigError(
            f"{rows_a} and {rows_b} do not hold the same problems ({len(a)} vs {len(b)} ids); "
            f"evaluate both models with the same env, split and n_problems"
        )
    ids = sorted(a)
    acc_a, acc_b = sum(a.values()) / len(a), sum(b.values()) / len(b)
    return diff_ci(acc_a, len(a), acc_b, len(b), paired=([a[i] for i in ids], [b[i] for i in ids]))


def run_eval(cfg: EvalConfig, *, model: Any = None, tokenizer: Any = None) -> EvalReport:
    """Evaluate cfg.model (or a model passed in) on n_problems of the env's split."""
    if cfg.split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got '{cfg.split}'")
    env = make_env(cfg.env)
    if cfg.engine == "llama_cpp":
        if is_multi_turn(env):
            raise ConfigError(
                f"env {env.name} is multi-turn; engine llama_cpp evaluates single-turn envs "
                "only, use engine 'torch'"
            )
        if tokenizer is None:
            tokenizer = load_tokenizer(cfg.model)
    elif model is None or tokenizer is None:
        model, tokenizer = load_model(cfg.model)
    tasks = env.tasks(cfg.split, cfg.n_problems)
    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        thinking_budget_tokens=cfg.thinking_budget_tokens if cfg.enable_thinking else None,
    )
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    multi_turn = is_multi_turn(env)
    if multi_turn:
        rows = _episode_rows(model, tokenizer, env, tasks, params, cfg)
    else:
        prompts = [
            encode_prompt(tokenizer, env.reset(t), enable_thinking=cfg.enable_thinking)
            for t in tasks
        ]
        outs = (
            _complete_on_llama_cpp(prompts, params, cfg)
            if cfg.engine == "llama_cpp"
            else _complete_on_torch(model, tokenizer, prompts, params, cfg.batch_size)
        )
        for task, (text, n_tokens, finish, confidence) in zip(tasks, outs, strict=True):
            thought, answer = split_thinking(text, thinking_open=cfg.enable_thinking)
            score = env.score(task, answer)
            rows.append(
                {
                    "id": task.id,
                    "question": task.question,
                    "expected": task.answer,
                    "completion": text,
                    "thought": thought,
                    "extracted": score.extracted,
                    "correct": score.correct,
                    "well_formed": score.well_formed,
                    "reward": score.reward,
                    "completion_tokens": n_tokens,
                    "finish_reason": finish,
                    "confidence": confidence,
                }
            )
    time_s = time.perf_counter() - start
    n = len(rows)
    k = sum(r["correct"] for r in rows)
    low, high = wilson_interval(k, n)
    rows_path = None
    if cfg.out_path:
        path = Path(cfg.out_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        rows_path = str(path)
    return EvalReport(
        model=cfg.model,
        env=env.name,
        split=cfg.split,
        n=n,
        correct=k,
        accuracy=k / n,
        ci95_low=low,
        ci95_high=high,
        mean_reward=sum(r["reward"] for r in rows) / n,
        format_rate=sum(r["well_formed"] for r in rows) / n,
        mean_completion_tokens=sum(r["completion_tokens"] for r in rows) / n,
        truncated_rate=sum(r["finish_reason"] in ("length", "max_tokens") for r in rows) / n,
        enable_thinking=cfg.enable_thinking,
        time_s=time_s,
        rows_path=rows_path,
        **(_multi_turn_figures(rows) if multi_turn else {}),
    )


def _complete_on_torch(
    model: Any, tokenizer: Any, prompts: list[list[int]], params: SamplingParams, batch_size: int
) -> list[tuple[str, int, str, float | None]]:
    """(text, completion tokens, finish reason, None) per prompt from ownlm's sampler."""
    outs: list[tuple[str, int, str, float | None]] = []
    for i in range(0, len(prompts), batch_size):
        out = sample_completions(model, tokenizer, prompts[i : i + batch_size], 1, params)
        lengths = out.completion_mask.sum(dim=1).tolist()
        outs += [
            (text, int(n), finish, None)
            for text, n, finish in zip(out.texts, lengths, out.finish_reasons, strict=True)
        ]
    return outs


def _complete_on_llama_cpp(
    prompts: list[list[int]], params: SamplingParams, cfg: EvalConfig
) -> list[tuple[str, int, str, float | None]]:
    """The same from the model's GGUF on a llama-server started for this eval, with the
    answer's confidence (what the gateway's escalation reads)."""

    from ownlm.models.llama_cpp import LlamaServer, answer_confidence, export_gguf
    from ownlm.rollout.llama_cpp import complete_on_server

    gguf = export_gguf(cfg.model, cfg.quantization)
    slots = min(cfg.parallel_slots, len(prompts))
    with LlamaServer(gguf, parallel_slots=slots, threads=cfg.threads) as server:
        outs = complete_on_server(server.base_url, prompts, params, parallel=slots)
    return [
        (o.text, o.completion_tokens, o.finish_reason, answer_confidence(o.token_logprobs))
        for o in outs
    ]


def _episode_rows(
    model: Any, tokenizer: Any, env: Any, tasks: list[Any], params: SamplingParams, cfg: EvalConfig
) -> list[dict[str, Any]]:
    """Per-problem rows of a multi-turn env: whole episodes, scored on their transcripts."""
    rows: list[dict[str, Any]] = []
    for i in range(0, len(tasks), cfg.batch_size):
        batch = tasks[i : i + cfg.batch_size]
        eps = run_episodes(
            model, tokenizer, env, batch, 1, params,
            max_episode_tokens=cfg.max_episode_tokens, enable_thinking=cfg.enable_thinking,
        )  # fmt: skip
        lengths = eps.completions.completion_mask.sum(dim=1).tolist()
        for j, (task, ep) in enumerate(zip(batch, eps.episodes, strict=True)):
            score = env.score(task, ep.transcript)
            rows.append(
                {
                    "id": task.id,
                    "question": task.question,
                    "expected": task.answer,
                    "transcript": ep.transcript,
                    "extracted": score.extracted,
                    "correct": score.correct,
                    "answer_correct": getattr(score, "answer_correct", score.correct),
                    "cited": getattr(score, "cited", False),
                    "well_formed": score.well_formed,
                    "reward": score.reward,
                    "completion_tokens": int(lengths[j]),
                    "finish_reason": ep.finish_reason,
                    "turns": ep.turns,
                    "tool_calls": ep.tool_calls,
                    "malformed": ep.malformed,
                }
            )
    return rows


def _multi_turn_figures(rows: list[dict[str, Any]]) -> dict[str, float]:
    n, calls = len(rows), sum(r["tool_calls"] for r in rows)
    return {
        "answer_accuracy": sum(r["answer_correct"] for r in rows) / n,
        "citation_accuracy": sum(r["cited"] for r in rows) / n,
        "tool_use_rate": sum(r["tool_calls"] > 0 for r in rows) / n,
        "turns_mean": sum(r["turns"] for r in rows) / n,
        "malformed_rate": sum(r["malformed"] for r in rows) / calls if calls else 0.0,
    }
