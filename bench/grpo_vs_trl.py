"""Our GRPO step vs TRL's GRPOTrainer on SmolLM2-135M-Instruct, side by side in one run.

    .venv/bin/python bench/grpo_vs_trl.py                  # needs `pip install -e ".[bench]"`
    .venv/bin/python bench/grpo_vs_trl.py --steps 6 --rounds 2 --threads 2

Same model (fp32), prompts (4 reasoning-gym chain_sum problems), group size (4), new tokens (48),
beta (0), loss (grpo: std-scaled advantages, per-sequence token mean), temperature (1.0), reward
(ownlm's verifier), threads and allocator for both. The script re-executes itself with tcmalloc
in LD_PRELOAD when Debian's libtcmalloc-minimal4 is installed (`apt-get install -y
libtcmalloc-minimal4`) and prints which allocator ran. Printed, all measured in this run:
seconds per step (median of steps 2..N) for both and the ratio; our sampler's tokens/s against
`transformers.generate` on the same batch; the fp32 matmul peak at training shapes, and the
share of it that our training forward/backward reaches (FLOPs counted as 6 * matmul params *
tokens, attention scores left out); a speed-of-light estimate for the step from these figures;
fused vs foreach AdamW.
With --rounds > 1 the two sides alternate, so a busy machine slows both alike. On a machine
shared with other jobs, run with OMP_WAIT_POLICY=PASSIVE (both sides inherit it): spinning
OpenMP threads on oversubscribed cores made a 2-thread step several times slower here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
PROMPTS, GROUP, NEW_TOKENS, TEMPERATURE = 4, 4, 48, 1.0


def reexec_with_tcmalloc() -> str:
    """Restart this script once with tcmalloc preloaded; return the allocator in use."""
    if "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return f"tcmalloc ({os.environ['LD_PRELOAD']})"
    if os.environ.get("OWNLM_BENCH_NO_TCMALLOC") or not Path(TCMALLOC).exists():
        return "glibc malloc (tcmalloc not installed: apt-get install -y libtcmalloc-minimal4)"
    env = {**os.environ, "LD_PRELOAD": TCMALLOC}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
    raise AssertionError("unreachable")


class BenchEnv:
    """The bench's 4 problems, scored by ownlm's reasoning-gym verifier (both sides use it)."""

    name = "bench"

    def __init__(self) -> None:
        from ownlm.envs.reasoning_gym import ReasoningGymConfig, ReasoningGymEnv

        # reasoning-gym seeds item i with seed + i: a train seed far from the test seed keeps the
        # two streams apart
        self.inner = ReasoningGymEnv(ReasoningGymConfig(train_seed=1_000_000))
        self.problems = self.inner.tasks("train", PROMPTS)

    def tasks(self, split: str, n: int) -> list[Any]:
        return self.problems[:n]

    def reset(self, task: Any) -> list[dict[str, Any]]:
        return self.inner.reset(task)

    def score(self, task: Any, completion: str) -> Any:
        return self.inner.score(task, completion)


def measure_peak(threads: int, rows: int) -> float:
    """Best median fp32 GFLOP/s of torch.mm over the model's training matmul shapes."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for k, n in [(576, 1536), (1536, 576), (576, 576)]:
        a, b = torch.randn(rows, k), torch.randn(k, n)
        torch.mm(a, b)
        times = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b)
            times.append((time.perf_counter() - t) / 5)
        best = max(best, 2 * rows * k * n / statistics.median(times) / 1e9)
    return best


def measure_bandwidth() -> float:
    """GB/s of a large tensor copy (read + write)."""
    import torch

    src = torch.randn(64 * 2**20)  # 256 MB
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / min(times) / 1e9


def run_ours(steps: int, threads: int, run_dir: Path) -> list[dict[str, float]]:
    """train_grpo on the bench problems; one metrics dict per step."""
    from ownlm.train.grpo import GRPOConfig, train_grpo

    cfg = GRPOConfig(
        model="smollm2-135m", run_dir=str(run_dir), steps=steps, prompts_per_step=PROMPTS,
        group_size=GROUP, max_new_tokens=NEW_TOKENS, temperature=TEMPERATURE, lr=1e-6,
        train_problems=PROMPTS, loss="grpo", beta=0.0, save_every_steps=0, threads=threads,
        warmup_steps=0,
    )  # fmt: skip
    train_grpo(cfg, env=BenchEnv())
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_trl(steps: int, threads: int, out_dir: Path) -> list[float]:
    """TRL GRPOTrainer, same workload; seconds of each optimizer step."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    from ownlm.models.chat import render_prompt
    from ownlm.models.load import load_model

    torch.set_num_threads(threads)
    env = BenchEnv()
    model, tokenizer = load_model("smollm2-135m")
    model.train()
    rows = [
        {"prompt": render_prompt(tokenizer, env.reset(t)), "task_index": i}
        for i, t in enumerate(env.problems)
    ]

    def verifier_reward(completions: list[str], task_index: list[int], **_: Any) -> list[float]:
        return [
            env.score(env.problems[i], c).reward
            for c, i in zip(completions, task_index, strict=True)
        ]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.marks.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.marks.append(time.perf_counter())

    args = TRLGRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP, max_completion_length=NEW_TOKENS, max_steps=steps, beta=0.0,
        learning_rate=1e-6, temperature=TEMPERATURE, top_p=1.0, loss_type="grpo",
        scale_rewards="group", bf16=False, fp16=False, use_cpu=True,
        gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no",
        seed=0, dataloader_num_workers=0, shuffle_dataset=False, log_completions=False,
    )  # fmt: skip
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=verifier_reward,
        args=args,
        train_dataset=Dataset.from_list(rows * steps),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    return [b - a for a, b in zip(timer.marks, timer.marks[1:], strict=False)]


def compare_samplers(threads: int, rounds: int = 3) -> tuple[float, float]:
    """Tokens/s of our sampler and of transformers.generate, same 4 x 4 x 48 batch."""
    import torch

    from ownlm.models.chat import encode_prompt
    from ownlm.models.load import load_model
    from ownlm.rollout.sampler import sample_completions
    from ownlm.rollout.types import SamplingParams
    from ownlm.train.policy_logprobs import pad_prompts_left

    torch.set_num_threads(threads)
    env = BenchEnv()
    model, tok = load_model("smollm2-135m")
    ids = [encode_prompt(tok, env.reset(t)) for t in env.problems]
    p_ids, p_mask = pad_prompts_left(ids, tok.pad_token_id)
    ours, theirs = [], []
    for r in range(rounds):
        t = time.perf_counter()
        comps = sample_completions(
            model, tok, ids, GROUP, SamplingParams(NEW_TOKENS, TEMPERATURE, seed=r)
        )
        ours.append(float(comps.completion_mask.sum()) / (time.perf_counter() - t))
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=p_ids, attention_mask=p_mask, do_sample=True, temperature=TEMPERATURE,
                top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS, num_return_sequences=GROUP,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        new = out[:, p_ids.shape[1] :]
        n_tokens = int((new != tok.pad_token_id).sum())
        theirs.append(n_tokens / (time.perf_counter() - t))
    return statistics.median(ours), statistics.median(theirs)


def compare_adamw(model: Any, repeats: int = 5) -> tuple[float, float]:
    """Seconds per AdamW step on the model's parameters: fused, then foreach."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    out = []
    for fused in (True, False):
        opt = torch.optim.AdamW(params, lr=1e-9, fused=fused, foreach=None if fused else True)
        opt.step()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        out.append(statistics.median(times))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1, help="alternate ours/TRL this often")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    allocator = reexec_with_tcmalloc()

    import torch

    torch.set_num_threads(args.threads)
    print(f"allocator: {allocator}; threads: {args.threads}; torch {torch.__version__}; fp32")
    print(f"workload: {PROMPTS} prompts x {GROUP} samples x {NEW_TOKENS} new tokens, beta 0")

    ours_steps: list[float] = []
    trl_steps: list[float] = []
    ours_metrics: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            metrics = run_ours(args.steps, args.threads, Path(tmp) / f"ours{r}")
            ours_metrics += metrics[1:]
            ours_steps += [m["time/step_s"] for m in metrics[1:]]
            print(f"round {r}: ours  s/step {[round(m['time/step_s'], 2) for m in metrics]}")
            times = run_trl(args.steps, args.threads, Path(tmp) / f"trl{r}")
            trl_steps += times[1:]
            print(f"round {r}: TRL   s/step {[round(t, 2) for t in times]}")
    ours_s, trl_s = statistics.median(ours_steps), statistics.median(trl_steps)
    print(
        f"\nseconds per step (median of steps 2..{args.steps}): ours {ours_s:.2f}, TRL {trl_s:.2f}"
    )
    print(f"ratio TRL / ours: {trl_s / ours_s:.2f}x (goal >= 2.5x)")
    signal = statistics.mean(m["rollout/groups_with_signal"] for m in ours_metrics)
    print(
        f"(ours trains only groups whose rewards differ, exact at beta 0: {signal:.1f} of "
        f"{PROMPTS} per step here; TRL computes all {PROMPTS})"
    )

    ours_tps, gen_tps = compare_samplers(args.threads)
    print(
        f"sampler tokens/s: ours {ours_tps:.0f}, transformers.generate {gen_tps:.0f} "
        f"({ours_tps / gen_tps:.2f}x, goal >= 3x)"
    )

    # FLOPs of our training forward/backward: body on every input token (each prompt once),
    # LM head only at counted completion tokens.
    from ownlm.models.chat import encode_prompt
    from ownlm.models.load import load_model

    model, tok = load_model("smollm2-135m")
    env = BenchEnv()
    prompt_tokens = sum(len(encode_prompt(tok, env.reset(t))) for t in env.problems)
    head = model.get_output_embeddings().weight.numel()
    body = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lm_head" not in name
    )
    comp_tokens = statistics.median(
        m["rollout/completion_tokens_mean"] * PROMPTS * GROUP for m in ours_metrics
    )
    flops = 6 * body * (prompt_tokens + comp_tokens) + 6 * head * comp_tokens
    fb_s = statistics.median(m["time/train_s"] - m["time/optimizer_s"] for m in ours_metrics)
    peak = measure_peak(args.threads, int(prompt_tokens + comp_tokens))
    achieved = flops / fb_s / 1e9
    print(
        f"training forward/backward: {flops / 1e12:.2f} TFLOP in {fb_s:.2f} s = "
        f"{achieved:.0f} GFLOP/s; fp32 matmul peak (measured now) {peak:.0f} GFLOP/s -> "
        f"{achieved / peak:.0%} of peak (goal >= 60%)"
    )
    bandwidth = measure_bandwidth()
    params = sum(p.numel() for p in model.parameters())
    decode_s = NEW_TOKENS * params * 4 / (bandwidth * 1e9)
    optim_s = params * 4 * 7 / (bandwidth * 1e9)  # AdamW: read p, g, m, v; write p, m, v
    sol = flops / (peak * 1e9) + decode_s + optim_s
    print(
        f"speed of light (measured peak {peak:.0f} GFLOP/s, bandwidth {bandwidth:.0f} GB/s): "
        f"train {flops / (peak * 1e9):.2f} s + decode {decode_s:.2f} s + optimizer "
        f"{optim_s:.2f} s = {sol:.2f} s; ours is {ours_s / sol:.2f}x of it (goal <= 1.5x)"
    )
    fused_s, foreach_s = compare_adamw(model)
    print(f"AdamW step: fused {fused_s:.3f} s, foreach {foreach_s:.3f} s (ours uses fused)")
    rollout_s = statistics.median(m["time/rollout_s"] for m in ours_metrics)
    optim_med = statistics.median(m["time/optimizer_s"] for m in ours_metrics)
    print(
        f"our step, median parts: rollout {rollout_s:.2f} s, forward/backward {fb_s:.2f} s, "
        f"optimizer {optim_med:.2f} s"
    )


if __name__ == "__main__":
    main()
