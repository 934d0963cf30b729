"""Responses API traffic is exported like chat traffic: each SFT row holds the conversation as the
gateway sent it upstream (instructions, the turns of previous_response_id, the input items)
and the answer it got, tools in chat form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ownlm.data.export import ExportConfig, export
from tests.gateway.test_responses import WEATHER_TOOL, Running, last_body
from tests.gateway.test_responses import gw as gw  # noqa: F401 (fixtures)
from tests.gateway.test_responses import upstream as upstream  # noqa: F401


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_responses_conversations_export_as_the_upstream_saw_them(
    gw: Running, upstream: Any, tmp_path: Path
) -> None:
    c = gw.client
    r1 = c.responses.create(model="chat", instructions="Be brief.", input="hello there")
    r2 = c.responses.create(model="chat", input="and again", previous_response_id=r1.id)
    second_turn = last_body(upstream)["messages"]
    r3 = c.responses.create(model="chat", input="weather in Paris?", tools=[WEATHER_TOOL])
    (call,) = r3.output
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}
    c.responses.create(model="chat", input=[result], previous_response_id=r3.id)
    tool_turn = last_body(upstream)["messages"]
    gw.trace(r2.id.removeprefix("resp_"))
    gw.app.app.writer.flush()  # type: ignore[attr-defined]
    out = tmp_path / "export"
    summary = export(
        ExportConfig(
            store_url=gw.cfg.store_url, out_dir=str(out), kinds=["sft"], eval_fraction=0.0,
            dedupe=None, redact=None,
        )
    )  # fmt: skip
    chats = [r["messages"] for r in rows(out / "sft_train.jsonl")]
    assert summary.counts["sft"]["train"] == 4 and not summary.dropped["unusable"]
    assert chats[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "echo: hello there"},
    ]
    # the follow-up: the earlier turn without its instructions (they do not carry over)
    assert chats[1][:-1] == second_turn and chats[1][-1]["role"] == "assistant"
    assert chats[2][-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert chats[3][:-1] == tool_turn
    tools = rows(out / "sft_train.jsonl")[2]["tools"]
    assert tools == [
        {"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}
    ]
