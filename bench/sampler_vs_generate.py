"""Rollout speed: ownlm's sampler against `transformers.generate`, same model, prompts and batch.

    .venv/bin/python bench/sampler_vs_generate.py [--rounds 3] [--max-new-tokens 48]

SmolLM2-135M-Instruct (fp32), 4 prompts x 4 samples, temperature 1, no top-k/top-p on either
side, 2 threads. Each round runs both back to back (alternating which goes first); the table
shows the median of the rounds. Tokens/s counts the tokens each side generated (up to and
including eos), divided by its wall time, prefill included. On a shared machine wall time moves
with the neighbours' load, so the table also shows tokens per CPU-second of this process
(process time, all threads), which moves much less.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from ownlm.models.load import load_model
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import SamplingParams

QUESTIONS = [
    "What is 17 + 25? Answer with a number.",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "A train leaves at 3 pm and travels 120 km at 60 km/h. When does it arrive? Explain briefly.",
]


def encode_prompts(tokenizer: Any) -> list[list[int]]:
    """The chat-templated prompts, as token ids of different lengths."""
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
            )["input_ids"]
        )
        for q in QUESTIONS
    ]


def run_ours(
    model: Any, tokenizer: Any, prompts: list[list[int]], n: int, max_new: int, seed: int
) -> int:
    """Generated tokens of sample_completions."""
    params = SamplingParams(max_new_tokens=max_new, temperature=1.0, seed=seed)
    out = sample_completions(model, tokenizer, prompts, n, params)
    return int(out.stats["rollout/tokens"])


def run_generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], n: int, max_new: int, seed: int
) -> int:
    """Generated tokens of model.generate on the same left-padded batch."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            num_return_sequences=n,
            max_new_tokens=max_new,
            pad_token_id=pad,
        )
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    tokens = 0
    for row in out[:, width:].tolist():
        for token in row:
            tokens += 1
            if token in eos_ids:
                break
    return tokens


def timed(runner: Any, *args: Any) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = runner(*args)
    return tokens, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_model("smollm2-135m")
    prompts = encode_prompts(tokenizer)
    n, max_new = args.samples, args.max_new_tokens
    run_ours(model, tokenizer, prompts, n, 4, 0)  # warm-up: first-call allocations
    run_generate(model, tokenizer, prompts, n, 4, 0)

    results: dict[str, list[tuple[int, float, float]]] = {"ours": [], "generate": []}
    for r in range(args.rounds):
        order = [("ours", run_ours), ("generate", run_generate)]
        for name, runner in order if r % 2 == 0 else order[::-1]:
            results[name].append(timed(runner, model, tokenizer, prompts, n, max_new, r))

    print(
        f"SmolLM2-135M fp32, {len(prompts)} prompts x {n} samples, {max_new} new tokens, "
        f"temperature 1, {args.threads} threads, median of {args.rounds} rounds"
    )
    print(f"{'':26}{'tokens':>8}{'wall s':>8}{'tokens/s':>10}{'CPU s':>8}{'tokens/CPU-s':>14}")
    labels = {"ours": "ownlm sample_completions", "generate": "transformers.generate"}
    speed, cpu_speed = {}, {}
    for name, runs in results.items():
        speed[name] = statistics.median(t / w for t, w, _ in runs)
        cpu_speed[name] = statistics.median(t / c for t, _, c in runs)
        tokens = statistics.median(t for t, _, _ in runs)
        wall = statistics.median(w for _, w, _ in runs)
        cpu = statistics.median(c for _, _, c in runs)
        print(
            f"{labels[name]:26}{tokens:>8.0f}{wall:>8.2f}{speed[name]:>10.1f}"
            f"{cpu:>8.2f}{cpu_speed[name]:>14.1f}"
        )
    print(
        f"ratio (ours / generate): {speed['ours'] / speed['generate']:.2f}x in tokens/s, "
        f"{cpu_speed['ours'] / cpu_speed['generate']:.2f}x in tokens/CPU-s  (goal >= 3x)"
    )


if __name__ == "__main__":
    main()
