"""Context distillation: the own model learns the app's fixed instructions, so it is not sent them.

An app sends the same system prompt and the same instructions around each question on every
request ("Your task is to count ... if you have <animals>? Give only the final answer ..."). The
paid API must read them every time; a model trained on that app's traffic does not need to. The
SFT recipe finds what every training conversation shares (the system prompt, the user turns'
common prefix and suffix) and trains on the conversations without it; it writes the cut into the
model's chat template, so every later stage that renders a prompt with the template (GRPO, the
gate, the gateway's engines, llama.cpp with the exported GGUF) sees the same shortened prompt as
training did, and the tokens the own model reads (and the trace counts) are fewer. A prompt that
does not carry the shared text renders unchanged.

This is context distillation (Snell, Klein and Zhong, "Learning by Distilling Context", 2022) in
its simplest form: the fixed context is learned from the answers given with it. Written here
because the cut has to follow the model through every engine, which only its template does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Shared text shorter than this is not worth a template change.
MIN_SHARED_CHARS = 24
MIN_ROWS = 20
# Marks a template as already cut, so the cut is applied once.
MARKER = "{#- ownlm context distillation -#}"


@dataclass(frozen=True)
class SharedContext:
    """What every training conversation carries: a system prompt, a user-turn prefix and suffix."""

    system: str | None
    user_prefix: str
    user_suffix: str

    def describe(self) -> str:
        parts = []
        if self.system is not None:
            parts.append(f"the system prompt ({len(self.system)} chars)")
        if self.user_prefix or self.user_suffix:
            parts.append(
                f"the user turns' shared prefix and suffix ({len(self.user_prefix)} + "
                f"{len(self.user_suffix)} chars)"
            )
        return " and ".join(parts)


def _common_prefix(texts: list[str]) -> str:
    lo, hi = min(texts), max(texts)  # the common prefix of all is that of the extremes
    n = 0
    while n < min(len(lo), len(hi)) and lo[n] == hi[n]:
        n += 1
    return lo[:n]


def _word_prefix(prefix: str) -> str:
    """Cut back to a whitespace boundary: the model should see whole words of the question."""
    if not prefix or prefix[-1].isspace():
        return prefix
    i = max(prefix.rfind(" "), prefix.rfind("\n"))
    return prefix[: i + 1]


def _word_suffix(suffix: str) -> str:
    while suffix and suffix[0].isalnum():
        suffix = suffix[1:]
    return suffix


def find_shared_context(conversations: list[list[dict[str, Any]]]) -> SharedContext | None:
    """The context every conversation shares, or None when there is too little to gain.

    The system prompt counts when every conversation opens with the same one; the user prefix
    and suffix are the longest shared by every conversation's user turns, cut at word bounds,
    and kept when together they are >= MIN_SHARED_CHARS and leave every turn something."""
    if len(conversations) < MIN_ROWS:
        return None
    firsts = [c[0] if c else {} for c in conversations]
    system: str | None = None
    if all(m.get("role") == "system" and isinstance(m.get("content"), str) for m in firsts):
        contents = {m["content"] for m in firsts}
        if len(contents) == 1 and len(next(iter(contents))) >= MIN_SHARED_CHARS // 2:
            system = next(iter(contents))
    users = [
        m["content"]
        for c in conversations
        for m in c
        if m.get("role") == "user" and isinstance(m.get("content"), str)
    ]
    prefix = suffix = ""
    if users:
        prefix = _word_prefix(_common_prefix(users))
        rest = [u[len(prefix) :] for u in users]
        suffix = _word_suffix(_common_prefix([r[::-1] for r in rest])[::-1])
        if len(prefix) + len(suffix) < MIN_SHARED_CHARS or any(
            not r[: len(r) - len(suffix)].strip() for r in rest
        ):
            prefix = suffix = ""
    if system is None and not (prefix or suffix):
        return None
    return SharedContext(system=system, user_prefix=prefix, user_suffix=suffix)


def _jinja_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Jinja string literal


def template_preamble(ctx: SharedContext) -> str:
    """Jinja that rebuilds `messages` without the shared context, for the model's template.

    A cut system prompt becomes an empty one, not none: templates like SmolLM2's write their own
    default system prompt when there is none. The empty system block it renders to stays (5
    tokens): dropping it as well cost 4 points of held-out accuracy on the demo app (0.966 ->
    0.926, same data and seed; SmolLM2 always saw a system turn first)."""
    p, s = _jinja_string(ctx.user_prefix), _jinja_string(ctx.user_suffix)
    system = _jinja_string(ctx.system) if ctx.system is not None else "none"
    return (
        MARKER
        + "{%- set ns = namespace(messages=[]) -%}"
        + "{%- for m in messages -%}"
        + "{%- set c = m['content'] -%}"
        + "{%- if c is string and m['role'] == 'user' and c.startswith("
        + p
        + ") and c.endswith("
        + s
        + ") and c|length > "
        + p
        + "|length + "
        + s
        + "|length -%}"
        + "{%- set ns.messages = ns.messages + [{'role': 'user', 'content': "
        + "c[" + p + "|length:c|length - " + s + "|length]}] -%}"
        + "{%- elif c is string and m['role'] == 'system' and c == " + system + " -%}"
        + "{%- set ns.messages = ns.messages + [{'role': 'system', 'content': ''}] -%}"
        + "{%- else -%}"
        + "{%- set ns.messages = ns.messages + [m] -%}"
        + "{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- set messages = ns.messages -%}"
    )  # fmt: skip


def install_context(tokenizer: Any, ctx: SharedContext) -> None:
    """Make the tokenizer's chat template cut the shared context (once; saved with it)."""
    template = tokenizer.chat_template
    if not isinstance(template, str):
        raise ValueError("context distillation needs a tokenizer with a single chat template")
    if template.startswith(MARKER):
        return
    tokenizer.chat_template = template_preamble(ctx) + template


def has_context(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and template.startswith(MARKER)
