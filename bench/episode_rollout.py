"""Multi-turn rollout with and without kept caches (rollout/kv.py), side by side in one run.

    .venv/bin/python bench/episode_rollout.py               # the SFT agent of search_agent.py
    .venv/bin/python bench/episode_rollout.py --model runs/x/final --episodes 64 --n 4

Runs the same search-env episodes (held-out questions, one model) with kv_reuse off (every round
re-reads each episode from its first token) and on (the shared system prompt read once, each
prompt once per group, each episode's keys and values kept across tool results), and prints
wall time, prefill time and the ratio. Greedy by default, so both runs must produce the same
episodes; the script checks it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ownlm.config import load_config
from ownlm.envs.search.env import SearchConfig, SearchEnv
from ownlm.models.load import load_model
from ownlm.rollout import episodes as episodes_module
from ownlm.rollout.episodes import run_episodes
from ownlm.rollout.types import SamplingParams
from ownlm.train.grpo import GRPOConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/search_agent/sft/final")
    parser.add_argument("--config", default="examples/search_agent.yaml")
    parser.add_argument("--episodes", type=int, default=32, help="held-out questions")
    parser.add_argument("--n", type=int, default=1, help="episodes per question")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not Path(args.model).exists():
        raise SystemExit(f"{args.model}: no such model; run bench/search_agent.py first")
    torch.set_num_threads(args.threads)
    cfg = load_config(GRPOConfig, args.config, [])
    if not isinstance(cfg.env, SearchConfig):
        raise SystemExit(f"{args.config}: env.kind must be 'search'")
    env = SearchEnv(cfg.env)
    model, tokenizer = load_model(args.model)
    tasks = env.tasks("test", args.episodes)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=args.temperature, seed=0)

    sample = episodes_module.sample_completions
    prefill = {"s": 0.0}

    def timed(*a: object, **kw: object) -> object:
        out = sample(*a, **kw)  # type: ignore[arg-type]
        prefill["s"] += out.stats["rollout/prefill_s"]
        return out

    episodes_module.sample_completions = timed  # type: ignore[assignment]
    results = {}
    for reuse in (False, True):
        prefill["s"] = 0.0
        start = time.perf_counter()
        out = run_episodes(
            model, tokenizer, env, tasks, args.n, params,
            max_episode_tokens=cfg.max_episode_tokens, kv_reuse=reuse,
        )  # fmt: skip
        results[reuse] = (time.perf_counter() - start, prefill["s"], out)
    episodes_module.sample_completions = sample

    off, on = results[False], results[True]
    turns = sum(e.turns for e in on[2].episodes) / len(on[2].episodes)
    print(
        f"{args.episodes} questions x {args.n}, {turns:.2f} turns per episode, "
        f"{args.threads} thread(s), temperature {args.temperature}"
    )
    print(f"{'kv_reuse':9} {'wall s':>8} {'prefill s':>10}")
    for name, (wall, pre, _) in (("off", off), ("on", on)):
        print(f"{name:9} {wall:8.1f} {pre:10.1f}")
    print(f"speed-up: {off[0] / on[0]:.2f}x wall, {off[1] / max(on[1], 1e-9):.2f}x prefill")
    if args.temperature == 0:
        same = sum(
            a.transcript == b.transcript
            for a, b in zip(off[2].episodes, on[2].episodes, strict=True)
        )
        print(f"same episodes (greedy): {same} of {len(on[2].episodes)}")


if __name__ == "__main__":
    main()
