"""Shared pytest fixtures: a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

from typing import Any

import pytest

from ownlm.models.tiny import tiny_model


@pytest.fixture(scope="session")
def tiny() -> tuple[Any, Any]:
    """(model, tokenizer): 2 layers, hidden 64, SmolLM2 vocab; shared, so do not train it in
    place (deep-copy the model first)."""
    return tiny_model(seed=0)
