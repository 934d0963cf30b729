"""CPU cost of the Responses API translation per request, side by side with the chat path.

Both sides do the wire work the gateway does per request on the same conversation (an
instruction, a user turn, a tool call and its result, two function tools, a JSON schema):

    chat       parse the chat body, check it, the router's prompt text (the reply passes through)
    responses  parse the Responses body, check it, translate it to chat (translate-in), the
               router's prompt text, parse the chat reply, build the Response, serialize it
               (translate-out)
    stream     the Responses events of a 200-chunk streamed chat reply (ResponseEvents)

No network and no upstream: CPU time (time.process_time) over many repetitions, best of 5.
The goal for translate-in + translate-out is <= 100 us per request.

    python bench/responses_translation.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import orjson

from ownlm.gateway.responses_stream import ResponseEvents
from ownlm.gateway.responses_wire import chat_request, check_responses_request, response_from_chat
from ownlm.gateway.wire import check_chat_request, parse_json_object, prompt_text

TOOLS = [
    {
        "type": "function",
        "name": name,
        "description": f"{name} of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    }
    for name in ("get_weather", "get_time")
]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
QUESTION = "What is the weather in Paris, and should I take an umbrella this afternoon? " * 3
RESPONSES_BODY = {
    "model": "chat",
    "instructions": "You are a helpful travel assistant. Answer briefly and cite the tool.",
    "input": [
        {"role": "user", "content": QUESTION},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "18 C, rain at 15:00"},
    ],
    "tools": TOOLS,
    "text": {"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA}},
    "max_output_tokens": 300,
    "temperature": 0.3,
    "metadata": {"app": "bench"},
}
ANSWER = '{"answer": "Take an umbrella: rain is expected at 15:00 (get_weather).", ' * 4
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4.1",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 180, "completion_tokens": 60, "total_tokens": 240},
}


def chat_side(raw_body: bytes) -> None:
    body = parse_json_object(raw_body)
    check_chat_request(body)
    prompt_text(body["messages"])


def responses_side(raw_body: bytes, raw_reply: bytes) -> None:
    body = parse_json_object(raw_body)
    check_responses_request(body)
    chat = chat_request(body, [])
    prompt_text(chat["messages"])
    response = response_from_chat(orjson.loads(raw_reply), body, "resp_" + "0" * 32, 0.0)
    orjson.dumps(response)


def stream_side(chunks: list[bytes]) -> None:
    events = ResponseEvents(RESPONSES_BODY, "resp_" + "0" * 32, 0.0)
    events.start()
    for c in chunks:
        events.feed(c)
    events.finish()


def cpu_us(fn: Callable[[], None], n: int) -> float:
    """Best of 5 runs of n calls: CPU microseconds per call."""
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=5000, help="calls per run")
    args = ap.parse_args()
    raw_responses = orjson.dumps(RESPONSES_BODY)
    raw_chat = orjson.dumps(chat_request(RESPONSES_BODY, []))
    raw_reply = orjson.dumps(COMPLETION)
    head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    chunks = [
        b"data: "
        + orjson.dumps({**head, "choices": [{"index": 0, "delta": {"content": f"word{i} "}}]})
        + b"\n\n"
        for i in range(200)
    ]
    chat = cpu_us(lambda: chat_side(raw_chat), args.n)
    resp = cpu_us(lambda: responses_side(raw_responses, raw_reply), args.n)
    stream = cpu_us(lambda: stream_side(chunks), max(args.n // 50, 20))
    print(f"request {len(raw_responses)} B, reply {len(raw_reply)} B, CPU per request:")
    print(f"  chat wire work            {chat:7.1f} us")
    print(f"  responses wire work       {resp:7.1f} us  (translation adds {resp - chat:.1f} us)")
    print(f"  responses stream, 200 ch  {stream:7.1f} us  ({stream / 200:.2f} us per chunk)")
    verdict = "within" if resp - chat <= 100 else "OVER"
    print(f"goal: translation <= 100 us per request: {verdict}")


if __name__ == "__main__":
    main()
