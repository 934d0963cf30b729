"""Tests for ownlm.train.datasets: row formats, errors that name the line, masks, truncation,
and tool calls rendered as the tool envs render them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from ownlm.envs.tools import (
    ToolCall,
    function_tool,
    parse_tool_call,
    render_tool_call,
    render_tools,
)
from ownlm.errors import DataError
from ownlm.models.chat import THINK_OFF_PREFIX, encode_prompt
from ownlm.rollout import episodes as episodes_module
from ownlm.train.datasets import (
    ChatExample,
    PreferencePair,
    TokenizedChat,
    batch_indices,
    collate,
    read_chats,
    read_pairs,
    render_messages,
    tokenize_chat,
    tokenize_pair,
    truncate_chat,
)
from ownlm.train.sft import SFTConfig, train_sft


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def test_read_chats_accepts_openai_and_trl_rows(tmp_path: Path) -> None:
    rows = [
        {"messages": [_msg("user", "hi"), _msg("assistant", "hello")]},
        {"prompt": [_msg("user", "2+2?")], "completion": [_msg("assistant", "4")]},
        {"prompt": "3+3?", "completion": "6"},
    ]
    path = _write(tmp_path / "chats.jsonl", [json.dumps(r) for r in rows] + [""])
    chats = read_chats(path)
    assert [c.loss_from for c in chats] == [0, 1, 1]
    assert chats[2].messages == [_msg("user", "3+3?"), _msg("assistant", "6")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "chats.jsonl line 2: not valid JSON"),
        ("[1, 2]", "chats.jsonl line 2: expected a JSON object, got list"),
        ('{"text": "hi"}', "chats.jsonl line 2: expected 'messages' or 'prompt' and 'completion'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "line 2: no assistant message"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "line 2: messages[0] has role 'bot'"),
        ('{"messages": []}', "line 2: 'messages' must be a string or a non-empty list"),
        ('{"messages": [{"role": "user"}]}', "line 2: messages[0] must be an object with"),
    ],
)
def test_read_chats_names_the_bad_line(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps({"messages": [_msg("user", "a"), _msg("assistant", "b")]})
    path = _write(tmp_path / "chats.jsonl", [good, line])
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_chats(path)


def test_read_pairs_identical_and_missing(tmp_path: Path) -> None:
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    same = json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"})
    path = _write(tmp_path / "pairs.jsonl", [good, good, same])
    with pytest.raises(
        DataError, match="pairs.jsonl line 3: 'chosen' and 'rejected' are identical"
    ):
        read_pairs(path)
    _write(path, [good, json.dumps({"prompt": "q", "chosen": "a"})])
    with pytest.raises(DataError, match="pairs.jsonl line 2: missing 'rejected'"):
        read_pairs(path)


def test_read_pairs_accepts_strings_and_messages(tmp_path: Path) -> None:
    row = {"prompt": [_msg("user", "q")], "chosen": [_msg("assistant", "a")], "rejected": "b"}
    pairs = read_pairs(_write(tmp_path / "pairs.jsonl", [json.dumps(row)]))
    assert pairs == [
        PreferencePair(
            prompt=[_msg("user", "q")],
            chosen=[_msg("assistant", "a")],
            rejected=[_msg("assistant", "b")],
        )
    ]


def test_empty_and_missing_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="the file is empty"):
        read_chats(_write(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path / "nope.jsonl")


def test_mask_covers_only_assistant_tokens(byte_tokenizer: PreTrainedTokenizerFast) -> None:
    example = ChatExample([_msg("user", "hi"), _msg("assistant", "yo")])
    chat = tokenize_chat(byte_tokenizer, example)
    # "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" is 1+5+2+1+1 + 1+10 = 21 tokens,
    # then the assistant turn "yo<|im_end|>\n" is 4 tokens.
    assert len(chat.input_ids) == 25
    assert chat.loss_mask == [0] * 21 + [1] * 4
    assert byte_tokenizer.decode(chat.input_ids[21:]) == "yo<|im_end|>\n"


def test_mask_skips_assistant_turns_in_the_prompt(byte_tokenizer: PreTrainedTokenizerFast) -> None:
    messages = [
        _msg("user", "a"),
        _msg("assistant", "b"),
        _msg("user", "c"),
        _msg("assistant", "d"),
    ]
    every = tokenize_chat(byte_tokenizer, ChatExample(messages))
    last = tokenize_chat(byte_tokenizer, ChatExample(messages, loss_from=2))
    assert sum(every.loss_mask) == 2 * 3  # "b<|im_end|>\n" and "d<|im_end|>\n"
    assert sum(last.loss_mask) == 3
    assert last.loss_mask[-3:] == [1, 1, 1]


def test_truncation_keeps_the_head_and_drops_answerless_rows() -> None:
    chat = TokenizedChat(input_ids=[1, 2, 3, 4, 5], loss_mask=[0, 0, 0, 1, 1])
    assert truncate_chat(chat, 4) == TokenizedChat([1, 2, 3, 4], [0, 0, 0, 1])
    assert truncate_chat(chat, 3) is None


def test_pair_masks_only_the_response(byte_tokenizer: PreTrainedTokenizerFast) -> None:
    pair = PreferencePair([_msg("user", "q")], [_msg("assistant", "yes")], [_msg("assistant", "n")])
    tok = tokenize_pair(byte_tokenizer, pair, max_seq_len=64)
    # prompt "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n" = 1+5+1+1+1+1+10 = 20 tokens
    assert tok.chosen.loss_mask == [0] * 20 + [1] * 5
    assert tok.rejected.loss_mask == [0] * 20 + [1] * 3
    assert tok.chosen.input_ids[:20] == tok.rejected.input_ids[:20]
    # A long prompt keeps its last max_seq_len // 2 tokens; the response is then cut to fit.
    long = PreferencePair(pair.prompt, [_msg("assistant", "abcdefghijklmnop")], pair.rejected)
    short = tokenize_pair(byte_tokenizer, long, max_seq_len=24)
    assert short.chosen.input_ids[:12] == tok.chosen.input_ids[8:20]
    assert short.chosen.loss_mask == [0] * 12 + [1] * 12
    assert byte_tokenizer.decode(short.chosen.input_ids[12:]) == "abcdefghijkl"
    assert short.rejected.loss_mask == [0] * 12 + [1] * 3


def test_collate_pads_right() -> None:
    b = collate([TokenizedChat([5, 6, 7], [0, 1, 1]), TokenizedChat([8], [0])], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["loss_mask"].tolist() == [[0, 1, 1], [0, 0, 0]]


def test_batch_indices_walk_whole_epochs() -> None:
    first_epoch = batch_indices(5, seed=0, step=0, batch_size=5)
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    # Step 1 with batch 3 covers stream positions 3..5: two from epoch 0 and one from epoch 1.
    assert batch_indices(5, seed=0, step=1, batch_size=3)[:2] == first_epoch[3:5]
    assert batch_indices(5, seed=0, step=1, batch_size=3) == batch_indices(5, 0, 1, 3)
    assert batch_indices(5, seed=1, step=0, batch_size=5) != first_epoch


# --- tool calls -------------------------------------------------------------------------------

TOOLS = [
    function_tool("lookup", "look a key up", {"key": ("string", "a key")}, ["key"]),
    function_tool("add", "add numbers", {"a": ("integer", "x"), "b": ("number", "y")}, ["a"]),
]


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call, arguments as a JSON string."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def _calling(*calls: dict[str, Any], content: str | None = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def _result(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _tool_row() -> dict[str, Any]:
    """What `ownlm export` writes for a tool-using trace (see ownlm/data/formats.py)."""
    return {
        "messages": [
            {"role": "user", "content": "hi", "name": "ann"},
            _calling(_call("c1", "lookup", {"key": "x"})),
            _result("c1", "v1"),
            {"role": "assistant", "content": "done"},
        ],
        "tools": TOOLS,
    }


def _masked_runs(tokenizer: Any, chat: TokenizedChat) -> list[str]:
    """The text of each run of consecutive loss-mask-1 tokens."""
    runs: list[list[int]] = []
    for j, (tok, m) in enumerate(zip(chat.input_ids, chat.loss_mask, strict=True)):
        if m and (j == 0 or not chat.loss_mask[j - 1]):
            runs.append([])
        if m:
            runs[-1].append(tok)
    return [tokenizer.decode(r) for r in runs]


def test_tool_row_round_trips(tmp_path: Path, byte_tokenizer: PreTrainedTokenizerFast) -> None:
    [example] = read_chats(_write(tmp_path / "chats.jsonl", [json.dumps(_tool_row())]))
    assert example.messages[1]["tool_calls"][0]["id"] == "c1"
    assert example.messages[0]["name"] == "ann"  # kept on the row, not shown to the model
    assert example.tools == TOOLS
    chat = tokenize_chat(byte_tokenizer, example)
    call = '<tool_call>{"name": "lookup", "arguments": {"key": "x"}}</tool_call>'
    assert byte_tokenizer.decode(chat.input_ids) == (
        f"<|im_start|>system\n{render_tools(TOOLS)}<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        f"<|im_start|>assistant\n{call}<|im_end|>\n"
        "<|im_start|>tool\nv1<|im_end|>\n"
        "<|im_start|>assistant\ndone<|im_end|>\n"
    )
    # the call is learnt (with its end of turn); the tool result and every header are not
    assert _masked_runs(byte_tokenizer, chat) == [f"{call}<|im_end|>\n", "done<|im_end|>\n"]
    assert sum(chat.loss_mask) == len(call) + 2 + len("done") + 2


def test_rendered_calls_parse_back_to_the_same_call(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerFast
) -> None:
    calls = [
        ToolCall("lookup", {"key": 'naïve "quoted" ü\n'}),
        ToolCall("add", {"a": 2, "b": 0.5}),
        ToolCall("add", {"a": -1}),
    ]
    messages = [{"role": "user", "content": "go"}]
    for i, call in enumerate(calls):
        note = "Let me check. " if i == 0 else None
        messages += [_calling(_call(f"c{i}", call.name, call.arguments), content=note)]
        messages += [_result(f"c{i}", f"r{i}")]
    messages.append({"role": "assistant", "content": "ok"})
    row = {"messages": messages, "tools": TOOLS}
    [example] = read_chats(_write(tmp_path / "chats.jsonl", [json.dumps(row)]))
    turns = [m["content"] for m in render_messages(example.messages, TOOLS)]
    assert turns[2] == "Let me check.\n" + render_tool_call(calls[0])
    # what the model learns to write is what the tool env's parser reads back
    learnt = _masked_runs(byte_tokenizer, tokenize_chat(byte_tokenizer, example))
    assert len(learnt) == 4
    parsed = [parse_tool_call(text.removesuffix("<|im_end|>\n"), TOOLS) for text in learnt[:3]]
    assert parsed == calls


def test_parallel_calls_become_one_call_per_turn_with_its_result() -> None:
    messages = [
        {"role": "user", "content": "both"},
        _calling(_call("a", "lookup", {"key": "1"}), _call("b", "lookup", {"key": "2"})),
        _result("b", "two"),  # results may come in any order; each follows its call
        _result("a", "one"),
        {"role": "assistant", "content": "1 and 2"},
    ]
    assert render_messages(messages, []) == [
        {"role": "user", "content": "both"},
        {"role": "assistant", "content": render_tool_call(ToolCall("lookup", {"key": "1"}))},
        {"role": "tool", "content": "one"},
        {"role": "assistant", "content": render_tool_call(ToolCall("lookup", {"key": "2"}))},
        {"role": "tool", "content": "two"},
        {"role": "assistant", "content": "1 and 2"},
    ]


def test_tools_join_the_system_prompt_as_the_envs_list_them() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    rendered = render_messages(messages, TOOLS)
    # SearchEnv's system prompt is "<instructions>\n{tools}\n..." with {tools} = render_tools
    assert rendered[0] == {"role": "system", "content": f"Be brief.\n{render_tools(TOOLS)}"}
    assert render_messages(messages, []) == messages


def test_env_transcripts_with_calls_in_the_text_still_read(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerFast
) -> None:
    """SearchEnv.demonstration rows: the call is assistant text, the result has no call id."""
    call = THINK_OFF_PREFIX + render_tool_call(ToolCall("lookup", {"key": "x"}))
    messages = [_msg("user", "q"), _msg("assistant", call), _msg("tool", "v")]
    messages.append(_msg("assistant", "Answer: v"))
    [example] = read_chats(_write(tmp_path / "c.jsonl", [json.dumps({"messages": messages})]))
    assert render_messages(example.messages, example.tools) == messages
    chat = tokenize_chat(byte_tokenizer, example)
    assert _masked_runs(byte_tokenizer, chat) == [f"{call}<|im_end|>\n", "Answer: v<|im_end|>\n"]


def test_sft_tokens_are_what_the_rollout_feeds_the_model(tiny: tuple[Any, Any]) -> None:
    """The real SmolLM2 template: an SFT row of a tool episode holds the rollout's tokens (env
    prompt, sampled call, the tool glue the rollout inserts, the answer), less the empty thought
    the rollout opens each assistant turn with (no SFT row has it)."""
    _, tokenizer = tiny
    system = f"Use tools.\n{render_tools(TOOLS)}"  # what an env's reset() writes
    env_prompt = [{"role": "system", "content": system}, {"role": "user", "content": "q"}]
    call = render_tool_call(ToolCall("lookup", {"key": "x"}))
    rollout = (
        encode_prompt(tokenizer, env_prompt, enable_thinking=False)
        + tokenizer.encode(call, add_special_tokens=False)
        + episodes_module._tool_glue(tokenizer, "value-of-x", False)
        + tokenizer.encode("Answer: v<|im_end|>\n", add_special_tokens=False)
    )
    example = ChatExample(
        [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "q"},
            _calling(_call("c1", "lookup", {"key": "x"})),
            _result("c1", "value-of-x"),
            {"role": "assistant", "content": "Answer: v"},
        ],
        tools=TOOLS,
    )
    sft = tokenize_chat(tokenizer, example)
    expected = tokenizer.decode(rollout).replace(THINK_OFF_PREFIX, "")
    assert tokenizer.decode(sft.input_ids) == expected
    assert _masked_runs(tokenizer, sft) == [f"{call}<|im_end|>\n", "Answer: v<|im_end|>\n"]


_GOOD_CALL = _call("c1", "lookup", {"key": "x"})


@pytest.mark.parametrize(
    ("messages", "tools", "error"),
    [
        (
            [_msg("user", "q"), {"role": "user", "content": "x", "tool_calls": [_GOOD_CALL]}],
            None,
            "messages[1] has 'tool_calls' but role 'user'; only assistant messages call tools",
        ),
        (
            [_msg("user", "q"), {"role": "assistant", "content": None, "tool_calls": {}}],
            None,
            "messages[1].tool_calls must be a list of calls",
        ),
        (
            [_msg("user", "q"), _calling()],
            None,
            "messages[1].content must be a string (null only beside tool_calls)",
        ),
        (
            [_msg("user", "q"), {**_msg("assistant", ""), "function_call": {"name": "f"}}],
            None,
            "messages[1] uses the legacy 'function_call'; write it as 'tool_calls'",
        ),
        (
            [_msg("user", "q"), _calling({**_GOOD_CALL, "id": ""})],
            None,
            "messages[1].tool_calls[0] has no 'id'; the tool message names its call by id",
        ),
        (
            [_msg("user", "q"), _calling({**_GOOD_CALL, "type": "code"})],
            None,
            "messages[1].tool_calls[0].type is 'code'; only 'function' calls are supported",
        ),
        (
            [_msg("user", "q"), _calling({**_GOOD_CALL, "function": {"arguments": "{}"}})],
            None,
            "messages[1].tool_calls[0].function must be an object with a 'name'",
        ),
        (
            [
                _msg("user", "q"),
                _calling({**_GOOD_CALL, "function": {"name": "f", "arguments": {"k": 1}}}),
            ],
            None,
            "messages[1].tool_calls[0].function.arguments must be a JSON string (OpenAI's format), "
            "got dict",
        ),
        (
            [
                _msg("user", "q"),
                _calling({**_GOOD_CALL, "function": {"name": "f", "arguments": "{"}}),
            ],
            None,
            "messages[1].tool_calls[0].function.arguments is not valid JSON",
        ),
        (
            [
                _msg("user", "q"),
                _calling({**_GOOD_CALL, "function": {"name": "f", "arguments": "[]"}}),
            ],
            None,
            "messages[1].tool_calls[0].function.arguments must encode a JSON object, got list",
        ),
        (
            [_msg("user", "q"), _calling(_GOOD_CALL), _result("c9", "r"), _msg("assistant", "a")],
            None,
            "messages[2] answers tool call 'c9', which no earlier message made; fix its "
            "tool_call_id or drop the row",
        ),
        (
            [_msg("user", "q"), _calling(_GOOD_CALL), _result("c1", "r"), _result("c1", "r")],
            None,
            "messages[3] answers tool call 'c1', a second time",
        ),
        (
            [
                _msg("user", "q"),
                _calling(_GOOD_CALL),
                _msg("user", "well?"),
                _msg("assistant", "a"),
            ],
            None,
            "messages[2] comes before the result of tool call 'c1' made in messages[1]; add a tool "
            "message",
        ),
        (
            [_msg("user", "q"), _calling(_GOOD_CALL), _result("c1", "r"), _calling(_GOOD_CALL)],
            None,
            "messages[3] repeats tool call id 'c1'; ids must be unique",
        ),
        (
            [_msg("user", "q"), {"role": "assistant", "content": None}],
            None,
            "messages[1].content must be a string (null only beside tool_calls)",
        ),
        (
            [_msg("user", "q"), _calling(_GOOD_CALL), {"role": "tool", "tool_call_id": "c1"}],
            None,
            "messages[2] must be an object with 'role' and 'content'",
        ),
        (
            [_msg("user", "q"), _calling(_GOOD_CALL), _result("", "r")],
            None,
            "messages[2].tool_call_id must be the id of the call it answers",
        ),
        (
            [{"role": "user", "content": "q", "name": 3}, _msg("assistant", "a")],
            None,
            "messages[0].name must be a string",
        ),
        ([_msg("user", "q"), _msg("assistant", "a")], {"lookup": {}}, "'tools' must be a list"),
        (
            [_msg("user", "q"), _msg("assistant", "a")],
            [{"type": "function", "function": {"description": "no name"}}],
            'tools[0] must be {"type": "function", "function": {"name": ...',
        ),
        (
            [_msg("user", "q"), _msg("assistant", "a")],
            [{"type": "function", "function": {"name": "f", "parameters": {"properties": []}}}],
            "tools[0].function.parameters must be a JSON schema object",
        ),
    ],
)
def test_malformed_tool_rows_name_line_and_fault(
    tmp_path: Path, messages: list[dict[str, Any]], tools: Any, error: str
) -> None:
    good = json.dumps(_tool_row())
    row: dict[str, Any] = {"messages": messages}
    if tools is not None:
        row["tools"] = tools
    path = _write(tmp_path / "tools.jsonl", [good, json.dumps(row)])
    with pytest.raises(DataError) as info:
        read_chats(path)
    assert str(info.value).startswith("tools.jsonl line 2: ")
    assert error in str(info.value)


def test_pairs_with_tool_calls(tmp_path: Path, byte_tokenizer: PreTrainedTokenizerFast) -> None:
    row = {
        "prompt": [_msg("user", "q")],
        "chosen": [_calling(_GOOD_CALL), _result("c1", "v1"), _msg("assistant", "v1 it is")],
        "rejected": "no idea",
        "tools": TOOLS[:1],
    }
    [pair] = read_pairs(_write(tmp_path / "pairs.jsonl", [json.dumps(row)]))
    assert pair.tools == TOOLS[:1]
    tok = tokenize_pair(byte_tokenizer, pair, max_seq_len=4096)
    prompt = f"<|im_start|>system\n{render_tools(TOOLS[:1])}<|im_end|>\n<|im_start|>user\nq"
    assert byte_tokenizer.decode(tok.chosen.input_ids).startswith(prompt)
    assert byte_tokenizer.decode(tok.rejected.input_ids).startswith(prompt)
    call = render_tool_call(ToolCall("lookup", {"key": "x"}))
    assert _masked_runs(byte_tokenizer, tok.chosen) == [
        f"{call}<|im_end|>\n",
        "v1 it is<|im_end|>\n",
    ]
    assert _masked_runs(byte_tokenizer, tok.rejected) == ["no idea<|im_end|>\n"]
    # a result in 'chosen' must answer a call made in the prompt or in 'chosen'
    bad = {**row, "chosen": [_result("c7", "v"), _msg("assistant", "a")]}
    _write(tmp_path / "pairs.jsonl", [json.dumps(bad)])
    with pytest.raises(DataError, match=r"pairs.jsonl line 1: chosen\[0\] answers tool call 'c7'"):
        read_pairs(tmp_path / "pairs.jsonl")


def test_train_sft_steps_on_a_tool_using_file(
    tiny: tuple[Any, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = []
    for i in range(4):
        row = _tool_row()
        row["messages"][1] = _calling(_call("c1", "lookup", {"key": f"k{i}"}))
        row["messages"][3] = _msg("assistant", f"k{i} is v1")
        rows.append(json.dumps(row))
    train = _write(tmp_path / "train.jsonl", rows[:3])
    summary = train_sft(
        SFTConfig(
            model=str(tiny_model_dir),
            train_file=str(train),
            eval_file=str(_write(tmp_path / "eval.jsonl", rows[3:])),
            run_dir=str(tmp_path / "run"),
            max_seq_len=256,
            batch_size=3,
            micro_batch_size=3,
            steps=1,
            eval_every_steps=1,
            save_every_steps=1,
            progress=False,
        )
    )
    assert summary.steps == 1 and summary.train_examples == 3 and summary.skipped_too_long == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    [step] = [r for r in map(json.loads, lines) if "train/loss" in r]
    assert math.isfinite(step["train/loss"])
    # the counted tokens are the calls and answers (tools listing, headers, results masked)
    _, tokenizer = tiny
    counted = [sum(tokenize_chat(tokenizer, ex).loss_mask[1:]) for ex in read_chats(train)]
    assert step["train/counted_tokens"] == sum(counted) > 0
