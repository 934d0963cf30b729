"""Tests for ownlm.train.datasets: row formats, errors that name the line, masks, truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from ownlm.errors import DataError
from ownlm.train.datasets import (
    ChatExample,
    PreferencePair,
    TokenizedChat,
    batch_indices,
    collate,
    read_chats,
    read_pairs,
    tokenize_chat,
    tokenize_pair,
    truncate_chat,
)


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
