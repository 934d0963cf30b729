"""`ownlm <command> --help` lists every config key; an unknown --set key names the near one."""

from __future__ import annotations

import importlib
import re

import pytest

from ownlm.cli import COMMANDS, main
from ownlm.config_keys import default_text, describe_config, format_config_keys, type_name


def _help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _must_not_run(cfg: object) -> None:
    pytest.fail(f"the command ran with {cfg!r}")


def _entry(text: str, key: str) -> str:
    """The lines of one key: its head line and its description, joined by spaces."""
    match = re.search(rf"^  {re.escape(key)}  (.*\n(?:      .*\n)*)", text, re.MULTILINE)
    assert match is not None, f"{key} is not in the help"
    return " ".join(line.strip() for line in match.group(1).splitlines())


def test_train_sft_help_lists_nested_keys_with_defaults_and_descriptions(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "train", "sft")
    assert "config keys" in text
    assert _entry(text, "steps") == "int = 50 optimizer steps"
    assert _entry(text, "train_file").startswith("str (required) training JSONL")
    assert _entry(text, "lora.r") == "int = 16 adapter rank"
    # a subclass that only changes a default keeps the shared field's description
    assert _entry(text, "run_dir").startswith("str = runs/sft checkpoints")
    assert "lr_schedule  {constant,cosine} = cosine" in text


def test_train_grpo_help_lists_env_keys_of_every_kind(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "train", "grpo")
    assert _entry(text, "env.task_kwargs.max_terms") == "int = 2"
    assert _entry(text, "env.task") == "str = chain_sum reasoning-gym task name, e.g. chain_sum"
    assert _entry(text, "group_size").startswith("int = 4 samples per prompt")
    assert "env, kind prompt_set:" in text and "env, kind search:" in text
    assert _entry(text, "env.reward.function").startswith("str = exact")  # prompt_set's reward
    assert _entry(text, "lora").startswith("LoraSpec | null = null")


def test_demo_help_lists_the_loop_stages_keys_without_the_ones_the_loop_sets(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "demo")
    assert _entry(text, "baseline_requests").startswith("int = 400 traffic before")
    assert _entry(text, "loop.sft.steps") == "int = 50 optimizer steps"
    assert _entry(text, "loop.grpo.group_size").startswith("int = 4")
    assert _entry(text, "loop.domain_problems").startswith("int = 100")
    for owned in ("loop.sft.train_file", "loop.grpo.env", "loop.alias", "loop.gate.candidate"):
        assert f"  {owned}  " not in text
    assert "set elsewhere: model, train_file, eval_file, run_dir" in text


def test_serve_help_lists_named_entries_and_the_own_engine_defaults(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "serve")
    assert _entry(text, "upstreams.<name>.timeout_s") == (
        "float = 60.0 whole reply; for streams, between chunks"
    )
    assert _entry(text, "models.<name>.upstream") == "str (required) a name in upstreams"
    assert _entry(text, "port") == "int = 8400 port to listen on"
    # own_engine's defaults are its default instance's (llama_cpp), not UpstreamConfig's (openai)
    assert _entry(text, "own_engine.kind").startswith("{openai,llama_cpp,local} = llama_cpp")
    assert "router.routes.<name>.policies[], kind rule:" in text


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_exits_0_and_lists_its_keys(command, capsys, monkeypatch):
    module_name, cfg_name, _, _ = COMMANDS[command]
    cls = getattr(importlib.import_module(module_name), cfg_name)
    text = _help(capsys, monkeypatch, *command.split())
    assert "config keys" in text
    for name in cls.model_fields:
        assert re.search(rf"^  {re.escape(name)}  ", text, re.MULTILINE), (command, name)
    assert all(len(line) <= 100 for line in text.splitlines()), command
    narrow = format_config_keys(cls, width=60)
    assert max(len(line) for line in narrow.splitlines()) <= 60, command


def test_defaults_types_and_long_values_are_written_as_yaml_and_abbreviated():
    assert default_text(None) == "null" and default_text(True) == "true"
    assert default_text("") == '""' and default_text("a\nb") == '"a\\nb"'
    assert default_text({"a": 1, "b": [1, 2]}) == "{a: 1, b: [1, 2]}"
    long = default_text("x" * 100)
    assert len(long) == 40 and long.endswith("...")
    assert type_name(int | None) == "int | null"
    assert type_name(dict[str, list[int]]) == "dict[str, list[int]]"


def test_a_class_seen_twice_is_listed_once():
    from ownlm.eval.gate import GateConfig

    sections = describe_config(GateConfig)
    assert [s.same_as for s in sections if s.title.startswith("general[]")] == ["domain"]
    assert "general[]: the keys of domain above" in format_config_keys(GateConfig, width=80)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "sft", "--set", "stpes=3"], "unknown key 'stpes'; did you mean 'steps'?"),
        # a key an older ownlm had is refused with its new name, in every recipe
        (["train", "sft", "--set", "max_steps=3"], "max_steps was renamed steps"),
        (["train", "rm", "--set", "keep_last_checkpoints=3"], "was renamed keep_checkpoints"),
        (["train", "grpo", "--set", "grad_clip=1"], "grad_clip was renamed max_grad_norm"),
        (["train", "grpo", "--set", "checkpoint_every_steps=2"], "renamed save_every_steps"),
        (
            ["loop", "--set", "name=a", "--set", "alias=b", "--set", "sft.max_steps=3"],
            "sft: unknown key 'max_steps'; max_steps was renamed steps",
        ),
        (["train", "sft", "--set", "lora.rr=8"], "unknown key 'rr' in lora; did you mean 'r'?"),
        (
            ["train", "grpo", "--set", "env.task_kwarg={}"],
            "unknown key 'task_kwarg' in env; did you mean 'task_kwargs'?",
        ),
        (
            ["serve", "--set", "upstreams.api.timout_s=3"],
            "unknown key 'timout_s' in upstreams.api; did you mean 'timeout_s'?",
        ),
        (
            ["serve", "--set", "router.routes.a.policies=[{kind: difficulty, treshold: 0.5}]"],
            "unknown key 'treshold' in router.routes.a.policies.0; did you mean 'threshold'?",
        ),
        # checked when the demo config loads, before any traffic or training
        (["demo", "--set", "loop.sft.max_stpes=3"], "sft: unknown key 'max_stpes'; did you mean"),
    ],
)
def test_unknown_set_key_names_the_closest_known_key(argv, message, capsys, monkeypatch):
    command = " ".join(w for w in argv[:2] if not w.startswith("-"))
    module_name, _, fn_name, _ = COMMANDS[command if command in COMMANDS else argv[0]]
    if ":" in fn_name:  # the function lives in another module than the config class
        module_name, fn_name = fn_name.split(":")
    # the command itself must never start (the demo would wipe runs/demo, serve would listen)
    monkeypatch.setattr(importlib.import_module(module_name), fn_name, _must_not_run)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
