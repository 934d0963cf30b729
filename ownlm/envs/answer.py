"""Exact answer extraction and comparison for verifiable tasks.

The prompt asks for a final line `Answer: <value>`, but SmolLM2-135M-Instruct almost never writes
it: asked `12 + 7 =` it answers `12 + 7 = 19` or `The answer is 19.` (docs/task_choice.md). So
the extractor takes, in order of precedence, the last of:
  1. `<answer>...</answer>`      2. `\\boxed{...}`      3. `Answer: X` / `the answer is X`
  4. the result of an equation that ends the text (`... = X`)
  5. the whole completion, when it is a single number.
Anything else (no explicit final value) is not well formed. No "last number anywhere in the text"
fallback: that would reward rambling that happens to mention the answer.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

AnswerFormat = Literal["answer_line", "answer_tag", "boxed"]

FORMAT_INSTRUCTIONS: dict[str, str] = {
    "answer_line": "Give only the final answer, on one line, in the form 'Answer: <answer>'.",
    "answer_tag": "Give only the final answer inside <answer></answer> tags.",
    "boxed": "Give only the final answer inside \\boxed{}.",
}

_ANSWER_LINE = re.compile(r"answer[*\s]*(?:is\b[*\s]*[:=]?|[:=])[*\s]*(\S.*)", re.IGNORECASE)
# The result of an equation that ends the text: `... = 42` or `... = 42.`, one word after `=`.
_FINAL_EQUATION = re.compile(r"=\s*([^\s=]+)\s*$")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?$")


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced; None if there is none or it is open."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in text (last `<answer>` tag, else last `\\boxed{}`, else last
    `Answer:` line), stripped; None when there is none."""
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return clean_answer(tags[-1])
    boxed = _boxed(text)
    if boxed is not None:
        return clean_answer(boxed)
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return clean_answer(lines[-1])
    eq = _FINAL_EQUATION.search(text.strip())
    if eq:
        return clean_answer(eq.group(1))
    bare = clean_answer(text)
    if bare is not None and parse_number(bare) is not None:
        return bare
    return None


def clean_answer(raw: str) -> str | None:
    """Strip whitespace, markdown bold, a trailing period and a `$...$` wrapper."""
    s = raw.strip().rstrip(".").strip().strip("*").strip()
    if s.startswith("$") and s.endswith("$") and len(s) > 1:
        s = s[1:-1].strip()
    s = s.rstrip(".").strip()
    return s or None


def parse_number(text: str) -> Fraction | None:
    """A number written as an int, decimal or fraction (commas as thousands separators)."""
    s = text.replace(",", "").replace(" ", "")
    if not _NUMBER.match(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(extracted: str, expected: str) -> bool:
    """Equal as numbers when both are numbers, else equal as case-folded, space-normalised text."""
    a, b = parse_number(extracted), parse_number(expected)
    if a is not None and b is not None:
        return a == b
    return " ".join(extracted.split()).casefold() == " ".join(expected.split()).casefold()
