"""Tests for the reward-model recipe on a tiny random Llama: the loss by hand, learning a
preference, resume, saving and loading, scoring in batches."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from ownlm.config import load_config
from ownlm.errors import ConfigError, DataError, ModelLoadError
from ownlm.models.reward import encode_conversation, load_reward_model
from ownlm.train import reward_model
from ownlm.train.datasets import PreferencePair, epoch_order, tokenize_pair
from ownlm.train.reward_model import RewardModelConfig, bradley_terry_loss, train_reward_model

pytestmark = pytest.mark.usefixtures("one_thread")

POLITE = ["Sure, happy to help: {x}.", "Of course! It is {x}.", "Thanks for asking, {x}."]
RUDE = ["{x}. Stop bothering me.", "Ugh, obviously {x}.", "Figure it out yourself: {x}!"]


def _pair_rows(seed: int, *, shuffle_labels: bool = False) -> list[dict[str, Any]]:
    """A learnable preference: polite answers chosen over rude ones, same number in both.
    shuffle_labels swaps chosen and rejected at random: a control with nothing to learn."""
    rng = random.Random(seed)
    rows = []
    for a in range(8):
        for b in range(8):
            x = a + b
            good = rng.choice(POLITE).format(x=x)
            bad = rng.choice(RUDE).format(x=x)
            if shuffle_labels and rng.random() < 0.5:
                good, bad = bad, good
            rows.append({"prompt": f"{a} + {b}?", "chosen": good, "rejected": bad})
    return rows


@pytest.fixture(scope="module")
def tiny_dir(tiny_dir: Path) -> Path:
    """The tiny model of tests/train/conftest.py, with rm_pairs.jsonl and a shuffled control."""
    for name, shuffle in (("rm_pairs.jsonl", False), ("rm_control.jsonl", True)):
        rows = _pair_rows(0, shuffle_labels=shuffle)
        (tiny_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tiny_dir


def _config(tiny_dir: Path, run_dir: Path, **over: Any) -> RewardModelConfig:
    base: dict[str, Any] = {
        "model": str(tiny_dir / "model"),
        "train_file": str(tiny_dir / "rm_pairs.jsonl"),
        "eval_fraction": 0.25,
        "run_dir": str(run_dir),
        "max_seq_len": 96,
        "batch_size": 8,
        "micro_batch_size": 4,
        "steps": 3,
        "lr": 1e-2,
        "lora": {"r": 4, "alpha": 8},
        "eval_every_steps": 1,
        "save_every_steps": 1,
        "progress": False,
    }
    return RewardModelConfig(**{**base, **over})


def test_bradley_terry_loss_by_hand() -> None:
    # pair 1: equal rewards -> log 2 = 0.693147; pair 2: margin 1 -> log(1 + e^-1) = 0.313262
    loss = bradley_terry_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
    assert float(loss) == pytest.approx((0.693147 + 0.313262) / 2, abs=1e-6)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_learns_polite_over_rude_and_not_shuffled_labels(
    tiny_dir: Path, tmp_path: Path, finetune: str
) -> None:
    over: dict[str, Any] = {"steps": 30, "eval_every_steps": 30, "save_every_steps": 30}
    if finetune == "full":
        over.update(lora=None, lr=3e-3)
    summary = train_reward_model(_config(tiny_dir, tmp_path / "real", **over))
    before, after = summary.evals[0], summary.evals[-1]
    print("real", before["eval/accuracy"], after["eval/accuracy"], after["eval/loss"])
    assert summary.eval_examples == 16 and summary.train_examples == 48
    # 16 held-out pairs: >= 15 right puts the Wilson lower bound above 0.7, well clear of chance
    assert after["eval/accuracy"] >= 15 / 16
    assert after["eval/accuracy_ci_low"] > 0.7
    assert after["eval/loss"] < 0.3
    # The same run on labels shuffled at random has nothing to learn: held-out accuracy stays
    # near chance, so the accuracy above comes from the preference, not from the set-up.
    control = train_reward_model(
        _config(
            tiny_dir, tmp_path / "control", train_file=str(tiny_dir / "rm_control.jsonl"), **over
        )
    )
    assert control.evals[-1]["eval/accuracy"] <= 12 / 16


def test_accumulation_2x4_equals_1x8(tiny_dir: Path, tmp_path: Path, run_values: Any) -> None:
    train_reward_model(_config(tiny_dir, tmp_path / "a", micro_batch_size=4))
    train_reward_model(_config(tiny_dir, tmp_path / "b", micro_batch_size=8))
    for key in ("train/loss", "eval/loss", "eval/margin"):
        got, want = run_values(tmp_path / "a", key), run_values(tmp_path / "b", key)
        assert got == pytest.approx(want, abs=1e-5), key


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_resume_after_crash_equals_uninterrupted(
    tiny_dir: Path, tmp_path: Path, finetune: str, check_resume_matches: Any
) -> None:
    lora = {"r": 4, "alpha": 8, "dropout": 0.1} if finetune == "lora" else None
    over: dict[str, Any] = {"steps": 4, "lora": lora}
    check_resume_matches(
        reward_model, train_reward_model,
        _config(tiny_dir, tmp_path / "crashed", **over),
        _config(tiny_dir, tmp_path / "straight", **over),
        ["train/loss", "train/grad_norm", "eval/loss", "eval/margin"],
    )  # fmt: skip
    with pytest.raises(ConfigError, match="it was run with lr=0.01 but the config now says"):
        train_reward_model(_config(tiny_dir, tmp_path / "crashed", **{**over, "lr": 0.5}))


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_saved_model_loads_and_scores_like_training(
    tiny_dir: Path, tmp_path: Path, finetune: str, run_values: Any
) -> None:
    over: dict[str, Any] = {"steps": 2, "eval_fraction": 0.5}
    if finetune == "full":
        over["lora"] = None
    summary = train_reward_model(_config(tiny_dir, tmp_path / "run", **over))
    assert (Path(summary.final_dir) / "reward_head.safetensors").is_file()
    rm = load_reward_model(tmp_path / "run", max_seq_len=96)  # run dir -> final/
    rows = _pair_rows(0)
    chosen = [_conv(r["prompt"], r["chosen"]) for r in rows[:6]]
    batched = rm.score_texts(chosen, batch_size=4)
    one_by_one = [rm.score_texts([c], batch_size=1)[0] for c in chosen]
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert len({round(x, 4) for x in batched}) > 1  # the scores depend on the text
    # The reloaded model (LoRA merged) reproduces the run's final held-out margin.
    held_out = [rows[i] for i in epoch_order(len(rows), 0, epoch=-1)[: len(rows) // 2]]
    r_chosen = rm.score_texts([_conv(r["prompt"], r["chosen"]) for r in held_out])
    r_rejected = rm.score_texts([_conv(r["prompt"], r["rejected"]) for r in held_out])
    margin = sum(c - r for c, r in zip(r_chosen, r_rejected, strict=True)) / len(held_out)
    assert margin == pytest.approx(run_values(tmp_path / "run", "eval/margin")[-1], abs=1e-4)


# Byte tokens: system turn 1 + 7 + 9 + 2 = 19, user 1 + 5 + 6 + 2 = 14, generation prompt 11
# (prompt 44), answer 23 + 2 (69 in all). The prompt keeps its last max_seq_len // 2 tokens.
@pytest.mark.parametrize(("max_seq_len", "cut"), [(512, 0), (40, 44 - 20), (24, 44 - 12)])
def test_inference_ids_equal_training_ids(byte_tokenizer: Any, max_seq_len: int, cut: int) -> None:
    # The scorer (models/reward.py) must see what training saw (train/datasets.tokenize_pair).
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 4?"}]
    answer = [{"role": "assistant", "content": "Sure, happy to help: 7."}]
    pair = PreferencePair(prompt, answer, [{"role": "assistant", "content": "7"}])
    full = tokenize_pair(byte_tokenizer, pair, 512).chosen.input_ids
    assert len(full) == 69
    got = encode_conversation(byte_tokenizer, prompt + answer, max_seq_len)
    assert got == full[cut : cut + max_seq_len]
    assert got == tokenize_pair(byte_tokenizer, pair, max_seq_len).chosen.input_ids
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with pytest.raises(DataError, match="carries OpenAI tool-call fields"):
        encode_conversation(
            byte_tokenizer,
            [*prompt, {"role": "assistant", "content": None, "tool_calls": [call]}],
            64,
        )


def _conv(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_bad_inputs(tiny_dir: Path, tmp_path: Path) -> None:
    yaml_path = tmp_path / "rm.yaml"
    yaml_path.write_text("train_file: x.jsonl\nbatch_size: 6\nmicro_batch_size: 4\n")
    with pytest.raises(ConfigError, match="batch_size 6 is not a multiple of micro_batch_size 4"):
        load_config(RewardModelConfig, yaml_path)
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "a"}\n')
    with pytest.raises(DataError, match="line 1: 'chosen' and 'rejected' are identical"):
        train_reward_model(_config(tiny_dir, tmp_path / "run", train_file=str(bad)))
    with pytest.raises(ModelLoadError, match="no reward_head.safetensors in"):
        load_reward_model(tiny_dir / "model")
    rm_dir = tmp_path / "ok"
    train_reward_model(_config(tiny_dir, rm_dir, steps=1))
    with pytest.raises(DataError, match="does not end with an assistant message"):
        load_reward_model(rm_dir).score_texts([[{"role": "user", "content": "hi"}]])


@pytest.mark.slow
@pytest.mark.long  # 50 LoRA steps on SmolLM2: ~18 min on a loaded 2-core machine
def test_reward_model_ranks_held_out_pairs_on_smollm2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_values: Any
) -> None:
    monkeypatch.chdir(Path(__file__).parents[2])  # the example's data paths are repo-relative
    cfg = load_config(
        RewardModelConfig, "examples/reward_model.yaml", [f"run_dir={tmp_path / 'run'}"]
    )
    summary = train_reward_model(cfg)
    # measured (docs/rewards.md): 80 held-out pairs, eval loss 0.565 -> 0.366, accuracy 0.71
    # (Wilson 95% CI 0.61-0.80); 39/39 of the rambling rejections, 18/41 of the wrong results.
    assert summary.evals[-1]["eval/accuracy_ci_low"] > 0.5
    losses = run_values(tmp_path / "run", "eval/loss")
    assert losses[-1] < losses[0] - 0.1
    rm = load_reward_model(summary.final_dir, max_seq_len=cfg.max_seq_len)
    rows = [json.loads(line) for line in Path(cfg.eval_file or "").read_text().splitlines()]
    rambling = [r for r in rows if "Answer:" not in r["rejected"]]
    r_chosen = rm.score_texts([_conv(r["prompt"], r["chosen"]) for r in rambling])
    r_rejected = rm.score_texts([_conv(r["prompt"], r["rejected"]) for r in rambling])
    wins = sum(c > r for c, r in zip(r_chosen, r_rejected, strict=True))
    assert wins >= 0.9 * len(rambling)
