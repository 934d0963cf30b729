"""Rollout speed: ownlm's sampler against `transformers.generate`, same model, prompts and batch.

    .venv/bin/python bench/sampler_vs_generate.py [--rounds 3] [--max-new-tokens 48]

SmolLM2-135M-Instruct (fp32), 4 prompts x 4 samples, temperature 1, no top-k/top-p on either
side, 2 threads. Each round runs both back to back (alternating which goes first); the table
shows the median of the rounds. Tokens/s counts the tokens each side generated (up to and
including eos), divided by its wall time, prefill included.
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
) -> tuple[int, float]:
    """(generated tokens, seconds) for sample_completions."""
    params = SamplingParams(max_new_tokens=max_new, temperature=1.0, seed=seed)
    start = time.perf_counter()
    out = sample_completions(model, tokenizer, prompts, n, params)
    return int(out.stats["rollout/tokens"]), time.perf_counter() - start


def run_generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], n: int, max_new: int, seed: int
) -> tuple[int, float]:
    """(generated tokens, seconds) for model.generate on the same left-padded batch."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    start = time.perf_counter()
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
    seconds = time.perf_counter() - start
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    tokens = 0
    for row in out[:, width:].tolist():
        for token in row:
            tokens += 1
            if token in eos_ids:
                break
    return tokens, seconds


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

    ours, theirs = [], []
    for r in range(args.rounds):
        order = [(run_ours, ours), (run_generate, theirs)]
        for runner, results in order if r % 2 == 0 else order[::-1]:
            tokens, seconds = runner(model, tokenizer, prompts, n, max_new, r)
            results.append((tokens, seconds, tokens / seconds))

    print(
        f"SmolLM2-135M fp32, {len(prompts)} prompts x {n} samples, {max_new} new tokens, "
        f"temperature 1, {args.threads} threads, median of {args.rounds} rounds"
    )
    print(f"{'':26}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    rows = {"ownlm sample_completions": ours, "transformers.generate": theirs}
    medians = {}
    for name, results in rows.items():
        best = sorted(results, key=lambda x: x[2])[len(results) // 2]
        medians[name] = statistics.median(x[2] for x in results)
        print(f"{name:26}{best[0]:>8}{best[1]:>10.2f}{medians[name]:>10.1f}")
    ratio = medians["ownlm sample_completions"] / medians["transformers.generate"]
    print(f"ratio (ours / generate): {ratio:.2f}x  (goal >= 3x)")


if __name__ == "__main__":
    main()
