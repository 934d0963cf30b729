"""A scripted stand-in for a paid "strong model" API, on loopback, in the OpenAI wire format.

Two kinds, both labelled as what they are when the demo starts:
- the SCRIPTED SOLVER (the default, for `leg_counting`), described below;
- an ORACLE for any reasoning-gym task: it looks the question up in a table of the generator's
  own answers (built by the demo from the questions its app will ask) and replies
  `Answer: <answer>`; it cannot answer anything else.

It is NOT a language model: it answers the demo app's task (reasoning-gym `leg_counting`) with a
solver — it parses the animals out of the question and writes the sum step by step, like a
capable model would — and says it cannot help with anything else. It exists so that the demo can
run offline; the gateway bills it at a real provider's price (examples/flywheel_demo.yaml).
Token counts in `usage` are what the billed model's tokenizer gives: o200k_base (GPT-4o and
GPT-4.1), through the `bpe-openai` package, which ships the vocabulary (tiktoken downloads it at
run time, which this offline demo cannot). Chat prompts count as OpenAI's cookbook counts them
("How to count tokens with tiktoken"): 3 tokens per message plus its role and content, 3 to prime
the reply. The ~4 characters per token rule of thumb undercounts this app's answers by half
(digits, spaces and `=` are tokens of their own): 21 vs 43 for a four-line worked answer.

It answers with the latency of the model it is billed as: time to first token plus output tokens
at that model's speed. The defaults are GPT-4.1's on OpenAI's API as measured by Artificial
Analysis: 0.52 s to the first token, 89 output tokens/s (quoted in "GPT-4.1: reasoning",
shadabchow.com/blogs/ai-models/gpt-4-1-reasoning, 2025; an OpenAI forum run with `tacho`,
community.openai.com/t/inference-speed-of-different-models/1307310, measured 67.6 tokens/s).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from ownlm.gateway.loopback import serve_in_thread

_QUESTION = re.compile(r"if you have (?P<list>.+?)\?", re.IGNORECASE | re.DOTALL)
_ITEM = re.compile(r"^\s*(?P<n>\d+)\s+(?P<animal>.+?)\s*$")


def _legs_table() -> dict[str, int]:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    return dict(ANIMALS)


def _singular(word: str, table: dict[str, int]) -> str | None:
    for cand in (word, word[:-1] if word.endswith("s") else word, word[:-2]):
        if cand in table:
            return cand
    return None


def solve_leg_counting(question: str) -> str | None:
    """A worked answer ending in `Answer: <total>`, or None when the question is not one."""
    m = _QUESTION.search(question)
    if m is None:
        return None
    table = _legs_table()
    lines, parts = [], []
    for item in m["list"].split(","):
        im = _ITEM.match(item)
        if im is None:
            return None
        animal = _singular(im["animal"].lower(), table)
        if animal is None:
            return None
        n, legs = int(im["n"]), table[animal]
        lines.append(f"{n} {im['animal']}: {n} x {legs} = {n * legs} legs.")
        parts.append(n * legs)
    total = sum(parts)
    sums = f"{' + '.join(map(str, parts))} = {total}" if len(parts) > 1 else str(total)
    lines.append(f"Total: {sums} legs.")
    lines.append(f"Answer: {total}")
    return "\n".join(lines)


@functools.cache
def _o200k() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding("o200k_base")


def count_tokens(text: str) -> int:
    """GPT-4.1's token count of a text (o200k_base)."""
    return len(_o200k().encode(text))


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """GPT-4.1's `prompt_tokens` for a chat: 3 + role + content per message, 3 for the reply."""
    return 3 + sum(
        3 + count_tokens(str(m.get("role") or "")) + count_tokens(str(m.get("content") or ""))
        for m in messages
    )


def completion(
    model: str, messages: list[dict[str, Any]], oracle: dict[str, str] | None = None
) -> dict[str, Any]:
    """The chat.completion object the stand-in returns for a conversation."""
    question = str(
        next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    )
    if oracle is not None:
        known = oracle.get(question)
        answer = f"Answer: {known}" if known is not None else "I cannot answer that."
    else:
        answer = solve_leg_counting(question) or "I can only help with counting legs."
    p, c = count_prompt_tokens(messages), count_tokens(answer)
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
    }


# GPT-4.1 on OpenAI's API, Artificial Analysis (see the module docstring)
GPT41_TTFT_S = 0.52
GPT41_OUTPUT_TOKENS_PER_S = 89.0
LATENCY = web.AppKey("latency", tuple)
ORACLE = web.AppKey("oracle", dict)


def standin_latency_s(completion_tokens: int, ttft_s: float, tokens_per_s: float) -> float:
    """Seconds the billed model would take to answer: first token, then the rest at its speed."""
    return ttft_s + max(0, completion_tokens - 1) / tokens_per_s


async def _chat(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("stream"):
        return web.json_response(
            {"error": {"message": "the scripted stand-in does not stream", "type": "bad_request"}},
            status=400,
        )
    reply = completion(
        str(body.get("model", "")), body.get("messages", []), request.app.get(ORACLE)
    )
    ttft_s, tokens_per_s = request.app[LATENCY]
    await asyncio.sleep(
        standin_latency_s(reply["usage"]["completion_tokens"], ttft_s, tokens_per_s)
    )
    return web.json_response(reply)


@contextmanager
def serve_strong_model(
    port: int,
    *,
    ttft_s: float = GPT41_TTFT_S,
    tokens_per_s: float = GPT41_OUTPUT_TOKENS_PER_S,
    oracle: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run the stand-in on 127.0.0.1:port in a thread; yields its base URL (ending in /v1).

    oracle: user message -> answer; given, the stand-in is the oracle, else the solver."""
    app = web.Application()
    app[LATENCY] = (ttft_s, tokens_per_s)
    if oracle is not None:
        app[ORACLE] = oracle
    app.router.add_post("/v1/chat/completions", _chat)
    with serve_in_thread(app, port) as url:
        yield url
