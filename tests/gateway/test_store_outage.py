"""A store outage under the gateway: replies keep coming, /health says degraded with the
spill's size, feedback gets a 503 without SQL, and when the store is back every trace is in it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from sqlalchemy.exc import OperationalError

from ownlm.store.trace_store import database_failure
from tests.gateway.conftest import RunningGateway
from tests.store.test_spill import Outage, wait_until

MSG = [{"role": "user", "content": "hello there"}]


def health(gateway: RunningGateway) -> dict[str, Any]:
    with urllib.request.urlopen(gateway.root_url + "/health", timeout=5) as resp:
        return json.loads(resp.read())


def test_no_acknowledged_trace_is_lost_to_a_store_outage(gateway: RunningGateway) -> None:
    gw = gateway.app.app
    assert health(gateway)["traces"]["spilled"] == 0
    outage = Outage(gw.store)
    outage.down = True
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.user_key, max_retries=0) as c:
        ids = []
        for _ in range(10):
            raw = c.chat.completions.with_raw_response.create(model="chat", messages=MSG)
            assert raw.parse().choices[0].message.content == "echo: hello there"
            ids.append(raw.headers["x-ownlm-trace-id"])
        wait_until(lambda: health(gateway)["traces"]["spilled"] == 10)
        h = health(gateway)
        assert h["status"] == "degraded"
        assert h["traces"]["store_error"] == "Exception: the database cannot be reached"
        assert h["traces"]["spill_bytes"] > 0 and h["traces"]["failed"] == 0
        gw.writer.feedback_wait_s = 0.2
        with pytest.raises(openai.APIStatusError) as info:
            c.post("/feedback", body={"trace_id": ids[0], "thumbs": 1}, cast_to=dict[str, Any])
        assert info.value.status_code == 503
        for leak in ("INSERT", "secret", "127.0.0.1"):
            assert leak not in info.value.message
        outage.down = False
        t0 = time.monotonic()
        wait_until(lambda: health(gateway)["status"] == "ok")
        assert time.monotonic() - t0 < 5.0  # replayed within a few replay intervals
        c.post("/feedback", body={"trace_id": ids[0], "thumbs": 1}, cast_to=dict[str, Any])
    assert all(gw.store.get_trace(i) is not None for i in ids)
    assert health(gateway)["traces"]["spilled"] == 0


def test_any_endpoint_answers_a_store_failure_with_a_plain_503(gateway: RunningGateway) -> None:
    gw = gateway.app.app

    def refuse(*args: Any) -> None:
        raise database_failure(
            OperationalError("INSERT INTO api_keys ...", {"name": "k"}, Exception("disk is full"))
        )

    gw.store.create_key = refuse
    req = urllib.request.Request(
        gateway.root_url + "/admin/keys",
        data=json.dumps({"name": "new"}).encode(),
        headers={
            "authorization": f"Bearer {gateway.admin_key}",
            "content-type": "application/json",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 503
    body = json.loads(info.value.read())["error"]
    assert body["message"] == ("the store failed: Exception: the disk is full or failing; retry")
