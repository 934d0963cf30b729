"""GGUF export with llama.cpp's converter: F16 greedy outputs equal the HF checkpoint's."""

from __future__ import annotations

from pathlib import Path

import pytest

from ownlm.models.chat import encode_prompt
from ownlm.models.gguf import ExportGGUFConfig, export_command
from ownlm.models.llama_cpp import LlamaServer, export_gguf, gguf_path_for
from ownlm.rollout.llama_cpp import complete_on_server
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import SamplingParams

QUESTIONS = [
    "What is 12 + 7?",
    "How many legs do 3 spiders have?",
    "Name a colour.",
    "Write the word 'cat' backwards.",
    "What is the capital of France?",
    "Is 17 a prime number?",
    "Count from 1 to 5.",
    "What comes after Monday?",
]


def greedy_both(
    model_dir: str, model: object, tok: object, new_tokens: int, questions: list[str] = QUESTIONS,
    **server_args: int,
) -> tuple[list, list]:  # fmt: skip
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    ref = sample_completions(model, tok, prompts, 1, params).texts
    gguf = export_gguf(model_dir, "f16")
    with LlamaServer(gguf, parallel_slots=4, threads=2, **server_args) as server:
        got = complete_on_server(server.base_url, prompts, params, parallel=4)
    return ref, [o.text for o in got]


def test_f16_export_of_a_tiny_model_decodes_like_the_checkpoint(
    tiny: tuple, tiny_model_dir: Path
) -> None:
    model, tok = tiny
    ref, got = greedy_both(str(tiny_model_dir), model, tok, 8)
    assert got == ref


def test_prompts_longer_than_the_micro_batch_decode_like_the_checkpoint(
    tiny: tuple, tiny_model_dir: Path
) -> None:
    # ownlm starts llama-server with small micro-batches (UBATCH_TOKENS): a long prompt is
    # prefilled in several of them, which must not change a token
    model, tok = tiny
    long = [" ".join(QUESTIONS[i:] + QUESTIONS[:i]) for i in range(4)]
    assert all(len(tok(q).input_ids) > 3 * 16 for q in long)
    ref, got = greedy_both(str(tiny_model_dir), model, tok, 8, long, ubatch_tokens=16)
    assert got == ref


def test_export_is_reused_until_the_weights_change(tmp_path: Path, tiny: tuple) -> None:
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    first = export_gguf(str(tmp_path / "m"), "q8_0")
    assert first == gguf_path_for(tmp_path / "m", "q8_0")
    mtime = first.stat().st_mtime_ns
    assert export_gguf(str(tmp_path / "m"), "q8_0").stat().st_mtime_ns == mtime
    summary = export_command(ExportGGUFConfig(model=str(tmp_path / "m"), quantizations=["q8_0"]))
    modelfile = Path(summary.modelfile).read_text()
    assert modelfile.startswith("FROM ./ownlm-q8_0.gguf") and "<|im_start|>assistant" in modelfile


@pytest.mark.slow
def test_f16_export_of_smollm2_decodes_like_the_checkpoint() -> None:
    from ownlm.models.load import load_model

    model, tok = load_model("smollm2-135m")
    ref, got = greedy_both("smollm2-135m", model, tok, 32)
    assert got == ref
