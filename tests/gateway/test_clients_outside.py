"""Client libraries that cannot live in the main venv, each driven against an in-process gateway.

instructor and litellm pin packages the main venv pins otherwise (docs/gateway.md, "Client
libraries"), so they run from a side venv, `.venv-clients` (tests/clients/requirements.txt);
the openai npm package and the Vercel AI SDK run on Node (tests/clients/node, `npm ci`).
`make test` installs both. Each library's script (tests/clients/) runs once per module as a
subprocess, tries every feature against the gateway and prints one JSON object, feature by
feature: what came back, or the error's type and message. The tests below read it.

The stand-in upstream answers by what it is sent: a call to the forced function (instructor's
TOOLS modes force one) with Weather JSON, Weather JSON for a response_format, a get_weather
call when given tools, "weather: <result>" after a tool result, "echo: <text>" otherwise, whole
or streamed. Embeddings are [0.5, -0.5] per input.

    make test                                           # installs the side venv and node_modules
    .venv/bin/python -m pytest tests/gateway/test_clients_outside.py
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from ownlm.gateway.loopback import serve_in_thread
from tests.gateway.conftest import USER_KEY, free_port
from tests.gateway.test_responses import Running

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "tests" / "clients"
SIDE_VENV = ROOT / os.environ.get("OWNLM_CLIENTS_VENV", ".venv-clients")
NODE_DIR = CLIENTS / "node"
BAD_KEY = "sk-not-a-key"
WEATHER = {"city": "Paris", "temp_c": 21}
SCRIPT_TIMEOUT_S = 120

# -- the stand-in upstream --------------------------------------------------------------------

BODIES = web.AppKey("bodies", list)


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant message the stand-in answers `body` with."""
    last = body["messages"][-1]
    choice = body.get("tool_choice")
    forced = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if forced and forced != "get_weather":
        call = _call(forced, json.dumps(WEATHER))
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if body.get("response_format"):
        return {"role": "assistant", "content": json.dumps(WEATHER)}
    if last["role"] == "tool":
        return {"role": "assistant", "content": f"weather: {_text(last['content'])}"}
    if body.get("tools"):
        call = _call("get_weather", '{"city": "Paris"}')
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "assistant", "content": f"echo: {_text(last['content'])}"}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    request.app[BODIES].append(body)
    msg = _answer(body)
    finish = "tool_calls" if msg.get("tool_calls") else "stop"
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    head = {"id": "chatcmpl-x", "created": 1700000000, "model": body["model"]}
    if not body.get("stream"):
        choice = {"index": 0, "message": msg, "finish_reason": finish}
        return web.json_response(
            {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    head["object"] = "chat.completion.chunk"

    async def delta(d: dict[str, Any], fin: str | None = None) -> None:
        await resp.write(
            _sse({**head, "choices": [{"index": 0, "delta": d, "finish_reason": fin}]})
        )

    await delta({"role": "assistant", "content": ""})
    if msg.get("tool_calls"):
        call = msg["tool_calls"][0]
        args = call["function"]["arguments"]
        first = {
            **call,
            "index": 0,
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        await delta({"tool_calls": [first]})
        for part in (args[: len(args) // 2], args[len(args) // 2 :]):
            await delta({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
    else:
        for word in msg["content"].split(" "):
            await delta({"content": word + " "})
    await delta({}, finish)
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(_sse({**head, "choices": [], "usage": usage}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _embeddings(request: web.Request) -> web.Response:
    """[0.5, -0.5] per input; as base64 float32 when asked, as OpenAI answers (the openai Node
    and Python clients ask for base64 unless the app names a format)."""
    body = await request.json()
    request.app[BODIES].append(body)
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    vector: Any = [0.5, -0.5]
    if body.get("encoding_format") == "base64":
        vector = base64.b64encode(struct.pack("<2f", *vector)).decode()
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(len(inputs))]
    usage = {"prompt_tokens": 3, "total_tokens": 3}
    return web.json_response(
        {"object": "list", "data": data, "model": body["model"], "usage": usage}
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The stand-in's base URL and the bodies it received (chat and embeddings)."""
    app = web.Application()
    bodies: list[dict[str, Any]] = []
    app[BODIES] = bodies
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/embeddings", _embeddings)
    with serve_in_thread(app, free_port()) as url:
        yield url, bodies


@pytest.fixture(scope="module")
def gw(
    upstream: tuple[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """One gateway for the module: models `chat` (the stand-in) and `emb` (its embeddings)."""
    running = Running(upstream[0], f"sqlite:///{tmp_path_factory.mktemp('gw')}/gw.db")
    yield running
    running.stop()


def run_script(cmd: list[str], gw: Running) -> dict[str, Any]:
    """Run a client script against the gateway; the last line of its stdout is one JSON object
    (a library may print before it)."""
    env = {
        **os.environ,
        "OWNLM_BASE_URL": gw.base_url,
        "OWNLM_KEY": USER_KEY,
        "OWNLM_BAD_KEY": BAD_KEY,
    }
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=SCRIPT_TIMEOUT_S, cwd=ROOT
    )
    if out.returncode != 0:
        raise AssertionError(f"{cmd} exited {out.returncode}:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def feature(results: dict[str, Any], name: str) -> Any:
    """One feature's result; a feature that raised fails here with the script's error."""
    got = results[name]
    if isinstance(got, dict) and "error" in got and len(got) == 1:
        raise AssertionError(f"{name}: {got['error']}")
    return got


# -- the two scripts, each run once for the module --------------------------------------------


@pytest.fixture(scope="module")
def py_results(gw: Running) -> dict[str, Any]:
    """instructor and litellm, from the side venv."""
    if not (SIDE_VENV / ".installed").exists():
        pytest.skip(f"no side venv at {SIDE_VENV} (instructor, litellm): run `make test`")
    return run_script([str(SIDE_VENV / "bin" / "python"), str(CLIENTS / "py_clients.py")], gw)


@pytest.fixture(scope="module")
def node_results(gw: Running) -> dict[str, Any]:
    """The openai npm package and the Vercel AI SDK, on Node."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH (the openai npm package, the AI SDK): run `make test`")
    if not (NODE_DIR / "node_modules" / ".installed").exists():
        pytest.skip(f"no node_modules in {NODE_DIR}: run `make test`")
    return run_script([node, str(NODE_DIR / "clients.mjs")], gw)


def bodies_with(upstream: tuple[str, list[dict[str, Any]]], key: str) -> list[Any]:
    """The values of `key` in the bodies the stand-in received."""
    return [b[key] for b in upstream[1] if key in b]


# -- instructor and litellm (the side venv) ---------------------------------------------------


def test_instructor_plain(py_results: dict[str, Any]) -> None:
    assert feature(py_results, "instructor.plain") == {"text": "echo: hello there"}


def test_instructor_stream(py_results: dict[str, Any]) -> None:
    got = feature(py_results, "instructor.stream")  # create_partial: Partial[Weather] as it grows
    assert got["partials"] > 1 and got["last"] == WEATHER


def test_instructor_tools(py_results: dict[str, Any]) -> None:
    assert feature(py_results, "instructor.tools") == [["get_weather", {"city": "Paris"}]]


@pytest.mark.parametrize("mode", ["TOOLS", "JSON", "JSON_SCHEMA"])
def test_instructor_structured(py_results: dict[str, Any], upstream: Any, mode: str) -> None:
    got = feature(py_results, f"instructor.structured.{mode}")
    assert got == {"parsed": WEATHER, "raw": "chat.completion"}
    if mode == "TOOLS":  # instructor forces its schema as a function
        forced = [c for c in bodies_with(upstream, "tool_choice") if isinstance(c, dict)]
        assert {"type": "function", "function": {"name": "Weather"}} in forced
    else:
        formats = {f["type"] for f in bodies_with(upstream, "response_format")}
        assert {"json_object", "json_schema"} <= formats


def test_instructor_responses(py_results: dict[str, Any]) -> None:
    got = feature(py_results, "instructor.structured.RESPONSES_TOOLS")
    assert got == {"parsed": WEATHER, "raw": "response"}  # parsed from a Response object


def test_instructor_bad_key(py_results: dict[str, Any]) -> None:
    got = feature(py_results, "instructor.bad_key")
    # instructor wraps what the API raised in its retry error, `from` the openai error
    assert (got["raised"], got["cause"], got["cause_module"]) == (
        "InstructorRetryException",
        "AuthenticationError",
        "openai",
    )
    assert "invalid API key" in got["message"]


def test_litellm_completion(py_results: dict[str, Any]) -> None:
    assert feature(py_results, "litellm.plain") == {"text": "echo: hello there", "usage": 15}


def test_litellm_stream(py_results: dict[str, Any]) -> None:
    got = feature(py_results, "litellm.stream")
    assert got["chunks"] > 2 and got["text"].strip() == "echo: hello stream"


def test_litellm_tools(py_results: dict[str, Any]) -> None:
    assert feature(py_results, "litellm.tools") == {
        "call": ["get_weather", {"city": "Paris"}],
        "finish": "tool_calls",
        "after": "weather: sunny in Paris",
        "streamed": ["get_weather", {"city": "Paris"}],
    }


def test_litellm_response_format(py_results: dict[str, Any], upstream: Any) -> None:
    assert feature(py_results, "litellm.structured") == WEATHER
    schemas = [f for f in bodies_with(upstream, "response_format") if f["type"] == "json_schema"]
    assert any(f["json_schema"]["name"] == "Weather" for f in schemas)


def test_litellm_responses(py_results: dict[str, Any]) -> None:
    assert feature(py_results, "litellm.responses") == {
        "text": "echo: hello there",
        "status": "completed",
        "usage": 15,
        "call": ["function_call", "get_weather", {"city": "Paris"}],
        "after": "weather: 18 C",  # previous_response_id carried the call
    }
    streamed = feature(py_results, "litellm.responses_stream")
    assert streamed["text"] == "echo: hello stream"
    assert {"response.created", "response.output_text.delta", "response.completed"} <= set(
        streamed["types"]
    )


def test_litellm_embedding(py_results: dict[str, Any]) -> None:
    got = feature(py_results, "litellm.embedding")
    assert got == {"vectors": [[0.5, -0.5], [0.5, -0.5]], "usage": 3}


def test_litellm_bad_key(py_results: dict[str, Any]) -> None:
    got = feature(py_results, "litellm.bad_key")
    assert (got["raised"], got["module"], got["status"]) == (
        "AuthenticationError",
        "litellm.exceptions",
        401,
    )


# -- the openai npm package and the Vercel AI SDK (Node) --------------------------------------


def test_node_openai_chat(node_results: dict[str, Any]) -> None:
    assert feature(node_results, "openai.plain") == {"text": "echo: hello there", "usage": 15}


def test_node_openai_stream(node_results: dict[str, Any]) -> None:
    got = feature(node_results, "openai.stream")
    assert got["chunks"] > 2 and got["usage"] == 15
    assert got["text"].strip() == "echo: hello stream"


def test_node_openai_tools(node_results: dict[str, Any]) -> None:
    assert feature(node_results, "openai.tools") == {
        "call": ["get_weather", {"city": "Paris"}],
        "after": "weather: sunny in Paris",
        "streamed": ["get_weather", {"city": "Paris"}],  # chat.completions.stream()
    }


def test_node_openai_structured(node_results: dict[str, Any]) -> None:
    # chat.completions.parse with zodResponseFormat
    assert feature(node_results, "openai.structured") == WEATHER


def test_node_openai_responses(node_results: dict[str, Any]) -> None:
    assert feature(node_results, "openai.responses") == {
        "text": "echo: hello there",
        "status": "completed",
        "usage": 15,
        "parsed": WEATHER,  # responses.parse with zodTextFormat
        "retrieved": "echo: hello there",  # responses.retrieve
    }
    streamed = feature(node_results, "openai.responses_stream")
    assert streamed["text"] == streamed["final"]  # the deltas add up to the completed Response
    assert streamed["text"].strip() == "echo: hello stream"
    assert {"response.created", "response.output_text.delta", "response.completed"} <= set(
        streamed["types"]
    )
    assert streamed["call"] == ["get_weather", {"city": "Paris"}]  # responses.stream()


def test_node_openai_embeddings(node_results: dict[str, Any], upstream: Any) -> None:
    got = feature(node_results, "openai.embeddings")
    # the client asks for base64 unless told otherwise, and decodes it to floats
    assert got == {"base64": [[0.5, -0.5], [0.5, -0.5]], "float": [0.5, -0.5]}
    assert {"base64", "float"} <= set(bodies_with(upstream, "encoding_format"))


def test_node_openai_bad_key(node_results: dict[str, Any]) -> None:
    got = feature(node_results, "openai.bad_key")
    assert (got["raised"], got["status"], got["isAuthenticationError"]) == (
        "AuthenticationError",
        401,
        True,
    )


API_IDS = {"chat": "chatcmpl-", "responses": "resp_"}


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_ai_sdk_generate_text(node_results: dict[str, Any], api: str) -> None:
    got = feature(node_results, f"ai.{api}.generateText")
    assert (got["text"], got["usage"], got["finish"]) == ("echo: hello there", 15, "stop")
    assert got["id"].startswith(API_IDS[api])  # .chat() or the default (Responses) model


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_ai_sdk_stream_text(node_results: dict[str, Any], api: str) -> None:
    got = feature(node_results, f"ai.{api}.streamText")
    assert got["parts"] > 1 and got["usage"] == 15
    assert got["text"].strip() == "echo: hello stream"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_ai_sdk_tools(node_results: dict[str, Any], api: str) -> None:
    got = feature(node_results, f"ai.{api}.tools")  # tool() with execute, two steps
    assert got["calls"] == got["streamedCalls"] == [["get_weather", {"city": "Paris"}]]
    assert got["text"].strip() == got["streamedText"].strip() == "weather: sunny in Paris"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_ai_sdk_generate_object(node_results: dict[str, Any], api: str) -> None:
    assert feature(node_results, f"ai.{api}.generateObject") == WEATHER


def test_ai_sdk_embed(node_results: dict[str, Any]) -> None:
    got = feature(node_results, "ai.embed")
    assert got == {"one": [0.5, -0.5], "many": [[0.5, -0.5], [0.5, -0.5]]}


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_ai_sdk_bad_key(node_results: dict[str, Any], api: str) -> None:
    got = feature(node_results, f"ai.{api}.bad_key")
    assert (got["raised"], got["status"]) == ("APICallError", 401)  # the AI SDK's HTTP error
    assert "invalid API key" in got["message"]
