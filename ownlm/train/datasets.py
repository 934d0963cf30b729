"""Read chat and preference-pair JSONL, tokenize with the chat template, batch for training.

Accepted rows (one JSON object per line):
- chat (SFT): OpenAI fine-tuning `{"messages": [{"role", "content"}, ...]}`, or TRL's
  `{"prompt": ..., "completion": ...}` where each side is a message list or a string (a string
  prompt is one user turn, a string completion one assistant turn).
- pairs (DPO, TRL's preference format): `{"prompt": str | messages, "chosen": str | messages,
  "rejected": str | messages}`.

Loss mask: only assistant tokens count (their content, the end-of-turn token and what the template
writes after it). For a `prompt`/`completion` row only the completion's assistant turns count.

Truncation rule: a sequence longer than `max_seq_len` keeps its first `max_seq_len` tokens (the
tail of the answer is cut). A chat row with no assistant token left is skipped and counted. For a
pair, a prompt longer than `max_seq_len // 2` keeps its last `max_seq_len // 2` tokens (the part
next to the answer), then each response is cut to fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ownlm.errors import DataError

Message = dict[str, str]
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatExample:
    """One conversation; assistant turns at index >= loss_from count in the loss."""

    messages: list[Message]
    loss_from: int = 0


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and two continuations, the chosen one preferred."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


@dataclass(frozen=True)
class TokenizedChat:
    """Token ids and a loss mask (1 on assistant tokens) of equal length."""

    input_ids: list[int]
    loss_mask: list[int]


@dataclass(frozen=True)
class TokenizedPair:
    """Chosen and rejected sequences (prompt + response), masks on the response tokens."""

    chosen: TokenizedChat
    rejected: TokenizedChat


def _rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; errors name the file and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DataError(f"{p}: no such file; pass the path of a JSONL dataset") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{p}: cannot read it as UTF-8 text ({err})") from err
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{p.name} line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(obj, dict):
            raise DataError(
                f"{p.name} line {number}: expected a JSON object, got {type(obj).__name__}"
            )
        rows.append((number, obj))
    if not rows:
        raise DataError(f"{p}: the file is empty; export some rows first")
    return rows


def _messages(value: Any, key: str, where: str, *, default_role: str) -> list[Message]:
    """A message list from a string (one turn of default_role) or a list of {role, content}."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: '{key}' is an empty string")
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: '{key}' must be a string or a non-empty list of messages, "
            f"got {type(value).__name__ if not isinstance(value, list) else 'an empty list'}"
        )
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise DataError(f"{where}: {key}[{i}] must be an object with 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise DataError(
                f"{where}: {key}[{i}] has role {msg['role']!r}; use one of {', '.join(ROLES)}"
            )
        if not isinstance(msg["content"], str):
            raise DataError(f"{where}: {key}[{i}].content must be a string")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def read_chats(path: str | Path) -> list[ChatExample]:
    """Read a chat JSONL file (OpenAI `messages` rows or TRL `prompt`/`completion` rows)."""
    name = Path(path).name
    examples = []
    for number, row in _rows(path):
        where = f"{name} line {number}"
        if "messages" in row:
            messages = _messages(row["messages"], "messages", where, default_role="user")
            loss_from = 0
        elif "prompt" in row and "completion" in row:
            prompt = _messages(row["prompt"], "prompt", where, default_role="user")
            completion = _messages(row["completion"], "completion", where, default_role="assistant")
            messages, loss_from = prompt + completion, len(prompt)
        else:
            raise DataError(
                f"{where}: expected 'messages' or 'prompt' and 'completion', got keys {sorted(row)}"
            )
        if not any(m["role"] == "assistant" for m in messages[loss_from:]):
            raise DataError(f"{where}: no assistant message to learn from; add the answer turn")
        examples.append(ChatExample(messages=messages, loss_from=loss_from))
    return examples


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Read a preference-pair JSONL file (TRL's `prompt`/`chosen`/`rejected` rows)."""
    name = Path(path).name
    pairs = []
    for number, row in _rows(path):
        where = f"{name} line {number}"
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
        prompt = _messages(row["prompt"], "prompt", where, default_role="user")
        chosen = _messages(row["chosen"], "chosen", where, default_role="assistant")
        rejected = _messages(row["rejected"], "rejected", where, default_role="assistant")
        if chosen == rejected:
            raise DataError(
                f"{where}: 'chosen' and 'rejected' are identical; fix the export or drop it"
            )
        for key, side in (("chosen", chosen), ("rejected", rejected)):
            if not any(m["role"] == "assistant" for m in side):
                raise DataError(f"{where}: '{key}' has no assistant message")
        pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected))
    return pairs


def _render_ids(
    tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool
) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_chat(tokenizer: Any, example: ChatExample) -> TokenizedChat:
    """Chat-template ids of the whole conversation; mask 1 on assistant turns >= loss_from.

    Each assistant turn's tokens are found by rendering the conversation up to it (with the
    generation prompt) and up to its end: the difference is the turn.
    """
    ids = _render_ids(tokenizer, example.messages, add_generation_prompt=False)
    mask = [0] * len(ids)
    for i, msg in enumerate(example.messages):
        if msg["role"] != "assistant" or i < example.loss_from:
            continue
        start = len(_render_ids(tokenizer, example.messages[:i], add_generation_prompt=True))
        upto = _render_ids(tokenizer, example.messages[: i + 1], add_generation_prompt=False)
        if ids[: len(upto)] != upto:
            raise DataError(
                "the chat template renders a conversation prefix differently from the whole "
                "conversation, so assistant tokens cannot be located; use a template that "
                "appends turns"
            )
        for j in range(start, len(upto)):
            mask[j] = 1
    return TokenizedChat(input_ids=ids, loss_mask=mask)


def truncate_chat(chat: TokenizedChat, max_seq_len: int) -> TokenizedChat | None:
    """Keep the first max_seq_len tokens; None when no assistant token is left."""
    ids, mask = chat.input_ids[:max_seq_len], chat.loss_mask[:max_seq_len]
    # The first token is never predicted, so a mask there teaches nothing.
    if sum(mask[1:]) == 0:
        return None
    return TokenizedChat(input_ids=ids, loss_mask=mask)


def tokenize_pair(tokenizer: Any, pair: PreferencePair, max_seq_len: int) -> TokenizedPair:
    """Prompt + chosen and prompt + rejected, masks on the response's assistant tokens."""
    prompt_ids = _render_ids(tokenizer, pair.prompt, add_generation_prompt=True)
    max_prompt = max_seq_len // 2
    cut = max(0, len(prompt_ids) - max_prompt)

    def one(response: list[Message]) -> TokenizedChat:
        full = tokenize_chat(tokenizer, ChatExample(pair.prompt + response, len(pair.prompt)))
        ids, mask = full.input_ids[cut:], full.loss_mask[cut:]
        return TokenizedChat(input_ids=ids[:max_seq_len], loss_mask=mask[:max_seq_len])

    return TokenizedPair(chosen=one(pair.chosen), rejected=one(pair.rejected))


def collate(chats: list[TokenizedChat], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids, attention_mask, loss_mask, each (B, T)."""
    width = max(len(c.input_ids) for c in chats)
    ids = torch.full((len(chats), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(chats), width), dtype=torch.long)
    loss = torch.zeros((len(chats), width), dtype=torch.long)
    for row, c in enumerate(chats):
        n = len(c.input_ids)
        ids[row, :n] = torch.tensor(c.input_ids, dtype=torch.long)
        attn[row, :n] = 1
        loss[row, :n] = torch.tensor(c.loss_mask, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of n examples in one epoch; a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def batch_indices(n: int, seed: int, step: int, batch_size: int) -> list[int]:
    """Example indices of optimizer step `step` (0-based) in an endless sequence of epochs.

    The data position is the step itself, so a resumed run continues with the same examples.
    """
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        out.append(epoch_order(n, seed, epoch)[pos])
    return out
