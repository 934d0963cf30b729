"""The own model on llama.cpp behind the gateway: a managed llama-server, token streaming,
restart of a killed engine, and the errors a user can cause.

A tiny random model (tests/conftest.py) is exported to GGUF by llama.cpp's converter and served
by a real llama-server; the official openai client talks to the gateway.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from ownlm.errors import ConfigError, ModelLoadError
from ownlm.gateway.config import GatewayConfig, UpstreamConfig
from ownlm.gateway.server import build_app, serve_gateway_in_thread
from ownlm.models.llama_cpp import LlamaServer, export_gguf
from tests.gateway.conftest import free_port

MESSAGES = [{"role": "user", "content": "Count to three."}]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path) -> Path:
    return export_gguf(str(tiny_model_dir), "f16")


def run_gateway(model_dir: Path, tmp_path: Path, **extra: Any) -> Iterator[tuple[str, Any]]:
    data: dict[str, Any] = {
        "port": free_port(),
        "store_url": f"sqlite:///{tmp_path}/gw.db",
        "require_keys": False,
        "flush_interval_ms": 20,
        "upstreams": {
            "own": {
                "kind": "llama_cpp",
                "model_path": str(model_dir),
                "quantization": "f16",
                "parallel_slots": 2,
                "threads": 1,
                "max_retries": 0,
            }
        },
        "models": {"own": {"upstream": "own"}},
    }
    for key, value in extra.items():
        data[key] = {**data[key], **value}
    cfg = GatewayConfig.model_validate(data)
    app = build_app(cfg)
    server, thread = serve_gateway_in_thread(app, cfg)
    yield f"http://127.0.0.1:{cfg.port}/v1", app.app
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def engine_gateway(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    yield from run_gateway(tiny_model_dir, tmp_path)


@pytest.mark.parametrize("min_confidence", [0.0, 2.0])
def test_an_unsure_own_model_escalates_to_the_paid_model(
    tiny_model_dir: Path, tmp_path: Path, mock_upstream: Any, min_confidence: float
) -> None:
    mock = {"paid": {"upstream": "mock", "model": "mock-chat"}}
    own = {"own": {"upstream": "own", "escalate": {"to": "paid", "min_confidence": min_confidence}}}
    gen = run_gateway(
        tiny_model_dir, tmp_path,
        upstreams={"mock": {"base_url": mock_upstream.base_url}}, models={**mock, **own},
    )  # fmt: skip
    url, gw = next(gen)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        for stream in (False, True):
            kw: dict[str, Any] = {"model": "own", "messages": MESSAGES, "max_tokens": 6}
            if stream:
                with client.chat.completions.create(**kw, stream=True) as s:
                    text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
            else:
                r = client.chat.completions.create(**kw)
                text = r.choices[0].message.content or ""
                assert r.choices[0].logprobs is None  # not asked for: not passed on
            assert text.startswith("echo: ") == (min_confidence > 1.0)
        deadline = time.monotonic() + 5
        rows: list[Any] = []
        while len(rows) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            rows = gw.store.list_traces(limit=5)
        for row in rows:
            if min_confidence > 1.0:
                assert row.variant == "paid" and "escalated to paid: own confidence" in row.reason
                assert row.metadata["escalated_from"] == "own"
                attempt = int(row.metadata["own_attempt_tokens"])
                # the dropped attempt's tokens count in the trace's tokens, not in its bill
                assert attempt > 6 and row.prompt_tokens + row.completion_tokens > attempt
                assert row.cost_usd == 0.0
            else:
                assert row.variant == "own" and "own confidence" in row.reason
    finally:
        next(gen, None)


def test_escalation_needs_the_llama_cpp_engine() -> None:
    with pytest.raises(ValueError, match="escalate needs a kind llama_cpp upstream"):
        GatewayConfig.model_validate(
            {
                "upstreams": {"own": {"kind": "local"}, "p": {"base_url": "http://x.test/v1"}},
                "models": {
                    "paid": {"upstream": "p"},
                    "own": {"upstream": "own", "escalate": {"to": "paid", "min_confidence": 0.5}},
                },
            }
        )


def test_streams_tokens_chunk_by_chunk_and_matches_the_whole_reply(
    engine_gateway: tuple[str, Any],
) -> None:
    url, gw = engine_gateway
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    whole = client.chat.completions.create(
        model="own", messages=MESSAGES, max_tokens=12, temperature=0.0
    )
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    assert whole.choices[0].finish_reason == "length"
    pieces = []
    with client.chat.completions.create(
        model="own", messages=MESSAGES, max_tokens=12, temperature=0.0, stream=True,
        stream_options={"include_usage": True},
    ) as stream:  # fmt: skip
        chunks = list(stream)
    for c in chunks:
        if c.choices and c.choices[0].delta.content:
            pieces.append(c.choices[0].delta.content)
    assert len(pieces) >= 6  # one chunk per sampled token (a few tokens may decode to "")
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_trace_records_time_to_first_token(engine_gateway: tuple[str, Any]) -> None:
    url, gw = engine_gateway
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    with client.chat.completions.create(
        model="own", messages=MESSAGES, max_tokens=8, temperature=0.0, stream=True
    ) as stream:
        list(stream)
    deadline = time.monotonic() + 5
    rows: list[Any] = []
    while not rows and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = gw.store.list_traces(limit=5)
    assert rows and rows[-1].ttft_ms is not None
    assert 0 < rows[-1].ttft_ms <= rows[-1].latency_ms
    assert rows[-1].completion_tokens == 8


def test_killed_engine_is_restarted_and_requests_fail_clearly(
    engine_gateway: tuple[str, Any],
) -> None:
    url, gw = engine_gateway
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=30)
    engine = gw.upstreams["own"]
    pid = engine.server.proc.pid
    errors: list[Exception] = []

    def long_request() -> None:
        try:
            client.chat.completions.create(
                model="own", messages=MESSAGES, max_tokens=1500, temperature=0.0
            )
        except openai.APIStatusError as err:
            errors.append(err)

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    t.join(30)
    assert not t.is_alive(), "the request in flight hung"
    assert errors and errors[0].status_code in (502, 503), errors
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            r = client.chat.completions.create(model="own", messages=MESSAGES, max_tokens=2)
            break
        except openai.APIStatusError as err:
            assert err.status_code == 503, err  # restarting: a clear 503, never a hang
            time.sleep(0.2)
    else:
        raise AssertionError("the engine was not restarted")
    assert r.choices[0].message.content is not None
    assert engine.restarts == 1 and engine.server.proc.pid != pid


def test_exported_gguf_loads_in_llama_cpp_and_answers(tiny_gguf: Path) -> None:
    from ownlm.models.chat import encode_prompt
    from ownlm.models.load import load_tokenizer
    from ownlm.rollout.llama_cpp import complete_on_server
    from ownlm.rollout.types import SamplingParams

    tok = load_tokenizer(str(tiny_gguf.parent))
    with LlamaServer(tiny_gguf, parallel_slots=1, threads=1) as server:
        outs = complete_on_server(
            server.base_url,
            [encode_prompt(tok, MESSAGES)],
            SamplingParams(max_new_tokens=5, temperature=0.0),
        )
    assert outs[0].completion_tokens == 5 and outs[0].finish_reason == "length"


def test_unconvertible_model_dir_names_what_is_missing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    bad = tmp_path / "half"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (bad / "model.safetensors").symlink_to(tiny_model_dir / "model.safetensors")
    with pytest.raises(ModelLoadError, match="tokenizer.json, tokenizer_config.json"):
        export_gguf(str(bad), "f16")


def test_unknown_quantization_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown quantization 'q3_xs'; use one of f32, f16"):
        UpstreamConfig(kind="llama_cpp", quantization="q3_xs")
    with pytest.raises(ConfigError, match="unknown quantization"):
        from ownlm.config import validate_config

        validate_config(GatewayConfig, {"own_engine": {"quantization": "int3"}}, "ownlm.yaml")


def test_engine_that_fails_to_start_says_why_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="llama-server exited with code") as err:
        LlamaServer(junk, parallel_slots=1, threads=1).start(timeout_s=30)
    assert "\n" not in str(err.value)
