"""Read chat and preference-pair JSONL, tokenize with the chat template, batch for training.

Accepted rows (one JSON object per line):
- chat (SFT): OpenAI fine-tuning `{"messages": [{"role", "content"}, ...], "tools": [...]}`, or
  TRL's `{"prompt": ..., "completion": ...}` where each side is a message list or a string (a
  string prompt is one user turn, a string completion one assistant turn).
- pairs (DPO, TRL's preference format): `{"prompt": str | messages, "chosen": str | messages,
  "rejected": str | messages}`, with an optional `tools` list too.

Tool calls (OpenAI's format, checked as OpenAI does): an assistant message may carry
`tool_calls: [{"id", "type": "function", "function": {"name", "arguments": JSON string}}]` with
`content` null or a string; a `tool` message answers one of them by `tool_call_id`; `tools` lists
OpenAI function schemas. A tool message without `tool_call_id` is a result of a call written in
the text (the env transcripts of `ownlm/envs/tools.py`, e.g. `SearchEnv.demonstration`). `name`
fields are kept on the rows but not shown to the model (the rollout shows none).

Rendering (`render_messages`): the model sees tools as the multi-turn envs show them (one format in
the product, `ownlm/envs/tools.py`): `render_tools(tools)` is appended to the system prompt (or is
the system prompt when there is none), each call is written as `render_tool_call` text in an
assistant turn of its own, followed by its result as a `tool` message (the role the rollout
inserts). Parallel calls become consecutive turns, one call each, because the env runs one call
per turn. Text beside the calls opens the first of them.

Loss mask: only assistant tokens count (their content, the end-of-turn token and what the template
writes after it), tool calls included: they are what the model must learn to emit. Tool results,
like every other non-assistant turn, are masked out. For a `prompt`/`completion` row only the
completion's assistant turns count.

Truncation rule: a sequence longer than `max_seq_len` keeps its first `max_seq_len` tokens (the
tail of the answer is cut). A chat row with no assistant token left is skipped and counted. For a
pair, a prompt longer than `max_seq_len // 2` keeps its last `max_seq_len // 2` tokens (the part
next to the answer), then each response is cut to fit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from ownlm.envs.tools import Tool, ToolCall, render_tool_call, render_tools
from ownlm.errors import DataError
from ownlm.jsonl import read_jsonl

Message = dict[str, Any]  # role, content (str, or None beside tool_calls), name, tool_calls, ...
ROLES = ("system", "user", "assistant", "tool")
T = TypeVar("T")


@dataclass(frozen=True)
class ChatExample:
    """One conversation; assistant turns at index >= loss_from count in the loss."""

    messages: list[Message]
    loss_from: int = 0
    tools: list[Tool] = field(default_factory=list)


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and two continuations, the chosen one preferred."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    tools: list[Tool] = field(default_factory=list)


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
    return read_jsonl(path, hint="pass the path of a JSONL dataset (`ownlm export` writes them)")


def _messages(value: Any, key: str, where: str, *, default_role: str) -> list[Message]:
    """A message list from a string (one turn of default_role) or a list of OpenAI messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: '{key}' is an empty string")
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: '{key}' must be a string or a non-empty list of messages, "
            f"got {type(value).__name__ if not isinstance(value, list) else 'an empty list'}"
        )
    return [_message(msg, f"{key}[{i}]", where) for i, msg in enumerate(value)]


def _message(msg: Any, label: str, where: str) -> Message:
    """One checked message: role and content, plus name, tool_calls or tool_call_id if given."""
    if not isinstance(msg, dict) or "role" not in msg:
        raise DataError(f"{where}: {label} must be an object with 'role' and 'content'")
    role = msg["role"]
    if role not in ROLES:
        raise DataError(f"{where}: {label} has role {role!r}; use one of {', '.join(ROLES)}")
    if "function_call" in msg:
        raise DataError(
            f"{where}: {label} uses the legacy 'function_call'; write it as 'tool_calls'"
        )
    calls = msg.get("tool_calls")
    out: Message = {"role": role}
    if calls is not None and calls != []:  # some clients send an empty list for no calls
        if role != "assistant":
            raise DataError(
                f"{where}: {label} has 'tool_calls' but role {role!r}; only "
                "assistant messages call tools"
            )
        if not isinstance(calls, list):
            raise DataError(f"{where}: {label}.tool_calls must be a list of calls")
        if not isinstance(msg.get("content"), str | None):
            raise DataError(f"{where}: {label}.content must be a string or null")
        out["content"] = msg.get("content")
        out["tool_calls"] = [
            _tool_call(call, f"{label}.tool_calls[{j}]", where) for j, call in enumerate(calls)
        ]
    elif "content" not in msg:
        raise DataError(f"{where}: {label} must be an object with 'role' and 'content'")
    elif not isinstance(msg["content"], str):
        raise DataError(f"{where}: {label}.content must be a string (null only beside tool_calls)")
    else:
        out["content"] = msg["content"]
    if role == "tool" and "tool_call_id" in msg:
        if not isinstance(msg["tool_call_id"], str) or not msg["tool_call_id"]:
            raise DataError(f"{where}: {label}.tool_call_id must be the id of the call it answers")
        out["tool_call_id"] = msg["tool_call_id"]
    if "name" in msg:
        if not isinstance(msg["name"], str):
            raise DataError(f"{where}: {label}.name must be a string")
        out["name"] = msg["name"]
    return out


def _tool_call(call: Any, label: str, where: str) -> dict[str, Any]:
    """One OpenAI tool call, checked: id, type "function", function name, JSON-string arguments."""
    if not isinstance(call, dict):
        raise DataError(f"{where}: {label} must be an object with 'id', 'type' and 'function'")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise DataError(f"{where}: {label} has no 'id'; the tool message names its call by id")
    if call.get("type") != "function":
        raise DataError(
            f"{where}: {label}.type is {call.get('type')!r}; only 'function' calls are supported"
        )
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise DataError(f"{where}: {label}.function must be an object with a 'name'")
    args = fn.get("arguments")
    if not isinstance(args, str):
        raise DataError(
            f"{where}: {label}.function.arguments must be a JSON string (OpenAI's format), "
            f"got {type(args).__name__}; write it as json.dumps(arguments)"
        )
    try:
        value = json.loads(args)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{where}: {label}.function.arguments is not valid JSON ({err.msg}): {args!r:.80}"
        ) from err
    if not isinstance(value, dict):
        raise DataError(
            f"{where}: {label}.function.arguments must encode a JSON object, got "
            f"{type(value).__name__}"
        )
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": fn["name"], "arguments": args},
    }


def _tools(value: Any, where: str) -> list[Tool]:
    """The row's `tools` (OpenAI function schemas, as `render_tools` reads them); [] if absent."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{where}: 'tools' must be a list of OpenAI function tools")
    for j, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
            or not fn["name"]
        ):
            raise DataError(
                f'{where}: tools[{j}] must be {{"type": "function", "function": {{"name": ..., '
                '"parameters": {...}}}'
            )
        params = fn.get("parameters", {})
        props = params.get("properties", {}) if isinstance(params, dict) else None
        if not isinstance(props, dict) or not all(isinstance(p, dict) for p in props.values()):
            raise DataError(
                f"{where}: tools[{j}].function.parameters must be a JSON schema object whose "
                "'properties' map names to schemas"
            )
    return value


def _check_tool_flow(messages: list[Message], labels: list[str], where: str) -> None:
    """Each tool result answers an earlier, unanswered call, before the conversation goes on.

    Calls in the last messages may stay unanswered (the row teaches the model to make them).
    """
    open_calls: dict[str, str] = {}  # call id -> label of the message that made it
    made: set[str] = set()
    for msg, label in zip(messages, labels, strict=True):
        call_id = msg.get("tool_call_id")
        if msg["role"] == "tool" and call_id is not None:
            if call_id not in open_calls:
                what = "a second time" if call_id in made else "which no earlier message made"
                raise DataError(
                    f"{where}: {label} answers tool call {call_id!r}, {what}; fix its "
                    "tool_call_id or drop the row"
                )
            del open_calls[call_id]
            continue
        if open_calls:
            call_id, by = next(iter(open_calls.items()))
            raise DataError(
                f"{where}: {label} comes before the result of tool call {call_id!r} made in "
                f"{by}; add a tool message with that tool_call_id right after the call"
            )
        for call in msg.get("tool_calls", ()):
            if call["id"] in made:
                raise DataError(
                    f"{where}: {label} repeats tool call id {call['id']!r}; ids must be unique"
                )
            made.add(call["id"])
            open_calls[call["id"]] = label


def read_chats(path: str | Path) -> list[ChatExample]:
    """Read a chat JSONL file (OpenAI `messages` rows or TRL `prompt`/`completion` rows)."""
    name = Path(path).name
    examples = []
    for number, row in _rows(path):
        where = f"{name} line {number}"
        if "messages" in row:
            messages = _messages(row["messages"], "messages", where, default_role="user")
            labels = [f"messages[{i}]" for i in range(len(messages))]
            loss_from = 0
        elif "prompt" in row and "completion" in row:
            prompt = _messages(row["prompt"], "prompt", where, default_role="user")
            completion = _messages(row["completion"], "completion", where, default_role="assistant")
            messages, loss_from = prompt + completion, len(prompt)
            labels = [f"prompt[{i}]" for i in range(len(prompt))]
            labels += [f"completion[{i}]" for i in range(len(completion))]
        else:
            raise DataError(
                f"{where}: expected 'messages' or 'prompt' and 'completion', got keys {sorted(row)}"
            )
        if not any(m["role"] == "assistant" for m in messages[loss_from:]):
            raise DataError(f"{where}: no assistant message to learn from; add the answer turn")
        _check_tool_flow(messages, labels, where)
        tools = _tools(row.get("tools"), where)
        examples.append(ChatExample(messages=messages, loss_from=loss_from, tools=tools))
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
        prompt_labels = [f"prompt[{i}]" for i in range(len(prompt))]
        for key, side in (("chosen", chosen), ("rejected", rejected)):
            if not any(m["role"] == "assistant" for m in side):
                raise DataError(f"{where}: '{key}' has no assistant message")
            labels = prompt_labels + [f"{key}[{i}]" for i in range(len(side))]
            _check_tool_flow(prompt + side, labels, where)
        tools = _tools(row.get("tools"), where)
        pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, tools=tools))
    return pairs


def render_messages(messages: list[Message], tools: list[Tool]) -> list[Message]:
    """The role/content turns the chat template gets: tools and calls as the envs show them."""
    return [msg for msg, _ in _render(messages, tools)]


def _render(messages: list[Message], tools: list[Tool]) -> list[tuple[Message, int]]:
    """(turn, index of the message it comes from) pairs; -1 for an added system prompt."""
    results = {
        m["tool_call_id"]: (m["content"], i)
        for i, m in enumerate(messages)
        if m["role"] == "tool" and "tool_call_id" in m
    }
    out: list[tuple[Message, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] == "tool" and "tool_call_id" in msg:
            continue  # placed right after its call below
        if "tool_calls" not in msg:
            out.append(({"role": msg["role"], "content": msg["content"]}, i))
            continue
        text = msg["content"] or ""
        head = text.rstrip() + "\n" if text.strip() else ""
        for j, call in enumerate(msg["tool_calls"]):
            fn = call["function"]
            content = render_tool_call(ToolCall(fn["name"], json.loads(fn["arguments"])))
            out.append(({"role": "assistant", "content": (head if j == 0 else "") + content}, i))
            if call["id"] in results:
                result, k = results[call["id"]]
                out.append(({"role": "tool", "content": result}, k))
    if tools:
        listing = render_tools(tools)
        if out and out[0][0]["role"] == "system":
            first, i = out[0]
            out[0] = ({"role": "system", "content": f"{first['content']}\n{listing}"}, i)
        else:
            out.insert(0, ({"role": "system", "content": listing}, -1))
    return out


def _render_ids(
    tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool
) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_chat(tokenizer: Any, example: ChatExample) -> TokenizedChat:
    """Chat-template ids of the rendered conversation; mask 1 on assistant turns >= loss_from.

    Each assistant turn's tokens are found by rendering the conversation up to it (with the
    generation prompt) and up to its end: the difference is the turn.
    """
    rendered = _render(example.messages, example.tools)
    messages = [msg for msg, _ in rendered]
    ids = _render_ids(tokenizer, messages, add_generation_prompt=False)
    mask = [0] * len(ids)
    for i, (msg, source) in enumerate(rendered):
        if msg["role"] != "assistant" or source < example.loss_from:
            continue
        start = len(_render_ids(tokenizer, messages[:i], add_generation_prompt=True))
        upto = _render_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
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
    prompt = render_messages(pair.prompt, pair.tools)
    prompt_ids = _render_ids(tokenizer, prompt, add_generation_prompt=True)
    max_prompt = max_seq_len // 2
    cut = max(0, len(prompt_ids) - max_prompt)

    def one(response: list[Message]) -> TokenizedChat:
        example = ChatExample(pair.prompt + response, len(pair.prompt), pair.tools)
        full = tokenize_chat(tokenizer, example)
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


def read_train_eval(
    read: Callable[[str | Path], list[T]],
    train_file: str,
    eval_file: str | None,
    *,
    eval_fraction: float,
    seed: int,
    noun: str,
) -> tuple[list[T], list[T]]:
    """(train, eval) rows: eval_file's when given, else a seeded eval_fraction of train_file's.

    `read` is `read_chats` or `read_pairs`; `noun` names the rows in the error ("rows", "pairs").
    """
    rows = read(train_file)
    if eval_file is not None:
        return rows, read(eval_file)
    order = epoch_order(len(rows), seed, epoch=-1)
    n_eval = max(1, round(len(rows) * eval_fraction))
    if n_eval >= len(rows):
        raise DataError(
            f"{train_file}: {len(rows)} {noun} are too few to hold out "
            f"{eval_fraction:.0%} for eval; add {noun} or pass eval_file"
        )
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]
