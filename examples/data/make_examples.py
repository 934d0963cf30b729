"""Write the small example datasets for the SFT and DPO recipes, offline and seeded.

    .venv/bin/python examples/data/make_examples.py

sft_train.jsonl / sft_eval.jsonl: arithmetic questions asked in several phrasings, answered in
one fixed format ("37 + 48 = 85\\nAnswer: 85"), OpenAI fine-tuning rows. SFT teaches the format
(and the sums), so held-out loss falls.

pairs_train.jsonl / pairs_eval.jsonl: the same kind of questions; chosen is the correct answer in
the format, rejected is either a wrong result in the format or a wrong, rambling reply (TRL
preference rows). DPO raises the held-out chosen-minus-rejected margin.

Train and eval questions never share an (a, op, b) triple.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1234
PHRASINGS = [
    "What is {a} {op} {b}?",
    "Compute {a} {op} {b}.",
    "{a} {op} {b} = ?",
    "Please work out {a} {op} {b}.",
    "Quick question: what's {a} {op} {b}?",
]
RAMBLES = [
    "Hmm, that's a tricky one. I'd guess it is around {x}, but I'm not completely sure.",
    "Great question! Numbers can be fun. Let me think... it might be {x}.",
    "The result should be roughly {x}, give or take a few.",
]


def _problems(rng: random.Random) -> list[tuple[int, str, int, int]]:
    """All distinct (a, op, b, result) triples we draw from, shuffled."""
    out = []
    for a in range(10, 100):
        for b in range(2, 100):
            out.append((a, "+", b, a + b))
            if b < a:
                out.append((a, "-", b, a - b))
            if b < 10:
                out.append((a, "*", b, a * b))
    rng.shuffle(out)
    return out


def _answer(a: int, op: str, b: int, result: int) -> str:
    return f"{a} {op} {b} = {result}\nAnswer: {result}"


def _wrong(rng: random.Random, result: int) -> int:
    return result + rng.choice([-10, -2, -1, 1, 2, 10])


def _chat_row(rng: random.Random, p: tuple[int, str, int, int]) -> dict:
    a, op, b, result = p
    question = rng.choice(PHRASINGS).format(a=a, op=op, b=b)
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": _answer(a, op, b, result)},
        ]
    }


def _pair_row(rng: random.Random, p: tuple[int, str, int, int]) -> dict:
    a, op, b, result = p
    question = rng.choice(PHRASINGS).format(a=a, op=op, b=b)
    wrong = _wrong(rng, result)
    if rng.random() < 0.5:
        rejected = _answer(a, op, b, wrong)
    else:
        rejected = rng.choice(RAMBLES).format(x=wrong)
    return {"prompt": question, "chosen": _answer(a, op, b, result), "rejected": rejected}


def _write(name: str, rows: list[dict]) -> None:
    (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(SEED)
    problems = _problems(rng)
    sft_train, sft_eval = problems[:400], problems[400:480]
    dpo_train, dpo_eval = problems[480:880], problems[880:960]
    _write("sft_train.jsonl", [_chat_row(rng, p) for p in sft_train])
    _write("sft_eval.jsonl", [_chat_row(rng, p) for p in sft_eval])
    _write("pairs_train.jsonl", [_pair_row(rng, p) for p in dpo_train])
    _write("pairs_eval.jsonl", [_pair_row(rng, p) for p in dpo_eval])


if __name__ == "__main__":
    main()
