"""Hybrid thinking: on/off prefixes, /think and /no_think overrides, split and strip edge cases."""

from __future__ import annotations

from typing import Any

import pytest

from ownlm.models.chat import (
    THINK_OFF_PREFIX,
    THINK_ON_PREFIX,
    THINK_SYSTEM_PROMPT,
    encode_prompt,
    render_prompt,
    split_thinking,
    strip_thinking,
    think_close_ids,
    thinking_flag,
)

Q = [{"role": "user", "content": "What is 2+3?"}]


def test_thinking_off_opens_an_empty_thought(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    text = render_prompt(tok, Q)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert THINK_SYSTEM_PROMPT not in text


def test_thinking_on_asks_for_a_thought_and_opens_one(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    text = render_prompt(tok, Q, enable_thinking=True)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert not text.endswith(THINK_OFF_PREFIX)
    assert THINK_SYSTEM_PROMPT in text.split("<|im_end|>")[0]


def test_thinking_on_keeps_the_users_system_prompt(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    msgs = [{"role": "system", "content": "Be brief."}, *Q]
    text = render_prompt(tok, msgs, enable_thinking=True)
    assert text.startswith(f"<|im_start|>system\nBe brief.\n\n{THINK_SYSTEM_PROMPT}<|im_end|>")
    assert text.count("<|im_start|>system") == 1


@pytest.mark.parametrize(
    ("suffix", "enable", "expected"),
    [
        (" /think", False, THINK_ON_PREFIX),
        (" /no_think", True, THINK_OFF_PREFIX),
        ("/no_think\n", False, THINK_OFF_PREFIX),
        ("", True, THINK_ON_PREFIX),
    ],
)
def test_flag_in_latest_user_turn_overrides(
    tiny: tuple[Any, Any], suffix: str, enable: bool, expected: str
) -> None:
    _, tok = tiny
    msgs = [{"role": "user", "content": f"What is 2+3?{suffix}"}]
    text = render_prompt(tok, msgs, enable_thinking=enable)
    assert text.endswith("assistant\n" + expected)
    assert " /think" not in text and "/no_think" not in text
    assert "What is 2+3?<|im_end|>" in text


def test_only_the_latest_user_turn_counts() -> None:
    msgs = [
        {"role": "user", "content": "hi /think"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ]
    assert thinking_flag(msgs) is None
    assert thinking_flag(msgs[:1]) is True
    assert thinking_flag([{"role": "user", "content": "a /think b"}]) is None


def test_old_assistant_thoughts_are_dropped(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    msgs = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "<think>\none plus one\n</think>\n\nAnswer: 2"},
        {"role": "user", "content": "2+2?"},
    ]
    text = render_prompt(tok, msgs)
    assert "one plus one" not in text
    assert "<|im_start|>assistant\nAnswer: 2<|im_end|>" in text


def test_no_generation_prompt_has_no_prefix(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    text = render_prompt(tok, Q, add_generation_prompt=False)
    assert text.endswith("What is 2+3?<|im_end|>\n")


def test_encode_prompt_matches_text_and_has_no_extra_bos(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    ids = encode_prompt(tok, Q, enable_thinking=True)
    assert tok.decode(ids) == render_prompt(tok, Q, enable_thinking=True)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


def test_think_close_ids_decode_to_the_close_tag(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    assert tok.decode(think_close_ids(tok)) == "\n</think>\n\n"


@pytest.mark.parametrize(
    ("text", "thinking_open", "thought", "answer"),
    [
        ("<think>\nadd them\n</think>\n\nAnswer: 5", False, "add them", "Answer: 5"),
        ("add them\n</think>\n\nAnswer: 5", True, "add them", "Answer: 5"),
        ("Answer: 5", False, "", "Answer: 5"),
        ("still thinking, no close", True, "still thinking, no close", ""),
        ("<think>\ncut off", False, "cut off", ""),
        ("pre <think>x</think> post", False, "x", "pre  post"),
        ("<think>\n\n</think>\n\nAnswer: 7", False, "", "Answer: 7"),
        ("a</think>b</think>c", True, "a", "b</think>c"),
        ("", True, "", ""),
    ],
)
def test_split_thinking(text: str, thinking_open: bool, thought: str, answer: str) -> None:
    assert split_thinking(text, thinking_open=thinking_open) == (thought, answer)
    assert strip_thinking(text, thinking_open=thinking_open) == answer


def test_a_model_marked_to_answer_without_a_thought_opens_directly(
    tiny: tuple[Any, Any],
) -> None:
    import copy

    from ownlm.models.chat import answers_without_thought, mark_answers_without_thought

    _, tok = tiny
    tok = copy.deepcopy(tok)
    before = render_prompt(tok, Q)
    mark_answers_without_thought(tok)
    mark_answers_without_thought(tok)  # once
    assert answers_without_thought(tok) and tok.chat_template.count("ownlm: no-think") == 1
    assert render_prompt(tok, Q) == before[: -len(THINK_OFF_PREFIX)]
    assert render_prompt(tok, Q).endswith("<|im_start|>assistant\n")
    assert render_prompt(tok, Q, enable_thinking=True).endswith(THINK_ON_PREFIX)  # asked: it may
