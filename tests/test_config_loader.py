"""Config loader: unknown keys name the file, the key and the closest known key; overrides parse."""

from __future__ import annotations

import pytest

from ownlm.config import Config, load_config, parse_override
from ownlm.errors import ConfigError


class When(Config):
    user: str | None = None
    tier: str | None = None


class Policy(Config):
    when: When = When()


class Root(Config):
    learning_rate: float = 1e-5
    steps: int = 10
    routes: dict[str, list[Policy]] = {}


def test_unknown_top_level_key_suggests_closest(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lerning_rate: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"train.yaml: unknown key 'lerning_rate'; did you mean 'learning_rate'\?"
    ):
        load_config(Root, path)


def test_unknown_nested_key_inside_list_and_dict(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("routes:\n  chat:\n    - when: {usr: alice}\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'usr' in routes.chat.0.when; did you mean 'user'"
    ):
        load_config(Root, path)


def test_overrides_are_yaml_typed_and_validated():
    cfg = load_config(Root, None, ["steps=3", "learning_rate=2e-4"])
    assert cfg.steps == 3 and cfg.learning_rate == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match="steps"):
        load_config(Root, None, ["steps=many"])
    with pytest.raises(ConfigError, match="has no '='"):
        parse_override("steps")


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Root, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Root, bad)


def test_frozen():
    cfg = Root()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        cfg.steps = 3  # type: ignore[misc]
