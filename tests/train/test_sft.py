"""Tests for the SFT recipe on a tiny random Llama: losses, accumulation, resume, outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from ownlm.config import load_config
from ownlm.errors import ConfigError, DataError
from ownlm.train import sft
from ownlm.train.sft import SFTConfig, train_sft

# train/loss of the first 3 steps of `_config(...)` (LoRA, batch 4 as 2 micro-batches of 2),
# from a run of this recipe; a change to masking, normalisation or the schedule moves them.
REFERENCE_LOSSES = [5.576092, 5.571802, 5.483661]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tiny_dir: Path) -> Path:
    """The tiny model of tests/train/conftest.py, with chats.jsonl beside it."""
    out = tiny_dir
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{a} + {b}?"},
                {"role": "assistant", "content": f"{a} + {b} = {a + b}"},
            ]
        }
        for a in range(6)
        for b in range(4)
    ]
    (out / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _config(tiny_dir: Path, run_dir: Path, **over: Any) -> SFTConfig:
    base: dict[str, Any] = {
        "model": str(tiny_dir / "model"),
        "train_file": str(tiny_dir / "chats.jsonl"),
        "eval_fraction": 0.25,
        "run_dir": str(run_dir),
        "max_seq_len": 64,
        "batch_size": 4,
        "micro_batch_size": 2,
        "steps": 3,
        "lr": 1e-2,
        "lora": {"r": 4, "alpha": 8},
        "eval_every_steps": 2,
        "save_every_steps": 1,
        "progress": False,
    }
    return SFTConfig(**{**base, **over})


def test_three_steps_match_reference_losses(
    tiny_dir: Path, tmp_path: Path, run_records: Any, run_values: Any
) -> None:
    summary = train_sft(_config(tiny_dir, tmp_path / "run"))
    assert run_values(tmp_path / "run", "train/loss") == pytest.approx(REFERENCE_LOSSES, abs=1e-4)
    assert summary.train_examples == 18 and summary.eval_examples == 6
    # eval at step 0, at step 2 (every 2) and at the last step
    assert [r["step"] for r in run_records(tmp_path / "run") if "eval/loss" in r] == [0, 2, 3]
    assert summary.evals[-1]["eval/loss"] < summary.evals[0]["eval/loss"]
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_accumulation_2x2_equals_1x4(tiny_dir: Path, tmp_path: Path, run_values: Any) -> None:
    train_sft(_config(tiny_dir, tmp_path / "a", micro_batch_size=2, lora=None))
    train_sft(_config(tiny_dir, tmp_path / "b", micro_batch_size=4, lora=None))
    got, want = run_values(tmp_path / "a", "train/loss"), run_values(tmp_path / "b", "train/loss")
    assert got == pytest.approx(want, abs=1e-5)
    wa = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "final").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "final").state_dict()
    for name, tensor in wa.items():
        torch.testing.assert_close(tensor, wb[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_resume_after_crash_equals_uninterrupted(
    tiny_dir: Path, tmp_path: Path, finetune: str, check_resume_matches: Any
) -> None:
    # LoRA dropout draws from the torch RNG each step, so the RNG state must resume too.
    lora = {"r": 4, "alpha": 8, "dropout": 0.1} if finetune == "lora" else None
    over: dict[str, Any] = {"steps": 4, "lora": lora}
    check_resume_matches(
        sft, train_sft,
        _config(tiny_dir, tmp_path / "crashed", **over),
        _config(tiny_dir, tmp_path / "straight", **over),
        ["train/loss", "train/grad_norm", "eval/loss"],
    )  # fmt: skip


def test_kill9_mid_step_then_resume_equals_uninterrupted(
    tiny_dir: Path, tmp_path: Path, check_kill9_resume: Any
) -> None:
    over: dict[str, Any] = {"steps": 4, "lora": None}
    check_kill9_resume(
        "sft", train_sft,
        _config(tiny_dir, tmp_path / "killed", **over),
        _config(tiny_dir, tmp_path / "straight", **over),
        ["train/loss", "train/grad_norm", "eval/loss"],
    )  # fmt: skip


def test_resume_with_a_different_seed_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    train_sft(_config(tiny_dir, tmp_path / "run", steps=1))
    with pytest.raises(ConfigError, match="seed=0 but the config now says seed=1"):
        train_sft(_config(tiny_dir, tmp_path / "run", steps=1, seed=1))


def test_outputs_load_with_transformers_and_peft(
    tiny_dir: Path, tmp_path: Path, check_outputs_load: Callable[[Path, Path, Path], None]
) -> None:
    train_sft(_config(tiny_dir, tmp_path / "full", lora=None, steps=1))
    train_sft(_config(tiny_dir, tmp_path / "lora", steps=1))
    check_outputs_load(tiny_dir / "model", tmp_path / "full" / "final", tmp_path / "lora" / "final")


def test_config_errors(tiny_dir: Path, tmp_path: Path) -> None:
    yaml_path = tmp_path / "sft.yaml"
    yaml_path.write_text("train_file: x.jsonl\nlerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'lerning_rate'"):
        load_config(SFTConfig, yaml_path)
    yaml_path.write_text("train_file: x.jsonl\nbatch_size: 6\nmicro_batch_size: 4\n")
    with pytest.raises(ConfigError, match="batch_size 6 is not a multiple of micro_batch_size 4"):
        load_config(SFTConfig, yaml_path)
    with pytest.raises(ConfigError, match="max_seq_len 512 exceeds the model's 128 positions"):
        train_sft(_config(tiny_dir, tmp_path / "run", max_seq_len=512))


@pytest.mark.slow
def test_sft_lowers_held_out_loss_on_smollm2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).parents[2])  # the example's data paths are repo-relative
    cfg = load_config(
        SFTConfig,
        "examples/sft.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            "steps=10",
            "eval_every_steps=10",
            "save_every_steps=10",
        ],
    )
    summary = train_sft(cfg)
    before, after = summary.evals[0]["eval/loss"], summary.evals[-1]["eval/loss"]
    assert after < 0.5 * before  # measured: 1.17 -> 0.13


def test_replayed_chats_are_trained_on_but_not_cut_by_context_distillation(
    tiny_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from ownlm.models.context import has_context

    system = {"role": "system", "content": "You are a careful calculator; answer in one line."}
    app = [
        {"messages": [system, {"role": "user", "content": f"{a} + {b}?"},
                      {"role": "assistant", "content": f"{a + b}"}]}
        for a in range(6) for b in range(6)
    ]  # fmt: skip
    replay = [
        {"messages": [{"role": "user", "content": f"{a} * 2 ="},
                      {"role": "assistant", "content": f"{2 * a}"}]}
        for a in range(6)
    ]  # fmt: skip
    (tmp_path / "app.jsonl").write_text("".join(json.dumps(r) + "\n" for r in app))
    (tmp_path / "replay.jsonl").write_text("".join(json.dumps(r) + "\n" for r in replay))
    summary = train_sft(
        _config(
            tiny_dir, tmp_path / "run", train_file=str(tmp_path / "app.jsonl"),
            replay_file=str(tmp_path / "replay.jsonl"), steps=1, max_seq_len=128,
        )
    )  # fmt: skip
    assert summary.train_examples == 27 + 6  # 36 app chats less a quarter held out, + 6 replayed
    assert has_context(AutoTokenizer.from_pretrained(summary.final_dir))  # the app's system cut
    with pytest.raises(DataError, match="replay_file .* does not exist"):
        train_sft(_config(tiny_dir, tmp_path / "r2", replay_file=str(tmp_path / "none.jsonl")))
