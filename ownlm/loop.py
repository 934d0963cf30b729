"""`ownlm loop`: one flywheel cycle, export -> train -> register -> gate -> promote, resumable.

    ownlm loop --config examples/loop.yaml        # from cron or a scheduler, unattended

Each run does one cycle in `work_dir/cycle-<k>/`. `work_dir/loop_state.json` records the stages a
cycle finished (written atomically after each one), so a run killed mid-way continues where it
stopped: finished stages are skipped, training resumes from its last checkpoint, the gate reuses
the evals it wrote, and registering and promoting check the registry before writing, so nothing
is done twice. When the cycle is complete, the next run starts cycle k+1 from the newest
promoted version (or the base model while there is none).

The stage sections are the stages' own configs (ExportConfig, SFTConfig, GRPOConfig, GateConfig,
PromoteConfig) minus the fields the loop fills in: paths, the model to start from, the store.
They are checked when the loop config is loaded, before any work starts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ownlm.config import Config, validate_config
from ownlm.config_keys import section_field
from ownlm.errors import ConfigError, GateRejected

STAGES = ("export", "sft", "grpo", "register", "gate", "promote")
PLACEHOLDER = "<set by the loop>"
# The keys of each stage's config that the loop fills in (stage_config); a section may not set them.
SET_BY_LOOP: dict[str, tuple[str, ...]] = {
    "export": ("store_url", "out_dir"),
    "sft": ("model", "train_file", "eval_file", "run_dir", "replay_file"),
    "grpo": ("model", "run_dir", "env"),
    "gate": ("candidate", "incumbent", "store_url", "out_dir", "domain"),
    "promote": ("store_url", "model", "alias"),
}


class LoopConfig(Config):
    """One cycle of the flywheel."""

    store_url: str = Field("sqlite:///ownlm.db", description="traces, feedback and the registry")
    work_dir: str = Field("runs/loop", description="cycle-<k>/ dirs and loop_state.json")
    name: str = Field(description="registry name of the own model, e.g. app-own")
    alias: str = Field(description="the model name the app calls, where the canary is deployed")
    base_model: str = Field("smollm2-135m", description="start of the first cycle")
    export: dict[str, Any] = section_field(
        "ownlm.data.export:ExportConfig",
        set_elsewhere=SET_BY_LOOP["export"],
        default_factory=dict,
        description="ExportConfig fields",
    )
    sft: dict[str, Any] | None = section_field(
        "ownlm.train.sft:SFTConfig",
        set_elsewhere=SET_BY_LOOP["sft"],
        default_factory=dict,
        description="SFTConfig fields; null: skip",
    )
    grpo: dict[str, Any] | None = section_field(
        "ownlm.train.grpo:GRPOConfig",
        set_elsewhere=SET_BY_LOOP["grpo"],
        default=None,
        description="GRPOConfig fields; null: skip",
    )
    gate: dict[str, Any] = section_field(
        "ownlm.eval.gate:GateConfig",
        set_elsewhere=SET_BY_LOOP["gate"],
        default_factory=dict,
        description="GateConfig fields",
    )
    domain_problems: int = Field(100, ge=1, description="held-out app prompts the gate scores")
    promote: dict[str, Any] | None = section_field(
        "ownlm.router.deploy:PromoteConfig",
        set_elsewhere=SET_BY_LOOP["promote"],
        default_factory=dict,
        description="PromoteConfig fields; null: stop after the gate",
    )
    threads: int | None = Field(None, description="torch CPU threads of sft and grpo")
    replay_general: int = Field(
        0,
        ge=0,
        description="general prompts (the gate's general suites, their train split) the start "
        "model answers before SFT; its right answers join the SFT data, so SFT on a narrow app "
        "keeps general ability (self-distillation replay); 0: off",
    )

    @model_validator(mode="after")
    def _check_stages(self) -> LoopConfig:
        if self.sft is None and self.grpo is None:
            raise ValueError("sft and grpo are both null: the loop would train nothing")
        for stage in ("export", "sft", "grpo", "gate", "promote"):
            if getattr(self, stage) is not None:
                stage_config(self, stage, Path(self.work_dir) / "cycle-0", PLACEHOLDER)
        return self


def stage_config(cfg: LoopConfig, stage: str, cycle_dir: Path, start_model: str) -> Any:
    """The validated config of one stage, with the fields the loop owns filled in."""
    data = cycle_dir / "data"
    prompt_set = {
        "kind": "prompt_set",
        "train_path": str(data / "rl_train.jsonl"),
        "test_path": str(data / "rl_eval.jsonl"),
    }
    if stage == "export":
        from ownlm.data.export import ExportConfig as cls

        owned: dict[str, Any] = {"store_url": cfg.store_url, "out_dir": str(data)}
    elif stage == "sft":
        from ownlm.train.sft import SFTConfig as cls

        eval_file = data / "sft_eval.jsonl"
        owned = {
            "model": start_model,
            "train_file": str(data / "sft_train.jsonl"),
            # an export too small for an eval side: SFT holds out its own eval_fraction
            "eval_file": None if _empty(eval_file) else str(eval_file),
            "run_dir": str(cycle_dir / "sft"),
            "replay_file": str(data / "sft_replay.jsonl") if cfg.replay_general else None,
        }
    elif stage == "grpo":
        from ownlm.train.grpo import GRPOConfig as cls

        owned = {"model": start_model, "run_dir": str(cycle_dir / "grpo"), "env": prompt_set}
    elif stage == "gate":
        from ownlm.eval.gate import GateConfig as cls

        owned = {
            "candidate": PLACEHOLDER,
            "incumbent": start_model,
            "store_url": cfg.store_url,
            "out_dir": str(cycle_dir / "gate"),
            "domain": {"name": "domain", "env": prompt_set, "n_problems": cfg.domain_problems},
        }
    else:
        from ownlm.router.deploy import PromoteConfig as cls

        owned = {"store_url": cfg.store_url, "model": PLACEHOLDER, "alias": cfg.alias}
    assert set(owned) == set(SET_BY_LOOP[stage]), stage  # one list of what the loop sets
    section = getattr(cfg, stage) or {}
    clash = sorted(set(section) & set(owned))
    if clash:
        raise ConfigError(
            f"loop config: {stage}.{clash[0]} is set by the loop itself; remove it "
            f"(the loop sets {', '.join(sorted(owned))})"
        )
    if stage in ("sft", "grpo") and cfg.threads is not None:
        section = {"threads": cfg.threads, **section}
    return validate_config(cls, {**section, **owned}, f"loop config: {stage}")


def _empty(path: Path) -> bool:
    return path.exists() and path.stat().st_size == 0


class LoopState:
    """Which cycle is running and what it finished; saved atomically after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"cycle": 1, "done": {}, "history": []}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ConfigError(
                    f"{path} is not a loop state file ({err}); move it away to start over"
                ) from err

    @property
    def cycle(self) -> int:
        return int(self.data["cycle"])

    def done(self, stage: str) -> Any:
        return self.data["done"].get(stage)

    def finish(self, stage: str, result: Any) -> None:
        self.data["done"][stage] = result
        self.save()

    def next_cycle(self, summary: dict[str, Any]) -> None:
        self.data["history"].append(summary)
        self.data["cycle"] = self.cycle + 1
        self.data["done"] = {}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".partial")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


def run_loop(cfg: LoopConfig) -> dict[str, Any]:
    """Run (or finish) one cycle; returns what it did. Raises GateRejected when the gate says no."""
    from ownlm.store.registry import Registry
    from ownlm.store.trace_store import TraceStore

    work = Path(cfg.work_dir)
    state = LoopState(work / "loop_state.json")
    cycle_dir = work / f"cycle-{state.cycle}"
    reg = Registry(TraceStore(cfg.store_url))
    promoted = [v for v in reg.store.list_model_versions(cfg.name) if v.status == "promoted"]
    start_model = state.done("start_model") or (promoted[-1].path if promoted else cfg.base_model)
    parent = f"{promoted[-1].name}@{promoted[-1].version}" if promoted else cfg.base_model
    if not state.done("start_model"):
        state.finish("start_model", start_model)
    log = _stage_log(state.cycle)

    if not state.done("export"):
        from ownlm.data.export import export

        log("export", "traces -> datasets")
        summary = export(stage_config(cfg, "export", cycle_dir, start_model))
        state.finish("export", {"counts": summary.counts, "files": summary.files})
    model = start_model
    for stage, recipe in (("sft", "train_sft"), ("grpo", "train_grpo")):
        if getattr(cfg, stage) is None:
            continue
        if not state.done(stage):
            import importlib

            if stage == "sft" and cfg.replay_general:
                kept = write_general_replay(cfg, cycle_dir, model)
                log("sft", f"replay: {kept} right answers of {model} on general prompts")
            log(stage, f"train from {model}")
            fn = getattr(importlib.import_module(f"ownlm.train.{stage}"), recipe)
            run = fn(stage_config(cfg, stage, cycle_dir, model))
            state.finish(stage, {"final_dir": run.final_dir})
        model = state.done(stage)["final_dir"]

    if not state.done("register"):
        log("register", model)
        version = _register(reg, cfg, model, parent, state)
        state.finish("register", {"version": version})
    version = int(state.done("register")["version"])
    ref = f"{cfg.name}@{version}"

    if not state.done("gate"):
        from ownlm.eval.gate import print_result, run_gate

        log("gate", f"{ref} vs {start_model}")
        gate_cfg = stage_config(cfg, "gate", cycle_dir, start_model)
        result = run_gate(gate_cfg.model_copy(update={"candidate": ref}))
        print_result(result)
        state.finish("gate", result.model_dump())
    gate = state.done("gate")
    out: dict[str, Any] = {"cycle": state.cycle, "version": ref, "gate": gate}
    if not gate["promote"]:
        state.next_cycle({**out, "promoted": False})
        raise GateRejected(
            f"cycle {out['cycle']}: the gate rejected {ref}: "
            + "; ".join(r for r in gate["reasons"] if r.startswith("FAIL"))
        )

    if cfg.promote is not None and not state.done("promote"):
        from ownlm.router.deploy import promote

        log("promote", f"{ref} as a canary on {cfg.alias}")
        live = reg.current(cfg.alias)
        if live is None or live.canary != f"{cfg.name}-v{version}":
            pcfg = stage_config(cfg, "promote", cycle_dir, start_model)
            live = promote(pcfg.model_copy(update={"model": ref}))
        state.finish("promote", {"deployment": live.seq, "arms": live.arms})
    out["deployment"] = state.done("promote")
    state.next_cycle({**out, "promoted": cfg.promote is not None})
    return out


def write_general_replay(cfg: LoopConfig, cycle_dir: Path, model: str) -> int:
    """The start model's right answers on `replay_general` prompts of the gate's general suites
    (their train split, which the gate never scores), as chats in data/sft_replay.jsonl, evaluated
    as the gate evaluates. Returns how many were kept."""
    import json

    from ownlm.envs.registry import make_env
    from ownlm.eval.accuracy import EvalConfig, run_eval

    gate = stage_config(cfg, "gate", cycle_dir, model)
    total = sum(s.n_problems for s in gate.general)
    rows = []
    for suite in gate.general:
        n = max(1, round(cfg.replay_general * suite.n_problems / total))
        env = make_env(suite.env)
        tasks = env.tasks("train", n)
        report = run_eval(
            EvalConfig(
                model=model, env=suite.env, split="train", n_problems=n,
                max_new_tokens=gate.max_new_tokens, batch_size=gate.batch_size,
                engine=gate.engine, quantization=gate.quantization, threads=gate.threads,
                out_path=str(cycle_dir / "data" / f"replay_{suite.name}.jsonl"),
            )
        )  # fmt: skip
        assert report.rows_path is not None
        with Path(report.rows_path).open() as f:
            evals = [json.loads(line) for line in f]
        for task, row in zip(tasks, evals, strict=True):
            if row["correct"]:
                answer = {"role": "assistant", "content": row["completion"]}
                rows.append({"messages": [*env.reset(task), answer]})
    out = cycle_dir / "data" / "sft_replay.jsonl"
    tmp = out.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out)
    return len(rows)


def _register(reg: Any, cfg: LoopConfig, model: str, parent: str, state: LoopState) -> int:
    """Register the trained model once: a version with this path already there is reused."""
    from ownlm.store.schema import ModelVersion

    for v in reg.store.list_model_versions(cfg.name):
        if v.path == model:
            return int(v.version)
    lineage = {
        "cycle": state.cycle,
        "data": (state.done("export") or {}).get("files", {}),
        "recipes": [s for s in ("sft", "grpo") if getattr(cfg, s) is not None],
        "config": cfg.model_dump(mode="json"),
    }
    mv = ModelVersion(
        cfg.name,
        reg.next_version(cfg.name),
        model,
        base_model=cfg.base_model,
        parent=parent,
        lineage=lineage,
    )
    reg.register(mv)
    return mv.version


def _stage_log(cycle: int) -> Any:
    start = time.perf_counter()

    def log(stage: str, what: str) -> None:
        print(
            f"[loop cycle {cycle} +{time.perf_counter() - start:5.0f}s] {stage}: {what}", flush=True
        )

    return log
