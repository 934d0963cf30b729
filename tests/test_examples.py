"""Every example config in examples/ and every YAML config block in README.md and docs/*.md
loads with the config class of the command it is for, through the loader the CLI uses.

Conventions (a new example or doc block that follows none of them fails here, saying what to add):
- An example names its command in its opening comments, as the line that runs it:
  `ownlm <command> --config examples/<file>`. It is loaded with that command's config class by
  `load_config`, as `ownlm <command> --config examples/<file>` would load it. An example that is
  one section of a command's config (`router_policies.yaml` is the gateway's `router:`) is listed
  in SECTIONS and loaded with that section's class.
- A YAML block in a doc is listed in DOC_BLOCKS, in order, as (command, base, where): the block
  is merged onto `base` (an example file, a mapping, or None for a block that is a whole config)
  under the dotted key `where` ("" for the top level), nested mappings merged key by key, and the
  result loaded with the command's config class. A block that repeats a top-level key lists
  alternatives (`reward: ...` once per kind of verifier); each one is checked on its own.
- Every `examples/<file>` (or glob) that README.md or docs/*.md name exists.
"""

from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ownlm.cli import COMMANDS
from ownlm.config import Config, load_config, models_in, validate_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DOCS = [ROOT / "README.md"] + sorted(
    p
    for p in (ROOT / "docs").glob("*.md")
    if p.name != "gateway.md"  # the gateway's own tests
)
# example -> (command, the section of its config class the example is)
SECTIONS = {"router_policies.yaml": ("serve", "router")}
# a prompt-set env: where the reward sources of docs/rewards.md are set
PROMPT_SET_GRPO = {"env": {"kind": "prompt_set", "train_path": "data/rl_train.jsonl"}}
# doc -> its YAML blocks in order: (command, base, where)
DOC_BLOCKS: dict[str, list[tuple[str, str | dict[str, Any] | None, str]]] = {
    "README.md": [("serve", "examples/ownlm.yaml", "")],
    "docs/export.md": [("export", None, "")],
    "docs/scale.md": [("serve", "examples/ownlm.yaml", "")],
    "docs/rewards.md": [
        ("train grpo", PROMPT_SET_GRPO, "env"),
        ("train grpo", PROMPT_SET_GRPO, "env"),
        ("train grpo", PROMPT_SET_GRPO, "env"),
    ],
}


def config_class(command: str) -> type[Config]:
    """The config class `ownlm <command>` loads (ownlm/cli.py's table)."""
    module_name, cls_name, _, _ = COMMANDS[command]
    return getattr(importlib.import_module(module_name), cls_name)


def example_command(path: Path) -> str:
    """The command an example's opening comments run it with."""
    pattern = rf"ownlm ((?:[a-z]+ )*?[a-z]+) --config examples/{re.escape(path.name)}\b"
    match = re.search(pattern, path.read_text())
    assert match is not None, (
        f"{path.name}: say which command runs it in its opening comments, as "
        f"`ownlm <command> --config examples/{path.name}`, or list it in SECTIONS"
    )
    assert match.group(1) in COMMANDS, f"{path.name}: no command 'ownlm {match.group(1)}'"
    return match.group(1)


def yaml_blocks(doc: Path) -> list[str]:
    """The ```yaml blocks of a markdown file, in order."""
    return re.findall(r"^```ya?ml\n(.*?)^```", doc.read_text(), re.MULTILINE | re.DOTALL)


def alternatives(block: str) -> list[dict[str, Any]]:
    """The block as one mapping, or, when it repeats a top-level key, one mapping per entry."""
    entries = re.split(r"^(?=[^\s#])", block, flags=re.MULTILINE)
    entries = [e for e in entries if e.strip() and not e.lstrip().startswith("#")]
    keys = [e.split(":", 1)[0] for e in entries]
    parts = entries if len(set(keys)) < len(keys) else [block]
    out = []
    for part in parts:
        data = yaml.safe_load(part)
        assert isinstance(data, dict), f"not a mapping: {part!r}"
        out.append(data)
    return out


def merged(base: dict[str, Any], where: str, block: dict[str, Any]) -> dict[str, Any]:
    """base with block merged in at the dotted key where (mappings key by key)."""
    out = copy.deepcopy(base)
    node = out
    for part in [p for p in where.split(".") if p]:
        node = node.setdefault(part, {})
    stack = [(node, block)]
    while stack:
        into, new = stack.pop()
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                stack.append((into[key], value))
            else:
                into[key] = copy.deepcopy(value)
    return out


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the examples name their data files relative to the repo root


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_with_its_commands_config_class(path: Path) -> None:
    if path.name in SECTIONS:
        command, section = SECTIONS[path.name]
        field = config_class(command).model_fields[section]
        (cls,) = models_in(field.annotation)
        load_config(cls, path)
        return
    cfg = load_config(config_class(example_command(path)), path)
    assert cfg.model_fields_set, f"{path.name} sets no key"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_config_block_loads(doc: Path) -> None:
    name = str(doc.relative_to(ROOT))
    blocks = yaml_blocks(doc)
    listed = DOC_BLOCKS.get(name, [])
    assert len(blocks) == len(listed), (
        f"{name} has {len(blocks)} YAML blocks and DOC_BLOCKS lists {len(listed)}: list each "
        "block as (command, the example or mapping it extends or None, the key it goes under)"
    )
    for number, (block, (command, base, where)) in enumerate(
        zip(blocks, listed, strict=True), start=1
    ):
        if isinstance(base, str):
            base_data = yaml.safe_load((ROOT / base).read_text())
        else:
            base_data = base or {}
        for data in alternatives(block):
            source = f"{name} YAML block {number}"
            validate_config(config_class(command), merged(base_data, where, data), source)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_a_doc_names_exists(doc: Path) -> None:
    named = set(re.findall(r"examples/[\w./*-]*\w", doc.read_text()))  # `pairs_*.jsonl` too
    missing = sorted(n for n in named if not any(ROOT.glob(n)))
    assert not missing, f"{doc.name} names {missing}, which are not in the repository"


def test_a_renamed_recipe_key_in_a_documented_config_is_refused_with_its_new_name(
    tmp_path: Path,
) -> None:
    """An example written for an older ownlm stops with the new name, not a near-miss guess."""
    from ownlm.errors import ConfigError

    old = (ROOT / "examples" / "sft.yaml").read_text().replace("\nsteps:", "\nmax_steps:")
    (tmp_path / "sft.yaml").write_text(old)
    with pytest.raises(ConfigError, match="'max_steps'; max_steps was renamed steps"):
        load_config(config_class("train sft"), tmp_path / "sft.yaml")
