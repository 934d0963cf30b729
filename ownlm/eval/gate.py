"""The promotion gate: a candidate must gain on the app's domain and not lose general ability.

    ownlm gate --set candidate=app-own@2 --set store_url=sqlite:///ownlm.db

Both models are evaluated greedily on the same problems: the domain suite (held out from the
app's traces, exported by `ownlm export`) and the general suite (a fixed mix of reasoning-gym
tasks by default). The rules, thresholds in config (defaults from DESIGN.md):

1. domain gain (candidate - incumbent accuracy) >= min_domain_gain (default +10 points);
2. with require_significant_gain, the gain's paired 95% CI lies above zero;
3. general loss (incumbent - candidate accuracy, pooled over the general suites) <= max_general_loss
   (default 2 points), judged on the point estimate: its CI is reported, but at the suite sizes a
   CPU can afford (~100 problems) the CI of a loss is +-8 points and could never be held under 2;
4. (routing, on by default) against what serves the app *now*: the answers in the traces (the
   paid API's, exported with the domain prompts) are scored with the app's verifier. The
   confidence threshold is calibrated on all domain problems (ownlm/eval/routing.py: the own
   model answers when sure, today's model the rest) and checked by cross-fitting: each fold of
   the problems is routed at the threshold chosen on the other folds, and the routed system must
   score at least today's accuracy - max_quality_loss (default 2 points; point estimate, paired
   CI reported) with some traffic left on the own model. The threshold goes into the
   registry with the decision, and `ownlm promote` serves the canary with it. Both models are
   evaluated as they will be served (engine llama_cpp: the GGUF on llama-server).

The decision, every figure and one line per rule are written to out_dir/decision.json and, with
a store, recorded in the registry (the version's status becomes approved or rejected). Each
model's per-problem rows are kept in out_dir; a rerun reuses rows whose model, suite and settings
match, so a loop killed mid-gate does not evaluate twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from ownlm.config import Config
from ownlm.envs.reasoning_gym import ReasoningGymConfig
from ownlm.envs.registry import EnvConfig, make_env
from ownlm.errors import ConfigError
from ownlm.eval.accuracy import EvalConfig, diff_ci, run_eval, wilson_interval
from ownlm.eval.routing import (
    MIN_CALIBRATION_ROWS,
    RoutingRow,
    calibrate_threshold,
    cross_fitted,
)
from ownlm.models.llama_cpp import Quantization
from ownlm.models.load import load_model


class Suite(Config):
    """One env and how many of its test problems the gate evaluates."""

    name: str = Field(description="label in the decision and the row files")
    env: EnvConfig = Field(description="where the problems come from; `kind` picks the env")
    n_problems: int = Field(100, ge=1, description="test problems scored per model")


def default_general_suites() -> list[Suite]:
    """The fixed general mix: reasoning-gym arithmetic tasks unrelated to any app's domain."""
    return [
        Suite(name="chain_sum", env=ReasoningGymConfig(), n_problems=60),
        Suite(
            name="basic_arithmetic",
            env=ReasoningGymConfig(
                task="basic_arithmetic",
                task_kwargs={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
            ),
            n_problems=40,
        ),
    ]


class RoutingRule(Config):
    """Rule 4: the routed system must keep the app's quality (see the module docstring)."""

    renamed_keys: ClassVar[dict[str, str]] = {
        "calibration_fraction": "the threshold is now chosen on all domain problems and checked "
        "by cross-fitting: set folds (default 5) instead"
    }

    max_quality_loss: float = Field(
        0.02, ge=0.0, le=1.0, description="routed domain accuracy >= today's - this (0.02: 2 pt)"
    )
    folds: int = Field(
        5,
        ge=2,
        description="the threshold is chosen on all domain problems and checked by k-fold "
        "cross-fitting: each fold routed at the threshold chosen on the others",
    )
    min_calibration_rows: int = Field(
        MIN_CALIBRATION_ROWS, ge=1, description="fewer calibration problems: the gate stops"
    )


class GateConfig(Config):
    """Which models, which suites, which thresholds."""

    candidate: str = Field(description="model dir/run dir, or a registry reference name@version")
    incumbent: str = Field("smollm2-135m", description="what the candidate must beat")
    domain: Suite = Field(description="the app's held-out problems: the candidate must gain here")
    general: list[Suite] = Field(
        default_factory=default_general_suites,
        description="general ability the candidate must keep; default: two arithmetic tasks",
    )
    min_domain_gain: float = Field(
        0.10, ge=0.0, le=1.0, description="domain accuracy gain required, 0.10 = +10 points"
    )
    max_general_loss: float = Field(
        0.02, ge=0.0, le=1.0, description="general accuracy the candidate may lose, 0.02 = 2 pt"
    )
    require_significant_gain: bool = Field(
        True, description="the domain gain's paired 95% CI must lie above zero"
    )
    max_new_tokens: int = Field(64, ge=1, description="per answer, greedy")
    batch_size: int = Field(32, ge=1, description="problems decoded together")
    enable_thinking: bool = Field(False, description="let the chat template open a <think> block")
    engine: Literal["torch", "llama_cpp"] = Field(
        "llama_cpp",
        description="how both models are evaluated: llama_cpp scores the GGUF the gateway "
        "serves (own_engine), torch the fp32 weights on ownlm's sampler",
    )
    quantization: Quantization = Field("f16", description="engine llama_cpp: match own_engine's")
    routing: RoutingRule | None = Field(
        default_factory=RoutingRule,
        description="compare the routed system with what serves the app today; null: skip",
    )
    store_url: str | None = Field(None, description="registry: resolves name@version, records")
    out_dir: str = Field("runs/gate", description="decision.json and per-problem rows")
    threads: int | None = Field(
        None, description="CPU threads (torch and llama.cpp); null: default"
    )

    @model_validator(mode="after")
    def _check(self) -> GateConfig:
        names = [self.domain.name, *(s.name for s in self.general)]
        if len(set(names)) != len(names):
            raise ValueError(f"suite names must differ, got {names}")
        if not self.general:
            raise ValueError("general must list at least one suite (the regression check)")
        if self.min_domain_gain == 0.0 and not self.require_significant_gain:
            raise ValueError(
                "min_domain_gain 0 without require_significant_gain promotes any candidate that "
                "does not regress; set a gain threshold or require a significant gain"
            )
        return self


class GateResult(BaseModel):
    """The decision and the figures behind it."""

    promote: bool
    reasons: list[str]
    metrics: dict[str, float]
    candidate: str
    incumbent: str


def decide(
    domain: tuple[list[bool], list[bool]],
    general: tuple[list[bool], list[bool]],
    cfg: GateConfig,
) -> tuple[bool, list[str], dict[str, float]]:
    """Apply the rules to per-problem outcomes (incumbent, candidate), paired by position."""
    metrics: dict[str, float] = {}
    for label, (inc, cand) in (("domain", domain), ("general", general)):
        acc_i, acc_c = sum(inc) / len(inc), sum(cand) / len(cand)
        diff, low, high = diff_ci(acc_i, len(inc), acc_c, len(cand), paired=(inc, cand))
        metrics.update(
            {
                f"{label}_incumbent": acc_i,
                f"{label}_candidate": acc_c,
                f"{label}_n": float(len(inc)),
                f"{label}_diff": diff,
                f"{label}_diff_low": low,
                f"{label}_diff_high": high,
            }
        )
    gain, gain_low = metrics["domain_diff"], metrics["domain_diff_low"]
    loss = -metrics["general_diff"]
    gain_ok = gain >= cfg.min_domain_gain - 1e-12
    loss_ok = loss <= cfg.max_general_loss + 1e-12
    rules = [
        (
            gain_ok,
            f"domain gain {gain:+.3f} (95% CI {gain_low:+.3f} to "
            f"{metrics['domain_diff_high']:+.3f}) {'>=' if gain_ok else '<'} required "
            f"{cfg.min_domain_gain:+.3f}",
        ),
        (
            loss_ok,
            f"general loss {loss:+.3f} (95% CI {-metrics['general_diff_high']:+.3f} to "
            f"{-metrics['general_diff_low']:+.3f}) {'<=' if loss_ok else '>'} allowed "
            f"{cfg.max_general_loss:.3f}",
        ),
    ]
    if cfg.require_significant_gain:
        rules.append(
            (
                gain_low > 0.0,
                f"domain gain CI low {gain_low:+.3f} {'>' if gain_low > 0 else '<='} 0",
            )
        )
    if metrics["domain_incumbent"] + cfg.min_domain_gain > 1.0 + 1e-12:
        rules.append(
            (
                False,
                f"incumbent already at {metrics['domain_incumbent']:.3f} on the domain: a gain of "
                f"{cfg.min_domain_gain:+.3f} is impossible; lower min_domain_gain",
            )
        )
    reasons = [("pass: " if ok else "FAIL: ") + text for ok, text in rules]
    return all(ok for ok, _ in rules), reasons, metrics


def resolve_model(ref: str, store_url: str | None) -> tuple[str, tuple[str, int] | None]:
    """(model path, (name, version) when ref is a registry reference)."""
    if "@" not in ref:
        return ref, None
    if store_url is None:
        raise ConfigError(f"{ref!r} is a registry reference; set store_url to resolve it")
    from ownlm.store.registry import Registry
    from ownlm.store.trace_store import TraceStore

    mv = Registry(TraceStore(store_url)).get(ref)
    return mv.path, (mv.name, mv.version)


def _rows_path(out_dir: Path, model: str, suite: Suite, cfg: GateConfig) -> Path:
    key = json.dumps(
        [
            os.path.abspath(model) if os.path.exists(model) else model,
            suite.model_dump(mode="json"),
            cfg.max_new_tokens,
            cfg.enable_thinking,
            cfg.engine,
            cfg.quantization if cfg.engine == "llama_cpp" else None,
        ],
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return out_dir / "rows" / f"{suite.name}-{digest}.jsonl"


def _outcomes(path: Path) -> dict[str, bool]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: bool(r["correct"]) for r in rows}


def evaluate_model(model_path: str, suites: list[Suite], cfg: GateConfig) -> dict[str, Path]:
    """Per-problem rows of one model on each suite; rows already on disk are reused."""
    out_dir = Path(cfg.out_dir)
    paths = {s.name: _rows_path(out_dir, model_path, s, cfg) for s in suites}
    todo = [s for s in suites if not paths[s.name].exists()]
    if todo:
        model, tokenizer = None, None
        if cfg.engine == "torch":
            model, tokenizer = load_model(model_path)
        for suite in todo:
            path = paths[suite.name]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".partial")
            ecfg = EvalConfig(
                model=model_path,
                env=suite.env,
                n_problems=suite.n_problems,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.batch_size,
                enable_thinking=cfg.enable_thinking,
                out_path=str(tmp),
                engine=cfg.engine,
                quantization=cfg.quantization,
                threads=cfg.threads,
            )
            run_eval(ecfg, model=model, tokenizer=tokenizer)
            tmp.replace(path)  # complete rows only: a killed eval is redone, never half-read
    return paths


def run_gate(cfg: GateConfig) -> GateResult:
    """Evaluate incumbent and candidate, decide, write decision.json, record in the registry."""
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    cand_path, cand_ref = resolve_model(cfg.candidate, cfg.store_url)
    inc_path, _ = resolve_model(cfg.incumbent, cfg.store_url)
    suites = [cfg.domain, *cfg.general]
    inc_rows = evaluate_model(inc_path, suites, cfg)
    cand_rows = evaluate_model(cand_path, suites, cfg)

    def paired(names: list[str]) -> tuple[list[bool], list[bool]]:
        inc, cand = [], []
        for name in names:
            a, b = _outcomes(inc_rows[name]), _outcomes(cand_rows[name])
            if set(a) != set(b):
                raise ConfigError(f"suite {name}: the two evals saw different problems")
            ids = sorted(a)
            inc += [a[i] for i in ids]
            cand += [b[i] for i in ids]
        return inc, cand

    promote, reasons, metrics = decide(
        paired([cfg.domain.name]), paired([s.name for s in cfg.general]), cfg
    )
    for name in inc_rows:
        outcomes = _outcomes(cand_rows[name])
        low, high = wilson_interval(sum(outcomes.values()), len(outcomes))
        metrics[f"suite/{name}/candidate"] = sum(outcomes.values()) / len(outcomes)
        metrics[f"suite/{name}/incumbent"] = sum(_outcomes(inc_rows[name]).values()) / len(
            _outcomes(inc_rows[name])
        )
        metrics[f"suite/{name}/candidate_ci_low"], metrics[f"suite/{name}/candidate_ci_high"] = (
            low,
            high,
        )
    if cfg.routing is not None:
        ok, lines, routing_metrics = routing_rule(cfg, cand_rows[cfg.domain.name])
        promote = promote and ok
        reasons += lines
        metrics.update(routing_metrics)
    result = GateResult(
        promote=promote,
        reasons=reasons,
        metrics=metrics,
        candidate=cfg.candidate,
        incumbent=cfg.incumbent,
    )
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "decision.json.partial"
    tmp.write_text(json.dumps(result.model_dump(), indent=2) + "\n")
    tmp.replace(out / "decision.json")
    if cand_ref is not None and cfg.store_url is not None:
        from ownlm.store.registry import Registry
        from ownlm.store.schema import GateDecision
        from ownlm.store.trace_store import TraceStore

        Registry(TraceStore(cfg.store_url)).record_gate(
            GateDecision(cand_ref[0], cand_ref[1], cfg.incumbent, promote, reasons, metrics)
        )
    return result


def routing_rule(cfg: GateConfig, cand_rows: Path) -> tuple[bool, list[str], dict[str, float]]:
    """Calibrate the confidence threshold on part of the domain problems; on the rest, compare
    the routed system (candidate when sure, today's answer otherwise) with today's answers."""
    assert cfg.routing is not None
    rule = cfg.routing
    env = make_env(cfg.domain.env)
    tasks = {t.id: t for t in env.tasks("test", cfg.domain.n_problems)}
    rows = [json.loads(line) for line in cand_rows.read_text().splitlines() if line.strip()]
    if any(r.get("confidence") is None for r in rows):
        return False, [
            "FAIL: routing: the candidate's rows have no confidences; evaluate with engine "
            "llama_cpp (the engine the gateway escalates on), or set routing: null"
        ], {}  # fmt: skip
    served = {
        i: env.score(t, str(t.metadata["served_answer"])).correct
        for i, t in tasks.items()
        if "served_answer" in t.metadata
    }
    if not served:
        return False, [
            "FAIL: routing: the domain suite holds no answers of what serves the app today; "
            "export its traces with `ownlm export` (rl rows keep the served answer), or set "
            "routing: null"
        ], {}  # fmt: skip
    ids = [r["id"] for r in rows if r["id"] in served]
    by_id = {r["id"]: r for r in rows}
    held = [
        RoutingRow(float(by_id[i]["confidence"]), bool(by_id[i]["correct"]), served[i]) for i in ids
    ]
    try:
        cal = calibrate_threshold(
            held, max_quality_loss=rule.max_quality_loss, min_rows=rule.min_calibration_rows
        )
        cv = cross_fitted(
            held,
            ids,
            folds=rule.folds,
            max_quality_loss=rule.max_quality_loss,
            min_rows=rule.min_calibration_rows,
        )
    except ConfigError as err:
        return False, [f"FAIL: routing: {err}"], {}
    routed = cv.routed
    today = [r.served_correct for r in held]
    n = len(held)
    acc_t, acc_r = sum(today) / n, sum(routed) / n
    diff, low, high = diff_ci(acc_t, n, acc_r, n, paired=(today, routed))
    share = sum(cv.own) / n
    metrics = {
        "routing_threshold": cal.threshold,
        "routing_calibration_rows": float(cal.rows),
        "routing_check_rows": float(n),
        "routing_calibration_own_share": cal.own_share,
        "routing_fold_threshold_min": min(cv.thresholds),
        "routing_fold_threshold_max": max(cv.thresholds),
        "serving_domain": acc_t,
        "routed_domain": acc_r,
        "routed_diff": diff,
        "routed_diff_low": low,
        "routed_diff_high": high,
        "routed_own_share": share,
        "candidate_domain_check": sum(r.own_correct for r in held) / n,
    }
    kept = acc_r >= acc_t - rule.max_quality_loss - 1e-12
    lines = [
        ("pass: " if kept else "FAIL: ")
        + f"routed domain {acc_r:.3f} vs today's {acc_t:.3f} ({diff:+.3f}, 95% CI {low:+.3f} to "
        f"{high:+.3f}) {'>=' if kept else '<'} today's - {rule.max_quality_loss:.3f}, on {n} "
        f"problems, each routed at a threshold chosen without it ({rule.folds}-fold cross-fit: "
        f"own model answers {share:.0%}); served threshold {cal.threshold:.3f}, chosen on all "
        f"{n} (own model answers {cal.own_share:.0%} of them)"
    ]
    if cal.own_share == 0.0:
        lines.append(
            f"FAIL: routing: no threshold keeps the quality floor with any traffic on the own "
            f"model (alone it scores {cal.own_accuracy:.3f} vs today's {cal.served_accuracy:.3f} "
            f"on {cal.rows} calibration problems); train it further"
        )
        kept = False
    return kept, lines, metrics


def print_result(result: GateResult) -> None:
    """The decision as a few lines for the terminal."""
    verdict = "PROMOTE" if result.promote else "REJECT"
    print(f"gate: {verdict} {result.candidate} (vs {result.incumbent})")
    for line in result.reasons:
        print("  " + line)


def gate_command(cfg: GateConfig) -> Any:
    """`ownlm gate`: run the gate and print the decision."""
    result = run_gate(cfg)
    print_result(result)
    return result
