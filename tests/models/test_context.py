"""Context distillation: the shared context is found, cut by the template everywhere it renders."""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ownlm.models.chat import (
    answers_without_thought,
    encode_prompt,
    mark_answers_without_thought,
    render_prompt,
)
from ownlm.models.context import find_shared_context, has_context, install_context
from ownlm.models.llama_cpp import THINK_OFF_PREFIX, LlamaServer, export_gguf
from ownlm.models.load import load_model

SYSTEM = "You are a helpful assistant."
HEAD = "Count the legs in total.\n\nHow many legs are there if you have "
TAIL = "?\nGive only the final answer, in the form 'Answer: <n>'."
ANIMALS = ["cats", "dogs", "spiders", "ants", "birds", "crabs"]


def chat(animals: str, system: str | None = SYSTEM) -> list[dict[str, Any]]:
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": f"{HEAD}{animals}{TAIL}"}]


CONVERSATIONS = [chat(f"{n} {a}") for n in range(1, 6) for a in ANIMALS]


def test_the_shared_system_prompt_prefix_and_suffix_are_found_at_word_bounds() -> None:
    ctx = find_shared_context(CONVERSATIONS)
    assert ctx is not None
    assert ctx.system == SYSTEM
    # every question starts "have <n> ": the cut stops before the number's word
    assert ctx.user_prefix == HEAD
    assert ctx.user_suffix == TAIL  # "cats?", "dogs?" ... share "s?": the cut keeps the word


def test_too_little_to_share_finds_nothing() -> None:
    assert find_shared_context(CONVERSATIONS[:5]) is None  # too few rows to learn from
    varied = [[{"role": "user", "content": f"question {i}: what is {i} + {i}?"}] for i in range(9)]
    varied *= 4
    assert find_shared_context(varied) is None  # "question " + "?" is under the minimum
    # a turn that is all shared text would be left empty: the user turns are not cut
    bare = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": HEAD + TAIL}]
    empty = find_shared_context([*CONVERSATIONS, bare])
    assert empty is not None and empty.system == SYSTEM
    assert empty.user_prefix == empty.user_suffix == ""


def test_the_template_cuts_matching_prompts_and_leaves_others(tiny: tuple[Any, Any]) -> None:
    tok = copy.deepcopy(tiny[1])
    before = {
        "other system": render_prompt(tok, chat("2 cats", system="Be brief.")),
        "other question": render_prompt(tok, [{"role": "user", "content": "What is 2 + 2?"}]),
    }
    long_ids = encode_prompt(tok, chat("2 cats"))
    ctx = find_shared_context(CONVERSATIONS)
    assert ctx is not None
    install_context(tok, ctx)
    install_context(tok, ctx)  # once only
    assert has_context(tok) and tok.chat_template.count("ownlm context distillation") == 1
    short = render_prompt(tok, chat("2 cats"))
    assert "2 cats" in short and HEAD not in short and TAIL not in short and SYSTEM not in short
    assert len(encode_prompt(tok, chat("2 cats"))) < len(long_ids) / 2
    # the system prompt of another app and a question of another form render as before
    assert render_prompt(tok, chat("2 cats", system="Be brief.")) != before["other system"]
    assert "Be brief." in render_prompt(tok, chat("2 cats", system="Be brief."))
    assert (
        render_prompt(tok, [{"role": "user", "content": "What is 2 + 2?"}])
        == (before["other question"])
    )


@pytest.mark.parametrize("no_thought", [False, True])
def test_the_cut_is_saved_with_the_model_and_served_by_llama_cpp(
    tiny: tuple[Any, Any], tmp_path: Path, no_thought: bool
) -> None:
    model, tok = tiny
    tok = copy.deepcopy(tok)
    ctx = find_shared_context(CONVERSATIONS)
    assert ctx is not None
    install_context(tok, ctx)
    if no_thought:
        mark_answers_without_thought(tok)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    _, loaded = load_model(str(tmp_path / "m"))
    assert has_context(loaded)
    expected = render_prompt(loaded, chat("3 ants"))
    # llama-server renders the GGUF's own template (minja) the same way
    with LlamaServer(export_gguf(str(tmp_path / "m"), "f16"), parallel_slots=1, threads=1) as s:
        req = urllib.request.Request(
            f"{s.base_url}/apply-template",
            data=json.dumps({"messages": chat("3 ants")}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            served = json.loads(resp.read())["prompt"]
    assert served == expected
    assert expected.endswith(THINK_OFF_PREFIX) is not no_thought
    assert expected.endswith("<|im_start|>assistant\n") is no_thought


@pytest.mark.parametrize(
    ("distill", "answer"),
    [(True, "Answer: 4"), (False, "Answer: 4"), (True, "<think>2+2</think>Answer: 4")],
)
def test_sft_installs_the_cut_only_when_asked(tmp_path: Path, distill: bool, answer: str) -> None:
    from ownlm.train.sft import SFTConfig, train_sft

    rows = [{"messages": [*c, {"role": "assistant", "content": answer}]} for c in CONVERSATIONS]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from ownlm.models.tiny import tiny_model

    model, tok = tiny_model(seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    summary = train_sft(
        SFTConfig(
            model=str(tmp_path / "m"), train_file=str(tmp_path / "chats.jsonl"),
            run_dir=str(tmp_path / "run"), steps=1, batch_size=2, micro_batch_size=2,
            lora=None, max_seq_len=128, save_every_steps=1, eval_every_steps=1,
            distill_context=distill, progress=False,
        )
    )  # fmt: skip
    _, saved = load_model(summary.final_dir)
    assert has_context(saved) is distill
    # trained on answers without thoughts, the model is served no-think answers without the empty
    # thought it never saw in training; a model that learnt thoughts keeps the hybrid format
    thoughtless = "<think>" not in answer
    assert answers_without_thought(saved) is thoughtless
    assert render_prompt(saved, chat("2 cats")).endswith(THINK_OFF_PREFIX) is not thoughtless
