"""SFT under torchrun: 2 CPU processes (gloo) give one process's losses and weights, and a run
saved by 2 processes resumes in 1 with the same numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ownlm.train.sft import train_sft
from tests.train.test_sft import _config
from tests.train.test_sft import tiny_dir as tiny_dir  # noqa: F401 (the fixture, with chats)

pytestmark = pytest.mark.usefixtures("one_thread")


def torchrun(cfg_path: Path, nproc: int, *overrides: str) -> None:
    """`torchrun --nproc-per-node nproc -m ownlm train sft --config cfg_path` on loopback."""
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [exe, "--standalone", "--nproc-per-node", str(nproc)]  # a free loopback port
    cmd += ["-m", "ownlm", "train", "sft", "--config", str(cfg_path)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]


def losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def test_two_processes_give_the_losses_and_weights_of_one(tiny_dir: Path, tmp_path: Path) -> None:
    # full fine-tuning, batch 4 as 2 micro-batches: one micro-batch per process
    cfg = _config(tiny_dir, tmp_path / "one", lora=None, steps=3, threads=1)
    train_sft(cfg)
    data: dict[str, Any] = cfg.model_dump(mode="json")
    data["run_dir"] = str(tmp_path / "two")
    cfg_path = tmp_path / "sft.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    torchrun(cfg_path, 2)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one.keys() == two.keys()
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(
        f"\n2 gloo processes vs 1: losses {losses(tmp_path / 'two')}, max weight diff {worst:.2e}"
    )
    assert worst < 1e-5

    # a run of 2 processes stopped after step 2 resumes in 1 process to the same end
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "two", split)
    shutil.rmtree(split / "step_3")
    shutil.rmtree(split / "final")
    resumed = train_sft(cfg.model_copy(update={"run_dir": str(split)}))
    assert resumed.resumed_from_step == 2
    assert losses(tmp_path / "split") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
