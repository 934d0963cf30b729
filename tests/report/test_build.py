"""build_report on the tiny store of conftest.py: every figure worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownlm.cli import main
from ownlm.config import validate_config
from ownlm.errors import ConfigError, DataError
from ownlm.report.build import ModelPrice, ReportConfig, build_report
from ownlm.store.registry import Registry
from ownlm.store.schema import Deployment, ServedModel, Trace
from ownlm.store.trace_store import TraceStore

STRONG = {"strong": ModelPrice(in_usd_per_mtok=2.5, out_usd_per_mtok=10.0)}


def cfg(url: str, **kw: object) -> ReportConfig:
    base: dict[str, object] = dict(store_url=url, own_models=["mini"], value_per_success_usd=0.1)
    return ReportConfig.model_validate({**base, **kw})


def test_totals_per_model_and_route(tiny_store_url: str) -> None:
    r = build_report(cfg(tiny_store_url, prices=STRONG))
    t = r.total
    # the embeddings trace is left out: 4 chat traces, 7000 tokens
    assert (t.requests, t.tokens) == (4, 7000)
    assert t.value_usd == pytest.approx(0.40)  # t1: 0.10 per success, t3: its value 0.30
    assert t.tfp_usd_per_mtok == pytest.approx(400 / 7)  # 0.40 USD / 7000 tokens * 1e6
    assert t.successes == 2 and t.rated == 3 and t.success_rate == pytest.approx(2 / 3)
    assert t.cost_per_success_usd == pytest.approx(0.0075)  # 0.015 / 2
    assert t.own_request_share == 0.5 and t.own_token_share == pytest.approx(4 / 7)
    # all on strong: t1 + t2 0.015, t3 0.005 + 0.01, t4 0.00125 + 0.005 = 0.03625
    assert r.reference_variant == "strong"  # the only priced model
    assert t.reference_cost_usd == pytest.approx(0.03625)
    assert t.savings_usd == pytest.approx(0.02125)
    strong, mini = r.by_model["strong"], r.by_model["mini"]
    assert strong.latency_p50_ms == 200.0 and strong.latency_p95_ms == pytest.approx(290.0)
    assert strong.success_rate == 0.5 and mini.success_rate == 1.0
    assert mini.savings_usd == pytest.approx(0.02125)  # the own model's traces saved it all
    assert r.by_route["search"].requests == 1 and r.by_route["chat"].tokens == 6000
    assert r.own_models == ["mini"]


def test_time_buckets_and_split(tiny_store_url: str) -> None:
    r = build_report(cfg(tiny_store_url, bucket="hour", split_at_variant="mini"))
    assert [p.total.requests for p in r.by_time] == [2, 2]
    assert r.by_time[1].start - r.by_time[0].start == 3600
    assert [p.total.own_request_share for p in r.by_time] == [0.0, 1.0]
    assert sorted(r.by_time[1].by_model) == ["mini"]
    assert r.split is not None
    assert r.split.before.tfp_usd_per_mtok == pytest.approx(0.10 / 3000 * 1e6)
    assert r.split.after.tfp_usd_per_mtok == pytest.approx(0.30 / 4000 * 1e6)
    # each half's latency is its own traces': 100 and 300 ms before, 50 and 70 after
    assert (r.split.before.latency_p50_ms, r.split.after.latency_p50_ms) == (200.0, 60.0)
    # 2 traces in 2 hours: auto picks minutes
    assert build_report(cfg(tiny_store_url)).bucket == "minute"


def test_own_serving_cost_and_a_window(tiny_store_url: str) -> None:
    r = build_report(cfg(tiny_store_url, prices=STRONG, own_serving_usd_per_mtok=1.0))
    assert r.total.cost_usd == pytest.approx(0.019)  # + 4000 own tokens at 1 USD per 1M
    first = r.first_trace_at
    later = build_report(cfg(tiny_store_url, since=first + 1800))
    assert later.total.requests == 2 and later.total.own_request_share == 1.0


def test_experiment_arms(tiny_store_url: str) -> None:
    arms = {a.arm: a for a in build_report(cfg(tiny_store_url)).experiments}
    assert arms["strong"].requests == 2 and arms["strong"].traffic_share == pytest.approx(2 / 3)
    assert arms["strong"].success_rate == 0.5 and arms["strong"].cost_per_success_usd == 0.015
    assert arms["mini"].reward_mean == pytest.approx(0.9) and arms["mini"].weight == 0.5


def test_own_models_and_prices_from_what_the_gateway_recorded(tiny_store_url: str) -> None:
    store = TraceStore(tiny_store_url)
    store.write_served_models(
        [ServedModel("strong", "openai", 2.5, 10.0), ServedModel("mini", "local")]
    )
    store.close()
    r = build_report(ReportConfig(store_url=tiny_store_url))
    assert r.own_models == ["mini"] and r.total.savings_usd == pytest.approx(0.02125)


def test_the_old_gateway_config_key_says_what_replaced_it() -> None:
    with pytest.raises(ConfigError, match="gateway_config was removed: the report reads"):
        validate_config(ReportConfig, {"gateway_config": "ownlm.yaml"}, "report")


def test_own_models_from_the_deployment_log(tiny_store_url: str) -> None:
    store = TraceStore(tiny_store_url)
    assert build_report(ReportConfig(store_url=tiny_store_url)).own_models == []
    dep = Deployment("chat", {"mini": 1.0}, "strong", "promoted", models={"mini": "runs/sft"})
    Registry(store).deploy(dep)
    store.close()
    r = build_report(ReportConfig(store_url=tiny_store_url))
    assert r.own_models == ["mini"] and r.total.own_request_share == 0.5


def test_empty_store_says_how_to_capture_traffic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    TraceStore(url).close()
    with pytest.raises(DataError, match=r"no chat traces in the store .*ownlm serve"):
        build_report(ReportConfig(store_url=url))


def test_unknown_or_unpriced_reference_variant(tiny_store_url: str) -> None:
    with pytest.raises(ConfigError, match=r"'strnog' is not a known variant; known: mini, strong"):
        build_report(cfg(tiny_store_url, reference_variant="strnog"))
    with pytest.raises(ConfigError, match=r"'mini' has no price; set prices.mini"):
        build_report(cfg(tiny_store_url, reference_variant="mini"))
    with pytest.raises(ConfigError, match="split_at_variant 'big' has no traces"):
        build_report(cfg(tiny_store_url, split_at_variant="big"))


def test_too_many_time_points_is_refused(tiny_store_url: str, tmp_path: Path) -> None:
    store = TraceStore(tiny_store_url)
    store.write_traces([Trace(created_at=1_699_999_200.0 + 3 * 86400, variant="mini")])
    store.close()
    # 3 days of minutes = 4321 points
    with pytest.raises(ConfigError, match="bucket=minute gives 4321 time points"):
        build_report(cfg(tiny_store_url, bucket="minute"))
    # auto picks hours; only the 3 hours with traces are points
    assert [p.total.requests for p in build_report(cfg(tiny_store_url)).by_time] == [2, 2, 1]


def test_cli_prints_a_table_and_writes_html_and_json(
    tiny_store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, js = tmp_path / "r" / "dash.html", tmp_path / "r.json"
    args = ["report", "--set", f"store_url={tiny_store_url}", "--set", "own_models=[mini]"]
    for key, price in (("in", 2.5), ("out", 10)):
        args += ["--set", f"prices.strong.{key}_usd_per_mtok={price}"]
    assert main([*args, "--set", f"out={out}", "--set", f"json_out={js}"]) == 0
    text = capsys.readouterr().out
    assert "own-model share 50.0% of requests" in text and "savings vs all-strong: $0.0212" in text
    assert "mini*" in text
    data = json.loads(js.read_text())
    assert data["total"]["requests"] == 4 and data["by_model"]["mini"]["successes"] == 1
    assert out.read_text().startswith("<!doctype html>")
    assert main(["report", "--set", f"store_url={tiny_store_url}", "--set", "bukket=hour"]) == 2
    assert "unknown key 'bukket'; did you mean 'bucket'?" in capsys.readouterr().err


def test_responses_api_traffic_counts_like_chats(tiny_store_url: str) -> None:
    before = build_report(cfg(tiny_store_url)).total
    store = TraceStore(tiny_store_url)
    tr = Trace(
        endpoint="responses", variant="mini", upstream="local", alias="chat",
        prompt_tokens=100, completion_tokens=50, latency_ms=40.0,
    )  # fmt: skip
    store.write_traces([tr, Trace(endpoint="embeddings", variant="strong", prompt_tokens=7)])
    store.close()
    after = build_report(cfg(tiny_store_url)).total
    assert after.requests == before.requests + 1  # the Responses call; the embedding is left out
    assert after.tokens == before.tokens + 150 and after.own_requests == before.own_requests + 1
