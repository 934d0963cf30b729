"""Component tests of `ownlm export` on a SQLite store in tmp_path with hand-written traces."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from ownlm.cli import main
from ownlm.config import load_config
from ownlm.data.dedupe import jaccard, normalize_text, shingles
from ownlm.data.export import ExportConfig, export, public_url
from ownlm.errors import ConfigError, DataError, StoreError
from ownlm.store.schema import Feedback, Trace
from ownlm.store.trace_store import TraceStore
from ownlm.train.datasets import read_chats, read_pairs

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
EMAIL = "jane.doe@example.com"
PHONE = "(415) 555-2671"
KEY = "sk-proj-abcdefghijklmnop1234567890XYZ"


def chat_trace(
    prompt: str | list[dict[str, Any]],
    answer: str | dict[str, Any],
    *,
    t: float,
    session: str | None = None,
    **fields: Any,
) -> Trace:
    """A chat trace as the gateway stores it: request body and chat.completion response."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    message = {"role": "assistant", "content": answer} if isinstance(answer, str) else answer
    request = {"model": "support", "messages": messages, **fields.pop("request_extra", {})}
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return Trace(
        created_at=T0 + t,
        alias=fields.pop("alias", "support"),
        variant="big",
        upstream="openai",
        upstream_model="gpt-big",
        request=request,
        response={
            "id": f"chatcmpl-{t}",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        },
        session=session,
        **fields,
    )


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Look up an order by id",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_order", "arguments": '{"order_id": "12345"}'},
}
TOPICS = [
    "reset my password on the mobile app",
    "change the delivery address of an order",
    "cancel a subscription before it renews",
    "get an invoice for a business purchase",
    "report a damaged item that arrived today",
    "use a gift card together with a coupon",
]


def support_traces() -> list[Trace]:
    """12 chats in 6 sessions (PII in two), 2 tool traces, a near and an exact dup, a math prompt,
    a failed and an embeddings trace: 19 traces, 17 chats."""
    out = [
        chat_trace(
            f"How do I {topic}?" if i < 6 else f"Is there a fee to {topic}, and how long is it?",
            f"To {topic}, open Settings and follow step {i}.",
            t=i,
            session=f"s{i // 2}",
        )
        for i, topic in enumerate(TOPICS * 2)
    ]
    out[0].request["messages"][0]["content"] += f" My email is {EMAIL}, key {KEY}."
    out[1].response["choices"][0]["message"]["content"] += f" Or call us at {PHONE}."
    tool_prompt = [
        {"role": "system", "content": "You are the support bot."},
        {"role": "user", "content": "Where is my order #12345?"},
    ]
    out.append(
        chat_trace(
            tool_prompt,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            t=20,
            session="tools",
            alias="agent",
            request_extra={"tools": TOOLS},
        )
    )
    loop = [
        *tool_prompt,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": f'{{"status": "shipped", "email": "{EMAIL}"}}',
        },
    ]
    out.append(
        chat_trace(
            loop,
            "Your order #12345 has shipped.",
            t=21,
            session="tools",
            alias="agent",
            request_extra={"tools": TOOLS},
        )
    )
    out.append(chat_trace(f"How do I {TOPICS[2]}!", "dup near", t=30, session="late"))
    out.append(chat_trace(f"how do I   {TOPICS[3].upper()}?", "dup exact", t=31, session="late"))
    out.append(
        chat_trace("What is 12 + 34?", "46", t=40, session="math", metadata={"answer": "46"})
    )
    out.append(Trace(created_at=T0 + 50, status=502, error="upstream down", request={}))
    out.append(Trace(created_at=T0 + 51, endpoint="embeddings", request={"input": "x"}))
    return out


def make_store(tmp_path: Path, traces: list[Trace], feedback: list[Feedback] = ()) -> str:
    """A SQLite store in tmp_path holding these rows; returns its URL."""
    url = f"sqlite:///{tmp_path / 'ownlm.db'}"
    store = TraceStore(url)
    store.write_traces(traces)
    for fb in feedback:
        store.add_feedback(fb)
    store.close()
    return url


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def config(url: str, out: Path, **over: Any) -> ExportConfig:
    return ExportConfig.model_validate({"store_url": url, "out_dir": str(out), **over})


# OpenAI chat fine-tuning format, as documented (platform.openai.com/docs/guides/fine-tuning and
# the cookbook's format checker), with tool calling.
MESSAGE_KEYS = {
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "weight", "refusal"},
    "tool": {"role", "content", "tool_call_id"},
}


def openai_format_errors(row: dict[str, Any]) -> list[str]:
    """Everything in one SFT row that OpenAI's fine-tuning format would reject."""
    errors = []
    if set(row) - {"messages", "tools", "parallel_tool_calls"}:
        errors.append(f"unknown top-level keys {set(row) - {'messages', 'tools'}}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return [*errors, "messages must be a non-empty list"]
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in MESSAGE_KEYS:
            errors.append(f"message {i}: role {role!r}")
            continue
        if set(m) - MESSAGE_KEYS[role]:
            errors.append(f"message {i}: unknown keys {set(m) - MESSAGE_KEYS[role]}")
        content = m.get("content")
        if role == "assistant" and m.get("tool_calls"):
            if content is not None and not isinstance(content, str):
                errors.append(f"message {i}: content must be a string or null")
            for call in m["tool_calls"]:
                fn = call.get("function", {})
                if not (isinstance(call.get("id"), str) and call["id"]):
                    errors.append(f"message {i}: tool call without id")
                if call.get("type") != "function" or not isinstance(fn.get("name"), str):
                    errors.append(f"message {i}: tool call must be a named function")
                try:
                    json.loads(fn.get("arguments"))
                except (TypeError, json.JSONDecodeError):
                    errors.append(f"message {i}: arguments must be a JSON string")
                call_ids.add(call.get("id"))
        elif not isinstance(content, str):
            errors.append(f"message {i}: content must be a string")
        if role == "tool" and m.get("tool_call_id") not in call_ids:
            errors.append(f"message {i}: tool_call_id answers no earlier tool call")
    if not any(m.get("role") == "assistant" for m in messages):
        errors.append("no assistant message")
    for tool in row.get("tools", []):
        if tool.get("type") != "function" or not isinstance(tool["function"].get("name"), str):
            errors.append(f"tool {tool!r} is not a named function")
    return errors


def test_validator_rejects_broken_rows() -> None:
    assert openai_format_errors({"messages": [{"role": "user", "content": "hi"}]}) == [
        "no assistant message"
    ]
    bad_tool = {
        "messages": [
            {"role": "tool", "content": "x", "tool_call_id": "nope"},
            {"role": "assistant", "content": "ok"},
        ]
    }
    assert openai_format_errors(bad_tool) == [
        "message 0: tool_call_id answers no earlier tool call"
    ]


def test_sft_rows_follow_openai_format_and_load_with_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    url = make_store(tmp_path, support_traces())
    out = tmp_path / "out"
    summary = export(config(url, out, kinds=["sft"], eval_fraction=0.0, dedupe=None))
    rows = read_jsonl(out / "sft_train.jsonl")
    assert (out / "sft_eval.jsonl").read_text() == ""
    assert [openai_format_errors(r) for r in rows] == [[] for _ in rows]
    # 17 chats; the failed and the embeddings trace are filtered
    assert summary.counts["sft"] == {"train": 17, "eval": 0}
    assert summary.dropped["filter"] == {"status": 1, "endpoint": 1}
    with_tools = [r for r in rows if "tools" in r]
    assert len(with_tools) == 2 and with_tools[0]["tools"] == TOOLS
    assert with_tools[0]["messages"][-1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [CALL],
    }
    assert [m["role"] for m in with_tools[1]["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    loaded = datasets.load_dataset(
        "json",
        data_files=str(out / "sft_train.jsonl"),
        split="train",
        cache_dir=str(tmp_path / "c"),
    )
    assert loaded.num_rows == 17
    assert loaded[0]["messages"][-1]["role"] == "assistant"


def test_duplicates_and_earlier_turns_are_dropped(tmp_path: Path) -> None:
    url = make_store(tmp_path, support_traces())
    summary = export(config(url, tmp_path / "out", kinds=["sft"]))
    # the near and the exact duplicate; the tool-call turn at t=20 is whole inside the prompt
    # of the turn at t=21, whose row keeps it
    assert summary.dropped["dedupe"] == {"sft_near": 1, "sft_exact": 1, "sft_in_later_turn": 1}
    assert sum(summary.counts["sft"].values()) == 17 - 3


def test_a_shared_system_prompt_does_not_make_duplicates(tmp_path: Path) -> None:
    rules = " ".join(
        f"Rule {i}: answer about product line {i * 37 % 101} politely." for i in range(30)
    )
    system = {"role": "system", "content": f"You are the support bot of Acme. {rules}"}
    turn1 = [system, {"role": "user", "content": "How do I reset my password?"}]
    answer1 = {"role": "assistant", "content": "Open Settings, then Security."}
    turn2 = [*turn1, answer1, {"role": "user", "content": "And where is Security on Android?"}]
    traces = [
        chat_trace(turn1, answer1, t=0, session="a"),
        chat_trace(turn2, "Under the menu at the top left.", t=1, session="a"),
        chat_trace(
            [system, {"role": "user", "content": "Can I pay an invoice by bank transfer?"}],
            "Yes, see Billing.",
            t=2,
            session="b",
        ),
    ]
    url = make_store(tmp_path, traces)
    summary = export(config(url, tmp_path / "out", kinds=["sft", "rl"], rl={"verifier": "exact"}))
    assert summary.dropped["dedupe"] == {"sft_in_later_turn": 1}
    assert sum(summary.counts["sft"].values()) == 2  # turn 2 of a (holds turn 1) and b
    assert sum(summary.counts["rl"].values()) == 3  # each prompt is a task

    # a thumbs-down on turn 2 drops it, and then turn 1 is no longer held by another row
    store = TraceStore(url)
    store.add_feedback(Feedback(trace_id=traces[1].trace_id, thumbs=-1))
    store.close()
    rated = export(config(url, tmp_path / "rated", kinds=["sft"]))
    assert rated.dropped["dedupe"] == {} and rated.dropped["feedback"] == {"sft": 1}
    assert sum(rated.counts["sft"].values()) == 2  # turn 1 of a, and b


def test_sft_loader_reads_a_plain_chat_export(tmp_path: Path) -> None:
    url = make_store(tmp_path, support_traces())
    out = tmp_path / "out"
    export(config(url, out, kinds=["sft"], filters={"aliases": ["support"]}, eval_fraction=0.3))
    chats = read_chats(out / "sft_train.jsonl") + read_chats(out / "sft_eval.jsonl")
    assert len(chats) == 13  # 12 support chats + the math prompt (2 dups dropped)
    assert all(c.messages[-1]["role"] == "assistant" for c in chats)


def test_sft_loader_reads_tool_calls(tmp_path: Path) -> None:
    url = make_store(tmp_path, support_traces())
    export(
        config(
            url, tmp_path / "out", kinds=["sft"], filters={"aliases": ["agent"]}, eval_fraction=0.0
        )
    )
    # The call-only trace is held whole by the later one's prompt (dedupe), so one row has both.
    [chat] = read_chats(tmp_path / "out" / "sft_train.jsonl")
    assert chat.messages[2]["tool_calls"][0]["function"]["name"] == "get_order"
    assert chat.messages[3]["tool_call_id"] == "call_1"
    assert chat.tools == TOOLS


def test_pairs_from_feedback_load_with_the_dpo_reader(tmp_path: Path) -> None:
    prompt = "Write a one-line apology for a late parcel."
    traces = [
        chat_trace(prompt, "Sorry.", t=0, session="a"),
        chat_trace(prompt, "We are sorry your parcel is late; it ships today.", t=1, session="b"),
        chat_trace(prompt, "Apologies!", t=2, session="c"),  # unrated: not in the pair
        chat_trace("Say hi", "hi", t=3, session="d"),  # one answer only: no pair
        chat_trace("Say bye", "bye", t=4, session="e"),
        chat_trace("Say bye", "bye!", t=5, session="f"),  # equal rewards: no pair
    ]
    feedback = [
        Feedback(trace_id=traces[0].trace_id, thumbs=-1),
        Feedback(trace_id=traces[1].trace_id, thumbs=1),
        Feedback(trace_id=traces[3].trace_id, thumbs=1),
        Feedback(trace_id=traces[4].trace_id, score=0.5),
        Feedback(trace_id=traces[5].trace_id, score=0.5),
    ]
    url = make_store(tmp_path, traces, feedback)
    out = tmp_path / "out"
    summary = export(config(url, out, kinds=["pairs"], eval_fraction=0.0))
    assert summary.counts["pairs"] == {"train": 1, "eval": 0}
    [row] = read_jsonl(out / "pairs_train.jsonl")
    assert row == {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [
            {"role": "assistant", "content": traces[1].response["choices"][0]["message"]["content"]}
        ],
        "rejected": [{"role": "assistant", "content": "Sorry."}],
    }
    [pair] = read_pairs(out / "pairs_train.jsonl")
    assert pair.rejected == [{"role": "assistant", "content": "Sorry."}]


def test_rl_rows_carry_verifier_and_reference(tmp_path: Path) -> None:
    url = make_store(tmp_path, support_traces())
    out = tmp_path / "out"
    cfg = config(
        url,
        out,
        kinds=["rl"],
        eval_fraction=0.0,
        filters={"tags": []},
        rl={"verifier": "reasoning_gym:basic_arithmetic", "answer_key": "answer"},
    )
    export(cfg)
    rows = read_jsonl(out / "rl_train.jsonl")
    assert all(set(r) == {"id", "messages", "answer", "verifier", "metadata"} for r in rows)
    math = next(r for r in rows if r["answer"] is not None)
    assert math["messages"] == [{"role": "user", "content": "What is 12 + 34?"}]
    assert math["answer"] == "46" and math["verifier"] == "reasoning_gym:basic_arithmetic"
    assert math["metadata"] == {
        "alias": "support", "created_at": T0 + 40, "tags": [],
        "served_variant": "big", "served_answer": "46",
    }  # fmt: skip
    # the tool-loop trace's prompt stops at its last user turn: system + user
    tool_rows = [r for r in rows if r["metadata"]["alias"] == "agent"]
    assert [m["role"] for m in tool_rows[0]["messages"]] == ["system", "user"]
    assert len(tool_rows) == 1  # the second tool trace has the same prompt: an exact duplicate


def test_no_pii_reaches_the_files(tmp_path: Path) -> None:
    url = make_store(tmp_path, support_traces())
    out = tmp_path / "out"
    summary = export(config(url, out, kinds=["sft", "rl"], rl={"verifier": "exact"}))
    text = "".join(p.read_text() for p in out.glob("*.jsonl"))
    for secret in (EMAIL, PHONE, KEY, "555-2671"):
        assert secret not in text
    assert "<EMAIL>" in text and "<PHONE>" in text and "<SECRET>" in text
    assert "#12345" in text and "12 + 34" in text  # ordinary text stays
    # 3 texts: trace 0 prompt (email + key), trace 1 answer (phone), the tool result (email)
    assert summary.redactions == {"texts_changed": 3, "EMAIL": 2, "SECRET": 1, "PHONE": 1}
    raw = export(config(url, tmp_path / "raw", kinds=["sft"], redact=None))
    assert raw.redactions == {"texts_changed": 0}
    assert (
        EMAIL
        in (tmp_path / "raw" / "sft_train.jsonl").read_text()
        + (tmp_path / "raw" / "sft_eval.jsonl").read_text()
    )


def test_no_session_on_both_sides(tmp_path: Path) -> None:
    # 40 sessions x 3 turns from one template: many prompts are near duplicates of each other.
    traces = [
        chat_trace(
            f"Session {s} turn {k}: tell me fact number {s * 10 + k} about {TOPICS[k]}",
            f"Fact {s}-{k}.",
            t=s * 10 + k,
            session=f"sess-{s}",
        )
        for s in range(40)
        for k in range(3)
    ]
    session_of = {t.trace_id: t.session for t in traces}
    url = make_store(tmp_path, traces)

    def run(name: str, **over: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        out = tmp_path / name
        export(
            config(
                url, out, kinds=["rl"], rl={"verifier": "exact"}, eval_fraction=0.3, seed=7, **over
            )
        )
        return read_jsonl(out / "rl_train.jsonl"), read_jsonl(out / "rl_eval.jsonl")

    train, held = run("all", dedupe=None)
    train_sessions = {session_of[r["id"]] for r in train}
    held_sessions = {session_of[r["id"]] for r in held}
    assert train_sessions and held_sessions and not train_sessions & held_sessions
    assert len(train_sessions) + len(held_sessions) == 40
    assert len(held) == 3 * len(held_sessions)
    assert run("again", dedupe=None) == (train, held)  # a pure function of the seed

    # With dedupe (before the split), no eval prompt is a near duplicate of a train prompt.
    train, held = run("deduped")
    assert 0 < len(train) + len(held) < 120
    texts = [
        [shingles(normalize_text(r["messages"][0]["content"])) for r in side]
        for side in (train, held)
    ]
    assert max(jaccard(a, b) for a in texts[0] for b in texts[1]) < 0.8
    assert not {session_of[r["id"]] for r in train} & {session_of[r["id"]] for r in held}


def test_feedback_rule_and_filters_are_counted(tmp_path: Path) -> None:
    traces = support_traces()
    feedback = [
        Feedback(trace_id=traces[2].trace_id, thumbs=1),
        Feedback(trace_id=traces[3].trace_id, thumbs=-1),
    ]
    url = make_store(tmp_path, traces, feedback)
    positive = export(config(url, tmp_path / "p", kinds=["sft"], filters={"feedback": "positive"}))
    assert positive.counts["sft"]["train"] + positive.counts["sft"]["eval"] == 1
    not_negative = export(config(url, tmp_path / "n", kinds=["sft"]))
    assert not_negative.dropped["feedback"] == {"sft": 1}
    window = export(
        config(
            url,
            tmp_path / "w",
            kinds=["sft"],
            dedupe=None,
            filters={"since": T0 + 2, "until": "2026-01-01T00:00:20Z", "aliases": ["support"]},
        )
    )
    # since/until are read in SQL: only the 10 chats at t = 2..11 are read; trace 3 is thumbs-down
    assert window.traces_read == 10
    assert window.dropped["filter"] == {"time_range": 9}
    assert window.counts["sft"]["train"] + window.counts["sft"]["eval"] == 10 - 1
    assert window.time_range == {
        "first": "2026-01-01T00:00:02+00:00",
        "last": "2026-01-01T00:00:11+00:00",
    }


def test_manifest_hashes_match_files_and_no_temp_files_remain(tmp_path: Path) -> None:
    url = make_store(tmp_path, support_traces())
    out = tmp_path / "out"
    export(config(url, out, kinds=["sft", "rl"], rl={"verifier": "exact"}))
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        "sft_train.jsonl",
        "sft_eval.jsonl",
        "rl_train.jsonl",
        "rl_eval.jsonl",
    }
    for name, info in manifest["files"].items():
        data = (out / name).read_bytes()
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        assert info["rows"] == len(data.splitlines())
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert manifest["store_url"] == url and manifest["config"]["kinds"] == ["sft", "rl"]


def test_a_failed_export_never_leaves_a_manifest_beside_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_store(tmp_path, support_traces())
    out = tmp_path / "out"
    export(config(url, out, kinds=["sft"]))
    with pytest.raises(DataError, match="no trace left to export"):
        export(config(url, out, kinds=["sft"], filters={"aliases": ["nope"]}))
    assert (out / "manifest.json").exists()  # it failed before replacing anything
    with pytest.raises(DataError, match="no pairs rows"):
        export(config(url, out, kinds=["sft", "pairs"]))
    assert (out / "manifest.json").exists()

    real_open = Path.open

    def disk_full_on_eval(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == ".sft_eval.jsonl.tmp":
            raise OSError(28, "No space left on device")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", disk_full_on_eval)
    with pytest.raises(DataError, match="No space left on device; free space"):
        export(config(url, out, kinds=["sft"], seed=1))
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["sft_eval.jsonl", "sft_train.jsonl"]


def test_public_url_hides_the_password() -> None:
    assert public_url("postgresql://app:hunter2@db:5432/ownlm") == (
        "postgresql://app:***@db:5432/ownlm"
    )


def test_errors_say_what_was_wrong(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store file at"):
        export(config(f"sqlite:///{tmp_path / 'typo.db'}", tmp_path / "o"))
    assert not (tmp_path / "typo.db").exists()
    with pytest.raises(StoreError, match="cannot use store url"):
        export(config("nosuchdb://x", tmp_path / "o"))
    empty = make_store(tmp_path, [])
    with pytest.raises(DataError, match="has no traces"):
        export(config(empty, tmp_path / "o"))
    url = make_store(tmp_path, support_traces())
    with pytest.raises(DataError, match=re.escape("alias: 17, status: 1, endpoint: 1")):
        export(config(url, tmp_path / "o", filters={"aliases": ["nope"]}))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot write to out_dir"):
        export(config(url, tmp_path / "file" / "sub"))
    with pytest.raises(ConfigError, match="rl.verifier is empty"):
        load_config(ExportConfig, None, ["kinds=[rl]"])
    with pytest.raises(ConfigError, match="lists a kind twice"):
        load_config(ExportConfig, None, ["kinds=[sft,sft]"])
    with pytest.raises(ConfigError, match="did you mean 'eval_fraction'"):
        load_config(ExportConfig, None, ["eval_frac=0.2"])


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = make_store(tmp_path, support_traces())
    cfg = tmp_path / "export.yaml"
    cfg.write_text(f"store_url: {url}\nout_dir: {tmp_path / 'out'}\nkinds: [sft]\n")
    assert main(["export", "--config", str(cfg), "--set", "eval_fraction=0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["eval_fraction"] == 0.5
    assert main(["export", "--config", str(cfg), "--set", "filters.aliases=[nope]"]) == 2
    assert "no trace left to export" in capsys.readouterr().err


def test_iter_traces_reads_every_trace_once_across_pages(tmp_path: Path) -> None:
    # Equal created_at values straddle page boundaries: the (created_at, trace_id) key keeps
    # them apart. (TraceStore.iter_traces was added for the export; tested here.)
    times = [0, 1, 1, 1, 2, 3, 3]
    traces = [Trace(trace_id=f"t{i}", created_at=T0 + s) for i, s in enumerate(times)]
    url = make_store(tmp_path, traces[::-1])
    store = TraceStore(url)
    try:
        assert [t.trace_id for t in store.iter_traces(page_size=2)] == [f"t{i}" for i in range(7)]
        assert [t.trace_id for t in store.iter_traces(T0 + 1, T0 + 3, page_size=2)] == [
            "t1",
            "t2",
            "t3",
            "t4",
        ]
        assert list(store.iter_traces(T0 + 10)) == []
    finally:
        store.close()
