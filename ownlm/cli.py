"""`ownlm` command: one thin subcommand per stage; each loads a config class and calls one function.

ownlm train grpo --config examples/grpo_demo.yaml --set lr=1e-5
ownlm eval --set model=runs/grpo/final --set n_problems=200
ownlm serve --config ownlm.yaml
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from ownlm.errors import OwnlmError

# subcommand -> (module, config class, function). The function takes the validated config and
# returns something JSON-able (a summary) or None. Imports are lazy so `ownlm --help` is instant.
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "train sft": (
        "ownlm.train.sft",
        "SFTConfig",
        "train_sft",
        "supervised fine-tuning on chat JSONL",
    ),
    "train dpo": ("ownlm.train.dpo", "DPOConfig", "train_dpo", "direct preference optimisation"),
    "train grpo": ("ownlm.train.grpo", "GRPOConfig", "train_grpo", "RL with verifiable rewards"),
    "train rm": (
        "ownlm.train.reward_model",
        "RewardModelConfig",
        "train_reward_model",
        "reward model (Bradley-Terry) on preference-pair JSONL",
    ),
    "eval": ("ownlm.eval.accuracy", "EvalConfig", "run_eval", "held-out accuracy with a 95%% CI"),
    "gate": (
        "ownlm.eval.gate",
        "GateConfig",
        "gate_command",
        "candidate vs incumbent: domain gain, general regression; records the decision",
    ),
    "demo": (
        "ownlm.demo.flywheel",
        "DemoConfig",
        "demo_command",
        "the whole flywheel offline: app traffic, loop, A/B, report (make demo)",
    ),
    "loop": (
        "ownlm.loop",
        "LoopConfig",
        "run_loop",
        "one flywheel cycle: export, train, register, gate, promote (resumable)",
    ),
    "promote": (
        "ownlm.router.deploy",
        "PromoteConfig",
        "promote_command",
        "serve a gated model version as a canary arm of an A/B test",
    ),
    "rollback": (
        "ownlm.router.deploy",
        "RollbackConfig",
        "rollback_command",
        "restore an alias's routing before its newest deployment",
    ),
    "models convert": (
        "ownlm.models.convert",
        "ConvertConfig",
        "convert_model",
        "convert the pip-shipped GGUF to a trainable safetensors dir",
    ),
    "models export": (
        "ownlm.models.gguf",
        "ExportGGUFConfig",
        "export_command",
        "GGUF files (f16, q8_0, ...) and an Ollama Modelfile for llama.cpp and Ollama",
    ),
    "serve": (
        "ownlm.gateway.server",
        "GatewayConfig",
        "ownlm.cli:serve",
        "OpenAI-compatible gateway (and its live dashboard)",
    ),
    "export": (
        "ownlm.data.export",
        "ExportConfig",
        "export",
        "traces to SFT chats, preference pairs and RL prompt sets (JSONL)",
    ),
    "router train": (
        "ownlm.router.classifier",
        "ClassifierTrainConfig",
        "train_classifier",
        "train the difficulty classifier from labelled traces",
    ),
    "report": (
        "ownlm.report.summary",
        "ReportConfig",
        "print_report",
        "TFP, cost per success, own-model share and savings; HTML dashboard",
    ),
    "router labels": (
        "ownlm.router.difficulty_set",
        "DifficultySetConfig",
        "write_difficulty_set",
        "write an offline easy/hard labelled set from reasoning-gym",
    ),
}


def serve(cfg: Any) -> None:
    """`ownlm serve`: the gateway, with the report stage's live dashboard at GET /dashboard (the
    gateway itself does not import the report)."""
    from ownlm.gateway.server import serve as serve_gateway
    from ownlm.report.dashboard import live_dashboard

    serve_gateway(cfg, dashboard=live_dashboard)


class _CommandParser(argparse.ArgumentParser):
    """A parser whose --help ends with its config class's keys, imported only when shown."""

    config_source: tuple[str, str] | None = None  # (module, config class)

    def format_help(self) -> str:
        if self.config_source is not None and self.epilog is None:
            from ownlm.config_keys import format_config_keys

            module_name, cfg_name = self.config_source
            self.epilog = format_config_keys(
                getattr(importlib.import_module(module_name), cfg_name)
            )
        return super().format_help()


def _build_parser() -> argparse.ArgumentParser:
    parser = _CommandParser(prog="ownlm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for ownlm errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, Any] = {}
    for name, (module_name, cfg_name, _, help_text) in COMMANDS.items():
        words = name.split()
        target = sub
        if len(words) == 2:
            if words[0] not in groups:
                grp = sub.add_parser(words[0], help=f"{words[0]} subcommands")
                groups[words[0]] = grp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            target = groups[words[0]]
        p = target.add_parser(
            words[-1],
            help=help_text,
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.config_source = (module_name, cfg_name)
        p.set_defaults(_key=name)
        p.add_argument("--config", "-c", help="YAML config file")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key (repeatable), e.g. --set lr=1e-5; keys are listed below",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    key = getattr(args, "_key", None)
    if key is None:
        parser.print_help()
        return 2
    module_name, cfg_name, fn_name, _ = COMMANDS[key]
    try:
        from ownlm.config import load_config

        module = importlib.import_module(module_name)
        cfg = load_config(getattr(module, cfg_name), args.config, args.overrides)
        if ":" in fn_name:  # a function of another module than the config class's
            fn_module, fn_name = fn_name.split(":")
            module = importlib.import_module(fn_module)
        result = getattr(module, fn_name)(cfg)
    except OwnlmError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if result is not None and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 says it
        dump = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
        print(json.dumps(dump, indent=2, default=str))
    return 0
