"""Figures for SFT and DPO on SmolLM2-135M-Instruct: held-out loss, margin and accuracy, before and
after, each measured in this run with the example configs.

    .venv/bin/python bench/sft_dpo_figures.py                  # both recipes
    .venv/bin/python bench/sft_dpo_figures.py --only dpo --set steps=10 --threads 1

Runs go to runs/figures-{sft,dpo} (a fresh run each time). LoRA, the reference for DPO being the
base with adapters off.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

from ownlm.config import load_config
from ownlm.train.dpo import DPOConfig, train_dpo
from ownlm.train.sft import SFTConfig, train_sft

ROOT = Path(__file__).resolve().parents[1]


def _kind(cfg: object) -> str:
    lora = getattr(cfg, "lora", None)
    return f"LoRA r={lora.r}" if lora is not None else "full fine-tuning"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["sft", "dpo"], help="run one recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads; on a busy shared machine 1 beats 2 (threads wait on each other)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the example configs name their data files relative to the repo root
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    if args.only in (None, "sft"):
        run_dir = ROOT / "runs" / "figures-sft"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_config(
            SFTConfig, ROOT / "examples" / "sft.yaml", [f"run_dir={run_dir}", *args.overrides]
        )
        s = train_sft(cfg)
        before, after = s.evals[0], s.evals[-1]
        print(
            f"SFT  {_kind(cfg)}, {s.steps} steps x {cfg.batch_size} chats, "
            f"{s.train_examples} train / {s.eval_examples} held-out chats, {s.seconds:.0f} s\n"
            f"     held-out loss per assistant token: {before['eval/loss']:.4f} -> "
            f"{after['eval/loss']:.4f}"
        )

    if args.only in (None, "dpo"):
        run_dir = ROOT / "runs" / "figures-dpo"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_config(
            DPOConfig, ROOT / "examples" / "dpo.yaml", [f"run_dir={run_dir}", *args.overrides]
        )
        d = train_dpo(cfg)
        before, after = d.evals[0], d.evals[-1]
        print(
            f"DPO  {_kind(cfg)}, beta={cfg.beta}, {d.steps} steps x "
            f"{cfg.batch_size} pairs, {d.train_examples} train / {d.eval_examples} held-out pairs, "
            f"{d.seconds:.0f} s\n"
            f"     held-out reward margin:   {before['eval/reward_margin']:.4f} -> "
            f"{after['eval/reward_margin']:.4f}\n"
            f"     held-out reward accuracy: {before['eval/reward_accuracy']:.3f} -> "
            f"{after['eval/reward_accuracy']:.3f}\n"
            f"     held-out logp accuracy (policy prefers chosen): "
            f"{before['eval/logp_accuracy']:.3f} -> {after['eval/logp_accuracy']:.3f}"
        )


if __name__ == "__main__":
    main()
