"""Tests for the DPO recipe on a tiny random Llama: zero margin at start, references, resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ownlm.config import load_config
from ownlm.errors import ConfigError, DataError
from ownlm.train import dpo
from ownlm.train.dpo import DPOConfig, train_dpo

# train/loss of the first 3 steps of `_config(...)` (LoRA, batch 4 as 2 micro-batches of 2),
# from a run of this recipe. Step 1 is log 2 exactly: the policy starts equal to the reference.
REFERENCE_LOSSES = [0.693147, 0.615832, 0.530515]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tiny_dir: Path) -> Path:
    """The tiny model of tests/train/conftest.py, with pairs.jsonl beside it."""
    out = tiny_dir
    rows = [
        {"prompt": f"{a} + {b}?", "chosen": f"= {a + b}", "rejected": f"maybe {a + b + 1}"}
        for a in range(6)
        for b in range(4)
    ]
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _finetune(kind: str) -> dict[str, Any]:
    return {} if kind == "lora" else {"lora": None}


def _config(tiny_dir: Path, run_dir: Path, **over: Any) -> DPOConfig:
    base: dict[str, Any] = {
        "model": str(tiny_dir / "model"),
        "train_file": str(tiny_dir / "pairs.jsonl"),
        "eval_fraction": 0.25,
        "run_dir": str(run_dir),
        "max_seq_len": 64,
        "batch_size": 4,
        "micro_batch_size": 2,
        "steps": 3,
        "beta": 0.5,
        "lr": 1e-2,
        "lora": {"r": 4, "alpha": 8},
        "eval_every_steps": 1,
        "save_every_steps": 1,
        "progress": False,
    }
    return DPOConfig(**{**base, **over})


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_margin_starts_at_zero_and_rises(
    tiny_dir: Path, tmp_path: Path, finetune: str, run_records: Any, run_values: Any
) -> None:
    summary = train_dpo(_config(tiny_dir, tmp_path / "run", steps=4, **_finetune(finetune)))
    first = run_records(tmp_path / "run")[0]
    # policy == reference before training: every implicit reward is exactly 0
    assert first["step"] == 0
    assert first["eval/reward_margin"] == 0.0 and first["eval/reward_accuracy"] == 0.0
    assert run_values(tmp_path / "run", "train/loss")[0] == pytest.approx(0.693147, abs=1e-6)
    assert summary.evals[-1]["eval/reward_margin"] > 0.1
    assert summary.evals[-1]["eval/reward_accuracy"] == 1.0


def test_three_steps_match_reference_losses(
    tiny_dir: Path, tmp_path: Path, run_values: Any
) -> None:
    train_dpo(_config(tiny_dir, tmp_path / "run"))
    assert run_values(tmp_path / "run", "train/loss") == pytest.approx(REFERENCE_LOSSES, abs=1e-4)


def test_accumulation_2x2_equals_1x4(tiny_dir: Path, tmp_path: Path, run_values: Any) -> None:
    train_dpo(_config(tiny_dir, tmp_path / "a", micro_batch_size=2))
    train_dpo(_config(tiny_dir, tmp_path / "b", micro_batch_size=4))
    for key in ("train/loss", "train/reward_margin", "eval/reward_margin"):
        got, want = run_values(tmp_path / "a", key), run_values(tmp_path / "b", key)
        assert got == pytest.approx(want, abs=1e-5), key


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_resume_after_crash_equals_uninterrupted(
    tiny_dir: Path, tmp_path: Path, finetune: str, check_resume_matches: Any
) -> None:
    lora = {"r": 4, "alpha": 8, "dropout": 0.1} if finetune == "lora" else None
    over: dict[str, Any] = {"steps": 4, "lora": lora}
    check_resume_matches(
        dpo, train_dpo,
        _config(tiny_dir, tmp_path / "crashed", **over),
        _config(tiny_dir, tmp_path / "straight", **over),
        ["train/loss", "train/grad_norm", "eval/reward_margin"],
    )  # fmt: skip


def test_kill9_mid_step_then_resume_equals_uninterrupted(
    tiny_dir: Path, tmp_path: Path, check_kill9_resume: Any
) -> None:
    over: dict[str, Any] = {"steps": 4, "lora": None}
    check_kill9_resume(
        "dpo", train_dpo,
        _config(tiny_dir, tmp_path / "killed", **over),
        _config(tiny_dir, tmp_path / "straight", **over),
        ["train/loss", "train/grad_norm", "eval/reward_margin"],
    )  # fmt: skip


def test_outputs_load_with_transformers_and_peft(
    tiny_dir: Path, tmp_path: Path, check_outputs_load: Callable[[Path, Path, Path], None]
) -> None:
    train_dpo(_config(tiny_dir, tmp_path / "full", lora=None, steps=1))
    train_dpo(_config(tiny_dir, tmp_path / "lora", steps=1))
    check_outputs_load(tiny_dir / "model", tmp_path / "full" / "final", tmp_path / "lora" / "final")


def test_bad_inputs(tiny_dir: Path, tmp_path: Path) -> None:
    yaml_path = tmp_path / "dpo.yaml"
    yaml_path.write_text("train_file: x.jsonl\nbeta: 0\n")
    with pytest.raises(ConfigError, match="beta must be positive"):
        load_config(DPOConfig, yaml_path)
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q"}\n')
    with pytest.raises(DataError, match="pairs.jsonl line 2: missing 'chosen', 'rejected'"):
        train_dpo(_config(tiny_dir, tmp_path / "run", train_file=str(bad)))


@pytest.mark.slow
def test_dpo_raises_held_out_margin_on_smollm2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).parents[2])  # the example's data paths are repo-relative
    cfg = load_config(
        DPOConfig,
        "examples/dpo.yaml",
        [f"run_dir={tmp_path / 'run'}"],
    )
    summary = train_dpo(cfg)
    before, after = summary.evals[0], summary.evals[-1]
    assert before["eval/reward_margin"] == 0.0
    # measured: margin 0 -> 3.3, reward accuracy 0 -> 0.94
    assert after["eval/reward_margin"] > 1.0
    assert after["eval/reward_accuracy"] > 0.7
