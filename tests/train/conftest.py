"""Fixtures of the SFT/DPO/reward-model/dataset tests: a byte-level ChatML tokenizer, a tiny seeded
Llama, metrics readers and the checks every recipe passes (resume after a crash, outputs load)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    # Tiny matmuls gain nothing from threads, and one thread keeps sums in a fixed order.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (ids 0-255), <|im_end|> = 256, <|im_start|> = 257."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="module")
def tiny_dir(
    tmp_path_factory: pytest.TempPathFactory, byte_tokenizer: PreTrainedTokenizerFast
) -> Path:
    """A directory whose `model/` holds a seeded 2-layer Llama (hidden 32) and the byte tokenizer;
    each test module adds its data files next to it."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(byte_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    out = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(out / "model")
    byte_tokenizer.save_pretrained(out / "model")
    return out


class Crash(Exception):
    """Stands in for a kill: raised where the process would die."""


@pytest.fixture
def run_records() -> Callable[[Path], list[dict[str, Any]]]:
    """read(run_dir): the records of the run's metrics.jsonl, in order."""

    def read(run_dir: Path) -> list[dict[str, Any]]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    return read


@pytest.fixture
def run_values(
    run_records: Callable[[Path], list[dict[str, Any]]],
) -> Callable[[Path, str], list[float]]:
    """values(run_dir, key): the value of key in each metrics record that has it."""

    def values(run_dir: Path, key: str) -> list[float]:
        return [r[key] for r in run_records(run_dir) if key in r]

    return values


@pytest.fixture
def check_resume_matches(
    monkeypatch: pytest.MonkeyPatch,
    run_records: Callable[[Path], list[dict[str, Any]]],
    run_values: Callable[[Path, str], list[float]],
) -> Callable[..., Any]:
    """check(recipe_module, train, crashed_cfg, straight_cfg, keys) for a 4-step run that saves
    every step: it dies after logging step 3 but before checkpointing it, resumes from step 2,
    and must log the same `keys` as an uninterrupted run. Returns the resumed run's summary."""

    def check(module: Any, train: Any, crashed_cfg: Any, straight_cfg: Any, keys: list[str]) -> Any:
        real_save = module.save_checkpoint

        def save_then_die_at_step_3(run_dir: Path, step: int, *args: Any, **kw: Any) -> Path:
            if step == 3:  # step 3 is logged but its checkpoint never written
                raise Crash
            return real_save(run_dir, step, *args, **kw)

        monkeypatch.setattr(module, "save_checkpoint", save_then_die_at_step_3)
        with pytest.raises(Crash):
            train(crashed_cfg)
        crashed, straight = Path(crashed_cfg.run_dir), Path(straight_cfg.run_dir)
        assert max(r["step"] for r in run_records(crashed)) == 3
        monkeypatch.setattr(module, "save_checkpoint", real_save)
        resumed = train(crashed_cfg)
        train(straight_cfg)

        assert resumed.resumed_from_step == 2
        for key in keys:
            assert run_values(crashed, key) == pytest.approx(run_values(straight, key), abs=1e-6), (
                key
            )
        assert [r["step"] for r in run_records(crashed)] == [0, 1, 2, 3, 4]
        return resumed

    return check


@pytest.fixture
def check_outputs_load() -> Callable[[Path, Path, Path], None]:
    """check(base_model_dir, full_final_dir, lora_final_dir): the full run's final/ loads with
    transformers and differs from the base; the LoRA run's loads with peft, adapters trained."""

    def check(base_dir: Path, full_dir: Path, lora_dir: Path) -> None:
        from peft import PeftModel

        full = AutoModelForCausalLM.from_pretrained(full_dir)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        assert not torch.equal(full.model.norm.weight, base.model.norm.weight)
        adapted = PeftModel.from_pretrained(base, lora_dir)
        lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b)

    return check


KILL_SCRIPT = """
import time, torch
torch.set_num_threads(1)  # as the one_thread fixture: sums in the same order as the parent's
from ownlm.train import {module} as recipe
real_step = recipe.optimizer_step

def slow_step(*args, **kw):
    time.sleep(0.4)  # the kill lands here: gradients computed, not yet applied
    return real_step(*args, **kw)

recipe.optimizer_step = slow_step
cfg = recipe.{config}.model_validate_json({cfg!r})
recipe.{train}(cfg)
"""


@pytest.fixture
def check_kill9_resume(
    run_values: Callable[[Path, str], list[float]],
    run_records: Callable[[Path], list[dict[str, Any]]],
) -> Callable[..., Any]:
    """check(module_name, train, killed_cfg, straight_cfg, keys) for a 4-step run that saves every
    step: a real process running it is killed with SIGKILL in the middle of step 3 (after its
    backward, before its optimizer step); the run resumed here from step 2 must log the same
    `keys` as an uninterrupted one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def check(module: str, train: Any, killed_cfg: Any, straight_cfg: Any, keys: list[str]) -> Any:
        run = Path(killed_cfg.run_dir)
        script = KILL_SCRIPT.format(
            module=module, config=type(killed_cfg).__name__, train=train.__name__,
            cfg=killed_cfg.model_dump_json(),
        )  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.monotonic() + 180
        while not (run / "step_2" / "meta.json").exists():
            assert proc.poll() is None, "the run to be killed exited early"
            assert time.monotonic() < deadline, "no step_2 checkpoint within 180 s"
            time.sleep(0.05)
        time.sleep(0.2)  # inside step 3's slowed optimizer step
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert not (run / "step_3").exists() and not (run / "final").exists()
        resumed = train(killed_cfg)
        train(straight_cfg)
        assert resumed.resumed_from_step == 2
        assert [r["step"] for r in run_records(run)] == [0, 1, 2, 3, 4]
        straight = Path(straight_cfg.run_dir)
        for key in keys:
            assert run_values(run, key) == pytest.approx(run_values(straight, key), abs=1e-6), key
        return resumed

    return check
