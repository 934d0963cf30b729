"""One shape for every recipe's config: the shared keys come from RunConfig, under one name, and
the names they had before are refused with the new one."""

from __future__ import annotations

import pytest

from ownlm.config import load_config
from ownlm.errors import ConfigError
from ownlm.train.dpo import DPOConfig
from ownlm.train.grpo import GRPOConfig
from ownlm.train.recipe_config import RunConfig
from ownlm.train.reward_model import RewardModelConfig
from ownlm.train.sft import SFTConfig

RECIPES = [SFTConfig, DPOConfig, RewardModelConfig, GRPOConfig]
REQUIRED = {"train_file": "x.jsonl"}  # the file recipes' one required key


@pytest.mark.parametrize("cls", RECIPES, ids=lambda c: c.__name__)
def test_every_recipe_has_the_shared_keys_and_resume_keys(cls: type[RunConfig]) -> None:
    assert issubclass(cls, RunConfig)
    assert set(RunConfig.model_fields) <= set(cls.model_fields)
    assert set(RunConfig.resume_keys) <= set(cls.resume_keys) <= set(cls.model_fields)


@pytest.mark.parametrize("cls", RECIPES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("old", sorted(RunConfig.renamed_keys))
def test_an_old_key_is_refused_with_its_new_name(cls: type[RunConfig], old: str) -> None:
    new = RunConfig.renamed_keys[old]
    extra = [f"{k}={v}" for k, v in REQUIRED.items() if k in cls.model_fields]
    with pytest.raises(ConfigError, match=f"unknown key '{old}'; {old} was renamed {new}"):
        load_config(cls, None, [*extra, f"{old}=3"])


def test_save_every_steps_0_saves_at_the_last_step_only_and_steps_must_be_positive() -> None:
    assert load_config(GRPOConfig, None, ["save_every_steps=0"]).save_every_steps == 0
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        load_config(SFTConfig, None, ["train_file=x.jsonl", "steps=0"])
    with pytest.raises(ConfigError, match="keep_checkpoints must be at least 1"):
        load_config(GRPOConfig, None, ["keep_checkpoints=0"])
