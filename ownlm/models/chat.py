"""Hybrid thinking (Qwen3 style) on top of the model's own chat template (ChatML for SmolLM2).

- Thinking on: the system prompt asks for a thought inside <think>...</think> before the answer,
  and the assistant turn opens with `<think>\\n`, so the model starts thinking.
- Thinking off: the assistant turn opens with `<think>\\n\\n</think>\\n\\n` (an empty thought,
  as Qwen3 does), so the model answers directly.
- `/think` or `/no_think` at the end of the latest user turn overrides `enable_thinking`. Unlike
  Qwen3 we remove the flag from the text the model sees: SmolLM2 was never trained on it, and a
  stray `/no_think` would only be noise in its prompt.
- Earlier assistant turns are shown without their thoughts (Qwen3 does the same), so a long
  conversation does not carry every old thought.
- The thinking budget is enforced by the sampler: after N thought tokens it appends
  `think_close_ids(tokenizer)` and lets the model answer.
- A model fine-tuned only on answers without thoughts (SFT marks its template with
  `NO_THOUGHT_MARKER`) opens a no-think answer directly, as it was trained: the empty thought
  would be 9 tokens it never saw, read on every request.
"""

from __future__ import annotations

import re
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_ON_PREFIX = f"{THINK_OPEN}\n"
THINK_OFF_PREFIX = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"
# What the sampler appends when the thinking budget runs out.
THINK_FORCED_CLOSE = f"\n{THINK_CLOSE}\n\n"
THINK_SYSTEM_PROMPT = (
    "First think step by step inside <think> </think> tags, then write the final answer "
    "after the closing </think> tag."
)
# In a chat template (a Jinja comment, renders nothing): the model answers without an empty thought.
NO_THOUGHT_MARKER = "{#- ownlm: no-think answers open without an empty thought -#}"
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

_FLAG = re.compile(r"\s*/(no_think|think)\s*$")


def thinking_flag(messages: list[dict[str, Any]]) -> bool | None:
    """True for `/think`, False for `/no_think` at the end of the latest user turn, else None."""
    for msg in reversed(messages):
        if msg.get("role") == "user":
            m = _FLAG.search(str(msg.get("content", "")))
            return None if m is None else m.group(1) == "think"
    return None


def _prepare_messages(messages: list[dict[str, Any]], thinking: bool) -> list[dict[str, Any]]:
    out = [dict(m) for m in messages]
    last_user = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
    if last_user is not None:
        out[last_user]["content"] = _FLAG.sub("", str(out[last_user]["content"]))
    for m in out:
        if m.get("role") == "assistant":
            m["content"] = strip_thinking(str(m.get("content", "")))
    if thinking:
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{THINK_SYSTEM_PROMPT}"
        else:
            out.insert(
                0, {"role": "system", "content": f"{DEFAULT_SYSTEM_PROMPT}. {THINK_SYSTEM_PROMPT}"}
            )
    return out


def render_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    enable_thinking: bool = False,
    add_generation_prompt: bool = True,
) -> str:
    """Prompt text for messages; with a generation prompt, the assistant turn opens with the
    thinking prefix (on) or an empty thought (off). A `/think` or `/no_think` flag wins."""
    flag = thinking_flag(messages)
    thinking = enable_thinking if flag is None else flag
    text = tokenizer.apply_chat_template(
        _prepare_messages(messages, thinking),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    if add_generation_prompt:
        text += THINK_ON_PREFIX if thinking else no_think_prefix(tokenizer)
    return text


def answers_without_thought(tokenizer: Any) -> bool:
    """True when the model's template is marked to open no-think answers directly."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and NO_THOUGHT_MARKER in template


def no_think_prefix(tokenizer: Any) -> str:
    """What opens a no-think answer for this model: the empty thought, or nothing."""
    return "" if answers_without_thought(tokenizer) else THINK_OFF_PREFIX


def mark_answers_without_thought(tokenizer: Any) -> None:
    """Mark the tokenizer's chat template (saved with it): no-think answers open directly."""
    template = tokenizer.chat_template
    if not isinstance(template, str):
        raise ValueError("marking a template needs a tokenizer with a single chat template")
    if NO_THOUGHT_MARKER not in template:
        tokenizer.chat_template = template + NO_THOUGHT_MARKER


def encode_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    enable_thinking: bool = False,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of `render_prompt(...)` (the chat template already holds special tokens)."""
    text = render_prompt(
        tokenizer,
        messages,
        enable_thinking=enable_thinking,
        add_generation_prompt=add_generation_prompt,
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


def think_close_ids(tokenizer: Any) -> list[int]:
    """Tokens the sampler appends to close a thought when the thinking budget is spent."""
    return list(tokenizer.encode(THINK_FORCED_CLOSE, add_special_tokens=False))


def split_thinking(text: str, *, thinking_open: bool = False) -> tuple[str, str]:
    """(thought, answer) of a completion.

    A completion of a thinking-on prompt starts inside the thought (the prompt ended with
    `<think>\\n`): pass thinking_open=True. A missing close tag means the whole text is thought
    (thinking_open) or the whole text is answer (no open tag seen). An open tag with no close
    makes everything after it thought.
    """
    start = 0
    if not thinking_open:
        i = text.find(THINK_OPEN)
        if i < 0:
            return "", text.strip()
        head, start = text[:i], i + len(THINK_OPEN)
    else:
        head = ""
    j = text.find(THINK_CLOSE, start)
    if j < 0:
        return text[start:].strip(), head.strip()
    answer = (head + text[j + len(THINK_CLOSE) :]).strip()
    return text[start:j].strip(), answer


def strip_thinking(text: str, *, thinking_open: bool = False) -> str:
    """The answer part of a completion, without any <think> content."""
    return split_thinking(text, thinking_open=thinking_open)[1]
