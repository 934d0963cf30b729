"""The gate's rules on hand-made outcomes, config conflicts, and one tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownlm.config import validate_config
from ownlm.errors import ConfigError
from ownlm.eval.gate import GateConfig, decide

DOMAIN = {"name": "app", "env": {"kind": "reasoning_gym", "task": "chain_sum"}}


def cfg(**kw: object) -> GateConfig:
    return validate_config(GateConfig, {"candidate": "c", "domain": DOMAIN, **kw}, "test")


def outcomes(n_correct: int, n: int = 100) -> list[bool]:
    return [i < n_correct for i in range(n)]


def test_refuses_a_candidate_that_loses_3_general_points() -> None:
    # domain 0.20 -> 0.60 (+40 points, significant); general 0.50 -> 0.47 (-3 points)
    promote, reasons, m = decide((outcomes(20), outcomes(60)), (outcomes(50), outcomes(47)), cfg())
    assert not promote
    assert m["general_diff"] == pytest.approx(-0.03)
    assert any(r.startswith("FAIL: general loss +0.030") for r in reasons), reasons
    assert any(r.startswith("pass: domain gain +0.400") for r in reasons), reasons


def test_accepts_a_candidate_within_bounds() -> None:
    # domain +40 points; general loses 2 points: exactly the allowed loss
    promote, reasons, m = decide((outcomes(20), outcomes(60)), (outcomes(50), outcomes(48)), cfg())
    assert promote, reasons
    assert m["domain_diff_low"] > 0
    assert all(r.startswith("pass") for r in reasons)


def test_refuses_a_small_or_insignificant_gain() -> None:
    promote, reasons, _ = decide((outcomes(20), outcomes(28)), (outcomes(50), outcomes(50)), cfg())
    assert not promote and any("FAIL: domain gain +0.080" in r for r in reasons)
    # +10 points on 20 problems: big enough, but its CI reaches below zero
    promote, reasons, _ = decide(
        (outcomes(4, 20), outcomes(6, 20)), (outcomes(50), outcomes(50)), cfg()
    )
    assert not promote and any(r.startswith("FAIL: domain gain CI low") for r in reasons)


def test_impossible_gain_is_named() -> None:
    promote, reasons, _ = decide((outcomes(95), outcomes(100)), (outcomes(50), outcomes(50)), cfg())
    assert not promote
    assert any("impossible; lower min_domain_gain" in r for r in reasons)


def test_conflicting_thresholds_are_refused() -> None:
    with pytest.raises(ConfigError, match="promotes any candidate"):
        cfg(min_domain_gain=0.0, require_significant_gain=False)
    with pytest.raises(ConfigError, match="max_general_loss"):
        cfg(max_general_loss=-0.01)
    with pytest.raises(ConfigError, match="suite names must differ"):
        cfg(general=[dict(DOMAIN)])
    with pytest.raises(ConfigError, match="did you mean 'min_domain_gain'"):
        cfg(min_domain_gian=0.1)


def test_registry_reference_needs_a_store() -> None:
    from ownlm.eval.gate import resolve_model

    with pytest.raises(ConfigError, match="set store_url"):
        resolve_model("app-own@1", None)


def test_run_gate_on_tiny_models_writes_and_reuses_rows(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from ownlm.eval.gate import run_gate

    small = {"name": "general_small", "env": {"task": "chain_sum"}, "n_problems": 4}
    c = validate_config(
        GateConfig,
        {
            "candidate": str(tiny_model_dir),
            "incumbent": str(tiny_model_dir),
            "domain": {**DOMAIN, "n_problems": 4},
            "general": [small],
            "max_new_tokens": 4,
            "out_dir": str(tmp_path / "gate"),
        },
        "test",
    )
    result = run_gate(c)
    assert not result.promote  # the same model cannot gain
    decision = json.loads((tmp_path / "gate" / "decision.json").read_text())
    assert decision["metrics"]["domain_diff"] == 0.0
    rows = sorted((tmp_path / "gate" / "rows").iterdir())
    assert len(rows) == 2  # same model: incumbent and candidate share rows
    mtimes = [p.stat().st_mtime_ns for p in rows]
    run_gate(c)
    assert [p.stat().st_mtime_ns for p in rows] == mtimes  # reused, not evaluated again


def write_prompt_set(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            row = {
                "id": f"p{i}",
                "messages": [{"role": "user", "content": f"question {i}?"}],
                "answer": str(i),
                "verifier": "exact",
                "metadata": {"served_variant": "paid", "served_answer": f"Answer: {i}"},
            }
            f.write(json.dumps(row) + "\n")


def routing_case(tmp_path: Path, wrong_in_fold0: int) -> tuple[bool, list[str], dict]:
    """Today's model right on all 200 problems; the candidate right everywhere but on
    `wrong_in_fold0` problems of one cross-fitting fold, where it is also most confident: the
    thresholds chosen on the other folds never saw those errors (a shift the check must catch)."""
    from ownlm.eval.gate import routing_rule
    from ownlm.eval.routing import fold_of

    ps = tmp_path / "rl_eval.jsonl"
    write_prompt_set(ps, 200)
    env = {"kind": "prompt_set", "train_path": str(ps), "test_path": str(ps)}
    c = cfg(domain={"name": "app", "env": env, "n_problems": 200})
    fold0 = [f"p{i}" for i in range(200) if fold_of(f"p{i}", 5) == 0]
    wrong = set(fold0[:wrong_in_fold0])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps(
                {"id": i, "correct": i not in wrong, "confidence": 0.95 if i in wrong else 0.9}
            )
            + "\n"
            for i in (f"p{k}" for k in range(200))
        )
    )
    return routing_rule(c, rows)


def test_refuses_a_candidate_whose_routed_quality_is_3_points_under_today(
    tmp_path: Path,
) -> None:
    ok, lines, m = routing_case(tmp_path, wrong_in_fold0=0)
    assert ok and m["routed_domain"] == 1.0 and m["routed_own_share"] == 1.0, lines
    assert m["routing_check_rows"] == 200  # every problem checked, each out of its own fold
    ok, lines, m = routing_case(tmp_path, wrong_in_fold0=7)
    assert not ok
    assert m["serving_domain"] == 1.0 and m["routed_diff"] <= -0.03
    assert lines[0].startswith("FAIL: routed domain 0.9"), lines
    # the served threshold, chosen on all 200, sees the errors and keeps them on the paid API
    assert m["routing_threshold"] > 0.95


def test_the_old_calibration_key_is_refused_naming_what_replaced_it() -> None:
    from ownlm.config import validate_config
    from ownlm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'calibration_fraction' in routing; .*folds"):
        validate_config(
            GateConfig,
            {
                "candidate": "m",
                "domain": {"name": "app", "env": {"kind": "reasoning_gym"}},
                "routing": {"calibration_fraction": 0.5},
            },
            "gate config",
        )
