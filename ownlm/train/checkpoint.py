"""A run's files, shared by every recipe: checkpoints that resume exactly (model as safetensors,
loadable by transformers/peft; optimizer, scheduler, RNG states, step and data position), the
metrics log, and the summary a finished run hands back.

Layout: <run_dir>/config.yaml, metrics.jsonl, step_<N>/{model files, trainer_state.pt, meta.json};
<run_dir>/final/ at the end. A checkpoint directory is written to a temp name and renamed, so a
kill never leaves a half one.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel

from ownlm.config import dump_config
from ownlm.errors import ConfigError

if TYPE_CHECKING:
    from ownlm.train.recipe_config import RunConfig


@dataclass
class ResumeState:
    """What a recipe needs to continue a run: where it was and the RNG/optimizer states."""

    step: int
    path: Path
    meta: dict[str, Any]


def seed_everything(seed: int) -> None:
    """Seed the Python, NumPy and torch global generators (a resume restores their states)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    meta: dict[str, Any],
    *,
    keep_last: int = 2,
    name: str | None = None,
) -> Path:
    """Save everything needed to resume at `step`; keep only the newest `keep_last` step dirs."""
    run_dir = Path(run_dir)
    final = run_dir / (name or f"step_{step}")
    tmp = run_dir / f".tmp_{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    state = {
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
    }
    torch.save(state, tmp / "trainer_state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2, default=str))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if name is None:
        steps = sorted(_step_dirs(run_dir), key=lambda p: int(p.name.split("_")[1]))
        for old in steps[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _step_dirs(run_dir: Path) -> list[Path]:
    return [
        p
        for p in run_dir.glob("step_*")
        if p.is_dir() and p.name.split("_")[1].isdigit() and (p / "meta.json").exists()
    ]


def latest_checkpoint(run_dir: Path) -> ResumeState | None:
    """Newest complete step checkpoint in run_dir, or None."""
    dirs = _step_dirs(Path(run_dir))
    if not dirs:
        return None
    path = max(dirs, key=lambda p: int(p.name.split("_")[1]))
    meta = json.loads((path / "meta.json").read_text())
    return ResumeState(step=int(meta["step"]), path=path, meta=meta)


def load_trainer_state(
    ckpt: ResumeState, optimizer: torch.optim.Optimizer | None, scheduler: Any | None
) -> None:
    """Restore optimizer, scheduler and RNG states (model weights load separately)."""
    state = torch.load(ckpt.path / "trainer_state.pt", weights_only=False)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])


def keep_metrics_until(path: Path, step: int | None) -> list[dict[str, Any]]:
    """Keep the metric records of steps <= step (None: keep none), rewrite the file, return them.

    A run killed after logging a step but before checkpointing it left lines that the resumed
    run will log again.
    """
    records: list[dict[str, Any]] = []
    if step is not None and path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        records = [r for r in map(json.loads, lines) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def check_resume_compatible(ckpt: ResumeState, current: dict[str, Any], keys: list[str]) -> None:
    """Stop when a resumed run's config disagrees with the checkpoint on a result-changing key."""
    saved = ckpt.meta.get("config", {})
    for key in keys:
        if key in saved and saved[key] != current.get(key):
            raise ConfigError(
                f"cannot resume from {ckpt.path}: it was run with {key}={saved[key]!r} but the "
                f"config now says {key}={current.get(key)!r}; use the same value or a new run_dir"
            )


def start_run(cfg: RunConfig) -> tuple[Path, ResumeState | None]:
    """Create cfg.run_dir, set torch's CPU threads (None: keep its default), seed everything and
    find the checkpoint to resume from. Returns (run dir, checkpoint or None)."""
    path = Path(cfg.run_dir)
    path.mkdir(parents=True, exist_ok=True)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    return path, find_resume(path, cfg)


def find_resume(run_dir: Path, cfg: RunConfig) -> ResumeState | None:
    """The checkpoint to resume from (None when cfg.resume is off or there is none), checked
    against the config on the result-changing keys."""
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        check_resume_compatible(ckpt, cfg.model_dump(mode="json"), list(cfg.resume_keys))
    return ckpt


def run_meta(recipe: str, cfg: RunConfig, data_position: int) -> dict[str, Any]:
    """What a checkpoint's meta.json records besides the step: recipe, data position, config."""
    return {"recipe": recipe, "data_position": data_position, "config": cfg.model_dump(mode="json")}


class MetricsLog:
    """`<run_dir>/metrics.jsonl` of a run: trimmed to the resumed step, then one record a step."""

    def __init__(self, path: Path, resumed_step: int | None, write: bool = True) -> None:
        self.path = path
        self.write = write  # False: a learner process other than rank 0 keeps records only
        self.records = keep_metrics_until(path, resumed_step) if write else []

    def append(self, record: dict[str, Any]) -> None:
        """Keep record and append it to the file as one JSON line."""
        self.records.append(record)
        if self.write:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def restore_run(
    run_dir: Path,
    cfg: RunConfig,
    resume: ResumeState | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    write: bool = True,
) -> tuple[int, MetricsLog]:
    """Continue where resume left off (optimizer, scheduler and RNG states), trim the metrics log
    to its step and write the resolved config (`write`: this process writes the run's files).
    Returns (first step to run, the metrics log)."""
    start_step = 0
    if resume is not None:
        load_trainer_state(resume, optimizer, scheduler)
        start_step = resume.step
    resumed = start_step if resume is not None else None
    metrics = MetricsLog(run_dir / "metrics.jsonl", resumed, write=write)
    if write:
        dump_config(cfg, run_dir / "config.yaml")
    return start_step, metrics


class RunSummary(BaseModel):
    """What a finished run hands back, the same for every recipe (the CLI prints it as JSON)."""

    recipe: str  # sft, dpo, rm or grpo
    run_dir: str
    final_dir: str
    steps: int
    resumed_from_step: int | None  # None: the run started at step 0
    train_examples: int  # chats, pairs or tasks trained on
    eval_examples: int  # held-out chats, pairs or tasks
    skipped_too_long: int  # examples left out because their answer starts past max_seq_len
    last_metrics: dict[str, float]  # the last step's metrics record
    evals: list[dict[str, float]]  # every held-out evaluation, in order: its step and eval/* keys
    seconds: float

    @classmethod
    def from_run(
        cls,
        recipe: str,
        final_dir: Path,
        steps: int,
        resume: ResumeState | None,
        metrics: MetricsLog,
        *,
        train_examples: int,
        eval_examples: int,
        started: float,
        skipped_too_long: int = 0,
    ) -> RunSummary:
        """The summary of a run whose final/ is final_dir; `started`: its time.perf_counter()."""
        evals = [
            {k: v for k, v in r.items() if k == "step" or k.startswith("eval/")}
            for r in metrics.records
            if any(k.startswith("eval/") for k in r)
        ]
        return cls(
            recipe=recipe,
            run_dir=str(final_dir.parent),
            final_dir=str(final_dir),
            steps=steps,
            resumed_from_step=resume.step if resume is not None else None,
            train_examples=train_examples,
            eval_examples=eval_examples,
            skipped_too_long=skipped_too_long,
            last_metrics=metrics.records[-1] if metrics.records else {},
            evals=evals,
            seconds=time.perf_counter() - started,
        )
