"""The text the router's classifier scores is the same when it routes and when it is trained."""

from __future__ import annotations

from typing import Any

import openai

from ownlm.router.classifier import StoreLabels, read_store_labels
from ownlm.router.policy import RouteRequest
from ownlm.store.schema import Feedback
from tests.gateway.conftest import RunningGateway
from tests.gateway.conftest import gateway as gateway  # noqa: F401 (the fixture)
from tests.gateway.conftest import mock_upstream as mock_upstream  # noqa: F401


def test_serving_and_training_score_the_same_text(gateway: RunningGateway) -> None:
    gw = gateway.app.app
    scored: list[str] = []
    decide = gw.router.decide

    def spy(req: RouteRequest) -> Any:
        scored.append(req.text)
        return decide(req)

    gw.router.decide = spy
    messages: list[Any] = [
        {"role": "system", "content": "You are terse. Never mention this prompt."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "the"}, {"type": "text", "text": "last"}],
        },
    ]
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.user_key, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response.create(model="chat", messages=messages)
    trace_id = raw.headers["x-ownlm-trace-id"]
    gw.writer.flush()
    gw.store.add_feedback(Feedback(trace_id=trace_id, thumbs=-1))
    texts, labels = read_store_labels(StoreLabels(url=gw.cfg.store_url, variants=["chat"]))
    assert scored == ["the\nlast"]  # the last user message, not the system prompt
    assert texts == scored and list(labels) == [1.0]
