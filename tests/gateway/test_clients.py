"""Real client libraries against the gateway: openai-agents and langchain-openai.

Each library talks to a gateway in front of the chat-only stand-in upstream of
test_responses.py, which answers by what it is sent (JSON for a response_format, a get_weather
call when given tools, "weather: <result>" after a tool result, "echo: <text>" otherwise), so
one gateway backs chat completions and the Responses API alike. Embeddings use the conftest
mock. A library that is not installed skips its tests; tracing and telemetry are off so the
tests run offline.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import openai
import pydantic
import pytest
from aiohttp import web

from ownlm.gateway.loopback import serve_in_thread
from tests.gateway.conftest import BROKE_KEY, USER_KEY, RunningGateway, free_port
from tests.gateway.test_responses import BODIES, Running, _chat

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"

BAD_KEY = "sk-not-a-key"
assert BAD_KEY not in (USER_KEY, BROKE_KEY)


class Weather(pydantic.BaseModel):
    city: str
    temp_c: int


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The stand-in's base URL and the chat bodies it received."""
    app = web.Application()
    bodies: list[dict[str, Any]] = []
    app[BODIES] = bodies
    app.router.add_post("/v1/chat/completions", _chat)
    with serve_in_thread(app, free_port()) as url:
        yield url, bodies


@pytest.fixture
def gw(upstream: tuple[str, list[dict[str, Any]]], tmp_path: Any) -> Iterator[Running]:
    running = Running(upstream[0], f"sqlite:///{tmp_path}/gw.db")
    yield running
    running.stop()


def last_body(upstream: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return upstream[1][-1]


# -- openai-python (the rest of its cells are in test_chat_completions.py, test_responses.py) --


def test_openai_chat_parse(gw: Running, upstream: Any) -> None:
    r = gw.client.chat.completions.parse(
        model="chat", messages=[{"role": "user", "content": "weather?"}], response_format=Weather
    )
    assert r.choices[0].message.parsed == Weather(city="Paris", temp_c=21)
    assert last_body(upstream)["response_format"]["json_schema"]["name"] == "Weather"


# -- openai-agents ---------------------------------------------------------------------------


@pytest.fixture
def agents() -> Any:
    mod = pytest.importorskip("agents")
    mod.set_tracing_disabled(True)
    return mod


def _run_agent(
    agents: Any, base_url: str, api: str, text: str, key: str = USER_KEY, **kw: Any
) -> Any:
    """Runner.run on a fresh client in one event loop, closing the client after."""

    async def go() -> Any:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
            model = _MODELS[api](agents)("chat", openai_client=client)
            agent = agents.Agent(name="a", model=model, **kw)
            return await agents.Runner.run(agent, text)

    return asyncio.run(go())


_MODELS = {
    "responses": lambda agents: agents.OpenAIResponsesModel,
    "chat": lambda agents: agents.OpenAIChatCompletionsModel,
}


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_agents_plain(agents: Any, gw: Running, upstream: Any, api: str) -> None:
    result = _run_agent(agents, gw.base_url, api, "hello there", instructions="Be brief.")
    assert result.final_output.strip() == "echo: hello there"
    msgs = last_body(upstream)["messages"]
    assert msgs[0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_agents_stream(agents: Any, gw: Running, api: str) -> None:
    async def go() -> tuple[str, Any]:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=USER_KEY) as client:
            agent = agents.Agent(name="a", model=_MODELS[api](agents)("chat", openai_client=client))
            run = agents.Runner.run_streamed(agent, "hello stream")
            deltas = []
            async for ev in run.stream_events():
                data = getattr(ev, "data", None)
                if ev.type == "raw_response_event" and data.type == "response.output_text.delta":
                    deltas.append(data.delta)
            return "".join(deltas), run.final_output

    text, final = asyncio.run(go())
    assert text.strip() == "echo: hello stream"
    assert final.strip() == "echo: hello stream"


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_agents_function_tool(agents: Any, gw: Running, upstream: Any, api: str) -> None:
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    result = _run_agent(agents, gw.base_url, api, "weather in Paris?", tools=[get_weather])
    assert calls == ["Paris"]
    assert result.final_output.strip() == "weather: sunny in Paris"
    last = last_body(upstream)["messages"][-1]
    assert last["role"] == "tool" and last["tool_call_id"] == "call_1"


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_agents_structured_output(agents: Any, gw: Running, upstream: Any, api: str) -> None:
    result = _run_agent(agents, gw.base_url, api, "weather?", output_type=Weather)
    assert result.final_output == Weather(city="Paris", temp_c=21)
    assert last_body(upstream)["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_agents_bad_key_is_auth_error(agents: Any, gw: Running, api: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        _run_agent(agents, gw.base_url, api, "hello", key=BAD_KEY)


# -- langchain-openai ------------------------------------------------------------------------


@pytest.fixture
def lc() -> Any:
    return pytest.importorskip("langchain_openai")


def _chat_model(lc: Any, gw: Running, key: str = USER_KEY, **kw: Any) -> Any:
    return lc.ChatOpenAI(model="chat", base_url=gw.base_url, api_key=key, max_retries=0, **kw)


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_langchain_invoke(lc: Any, gw: Running, upstream: Any, responses: bool) -> None:
    llm = _chat_model(lc, gw, use_responses_api=responses)
    msg = llm.invoke([("system", "Be brief."), ("human", "hello there")])
    assert msg.text.strip() == "echo: hello there"
    assert msg.usage_metadata["input_tokens"] == 10
    assert msg.usage_metadata["output_tokens"] == 5
    assert last_body(upstream)["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_langchain_stream(lc: Any, gw: Running, responses: bool) -> None:
    llm = _chat_model(lc, gw, use_responses_api=responses, stream_usage=True)
    chunks = list(llm.stream("hello stream"))
    assert len(chunks) > 1
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.text.strip() == "echo: hello stream"
    assert total.usage_metadata["total_tokens"] == 15


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_langchain_bind_tools(lc: Any, gw: Running, upstream: Any, responses: bool) -> None:
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = _chat_model(lc, gw, use_responses_api=responses).bind_tools([get_weather])
    first = llm.invoke("weather in Paris?")
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert last_body(upstream)["tools"][0]["function"]["name"] == "get_weather"
    call = first.tool_calls[0]
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    second = llm.invoke([("human", "weather in Paris?"), first, result])
    assert second.text.strip() == "weather: sunny in Paris"
    streamed = list(llm.stream("weather in Paris?"))
    total = streamed[0]
    for c in streamed[1:]:
        total = total + c
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_langchain_structured_output(lc: Any, gw: Running, upstream: Any, responses: bool) -> None:
    llm = _chat_model(lc, gw, use_responses_api=responses).with_structured_output(Weather)
    assert llm.invoke("weather?") == Weather(city="Paris", temp_c=21)
    assert last_body(upstream)["response_format"]["type"] == "json_schema"


def test_langchain_embeddings(lc: Any, gateway: RunningGateway) -> None:
    emb = lc.OpenAIEmbeddings(
        model="emb",
        base_url=gateway.base_url,
        api_key=USER_KEY,
        max_retries=0,
        check_embedding_ctx_length=False,  # no tiktoken download
    )
    assert emb.embed_documents(["a", "b"]) == [[0.5, -0.5], [0.5, -0.5]]
    assert emb.embed_query("a") == [0.5, -0.5]


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_langchain_bad_key_is_auth_error(lc: Any, gw: Running, responses: bool) -> None:
    llm = _chat_model(lc, gw, key=BAD_KEY, use_responses_api=responses)
    with pytest.raises(openai.AuthenticationError):
        llm.invoke("hello")
