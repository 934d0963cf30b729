"""Env configs as one tagged union, and `make_env` that builds the env a config names.

Recipes and eval take `env: EnvConfig`; the `kind` key picks the env (`reasoning_gym` when the
key is absent, so configs written before other envs existed keep working):

    env: {kind: reasoning_gym, task: chain_sum}
    env: {kind: prompt_set, train_path: data/rl_train.jsonl, test_path: data/rl_eval.jsonl}
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag

from ownlm.envs.base import Env, MultiTurnEnv
from ownlm.envs.prompt_set import PromptSetConfig, PromptSetEnv
from ownlm.envs.reasoning_gym import ReasoningGymConfig, ReasoningGymEnv
from ownlm.envs.search.env import SearchConfig, SearchEnv


def _env_kind(value: Any) -> str:
    kind = value.get("kind", "reasoning_gym") if isinstance(value, dict) else value.kind
    return str(kind)


EnvConfig = Annotated[
    Annotated[ReasoningGymConfig, Tag("reasoning_gym")]
    | Annotated[PromptSetConfig, Tag("prompt_set")]
    | Annotated[SearchConfig, Tag("search")],
    Discriminator(_env_kind),
]


def default_env() -> EnvConfig:
    """The default env of recipes and eval: the reasoning-gym task of docs/task_choice.md."""
    return ReasoningGymConfig()


def env_field() -> Any:
    """The `env` field of a recipe or eval config: default env, `kind` picks the env."""
    return Field(default_factory=default_env, description="which env; `kind` picks it")


def make_env(cfg: EnvConfig) -> Env | MultiTurnEnv:
    """The env a config describes."""
    if isinstance(cfg, SearchConfig):
        return SearchEnv(cfg)
    if isinstance(cfg, PromptSetConfig):
        return PromptSetEnv(cfg)
    return ReasoningGymEnv(cfg)
