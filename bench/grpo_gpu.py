"""GRPO on a GPU: ownlm's own loop (torch sampler rollouts, bf16 learner), tokens/s and step time.

    python bench/grpo_gpu.py --shape smollm2-1.7b --device cuda --dtype bfloat16
    .venv/bin/python bench/grpo_gpu.py --shape smollm2-135m --steps 2 --device cpu   # a dry run

The model has the shape of a published SmolLM2 (135M, 360M or 1.7B: hidden size, layers,
heads, SmolLM2's own 49,152-token tokenizer) and RANDOM weights: a GPU machine here has no
model files and cannot download any, and speed does not depend on the weights' values (every
rollout runs to `--max-new-tokens`, so the work per step is fixed). The reward is the share of
lowercase ASCII letters in a completion, which a random model's text varies in, so every group
carries a signal and each step runs the whole loss, backward and optimizer. Printed: per step,
the rollout's tokens/s and seconds, the learner's seconds (logprobs, loss, backward, AdamW) and
the step's; the mean over the steps after the first (CUDA kernels warm up there); the peak GPU
memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ownlm.envs.base import Message, Score, Task
from ownlm.train.grpo import GRPOConfig, train_grpo

# Published SmolLM2 configs (HuggingFaceTB/SmolLM2-*/config.json)
SHAPES: dict[str, dict[str, int]] = {
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3,
    ),
    "smollm2-360m": dict(
        hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
        num_key_value_heads=5,
    ),
    "smollm2-1.7b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
        num_key_value_heads=32,
    ),
}  # fmt: skip


class LetterShareEnv:
    """Reward: the share of lowercase ASCII letters among a completion's characters."""

    name = "letter_share"

    def tasks(self, split: str, n: int) -> list[Task]:
        offset = 0 if split == "train" else 100_000
        return [
            Task(id=f"{split}-{i}", question=f"Write a word about {i + offset}.", answer="")
            for i in range(n)
        ]

    def reset(self, task: Task) -> list[Message]:
        return [{"role": "user", "content": task.question}]

    def score(self, task: Task, completion: str) -> Score:
        share = sum("a" <= c <= "z" for c in completion) / max(1, len(completion))
        return Score(reward=share, correct=share > 0.5, well_formed=bool(completion))


def random_model_dir(shape: str, tokenizer_dir: str, out: Path, device: str) -> tuple[Path, int]:
    """A random-weight Llama of the SmolLM2 shape (initialised on `device`, in bf16), saved with
    the SmolLM2 tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        torch_dtype="bfloat16", **SHAPES[shape],
    )  # fmt: skip
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-1.7b")
    ap.add_argument("--tokenizer", default=None, help="dir of the SmolLM2 tokenizer files")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", default=None, help="write the summary as JSON here")
    args = ap.parse_args()
    if args.tokenizer is None:
        from ownlm.models.tiny import smollm2_tokenizer_dir

        args.tokenizer = str(smollm2_tokenizer_dir())
    work = Path(tempfile.mkdtemp(prefix="ownlm-grpo-gpu-"))
    t0 = time.perf_counter()
    model_dir, n_params = random_model_dir(args.shape, args.tokenizer, work / "model", args.device)
    print(f"random {args.shape} ({n_params / 1e6:.0f}M parameters) written in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    cfg = GRPOConfig.model_validate(
        {
            "model": str(model_dir),
            "run_dir": str(work / "run"),
            "device": args.device,
            "dtype": args.dtype,
            "steps": args.steps,
            "prompts_per_step": args.prompts_per_step,
            "group_size": args.group_size,
            "max_new_tokens": args.max_new_tokens,
            "train_problems": args.steps * args.prompts_per_step,
            "lr": 1e-6,
            "eval_every_steps": 0,
            "save_every_steps": 0,
        }
    )
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    train_grpo(cfg, env=LetterShareEnv())
    wall = time.perf_counter() - t1
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").open()]
    print(f"\nGRPO, random-weight {args.shape}, {args.dtype} on {args.device}: "
          f"{args.prompts_per_step} prompts x {args.group_size} samples x "
          f"{args.max_new_tokens} new tokens a step")  # fmt: skip
    print(f"{'step':>4}{'rollout tok/s':>15}{'rollout s':>11}{'learner s':>11}{'step s':>9}")
    for r in rows:
        print(
            f"{int(r['step']):>4}{r['rollout/tokens_per_s']:>15.0f}{r['time/rollout_s']:>11.2f}"
            f"{r['time/train_s']:>11.2f}{r['time/step_s']:>9.2f}"
        )
    warm = rows[1:] or rows
    summary: dict[str, Any] = {
        "shape": args.shape,
        "parameters": n_params,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "dtype": args.dtype,
        "prompts_per_step": args.prompts_per_step,
        "group_size": args.group_size,
        "max_new_tokens": args.max_new_tokens,
        "rollout_tokens_per_s": statistics.mean(r["rollout/tokens_per_s"] for r in warm),
        "rollout_s": statistics.mean(r["time/rollout_s"] for r in warm),
        "learner_s": statistics.mean(r["time/train_s"] for r in warm),
        "step_s": statistics.mean(r["time/step_s"] for r in warm),
        "completion_tokens_mean": statistics.mean(
            r["rollout/completion_tokens_mean"] for r in warm
        ),
        "wall_s": wall,
    }
    if args.device.startswith("cuda"):
        summary["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print("mean after the first step: " + json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "steps": rows}, indent=2))


if __name__ == "__main__":
    main()
