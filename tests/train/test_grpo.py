"""GRPO recipe on a tiny random model: reference losses, accumulation, exact resume after kill -9,
LoRA checkpoints, variants, and the errors a user can cause."""

from __future__ import annotations

import json
import os
import signal
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ownlm.config import load_config
from ownlm.envs.base import Message, Score, Task
from ownlm.errors import ConfigError
from ownlm.train.grpo import GRPOConfig, train_grpo

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Metrics that depend on wall time, not on the numbers of the run.
TIMING_KEYS = {
    "time/step_s", "time/rollout_s", "time/train_s", "time/optimizer_s", "rollout/tokens_per_s"
}  # fmt: skip


class DigitEnv:
    """Toy env: a completion is correct when it holds a digit (a random char model: ~half)."""

    name = "digits"

    def __init__(self, sleep_after_scores: int | None = None) -> None:
        self.sleep_after_scores = sleep_after_scores
        self.scored = 0

    def tasks(self, split: str, n: int) -> list[Task]:
        offset = 0 if split == "train" else 10_000
        return [Task(id=f"{split}-{i}", question=f"q{i + offset}", answer="1") for i in range(n)]

    def reset(self, task: Task) -> list[Message]:
        return [{"role": "user", "content": task.question}]

    def score(self, task: Task, completion: str) -> Score:
        self.scored += 1
        if self.sleep_after_scores is not None and self.scored > self.sleep_after_scores:
            time.sleep(600)  # the kill -9 test kills the run here, mid-step
        correct = any(c.isdigit() for c in completion)
        return Score(reward=1.0 if correct else 0.0, correct=correct, well_formed=bool(completion))


def make_tiny_model_dir(path: Path) -> Path:
    """A 2-layer Llama and a one-char-per-token tokenizer with a ChatML template, saved to path."""
    chars = list(string.printable[:95]) + ["\n"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def config(tiny_dir: Path, run_dir: Path, **kw: Any) -> GRPOConfig:
    base: dict[str, Any] = {
        "model": str(tiny_dir), "run_dir": str(run_dir), "steps": 3, "prompts_per_step": 2,
        "group_size": 4, "max_new_tokens": 6, "lr": 1e-2, "train_problems": 16,
        "save_every_steps": 1, "threads": 1,
    }  # fmt: skip
    base.update(kw)
    return GRPOConfig.model_validate(base)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMING_KEYS} for ln in lines]


# Logged by the first run of this test, committed: a change in sampling, scoring, the training
# forward or the loss math shows up here. (With ratio 1, the grpo loss is -mean(advantages) = 0 at
# every step; its gradient is not, so the grad norms are what is pinned.)
REFERENCE = {
    "grpo": {"train/loss": [0.0, 0.0, 0.0], "train/grad_norm": [1.76217, 1.06869, 0.81987]},
    "dapo": {"train/loss": [-0.136336, 0.0, 0.0], "train/grad_norm": [1.50831, 0.98151, 1.12320]},
}


@pytest.mark.parametrize("loss", ["grpo", "dapo"])
def test_recipe_reference_values(tiny_dir: Path, tmp_path: Path, loss: str) -> None:
    summary = train_grpo(config(tiny_dir, tmp_path / "run", loss=loss), env=DigitEnv())
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [m["rollout/reward_mean"] for m in metrics] == [0.625, 0.375, 0.375]
    for key, want in REFERENCE[loss].items():
        assert [m[key] for m in metrics] == pytest.approx(want, abs=1e-4), key
    assert summary.steps == 3 and (tmp_path / "run" / "config.yaml").is_file()
    # final/ loads with plain transformers
    LlamaForCausalLM.from_pretrained(tmp_path / "run" / "final")


def test_accumulation_1x8_equals_8x1(tiny_dir: Path, tmp_path: Path) -> None:
    runs = {}
    for accum in (1, 8):
        run = tmp_path / f"accum{accum}"
        cfg = config(tiny_dir, run, steps=1, prompts_per_step=8, grad_accum_steps=accum)
        train_grpo(cfg, env=DigitEnv())
        runs[accum] = (read_metrics(run)[0], load_file(run / "final" / "model.safetensors"))
    (m1, w1), (m8, w8) = runs[1], runs[8]
    assert m1["train/loss"] == pytest.approx(m8["train/loss"], abs=1e-6)
    assert m1["train/grad_norm"] == pytest.approx(m8["train/grad_norm"], rel=1e-5)
    # Adam's first step is ~lr * sign(grad), so a rounding-level change in a near-zero gradient
    # can flip one element: compare the update directions as a whole.
    w0 = load_file(tiny_dir / "model.safetensors")
    d1 = torch.cat([(w1[k] - w0[k]).flatten() for k in sorted(w0)])
    d8 = torch.cat([(w8[k] - w0[k]).flatten() for k in sorted(w0)])
    assert d1.abs().max() > 0
    assert torch.nn.functional.cosine_similarity(d1, d8, dim=0) > 0.9999
    assert (d1 - d8).abs().gt(1e-6).float().mean() < 1e-3


RESUME_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_grpo import DigitEnv
from ownlm.train.grpo import GRPOConfig, train_grpo
cfg = GRPOConfig.model_validate_json({cfg!r})
train_grpo(cfg, env=DigitEnv(sleep_after_scores={sleep_after}))
"""


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_kill9_then_resume_matches_uninterrupted(
    tiny_dir: Path, tmp_path: Path, lora: bool
) -> None:
    extra: dict[str, Any] = {"steps": 4, "save_every_steps": 2}
    if lora:
        extra.update(lora={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}, lr=5e-2)
    train_grpo(config(tiny_dir, tmp_path / "full", **extra), env=DigitEnv())
    expected = read_metrics(tmp_path / "full")

    run = tmp_path / "killed"
    cfg = config(tiny_dir, run, **extra)
    script = RESUME_SCRIPT.format(
        tests=str(Path(__file__).parent), cfg=cfg.model_dump_json(), sleep_after=2 * 8
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    deadline = time.monotonic() + 120
    while not (run / "step_2" / "meta.json").exists():
        assert proc.poll() is None, "the run to be killed exited early"
        assert time.monotonic() < deadline, "no step_2 checkpoint within 120 s"
        time.sleep(0.2)
    time.sleep(0.5)  # now inside step 3, asleep in DigitEnv.score
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    summary = train_grpo(cfg, env=DigitEnv())
    assert summary.resumed_from_step == 2
    got = read_metrics(run)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for want, have in zip(expected, got, strict=True):
        assert have.keys() == want.keys()
        for k in want:
            assert have[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), (want["step"], k)
    assert any(m["train/loss"] != 0 for m in got)


def test_lora_checkpoint_loads_with_peft(tiny_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    lora = {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}
    train_grpo(config(tiny_dir, tmp_path / "run", steps=1, lora=lora), env=DigitEnv())
    assert (tmp_path / "run" / "step_1" / "adapter_config.json").is_file()
    base = LlamaForCausalLM.from_pretrained(tiny_dir)
    PeftModel.from_pretrained(base, tmp_path / "run" / "step_1")
    LlamaForCausalLM.from_pretrained(tmp_path / "run" / "final")


@pytest.mark.parametrize(
    ("loss", "extra"),
    [
        ("dr_grpo", {}),
        ("dapo", {}),
        ("rloo", {}),
        ("grpo", {"beta": 0.1}),
        ("grpo", {"beta": 0.1, "lora": {"r": 2, "alpha": 4, "targets": ["q_proj"]}}),
    ],
)
def test_variants_run_and_learn(
    tiny_dir: Path, tmp_path: Path, loss: str, extra: dict[str, Any]
) -> None:
    train_grpo(config(tiny_dir, tmp_path / "run", steps=2, loss=loss, **extra), env=DigitEnv())
    m = read_metrics(tmp_path / "run")[1]
    assert m["train/grad_norm"] > 0
    if loss == "dapo":
        assert m["rollout/groups_kept"] <= 2


def test_random_reward_keeps_reward_distribution(tiny_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "real", tmp_path / "random"
    train_grpo(config(tiny_dir, a, steps=1), env=DigitEnv())
    train_grpo(config(tiny_dir, b, steps=1, reward_mode="random"), env=DigitEnv())
    ma, mb = read_metrics(a)[0], read_metrics(b)[0]
    # same samples and the same rewards, shuffled: same mean, same accuracy, different loss
    assert ma["rollout/reward_mean"] == mb["rollout/reward_mean"]
    assert ma["rollout/accuracy"] == mb["rollout/accuracy"]


def test_refuses_resume_with_another_seed(tiny_dir: Path, tmp_path: Path) -> None:
    train_grpo(config(tiny_dir, tmp_path / "run", steps=1), env=DigitEnv())
    with pytest.raises(ConfigError, match="seed=0.*seed=1"):
        train_grpo(config(tiny_dir, tmp_path / "run", steps=2, seed=1), env=DigitEnv())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["group_size=1"], "group_size is 1"),
        (["prompts_per_step=3", "grad_accum_steps=2"], "does not split"),
        (
            ["enable_thinking=true", "thinking_budget_tokens=64", "max_new_tokens=48"],
            "leaves no room",
        ),
        (["temperature=0"], "temperature > 0"),
        (["lerning_rate=1"], "unknown key 'lerning_rate'"),
        (["loss=ppo"], "loss"),
        (["device=gpu"], "device"),
        (["dtype=float16"], "dtype"),
    ],
)
def test_bad_config_is_a_clear_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(GRPOConfig, None, overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_device_without_a_gpu_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    cfg = config(tiny_dir, tmp_path / "run", steps=1).model_copy(update={"device": "cuda"})
    with pytest.raises(ConfigError, match="sees no GPU; use device: cpu"):
        train_grpo(cfg, env=DigitEnv())


@pytest.mark.slow
def test_one_step_on_smollm2(tmp_path: Path) -> None:
    """The real model and env end to end: sample, score, train, checkpoint, final/ loads."""
    cfg = GRPOConfig.model_validate(
        {
            "run_dir": str(tmp_path / "run"), "steps": 1, "prompts_per_step": 2,
            "group_size": 2, "max_new_tokens": 8, "train_problems": 8, "temperature": 0.7,
            "env": {"train_seed": 1_000_000}, "eval_every_steps": 1, "eval_problems": 2,
        }
    )  # fmt: skip
    summary = train_grpo(cfg)
    m = read_metrics(tmp_path / "run")[0]
    assert m["rollout/completion_tokens_mean"] > 0 and 0 <= m["eval/accuracy"] <= 1
    assert (Path(summary.final_dir) / "model.safetensors").is_file()


def test_score_group_scores_a_batch_in_one_call_when_the_env_can() -> None:
    from ownlm.envs.base import Score, Task
    from ownlm.rollout.types import Completions
    from ownlm.train.grpo import GRPOConfig, score_group

    class BatchEnv:
        calls: list[int] = []

        def score(self, task: Task, completion: str) -> Score:
            raise AssertionError("score_batch should have been used")

        def score_batch(self, tasks: list[Task], completions: list[str]) -> list[Score]:
            self.calls.append(len(completions))
            return [
                Score(float(c == t.answer), c == t.answer, True)
                for t, c in zip(tasks, completions, strict=True)
            ]

    tasks = [Task("a", "q", "1"), Task("b", "q", "2")]
    comps = Completions(
        [[1], [2]],
        2,
        torch.zeros(4, 1),
        torch.zeros(4, 1),
        torch.ones(4, 1, dtype=torch.bool),
        ["1", "x", "2", "2"],
        ["stop"] * 4,
    )
    env = BatchEnv()
    rewards, correct, _, errors = score_group(env, tasks, comps, GRPOConfig())
    assert env.calls == [4] and errors == 0
    assert rewards.tolist() == [1.0, 0.0, 1.0, 1.0] and correct.tolist() == [
        True,
        False,
        True,
        True,
    ]
