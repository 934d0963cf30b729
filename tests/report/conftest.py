"""Report fixtures: a tiny SQLite store whose figures are worked out by hand in the tests.

    trace  hour  variant  upstream  alias   prompt  completion  cost_usd  latency  feedback
    t1     0     strong   openai    chat    1000    500         0.0075    100      thumbs up
    t2     0     strong   openai    chat    1000    500         0.0075    300      thumbs down
    t3     1     mini     local     chat    2000    1000        0         50       score .9 value .3
    t4     1     mini     local     search  500     500         0         70       -

strong's price is 2.5 USD in / 10 USD out per 1M tokens (so t1's cost is 0.0025 + 0.005).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ownlm.store.schema import Experiment, Feedback, Trace
from ownlm.store.trace_store import TraceStore

T0 = 1_699_999_200.0  # a multiple of 3600 and 60


@pytest.fixture
def tiny_store_url(tmp_path: Path) -> str:
    """The URL of a store holding the four traces above, an experiment and a stray embedding."""
    url = f"sqlite:///{tmp_path}/ownlm.db"
    store = TraceStore(url)

    def trace(
        dt: float, variant: str, upstream: str, alias: str, pt: int, ct: int, **kw: Any
    ) -> Trace:
        return Trace(
            created_at=T0 + dt, variant=variant, upstream=upstream, alias=alias,
            prompt_tokens=pt, completion_tokens=ct, **kw,
        )  # fmt: skip

    t1 = trace(10, "strong", "openai", "chat", 1000, 500, cost_usd=0.0075, latency_ms=100.0)
    t2 = trace(20, "strong", "openai", "chat", 1000, 500, cost_usd=0.0075, latency_ms=300.0)
    t3 = trace(3610, "mini", "local", "chat", 2000, 1000, latency_ms=50.0)
    t4 = trace(3620, "mini", "local", "search", 500, 500, latency_ms=70.0)
    # not a chat trace: the report leaves it out
    emb = trace(30, "strong", "openai", "embed", 999, 0, endpoint="embeddings", cost_usd=1.0)
    for t, arm in ((t1, "strong"), (t2, "strong"), (t3, "mini")):
        t.experiment, t.arm = "mini-vs-strong", arm
    store.write_traces([t1, t2, t3, t4, emb])
    store.add_feedback(Feedback(t1.trace_id, thumbs=1))
    store.add_feedback(Feedback(t2.trace_id, thumbs=-1))
    store.add_feedback(Feedback(t3.trace_id, score=0.9, value=0.30))
    store.save_experiment(Experiment("mini-vs-strong", "chat", ["mini", "strong"], [0.5, 0.5]))
    store.close()
    return url
