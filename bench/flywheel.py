"""The whole flywheel on a chosen reasoning-gym task, and the app's outcome, one row per task.

    .venv/bin/python bench/flywheel.py --task leg_counting
    .venv/bin/python bench/flywheel.py --task 'chain_sum:{min_terms: 2, max_terms: 2}' \\
        --task word_sequence_reversal --task aiw --set baseline_requests=400

`--task NAME:{...}` gives that task's generator settings (`task_kwargs`, YAML); without them the
generator's own defaults are used. Every other setting is the same for every task: the demo's,
plus `loop.replay_general=400` (the start model's right answers on 400 general prompts join the
SFT data: without it, full fine-tuning on a narrow task forgot the gate's general arithmetic and
the gate refused it; docs/flywheel.md has both runs). `--set loop.replay_general=0` turns it off.

Each task runs `ownlm demo` (examples/flywheel_demo.yaml, no per-task tuning beyond config) in
runs/flywheel-<task>/: the app's traffic on the paid-API stand-in (the scripted solver for
leg_counting, an ORACLE of the generator's own answers for any other task), one loop cycle
(export, SFT, GRPO, gate, promote with the calibrated routing), the A/B test, the report. The
table gives, per task: the own model's held-out domain accuracy (alone), the routed system's
success on the live A/B and after-promotion traffic against the paid API's before, the share of
requests the own model answered, cost per success and TFP (value per token and per dollar),
before and after.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import yaml

from ownlm.config import load_config
from ownlm.demo.flywheel import DemoConfig, run_demo
from ownlm.errors import OwnlmError


def parse_task(spec: str) -> tuple[str, dict[str, Any] | None]:
    """`NAME` or `NAME:{yaml mapping}` -> (name, task_kwargs or None)."""
    name, sep, kwargs = spec.partition(":")
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise SystemExit(f"error: --task {spec!r}: expected NAME or NAME:{{key: value, ...}}")
    if not sep:
        return name, None
    try:
        parsed = yaml.safe_load(kwargs)
    except yaml.YAMLError as err:
        raise SystemExit(f"error: --task {spec!r}: the settings are not YAML: {err}") from None
    if not isinstance(parsed, dict):
        raise SystemExit(f"error: --task {spec!r}: the settings must be a mapping, e.g. {{k: 1}}")
    return name, parsed


def run_task(config: str, spec: str, overrides: list[str]) -> dict[str, Any]:
    task, kwargs = parse_task(spec)
    sets = [
        f"task={task}", f"work_dir=runs/flywheel-{task}", "alias=app",
        "loop.replay_general=400", *overrides,
    ]  # fmt: skip
    if kwargs is not None:
        sets.append(f"task_kwargs={json.dumps(kwargs)}")
    return run_demo(load_config(DemoConfig, config, sets))


def row(task: str, f: dict[str, Any]) -> dict[str, Any]:
    g, r = f["gate"], f["report"]
    before, after = r.get("before", {}), r.get("after", {})
    return {
        "task": task,
        "own_accuracy": g.get("domain_candidate"),
        "promoted": g["promote"],
        "paid_success_before": before.get("success_rate"),
        "routed_success_after": after.get("success_rate"),
        "own_share_after": after.get("own_request_share"),
        "cost_per_success_before": before.get("cost_per_success_usd"),
        "cost_per_success_after": after.get("cost_per_success_usd"),
        "tfp_before": before.get("tfp_usd_per_mtok"),
        "tfp_after": after.get("tfp_usd_per_mtok"),
        "value_per_usd_before": before.get("value_per_usd"),
        "value_per_usd_after": after.get("value_per_usd"),
        "minutes": f["total_minutes"],
    }


def fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--task", action="append", required=True,
        help="reasoning-gym task name, optionally NAME:{generator settings as YAML}",
    )  # fmt: skip
    ap.add_argument("--config", default="examples/flywheel_demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    args = ap.parse_args()
    rows = []
    for task in args.task:
        try:
            rows.append(row(task.partition(":")[0], run_task(args.config, task, args.overrides)))
        except OwnlmError as err:
            raise SystemExit(f"error: task {task}: {err}") from None
    print("\nflywheel, one cycle per task (measured in this run)")
    head = (
        "task",
        "own acc",
        "promoted",
        "paid before",
        "routed after",
        "own share",
        "$/success before",
        "after",
        "TFP before",
        "after",
        "value/$ before",
        "after",
        "min",
    )
    print(" | ".join(head))
    for r in rows:
        print(" | ".join([
            r["task"], fmt(r["own_accuracy"], ".3f"), str(r["promoted"]),
            fmt(r["paid_success_before"], ".3f"), fmt(r["routed_success_after"], ".3f"),
            fmt(r["own_share_after"], ".2f"), fmt(r["cost_per_success_before"], ".6f"),
            fmt(r["cost_per_success_after"], ".6f"), fmt(r["tfp_before"], ".3f"),
            fmt(r["tfp_after"], ".3f"), fmt(r["value_per_usd_before"], ".2f"),
            fmt(r["value_per_usd_after"], ".2f"), fmt(r["minutes"], ".1f"),
        ]))  # fmt: skip
    Path("runs").mkdir(exist_ok=True)
    Path("runs/flywheel.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
