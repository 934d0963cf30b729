"""`ownlm loop` end to end on a tiny model: export, SFT, register, gate, promote; and resume.

The tiny random model cannot gain, so the gate thresholds are set to let it through (min gain 0
with the significance rule off is refused by GateConfig, so a general suite it cannot lose on and
a negative-free rule are used: the point is the plumbing, not the figures).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ownlm.config import validate_config
from ownlm.errors import ConfigError, GateRejected
from ownlm.loop import LoopConfig, run_loop
from ownlm.store.registry import Registry
from ownlm.store.schema import Feedback, Trace
from ownlm.store.trace_store import TraceStore


def fill_store(url: str, n: int = 40) -> None:
    store = TraceStore(url)
    traces = []
    for i in range(n):
        a, b = i % 7, i % 5
        traces.append(
            Trace(
                created_at=1_767_225_600.0 + i,
                alias="app",
                variant="strong",
                upstream="mock",
                upstream_model="strong",
                request={"model": "app", "messages": [{"role": "user", "content": f"{a} + {b} ="}]},
                response={
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"Answer: {a + b}"},
                            "finish_reason": "stop",
                        }
                    ],
                },
                session=f"s{i}",
                metadata={"answer": str(a + b)},
            )
        )
    store.write_traces(traces)
    for t in traces:
        store.add_feedback(Feedback(trace_id=t.trace_id, thumbs=1))


def loop_config(tmp_path: Path, model_dir: Path, **extra: Any) -> LoopConfig:
    data = {
        "store_url": f"sqlite:///{tmp_path}/app.db",
        "work_dir": str(tmp_path / "loop"),
        "name": "app-own",
        "alias": "app",
        "base_model": str(model_dir),
        "export": {"kinds": ["sft", "rl"], "eval_fraction": 0.25, "rl": {"verifier": "exact"}},
        "sft": {
            "steps": 2,
            "batch_size": 2,
            "micro_batch_size": 2,
            "lora": None,
            "eval_every_steps": 2,
            "save_every_steps": 1,
            "progress": False,
        },
        "gate": {
            "general": [{"name": "g", "env": {"task": "chain_sum"}, "n_problems": 2}],
            "max_new_tokens": 2,
            "min_domain_gain": 0.0,
            "require_significant_gain": True,
            "max_general_loss": 1.0,
        },
        "domain_problems": 4,
        "promote": {"incumbent": "strong", "canary_weight": 0.2},
        "threads": 1,
    }
    data.update(extra)
    return validate_config(LoopConfig, data, "loop.yaml")


def test_loop_config_errors_name_the_stage(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loop config: sft: unknown key 'max_step'"):
        loop_config(tmp_path, tmp_path, sft={"max_step": 2})
    with pytest.raises(ConfigError, match="sft.run_dir is set by the loop itself"):
        loop_config(tmp_path, tmp_path, sft={"run_dir": "x"})
    with pytest.raises(ConfigError, match="would train nothing"):
        loop_config(tmp_path, tmp_path, sft=None, grpo=None)


def test_empty_store_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    from ownlm.errors import OwnlmError

    cfg = loop_config(tmp_path, tiny_model_dir)
    TraceStore(cfg.store_url)
    with pytest.raises(OwnlmError, match="no"):
        run_loop(cfg)


def test_loop_killed_mid_way_resumes_without_redoing(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = loop_config(tmp_path, tiny_model_dir)
    fill_store(cfg.store_url)
    import ownlm.eval.gate as gate

    real_gate = gate.run_gate

    def killed(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt  # the process dies in the gate, after register

    monkeypatch.setattr(gate, "run_gate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(cfg)
    state = json.loads((tmp_path / "loop" / "loop_state.json").read_text())
    assert {"export", "sft", "register"} <= set(state["done"])
    manifest = tmp_path / "loop" / "cycle-1" / "data" / "manifest.json"
    exported_at = manifest.stat().st_mtime_ns

    calls = []

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real_gate(*a, **k)

    monkeypatch.setattr(gate, "run_gate", counting)
    import ownlm.train.sft as sft

    monkeypatch.setattr(sft, "train_sft", lambda *_: pytest.fail("SFT ran again"))
    with pytest.raises(GateRejected, match="the gate rejected app-own@1: FAIL: domain gain CI"):
        run_loop(cfg)  # a tiny random model cannot gain
    assert calls == [1]
    assert manifest.stat().st_mtime_ns == exported_at  # export not redone
    reg = Registry(TraceStore(cfg.store_url))
    versions = reg.store.list_model_versions("app-own")
    assert [v.version for v in versions] == [1]  # registered once
    assert versions[0].parent == str(tiny_model_dir)
    assert versions[0].lineage["recipes"] == ["sft"]
    assert versions[0].status == "rejected"
    assert reg.current("app") is None  # nothing deployed
    state = json.loads((tmp_path / "loop" / "loop_state.json").read_text())
    assert state["cycle"] == 2 and state["done"] == {}


def test_approved_candidate_is_promoted_once(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = loop_config(tmp_path, tiny_model_dir)
    fill_store(cfg.store_url)
    import ownlm.eval.gate as gate
    from ownlm.store.schema import GateDecision

    def approve(gcfg: Any) -> Any:
        reg = Registry(TraceStore(gcfg.store_url))
        name, version = gcfg.candidate.split("@")
        reg.record_gate(GateDecision(name, int(version), gcfg.incumbent, True, ["pass"], {}))
        return gate.GateResult(
            promote=True,
            reasons=["pass"],
            metrics={},
            candidate=gcfg.candidate,
            incumbent=gcfg.incumbent,
        )

    monkeypatch.setattr(gate, "run_gate", approve)
    out = run_loop(cfg)
    reg = Registry(TraceStore(cfg.store_url))
    live = reg.current("app")
    assert live is not None and live.arms == {"strong": 0.8, "app-own-v1": 0.2}
    assert out["deployment"]["deployment"] == live.seq
    assert reg.get("app-own@1").status == "canary"
    assert len(reg.deployments("app")) == 2  # baseline + canary


def test_replay_general_adds_the_start_models_right_answers_to_sft(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = loop_config(
        tmp_path, tiny_model_dir, replay_general=6, promote=None,
        gate={**loop_config(tmp_path, tiny_model_dir).gate, "engine": "torch"},
    )  # fmt: skip
    fill_store(cfg.store_url)
    import ownlm.eval.accuracy as accuracy
    import ownlm.eval.gate as gate

    seen: list[Any] = []

    def fake_eval(ecfg: Any, **kw: Any) -> Any:
        seen.append(ecfg)
        rows = [
            {"correct": i % 2 == 0, "completion": f"Answer: {i}"} for i in range(ecfg.n_problems)
        ]
        Path(ecfg.out_path).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return accuracy.EvalReport.model_construct(rows_path=ecfg.out_path)

    monkeypatch.setattr(accuracy, "run_eval", fake_eval)
    monkeypatch.setattr(
        gate, "run_gate",
        lambda g: gate.GateResult(promote=False, reasons=["FAIL: test"], metrics={},
                                  candidate=g.candidate, incumbent=g.incumbent),
    )  # fmt: skip
    with pytest.raises(GateRejected):
        run_loop(cfg)
    assert [(e.split, e.n_problems, e.env.task) for e in seen] == [("train", 6, "chain_sum")]
    replay = (tmp_path / "loop" / "cycle-1" / "data" / "sft_replay.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in replay]
    assert len(rows) == 3  # the right answers of 6
    assert [m["role"] for m in rows[0]["messages"]][-2:] == ["user", "assistant"]
    assert rows[0]["messages"][-1]["content"] == "Answer: 0"
