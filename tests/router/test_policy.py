"""Router policies: rules pick as configured, config errors are ConfigErrors, difficulty policy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ownlm.config import validate_config
from ownlm.errors import ConfigError
from ownlm.router.classifier import save_classifier
from ownlm.router.policy import (
    Decision,
    Router,
    RouterConfig,
    RouteRequest,
    route_text,
)

VARIANTS = ["small", "strong", "long-ctx", "small-v2"]


def make_router(data: dict[str, Any], **kwargs: Any) -> Router:
    return Router(validate_config(RouterConfig, data, "ownlm.yaml"), **kwargs)


def req(**kw: Any) -> RouteRequest:
    base: dict[str, Any] = dict(
        alias="auto", user="alice", tags={}, prompt_tokens=100, n_messages=1
    )
    base.update(kw)
    return RouteRequest(**base)


RULES = {
    "variants": VARIANTS,
    "routes": {
        "auto": {
            "default": "small",
            "policies": [
                {
                    "kind": "rule",
                    "name": "paying",
                    "when": {"tags": {"tier": ["pro", "team"]}},
                    "variant": "strong",
                },
                {"kind": "rule", "when": {"min_prompt_tokens": 4000}, "variant": "long-ctx"},
                {
                    "kind": "rule",
                    "when": {"min_messages": 10, "max_prompt_tokens": 3999},
                    "variant": "strong",
                },
                {"kind": "rule", "when": {"users": ["tester"]}, "variant": "small-v2"},
            ],
        }
    },
}


def test_rules_pick_in_order() -> None:
    r = make_router(RULES)
    assert r.decide(req(tags={"tier": "pro"})).variant == "strong"
    assert r.decide(req(tags={"tier": "team"}, prompt_tokens=9000)).variant == "strong"  # 1st wins
    assert r.decide(req(tags={"tier": "free"}, prompt_tokens=4000)).variant == "long-ctx"
    assert r.decide(req(prompt_tokens=3999)).variant == "small"  # bound is inclusive
    assert r.decide(req(n_messages=10)).variant == "strong"
    assert r.decide(req(n_messages=9)).variant == "small"
    assert r.decide(req(user="tester")).variant == "small-v2"
    assert r.decide(req(user=None)).variant == "small"


def test_reasons_say_which_rule() -> None:
    r = make_router(RULES)
    d = r.decide(req(tags={"tier": "pro"}))
    assert d == Decision("strong", "rule paying: tags.tier in ['pro', 'team']", None, None)
    assert r.decide(req(prompt_tokens=5000)).reason == "rule auto[1]: min_prompt_tokens=4000"
    assert r.decide(req()).reason == "auto: no policy matched; default"


def test_unrouted_alias_passes_through() -> None:
    d = make_router(RULES).decide(req(alias="gpt-4o"))
    assert (d.variant, d.experiment) == ("gpt-4o", None)


def test_experiment_policy_assigns_arm() -> None:
    data = {
        "variants": VARIANTS,
        "experiments": {"v2": {"arms": {"small": 0.5, "small-v2": 0.5}}},
        "routes": {
            "auto": {
                "default": "small",
                "policies": [
                    {"kind": "rule", "when": {"tags": {"tier": ["pro"]}}, "variant": "strong"},
                    {"kind": "experiment", "experiment": "v2"},
                ],
            }
        },
    }
    r = make_router(data)
    assert r.decide(req(tags={"tier": "pro"})).experiment is None
    d = r.decide(req(user="alice"))
    assert d.experiment == "v2" and d.arm == d.variant and d.variant in ("small", "small-v2")
    assert all(r.decide(req(user="alice")) == d for _ in range(20))  # sticky


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (
            {"variants": ["small"], "routes": {"a": {"default": "smal"}}},
            "routes.a.default names unknown variant 'smal'",
        ),
        (
            {
                "variants": ["small"],
                "routes": {
                    "a": {
                        "default": "small",
                        "policies": [{"kind": "rule", "when": {}, "variant": "big"}],
                    }
                },
            },
            "routes.a.policies[0] names unknown variant 'big'",
        ),
        (
            {
                "routes": {
                    "a": {
                        "default": "small",
                        "policies": [{"kind": "experiment", "experiment": "nope"}],
                    }
                }
            },
            "unknown experiment 'nope'",
        ),
        ({"experiments": {"e": {"arms": {"a": 0.7, "b": 0.5}}}}, "arm weights sum to 1.2"),
        ({"experiments": {"e": {"arms": {"a": 1.5, "b": -0.5}}}}, "arm weights must be >= 0"),
        ({"experiments": {"e": {"arms": {"a": 1.0}}}}, "at least 2 arms"),
        (
            {"experiments": {"e": {"arms": {"a": 0.5, "b": 0.5}, "min_exploration": 0.6}}},
            "min_exploration",
        ),
        (
            {
                "routes": {
                    "a": {
                        "default": "s",
                        "policies": [
                            {
                                "kind": "difficulty",
                                "classifier": "c",
                                "threshold": 1.5,
                                "variant": "s",
                            }
                        ],
                    }
                }
            },
            "threshold",
        ),
        (
            {
                "routes": {
                    "a": {
                        "default": "s",
                        "policies": [
                            {
                                "kind": "rule",
                                "when": {"min_messages": 5, "max_messages": 2},
                                "variant": "s",
                            }
                        ],
                    }
                }
            },
            "min_messages (5) is above max_messages (2)",
        ),
        (
            {"routes": {"a": {"default": "s", "policies": [{"kind": "rules", "variant": "s"}]}}},
            "'rules'",
        ),
        ({"rotues": {}}, "did you mean 'routes'"),
    ],
)
def test_config_errors(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(RouterConfig, data, "ownlm.yaml")
    assert needle in str(info.value)


def test_known_variants_checked_by_router() -> None:
    cfg = validate_config(RouterConfig, RULES, "ownlm.yaml")
    with pytest.raises(ConfigError, match="unknown variant 'long-ctx'"):
        Router(cfg, known_variants=["small", "strong", "small-v2"])


def test_route_text_is_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "b"},
            ],
        },
    ]
    assert route_text(messages) == "a\nb"
    assert route_text(messages[:2]) == "first"
    assert route_text([]) == ""


class KeywordEmbedder:
    """384-d 'embedding' e0 for texts containing 'prove', else e1; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.embed_one(t) for t in texts])

    def embed_one(self, text: str) -> np.ndarray:
        self.calls += 1
        v = np.zeros(384, dtype=np.float32)
        v[0 if "prove" in text else 1] = 1.0
        return v


def test_difficulty_policy_threshold(tmp_path: Any) -> None:
    path = tmp_path / "difficulty.safetensors"
    weight = np.zeros(384, dtype=np.float32)
    weight[0], weight[1] = 2.0, -2.0
    save_classifier(path, weight, 0.0, max_length=64)
    data = {
        "routes": {
            "auto": {
                "default": "small",
                "policies": [
                    {"kind": "rule", "when": {"tags": {"tier": ["pro"]}}, "variant": "strong"},
                    {
                        "kind": "difficulty",
                        "classifier": str(path),
                        "threshold": 0.8,
                        "variant": "strong",
                    },
                ],
            }
        }
    }
    emb = KeywordEmbedder()
    r = make_router(data, embedder=emb)
    assert r.uses_embeddings
    hard = r.decide(req(text="prove that sqrt 2 is irrational"))
    # sigmoid(2) = 0.881 >= 0.8 -> strong; sigmoid(-2) = 0.119 -> falls through to the default
    assert hard == Decision("strong", "difficulty auto[1]: 0.881 >= 0.8", None, None)
    assert r.decide(req(text="hi")).variant == "small"
    assert emb.calls == 2
    assert r.decide(req(text="hi", tags={"tier": "pro"})).variant == "strong"
    assert emb.calls == 2  # an earlier rule decided: no embedding computed


def test_missing_classifier_file_is_a_clear_error(tmp_path: Any) -> None:
    from ownlm.errors import ModelLoadError

    data = {
        "routes": {
            "auto": {
                "default": "small",
                "policies": [
                    {
                        "kind": "difficulty",
                        "classifier": str(tmp_path / "nope.st"),
                        "threshold": 0.5,
                        "variant": "strong",
                    }
                ],
            }
        }
    }
    with pytest.raises(ModelLoadError, match="ownlm router train"):
        make_router(data, embedder=KeywordEmbedder())


def test_rule_decide_costs_microseconds() -> None:
    r = make_router(RULES)
    request = req(user="bob", tags={"tier": "free"}, n_messages=3)  # walks all 4 rules
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        r.decide(request)
    per_call_us = (time.perf_counter() - t0) / n * 1e6
    assert per_call_us < 50.0, per_call_us  # ~3 us measured; generous for a loaded machine


def test_example_configs_load() -> None:
    from ownlm.config import load_config
    from ownlm.router.classifier import ClassifierTrainConfig
    from ownlm.router.difficulty_set import DifficultySetConfig

    root = Path(__file__).resolve().parents[2] / "examples"
    cfg = load_config(RouterConfig, root / "router_policies.yaml")
    assert [p.kind for p in cfg.routes["ownlm-auto"].policies][-2:] == ["difficulty", "experiment"]
    assert load_config(ClassifierTrainConfig, root / "router_train.yaml").l2 == 0.001
    assert load_config(DifficultySetConfig, root / "router_labels.yaml").per_spec == 40
