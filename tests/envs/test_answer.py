"""Answer extraction and matching on hand-written completions."""

from __future__ import annotations

import pytest

from ownlm.envs.answer import answers_match, clean_answer, extract_answer, parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: 12", "12"),
        ("2 + 3 = 5\nAnswer: 5.", "5"),
        ("The answer is: -4", "-4"),
        ("answer = 7", "7"),
        ("Answer: 3\nWait.\nAnswer: 4", "4"),
        ("**Answer:** 9", "9"),
        ("Answer: **9**", "9"),
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("<answer> 42 </answer> and Answer: 1", "42"),
        ("<answer>1</answer><answer>2</answer>", "2"),
        ("Answer: $17$", "17"),
        ("The answer is 18.", "18"),
        ("**The answer is:** 3", "3"),
        ("71 + 83 = 154.", "154"),
        ("12 + 7 = 19\n", "19"),
        ("x = 2 + 3 = 5", "5"),
        ("43 + 14 = 57\n\nThe answer is 18.", "18"),
        (" 20 ", "20"),
    ],
)
def test_extract_answer_finds_the_final_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Answer:",
        "Answer:   .",
        "\\boxed{5",
        "2 + 3 = 5 is what we get, I think",
        "3 - 6 = \n<answer>\n\nThis is a classic example.",
        "twenty",
    ],
)
def test_no_explicit_final_answer_is_none(text: str) -> None:
    assert extract_answer(text) is None


def test_clean_answer_strips_only_decoration() -> None:
    assert clean_answer("  **-3.5**. ") == "-3.5"
    assert clean_answer(" ") is None


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("5", "5", True),
        ("5.0", "5", True),
        ("1,000", "1000", True),
        ("1/2", "0.5", True),
        ("-4", "4", False),
        ("+4", "4", True),
        ("Paris", " paris ", True),
        ("5 apples", "5", False),
        ("12", "21", False),
    ],
)
def test_answers_match(a: str, b: str, same: bool) -> None:
    assert answers_match(a, b) is same


def test_parse_number_rejects_expressions() -> None:
    assert parse_number("2+3") is None
    assert parse_number("1/0") is None
    assert parse_number("-7") == -7
