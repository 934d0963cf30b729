"""instructor and litellm against a running gateway, run with the side venv's python.

    OWNLM_BASE_URL=http://127.0.0.1:8400/v1 OWNLM_KEY=sk-... OWNLM_BAD_KEY=sk-bad \\
        .venv-clients/bin/python tests/clients/py_clients.py

The gateway must serve a chat model `chat` and an embedding model `emb` (the stand-in upstream
of tests/gateway/test_clients_outside.py, which reads the output). Prints one JSON object on
its last line, one key per library and feature: what came back, or {"error": "<type>: <msg>"}.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from importlib.metadata import version
from typing import Any

# litellm reads its model price map from the network on import unless told not to
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import instructor  # noqa: E402
import litellm  # noqa: E402
import openai  # noqa: E402
import pydantic  # noqa: E402

litellm.suppress_debug_info = True  # its "Give Feedback" banner on every error
BASE_URL = os.environ["OWNLM_BASE_URL"]
KEY = os.environ["OWNLM_KEY"]
BAD_KEY = os.environ["OWNLM_BAD_KEY"]
ASK = [{"role": "user", "content": "weather in Paris?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


class Weather(pydantic.BaseModel):
    city: str
    temp_c: int


def error_name(err: BaseException) -> dict[str, Any]:
    """An expected error as data: its class and module, its HTTP status, what it wraps."""
    cause = err.__cause__
    return {
        "raised": type(err).__name__,
        "module": type(err).__module__,
        "status": getattr(err, "status_code", None),
        "cause": type(cause).__name__ if cause else None,
        "cause_module": type(cause).__module__ if cause else None,
        "message": str(err)[:300],
    }


# -- instructor -------------------------------------------------------------------------------


def instructor_client(mode: Any, key: str = KEY) -> Any:
    return instructor.from_openai(
        openai.OpenAI(base_url=BASE_URL, api_key=key, max_retries=0), mode=mode
    )


def instructor_plain() -> Any:
    r = instructor_client(instructor.Mode.TOOLS).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hello there"}], response_model=None
    )
    return {"text": r.choices[0].message.content}


def instructor_structured(mode_name: str) -> Callable[[], Any]:
    """response_model=Weather in one mode; `raw` is the object type of the reply instructor
    parsed (a chat completion, or a Response in the RESPONSES modes)."""

    def run() -> Any:
        client = instructor_client(getattr(instructor.Mode, mode_name))
        w, raw = client.chat.completions.create_with_completion(
            model="chat", messages=ASK, response_model=Weather, max_retries=0
        )
        return {"parsed": w.model_dump(), "raw": raw.object}

    return run


def instructor_stream() -> Any:
    client = instructor_client(instructor.Mode.TOOLS)
    partials = [
        p.model_dump()
        for p in client.chat.completions.create_partial(
            model="chat", messages=ASK, response_model=Weather, max_retries=0
        )
    ]
    return {"partials": len(partials), "last": partials[-1] if partials else None}


class get_weather(pydantic.BaseModel):  # noqa: N801 - a tool's name is its class's name
    city: str


def instructor_tools() -> Any:
    """The model picks among the app's tools (PARALLEL_TOOLS): one object per call."""
    client = instructor_client(instructor.Mode.PARALLEL_TOOLS)
    calls = client.chat.completions.create(
        model="chat", messages=ASK, response_model=Iterable[get_weather], max_retries=0
    )
    return [[type(c).__name__, c.model_dump()] for c in calls]


def instructor_bad_key() -> Any:
    try:
        instructor_client(instructor.Mode.TOOLS, BAD_KEY).chat.completions.create(
            model="chat", messages=ASK, response_model=Weather, max_retries=0
        )
    except Exception as err:  # the type is what is tested
        return error_name(err)
    return {"raised": None}


# -- litellm ----------------------------------------------------------------------------------

LL = {"model": "openai/chat", "api_base": BASE_URL, "api_key": KEY}


def litellm_plain() -> Any:
    r = litellm.completion(**LL, messages=[{"role": "user", "content": "hello there"}])
    return {"text": r.choices[0].message.content, "usage": r.usage.total_tokens}


def litellm_stream() -> Any:
    chunks = list(
        litellm.completion(
            **LL,
            messages=[{"role": "user", "content": "hello stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return {"chunks": len(chunks), "text": text}


def litellm_tools() -> Any:
    first = litellm.completion(**LL, messages=ASK, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    second = litellm.completion(
        **LL,
        messages=[
            *ASK,
            first.choices[0].message.model_dump(),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny in Paris"},
        ],
        tools=[WEATHER_TOOL],
    )
    chunks = list(litellm.completion(**LL, messages=ASK, tools=[WEATHER_TOOL], stream=True))
    streamed = litellm.stream_chunk_builder(chunks).choices[0].message.tool_calls[0]
    return {
        "call": [call.function.name, json.loads(call.function.arguments)],
        "finish": first.choices[0].finish_reason,
        "after": second.choices[0].message.content,
        "streamed": [streamed.function.name, json.loads(streamed.function.arguments)],
    }


def litellm_structured() -> Any:
    r = litellm.completion(**LL, messages=ASK, response_format=Weather)
    return Weather.model_validate_json(r.choices[0].message.content).model_dump()


def litellm_responses() -> Any:
    r = litellm.responses(**LL, input="hello there")
    tools = [{"type": "function", **WEATHER_TOOL["function"]}]
    called = litellm.responses(**LL, input="weather in Paris?", tools=tools)
    call = called.output[0]
    after = litellm.responses(
        **LL,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C"}],
        tools=tools,
    )
    return {
        "text": r.output[0].content[0].text,
        "status": r.status,
        "usage": r.usage.total_tokens,
        "call": [call.type, call.name, json.loads(call.arguments)],
        "after": after.output[0].content[0].text,
    }


def litellm_responses_stream() -> Any:
    events = list(litellm.responses(**LL, input="hello stream", stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    # litellm's event types are str enums: their value is the wire name
    return {"types": sorted({getattr(e.type, "value", e.type) for e in events}), "text": deltas}


def litellm_embedding() -> Any:
    r = litellm.embedding(model="openai/emb", api_base=BASE_URL, api_key=KEY, input=["a", "b"])
    return {"vectors": [d["embedding"] for d in r.data], "usage": r.usage.prompt_tokens}


def litellm_bad_key() -> Any:
    try:
        litellm.completion(**{**LL, "api_key": BAD_KEY}, messages=ASK, num_retries=0)
    except Exception as err:  # the type is what is tested
        return error_name(err)
    return {"raised": None}


FEATURES: dict[str, Callable[[], Any]] = {
    "instructor.plain": instructor_plain,
    "instructor.stream": instructor_stream,
    "instructor.tools": instructor_tools,
    "instructor.structured.TOOLS": instructor_structured("TOOLS"),
    "instructor.structured.JSON": instructor_structured("JSON"),
    "instructor.structured.JSON_SCHEMA": instructor_structured("JSON_SCHEMA"),
    "instructor.structured.RESPONSES_TOOLS": instructor_structured("RESPONSES_TOOLS"),
    "instructor.bad_key": instructor_bad_key,
    "litellm.plain": litellm_plain,
    "litellm.stream": litellm_stream,
    "litellm.tools": litellm_tools,
    "litellm.structured": litellm_structured,
    "litellm.responses": litellm_responses,
    "litellm.responses_stream": litellm_responses_stream,
    "litellm.embedding": litellm_embedding,
    "litellm.bad_key": litellm_bad_key,
}


def main() -> None:
    results: dict[str, Any] = {}
    for name, run in FEATURES.items():
        try:
            results[name] = run()
        except Exception as err:  # one feature's failure is its result; the others still run
            traceback.print_exc(file=sys.stderr)
            results[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
    results["versions"] = {"instructor": version("instructor"), "litellm": version("litellm")}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
