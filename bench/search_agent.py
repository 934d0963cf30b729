"""Headline: a search-and-cite agent from SmolLM2-135M-Instruct: prompting only, SFT, then GRPO.

    .venv/bin/python bench/search_agent.py                          # the figures in docs/agents.md
    .venv/bin/python bench/search_agent.py --n-test 16 --sft-steps 2 --set steps=1   # a quick check

(a) the base model with the tool prompt; (b) after a supervised warm-up on scripted episodes of
train questions (search each entity, then `Answer: X [doc N]`, `SearchEnv.demonstration`); (c)
after GRPO from (b) on the same env. Each is evaluated greedily on the same held-out questions
(no entity shared with train); gains come with a 95% CI paired by question. Finished stages are
reused when the command runs again (delete --out to start over).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from ownlm.config import load_config
from ownlm.envs.search.env import SearchConfig, SearchEnv
from ownlm.eval.accuracy import EvalConfig, EvalReport, paired_gain, run_eval
from ownlm.train.grpo import GRPOConfig, train_grpo
from ownlm.train.sft import SFTConfig, train_sft


def evaluate(model: str, cfg: GRPOConfig, n_test: int, out: Path, few_shot: int = 0) -> EvalReport:
    """Greedy held-out eval of whole episodes; cached as out.json next to the rows."""
    summary = out.with_suffix(".json")
    if summary.exists():
        return EvalReport.model_validate_json(summary.read_text())
    report = run_eval(
        EvalConfig(
            model=model,
            env=cfg.env.model_copy(update={"few_shot": few_shot}),
            n_problems=n_test,
            max_new_tokens=cfg.max_new_tokens,
            max_episode_tokens=cfg.max_episode_tokens,
            batch_size=50,
            out_path=str(out),
        )
    )
    summary.write_text(report.model_dump_json(indent=2))
    return report


def write_demonstrations(env: SearchEnv, n: int, seed: int, path: Path) -> None:
    """n scripted episodes of shuffled train questions as chat JSONL ({"messages": [...]})."""
    tasks = env.tasks("train", env.pool_size("train"))
    random.Random(seed).shuffle(tasks)
    with path.open("w") as f:
        for task in tasks[:n]:
            f.write(json.dumps({"messages": env.demonstration(task)}) + "\n")


STAGES = ["eval_base", "eval_fewshot", "sft", "eval_sft", "grpo", "eval_grpo"]


def train_seconds(run_dir: Path) -> float:
    """Wall time of the logged steps of a run (time/step_s summed)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line).get("time/step_s", 0.0) for line in lines if line)


def correct_by_kind(rows_path: Path) -> dict[str, float]:
    """Share correct per question kind (the last part of a synthetic task id)."""
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line]
    kinds: dict[str, list[bool]] = {}
    for r in rows:
        kinds.setdefault(r["id"].rsplit("/", 1)[-1], []).append(bool(r["correct"]))
    return {k: sum(v) / len(v) for k, v in kinds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/search_agent.yaml")
    parser.add_argument("--out", default="runs/search_agent")
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--sft-steps", type=int, default=12)
    parser.add_argument("--sft-batch", type=int, default=8)
    parser.add_argument("--sft-lr", type=float, default=2e-4)
    parser.add_argument(
        "--few-shot", type=int, default=3, help="worked examples in the prompting-only baseline"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=STAGES,
        help="run just these stages (e.g. eval_base beside sft, then eval_sft beside grpo); run "
        "once more without --only: finished stages are reused and the table is printed",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(GRPOConfig, args.config, args.overrides)
    if not isinstance(cfg.env, SearchConfig):
        raise SystemExit(f"{args.config}: env.kind must be 'search'")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    env = SearchEnv(cfg.env)
    times: dict[str, float] = {}
    run = set(args.only or STAGES)

    t = time.perf_counter()
    if "eval_base" in run:
        base = evaluate(cfg.model, cfg, args.n_test, out / "eval_base.jsonl")
    times["eval_base"] = time.perf_counter() - t
    if "eval_fewshot" in run:
        fewshot = evaluate(
            cfg.model, cfg, args.n_test, out / "eval_fewshot.jsonl", few_shot=args.few_shot
        )

    t = time.perf_counter()
    sft_dir = out / "sft"
    if "sft" in run and not (sft_dir / "final").exists():
        n_demo = args.sft_steps * args.sft_batch
        write_demonstrations(env, n_demo, cfg.seed, out / "sft_train.jsonl")
        write_demonstrations(env, n_demo + 16, cfg.seed + 1, out / "sft_eval_all.jsonl")
        lines = (out / "sft_eval_all.jsonl").read_text().splitlines()[-16:]
        (out / "sft_eval.jsonl").write_text("\n".join(lines) + "\n")
        train_sft(
            SFTConfig(
                model=cfg.model,
                train_file=str(out / "sft_train.jsonl"),
                eval_file=str(out / "sft_eval.jsonl"),
                run_dir=str(sft_dir),
                seed=cfg.seed,
                max_seq_len=640,
                batch_size=args.sft_batch,
                micro_batch_size=4,
                steps=args.sft_steps,
                lr=args.sft_lr,
                lr_schedule="cosine",
                lora=None,
                eval_every_steps=args.sft_steps,
                save_every_steps=args.sft_steps,
                threads=cfg.threads,
            )
        )
    times["sft"] = time.perf_counter() - t
    t = time.perf_counter()
    if "eval_sft" in run:
        sft = evaluate(str(sft_dir / "final"), cfg, args.n_test, out / "eval_sft.jsonl")
    times["eval_sft"] = time.perf_counter() - t

    t = time.perf_counter()
    grpo_cfg = cfg.model_copy(
        update={"model": str(sft_dir / "final"), "run_dir": str(out / "grpo")}
    )
    if "grpo" in run and not (out / "grpo" / "final").exists():
        train_grpo(grpo_cfg)
    times["grpo"] = time.perf_counter() - t
    t = time.perf_counter()
    if "eval_grpo" in run:
        grpo = evaluate(str(out / "grpo" / "final"), cfg, args.n_test, out / "eval_grpo.jsonl")
    times["eval_grpo"] = time.perf_counter() - t

    if args.only:
        return
    stages = {
        "base (tool prompt)": base,
        f"base, {args.few_shot}-shot prompt": fewshot,
        "+ SFT warm-up": sft,
        "+ GRPO": grpo,
    }
    print(f"\n{args.n_test} held-out questions, greedy; correct = exact answer citing its doc")
    print(f"{'model':22} {'correct':>8} {'95% CI':>13} {'answer':>7} {'cited':>6} {'tools':>6} "
          f"{'turns':>6} {'malformed':>9}")  # fmt: skip
    for name, r in stages.items():
        print(
            f"{name:22} {r.accuracy:8.3f} {r.ci95_low:6.3f}-{r.ci95_high:.3f} "
            f"{r.answer_accuracy or 0:7.3f} {r.citation_accuracy or 0:6.3f} "
            f"{r.tool_use_rate or 0:6.3f} {r.turns_mean or 0:6.2f} {r.malformed_rate or 0:9.3f}"
        )
    gains = {}
    for name, a, b in [
        ("few-shot - base", "base", "fewshot"),
        ("sft - base", "base", "sft"),
        ("grpo - sft", "sft", "grpo"),
        ("grpo - base", "base", "grpo"),
        ("grpo - few-shot", "fewshot", "grpo"),
    ]:
        gains[name] = paired_gain(out / f"eval_{a}.jsonl", out / f"eval_{b}.jsonl")
        g, lo, hi = gains[name]
        print(f"gain {name:16} {g:+.3f}  95% CI (paired) {lo:+.3f} .. {hi:+.3f}")
    print("correct by question kind (base / few-shot / sft / grpo):")
    names = ("base", "fewshot", "sft", "grpo")
    kinds = {name: correct_by_kind(out / f"eval_{name}.jsonl") for name in names}
    for kind in kinds["base"]:
        print(f"  {kind:14} " + " / ".join(f"{kinds[n][kind]:.2f}" for n in kinds))
    # measured when each stage ran (a rerun reuses finished stages): evals' time_s, steps' sum
    times = {
        "eval_base": base.time_s,
        "eval_fewshot": fewshot.time_s,
        "sft": train_seconds(sft_dir),
        "eval_sft": sft.time_s,
        "grpo": train_seconds(out / "grpo"),
        "eval_grpo": grpo.time_s,
    }
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"total {sum(times.values()) / 60:.1f} minutes (evals, and SFT and GRPO steps)")
    (out / "summary.json").write_text(
        json.dumps(
            {
                "stages": {k: v.model_dump() for k, v in stages.items()},
                "gains": gains,
                "seconds": times,
                "config": cfg.model_dump(mode="json"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
