"""GatewayConfig: the shipped example loads; wrong names are refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from ownlm.config import load_config, validate_config
from ownlm.errors import ConfigError
from ownlm.gateway.config import GatewayConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ownlm.yaml"


def test_example_config_loads() -> None:
    cfg = load_config(GatewayConfig, EXAMPLE)
    assert cfg.models["small"].fallbacks == ["strong"]
    assert cfg.router.routes["assistant"].default == "small"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": {"a": {"upstream": "nope"}}}, "upstream 'nope' is not defined"),
        (
            {
                "upstreams": {"u": {"base_url": "http://x/v1"}},
                "models": {"a": {"upstream": "u", "fallbacks": ["a"]}},
            },
            "not another model",
        ),
        ({"upstreams": {"u": {"base_url": "x.com"}}}, "must start with http"),
        ({"flush_interval_m": 5}, "did you mean 'flush_interval_ms'"),
    ],
)
def test_bad_config_is_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(GatewayConfig, data, "ownlm.yaml")
