"""Does GRPO make SmolLM2 better? Base vs GRPO (verifier reward) vs a random-reward control.

    .venv/bin/python bench/grpo_gain.py                      # the figures in the README
    .venv/bin/python bench/grpo_gain.py --set steps=20       # shorter, any GRPOConfig key
    .venv/bin/python bench/grpo_gain.py --only grpo & \
      .venv/bin/python bench/grpo_gain.py --only control    # side by side, then again bare

Both training runs use the same config, seed, prompts and budget (steps); the control's rewards
are the batch's real rewards shuffled at random (`reward_mode: random`), so they carry no signal.
All three models are evaluated greedily on the same held-out problems, and each gain is given
with a 95% confidence interval paired by problem. Runs resume if killed: run the command again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ownlm.config import load_config
from ownlm.eval.accuracy import EvalConfig, EvalReport, paired_gain, run_eval
from ownlm.train.grpo import GRPOConfig, train_grpo


def evaluate(model: str, out: Path, n_problems: int, max_new_tokens: int) -> EvalReport:
    """Greedy held-out eval; cached in out (a killed run does not redo finished evals)."""
    summary = out.with_suffix(".json")
    if summary.exists():
        return EvalReport.model_validate_json(summary.read_text())
    cfg = EvalConfig(
        model=model, n_problems=n_problems, max_new_tokens=max_new_tokens, out_path=str(out)
    )
    report = run_eval(cfg)
    summary.write_text(report.model_dump_json(indent=2))
    return report


def train_seconds(run_dir: str) -> float:
    """Wall time of all logged steps of a run (a resumed run counts every attempt's steps once)."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line).get("time/step_s", 0.0) for line in lines if line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/grpo_demo.yaml")
    parser.add_argument("--out", default="runs/gain")
    parser.add_argument("--n-problems", type=int, default=200)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--only",
        choices=["grpo", "control"],
        help="train just one of the two runs (run two processes side by side, then once more "
        "without --only: finished runs and evals are reused and the table is printed)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    base_cfg = load_config(GRPOConfig, args.config, args.overrides)
    if base_cfg.threads is not None:
        torch.set_num_threads(base_cfg.threads)  # the evals too, not only training
    runs = {
        "grpo": base_cfg.model_copy(update={"run_dir": str(out / "grpo")}),
        "random-reward control": base_cfg.model_copy(
            update={"run_dir": str(out / "control"), "reward_mode": "random"}
        ),
    }
    tokens = base_cfg.max_new_tokens
    reports: dict[str, EvalReport] = {}
    if args.only != "control":  # one of two side-by-side processes evaluates the base model
        reports["base"] = evaluate(base_cfg.model, out / "eval_base.jsonl", args.n_problems, tokens)
    if args.only:
        runs = {k: v for k, v in runs.items() if (k == "grpo") == (args.only == "grpo")}
    for name, cfg in runs.items():
        summary = train_grpo(cfg)
        slug = Path(cfg.run_dir).name
        reports[name] = evaluate(
            summary.final_dir, out / f"eval_{slug}.jsonl", args.n_problems, tokens
        )

    if "base" not in reports:
        return
    base = reports["base"]
    print(
        f"\nheld-out {base.env}, n={base.n}, greedy, {base_cfg.steps} steps of "
        f"{base_cfg.prompts_per_step}x{base_cfg.group_size} samples, loss={base_cfg.loss}"
    )
    print(
        f"{'model':<24}{'accuracy':>10}{'95% CI':>16}{'gain vs base (95% CI)':>30}{'train s':>10}"
    )
    result = {}
    for name, rep in reports.items():
        line = f"{name:<24}{rep.accuracy:>10.3f}   [{rep.ci95_low:.3f}, {rep.ci95_high:.3f}]"
        entry = {"accuracy": rep.accuracy, "ci95": [rep.ci95_low, rep.ci95_high]}
        if name != "base":
            d, lo, hi = paired_gain(base.rows_path or "", rep.rows_path or "")
            verdict = "excludes 0" if lo > 0 or hi < 0 else "includes 0"
            line += f"   {d:+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict}"
            train_s = train_seconds(runs[name].run_dir)
            line += f"{train_s:>8.0f}"
            entry.update(gain=d, gain_ci95=[lo, hi], train_s=train_s)
        result[name] = entry
        print(line)
    (out / "summary.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
