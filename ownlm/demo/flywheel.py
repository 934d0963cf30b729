"""`ownlm demo` (`make demo`): the whole flywheel offline, on this machine, in one run.

1. A scripted stand-in for a paid API (ownlm/demo/strong.py, billed at a real provider's price)
   serves the app through the ownlm gateway; simulated users rate every answer.
2. `ownlm loop` runs one cycle on the captured traffic: export -> SFT on the strong model's
   answers (-> GRPO on the app's prompts with the app's verifier, when configured; the demo's
   config says why it is off) -> register -> gate (domain gain vs general regression, routed
   quality vs the paid API) -> promote as a canary arm of an A/B test at the gateway.
3. The app keeps sending traffic; users' feedback decides the A/B and the gateway shifts traffic.
4. `ownlm report` computes TFP, cost and savings and writes the dashboard.

Every printed figure is measured in the run. The work directory is wiped at the start, unless
`resume: true`, which continues a killed run (the loop resumes; traffic phases are redone).
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator
from tqdm import tqdm

from ownlm.config import Config, validate_config
from ownlm.config_keys import section_field
from ownlm.errors import ConfigError, GateRejected, OwnlmError


class DemoConfig(Config):
    """Sizes, prices and the loop of the demo (examples/flywheel_demo.yaml)."""

    work_dir: str = Field("runs/demo", description="store, loop runs, figures and dashboard")
    resume: bool = Field(False, description="false: work_dir is wiped first; true: continue it")
    alias: str = Field("zoology", description="the model name the app calls")
    task: str = Field("leg_counting", description="the reasoning-gym task the app asks")
    task_kwargs: dict[str, Any] | None = Field(
        None,
        description="the task's generator settings; default: the zoology app's (1-2 "
        "animals, 1-3 each) for leg_counting, the generator's own for other tasks",
    )
    standin: Literal["solver", "oracle"] | None = Field(
        None,
        description="the paid-API stand-in: the scripted solver (leg_counting only) or an "
        "oracle of the generator's answers; default: solver for leg_counting, else oracle",
    )
    strong_model: str = Field("gpt-4.1", description="the provider model the stand-in prices as")
    strong_price_in_usd_per_mtok: float = Field(2.0, description="the stand-in's input price")
    strong_price_out_usd_per_mtok: float = Field(8.0, description="the stand-in's output price")
    strong_ttft_s: float = Field(
        0.52, ge=0, description="the stand-in's time to first token (GPT-4.1, published)"
    )
    strong_output_tokens_per_s: float = Field(
        89.0, gt=0, description="the stand-in's output speed (GPT-4.1, published)"
    )
    value_per_success_usd: float = Field(0.004, gt=0, description="what a right answer earns")
    value_per_failure_usd: float = Field(
        -0.004, le=0, description="what a wrong answer costs the app (a user lost, a refund)"
    )
    baseline_requests: int = Field(400, ge=10, description="traffic before the own model exists")
    ab_requests: int = Field(400, ge=10, description="traffic during the canary's A/B test")
    after_requests: int = Field(120, ge=0, description="traffic after the test decided")
    questions_per_user: int = Field(2, ge=1, description="app requests per simulated user")
    concurrency: int = Field(4, ge=1, description="app requests in flight at once")
    max_tokens: int = Field(64, ge=1, description="max_tokens of each app request")
    loop: dict[str, Any] = section_field(
        "ownlm.loop:LoopConfig",
        set_elsewhere=("store_url", "work_dir", "name", "alias"),
        default_factory=dict,
        description="LoopConfig fields: the training cycle",
    )
    threads: int | None = Field(2, description="torch CPU threads; null: torch's default")

    @model_validator(mode="after")
    def _check_loop(self) -> DemoConfig:
        # A misspelt loop key stops the demo here, not after the baseline traffic.
        from ownlm.loop import LoopConfig

        work = Path(self.work_dir)
        validate_config(LoopConfig, loop_data(self, "sqlite:///demo.db", work), "demo config: loop")
        return self


def loop_data(cfg: DemoConfig, store_url: str, work: Path) -> dict[str, Any]:
    """The LoopConfig fields of the demo's cycle: cfg.loop and the ones the demo sets."""
    from ownlm.demo.app import app_verifier

    data = {
        "store_url": store_url,
        "work_dir": str(work / "loop"),
        "name": f"{cfg.alias}-own",
        "alias": cfg.alias,
        **cfg.loop,
    }
    export = dict(data.get("export") or {})
    export["rl"] = {"verifier": app_verifier(cfg.task), **(export.get("rl") or {})}
    data["export"] = export
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _phase_envs(cfg: DemoConfig) -> dict[str, Any]:
    from ownlm.demo.app import app_env

    return {
        phase: app_env(seed, cfg.task, cfg.task_kwargs)
        for phase, seed in (("before", 10_000), ("ab", 20_000), ("after", 30_000))
    }


def _oracle_table(cfg: DemoConfig, envs: dict[str, Any]) -> dict[str, str]:
    """user message -> the generator's answer, for every question the app will ask."""
    sizes = {"before": cfg.baseline_requests, "ab": cfg.ab_requests, "after": cfg.after_requests}
    table = {}
    for phase, env in envs.items():
        for task in env.tasks("train", sizes[phase]):
            user = [m for m in env.reset(task) if m["role"] == "user"][-1]
            table[str(user["content"])] = task.answer
    return table


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the story; print and return the figures."""
    import torch
    from openai import OpenAI

    from ownlm.demo.strong import serve_strong_model
    from ownlm.gateway.config import GatewayConfig
    from ownlm.gateway.server import build_app, serve_gateway_in_thread
    from ownlm.loop import LoopConfig, run_loop

    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    work = Path(cfg.work_dir)
    if work.exists() and not cfg.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{work / 'ownlm.db'}"
    standin = cfg.standin or ("solver" if cfg.task == "leg_counting" else "oracle")
    if standin == "solver" and cfg.task != "leg_counting":
        raise ConfigError(
            f"standin 'solver' answers leg_counting only, not '{cfg.task}'; use standin: oracle"
        )
    envs = _phase_envs(cfg)  # an unknown task or bad task_kwargs stops here, before any work
    oracle = _oracle_table(cfg, envs) if standin == "oracle" else None
    kind = (
        "a SCRIPTED STAND-IN for a paid API (it answers from the task's solver)"
        if oracle is None
        else "an ORACLE STAND-IN for a paid API (it looks up the generator's own answers)"
    )
    _say(
        f"ownlm demo: an app asking reasoning-gym '{cfg.task}' questions starts as an API wrapper "
        f"and ends up owning its model.\n  The 'strong model' is {kind},\n  "
        f"billed at {cfg.strong_model}'s price (${cfg.strong_price_in_usd_per_mtok}/"
        f"${cfg.strong_price_out_usd_per_mtok} per 1M input/output tokens) and answering with "
        f"its published\n  latency ({cfg.strong_ttft_s} s to the first token, "
        f"{cfg.strong_output_tokens_per_s:g} tokens/s)."
    )
    strong_port = _free_port()
    with serve_strong_model(
        strong_port,
        ttft_s=cfg.strong_ttft_s,
        tokens_per_s=cfg.strong_output_tokens_per_s,
        oracle=oracle,
    ) as strong_url:
        gw_cfg = GatewayConfig.model_validate(
            {
                "port": _free_port(),
                "store_url": store_url,
                "require_keys": False,
                "flush_interval_ms": 50,
                "arm_stats_interval_s": 1.0,
                "deploy_refresh_s": 0.5,
                "upstreams": {"provider": {"base_url": strong_url, "timeout_s": 30}},
                "models": {
                    "strong": {
                        "upstream": "provider",
                        "model": cfg.strong_model,
                        "price_in_usd_per_mtok": cfg.strong_price_in_usd_per_mtok,
                        "price_out_usd_per_mtok": cfg.strong_price_out_usd_per_mtok,
                    }
                },
                "router": {"routes": {cfg.alias: {"default": "strong"}}},
            }
        )
        (work / "ownlm.yaml").write_text(yaml.safe_dump(gw_cfg.model_dump(mode="json")))
        app = build_app(gw_cfg)
        server, thread = serve_gateway_in_thread(app, gw_cfg)
        client = OpenAI(
            base_url=f"http://127.0.0.1:{gw_cfg.port}/v1", api_key="demo", max_retries=0
        )
        try:
            figures = _story(cfg, client, store_url, work, LoopConfig, run_loop, app.app, envs)
        finally:
            server.should_exit = True
            thread.join(30)
    figures["total_minutes"] = (time.perf_counter() - t_start) / 60.0
    _print_figures(figures)
    (work / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _story(
    cfg: DemoConfig,
    client: Any,
    store_url: str,
    work: Path,
    loop_cls: Any,
    run_loop: Any,
    gateway: Any,
    envs: dict[str, Any],
) -> dict[str, Any]:
    from ownlm.report.build import ReportConfig, build_report
    from ownlm.router.deploy import experiment_name
    from ownlm.store.registry import Registry
    from ownlm.store.trace_store import TraceStore

    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%d")}
    # 1. the app on the paid API
    _say(f"\n[1/4] {cfg.baseline_requests} app requests on the paid API; users rate each answer")
    base = _traffic(cfg, client, envs["before"], cfg.baseline_requests, "before", seed=1)
    figures["before"] = base

    # 2. one loop cycle
    loop_cfg = validate_config(loop_cls, loop_data(cfg, store_url, work), "demo config: loop")
    trains = [name.upper() for name in ("sft", "grpo") if getattr(loop_cfg, name) is not None]
    _say(f"\n[2/4] ownlm loop: export -> {' -> '.join(trains)} -> register -> gate -> promote")
    t0 = time.perf_counter()
    try:
        cycle = run_loop(loop_cfg)
        promoted = True
    except GateRejected as err:
        _say(f"  {err}")
        cycle = json.loads((work / "loop" / "loop_state.json").read_text())["history"][-1]
        promoted = False
    figures["loop_minutes"] = (time.perf_counter() - t0) / 60.0
    gate = cycle["gate"]
    figures["gate"] = {
        "promote": gate["promote"],
        "reasons": gate["reasons"],
        **{k: gate["metrics"][k] for k in _GATE_KEYS if k in gate["metrics"]},
    }
    promoted_at = time.time()
    decided_at: float | None = None

    # 3. the A/B test decides
    reg = Registry(TraceStore(store_url))
    if promoted:
        _say(f"\n[3/4] A/B: canary {cycle['version']} gets part of the traffic; feedback decides")
        live = reg.current(cfg.alias)
        assert live is not None
        _wait_until_served(gateway, cfg.alias, live.seq)
        figures["ab"] = _traffic(cfg, client, envs["ab"], cfg.ab_requests, "ab", seed=2)
        version = reg.get(cycle["version"])
        figures["canary_status"] = version.status
        if cfg.after_requests:
            _say(f"  then {cfg.after_requests} more requests on the routing the test left")
            decided_at = time.time()
            figures["after"] = _traffic(
                cfg, client, envs["after"], cfg.after_requests, "after", seed=3
            )
        live = reg.current(cfg.alias)
        exp = gateway.router.experiments.get(experiment_name(live)) if live is not None else None
        figures["routing"] = dict(exp.weights) if exp is not None else {}
    else:
        _say("\n[3/4] no canary: the gate kept the incumbent")

    # 4. the report
    _say("\n[4/4] ownlm report: TFP, cost, savings; dashboard")
    time.sleep(0.3)  # the trace writer flushes every 50 ms
    money = {
        "store_url": store_url,  # models and prices: as the gateway recorded them there
        "reference_variant": "strong",
        "value_per_success_usd": cfg.value_per_success_usd,
        "value_per_failure_usd": cfg.value_per_failure_usd,
    }
    report = build_report(
        ReportConfig(
            **money,
            split_at=datetime.fromtimestamp(promoted_at, UTC),
            title=f"ownlm demo: an app on {cfg.task} owns its model",
            out=str(work / "dashboard.html"),
            json_out=str(work / "report.json"),
        )
    )
    figures["report"] = _report_figures(report)
    if decided_at is not None:  # the routing the app lives with once the test has decided
        since = datetime.fromtimestamp(decided_at, UTC)
        settled = build_report(ReportConfig(**money, since=since))
        figures["report"]["decided"] = _report_figures(settled)["total"]
    figures["dashboard"] = str(work / "dashboard.html")
    return figures


def _wait_until_served(gateway: Any, alias: str, seq: int, timeout_s: float = 300.0) -> None:
    """Wait until the gateway has loaded the canary and routes by deployment `seq`."""
    deadline = time.monotonic() + timeout_s
    while gateway.served.deployed.get(alias) != seq:
        if time.monotonic() > deadline:
            raise OwnlmError(f"the gateway did not pick up deployment #{seq} in {timeout_s:.0f} s")
        time.sleep(0.2)


_GATE_KEYS = (
    "domain_incumbent",
    "domain_candidate",
    "domain_diff",
    "domain_diff_low",
    "domain_diff_high",
    "general_incumbent",
    "general_candidate",
    "general_diff",
    "general_diff_low",
    "general_diff_high",
    "serving_domain",
    "routed_domain",
    "routed_diff",
    "routed_diff_low",
    "routed_diff_high",
    "routed_own_share",
    "routing_threshold",
    "candidate_domain_check",
)


def _traffic(
    cfg: DemoConfig, client: Any, env: Any, n: int, phase: str, seed: int
) -> dict[str, Any]:
    from ownlm.demo.app import ask_and_rate, check_legs, user_schedule

    tasks = env.tasks("train", n)
    users = user_schedule(n, cfg.questions_per_user, seed, phase)
    by_variant: dict[str, list[int]] = {}
    seconds: dict[str, list[float]] = {}
    bar = tqdm(total=n, desc=f"  {phase} traffic", unit="req")
    lock = threading.Lock()

    def one(i: int) -> None:
        user, session = users[i]
        out = ask_and_rate(
            client, cfg.alias, tasks[i], env.reset(tasks[i]), user, session,
            cfg.value_per_success_usd, cfg.max_tokens,
            check_legs if cfg.task == "leg_counting" else env.score,
            label_answer=cfg.task != "leg_counting",
        )  # fmt: skip
        with lock:
            ok, total = by_variant.setdefault(out.variant, [0, 0])
            by_variant[out.variant] = [ok + out.correct, total + 1]
            seconds.setdefault(out.variant, []).append(out.seconds)
            own = sum(t for v, (_, t) in by_variant.items() if v != cfg.strong_model)
            bar.set_postfix(own_share=f"{own / sum(t for _, t in by_variant.values()):.0%}")
            bar.update(1)

    with ThreadPoolExecutor(cfg.concurrency) as pool:
        for f in [pool.submit(one, i) for i in range(n)]:
            f.result()
    bar.close()
    total = sum(t for _, t in by_variant.values())
    own = sum(t for v, (_, t) in by_variant.items() if v != cfg.strong_model)
    return {
        "requests": total,
        "own_share": own / total,
        "accuracy_by_model": {v: ok / t for v, (ok, t) in by_variant.items()},
        "requests_by_model": {v: t for v, (_, t) in by_variant.items()},
        "p50_latency_s_by_model": {v: statistics.median(xs) for v, xs in seconds.items()},
    }


def _report_figures(report: Any) -> dict[str, Any]:
    """TFP, cost per success, own share and savings: before and after the promotion, and all."""

    def pick(f: Any) -> dict[str, Any]:
        keys = (
            "requests",
            "tfp_usd_per_mtok",
            "success_rate",
            "cost_usd",
            "cost_per_success_usd",
            "own_request_share",
            "savings_usd",
            "reference_cost_usd",
            "value_per_usd",
            "tokens_per_request",
            "latency_p50_ms",
        )
        out = {k: getattr(f, k) for k in keys}
        out["net_value_per_request_usd"] = (
            (f.value_usd - f.cost_usd) / f.requests if f.requests else None
        )
        return out

    out = {"total": pick(report.total)}
    if report.split is not None:
        out["before"] = pick(report.split.before)
        out["after"] = pick(report.split.after)
    return out


def _print_figures(f: dict[str, Any]) -> None:
    g = f["gate"]
    lines = [
        "",
        f"ownlm demo figures ({f['date']}, measured in this run, {f['total_minutes']:.1f} min)",
        f"  domain accuracy (held-out app prompts): base {g['domain_incumbent']:.3f} -> own "
        f"{g['domain_candidate']:.3f} ({g['domain_diff']:+.3f}, 95% CI {g['domain_diff_low']:+.3f}"
        f" to {g['domain_diff_high']:+.3f})",
        f"  general accuracy (reasoning-gym mix): base {g['general_incumbent']:.3f} -> own "
        f"{g['general_candidate']:.3f} ({g['general_diff']:+.3f}, 95% CI "
        f"{g['general_diff_low']:+.3f} to {g['general_diff_high']:+.3f})",
        f"  gate: {'PROMOTE' if g['promote'] else 'REJECT'}",
        *("    " + r for r in g["reasons"]),
    ]
    for phase in ("before", "ab", "after"):
        if phase in f:
            p = f[phase]
            acc = ", ".join(f"{v} {a:.2f}" for v, a in p["accuracy_by_model"].items())
            lat = ", ".join(f"{v} {x:.2f} s" for v, x in p["p50_latency_s_by_model"].items())
            lines.append(
                f"  {phase:>6}: {p['requests']} requests, own model share {p['own_share']:.0%}, "
                f"accuracy {acc}; p50 latency {lat}"
            )
    if "canary_status" in f:
        weights = ", ".join(f"{a} {w:.2f}" for a, w in f["routing"].items())
        lines.append(f"  canary after the A/B: {f['canary_status']}; traffic weights now {weights}")
    r = f["report"]
    for label in ("before", "after", "decided", "total"):
        if label in r:
            x = r[label]
            lines.append(
                f"  {label:>6}: TFP {_num(x['tfp_usd_per_mtok'], '$/1M tok')} "
                f"(${_num(x['value_per_usd'], '', 1)} of value per $1 of tokens), "
                f"{_num(x['tokens_per_request'], 'tokens/request', 0)}, p50 latency "
                f"{_num((x['latency_p50_ms'] or 0) / 1000, 's', 2)}, cost per success "
                f"{_num(x['cost_per_success_usd'], '$', 6)}, own share "
                f"{_num(x['own_request_share'], '', 2)}, saved vs all-upstream "
                f"{_num(x['savings_usd'], '$', 4)} of {_num(x['reference_cost_usd'], '$', 4)}, "
                f"net value per request {_num(x['net_value_per_request_usd'], '$', 6)}"
            )
    if "before" in r and "after" in r:
        b, a = r["before"], r["after"]

        def ratio(key: str, x: dict[str, Any] = a) -> str:
            return f"{x[key] / b[key]:.2f}x" if x.get(key) and b.get(key) else "n/a"

        cps = (
            f"{a['cost_per_success_usd'] / b['cost_per_success_usd']:.0%}"
            if a.get("cost_per_success_usd") and b.get("cost_per_success_usd")
            else "n/a"
        )
        lines.append(
            f"  after vs before: TFP (value per token) {ratio('tfp_usd_per_mtok')}, value per $ of "
            f"tokens {ratio('value_per_usd')}, cost per success {cps} of before, success "
            f"{_num(a['success_rate'], '', 3)} vs {_num(b['success_rate'], '', 3)}"
        )
        if "decided" in r:
            d = r["decided"]
            lines.append(
                f"  once the test decided (the last {d['requests']} requests) vs before: TFP "
                f"(value per token) {ratio('tfp_usd_per_mtok', d)}, value per $ of tokens "
                f"{ratio('value_per_usd', d)}; `after` also holds the A/B test's paid arm"
            )
    lines.append(f"  dashboard: {f['dashboard']}")
    _say("\n".join(lines))


def _num(x: float | None, unit: str, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{unit}{x:.{digits}f}" if unit == "$" else f"{x:.{digits}f} {unit}".strip()


def _say(text: str) -> None:
    print(text, flush=True)


def demo_command(cfg: DemoConfig) -> None:
    """`ownlm demo`: run it; figures go to the terminal and work_dir/figures.json."""
    run_demo(cfg)
