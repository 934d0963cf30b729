"""Shared pytest fixtures: a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ownlm.models.tiny import tiny_model


@pytest.fixture(scope="session")
def tiny() -> tuple[Any, Any]:
    """(model, tokenizer): 2 layers, hidden 64, SmolLM2 vocab; shared, so do not train it in
    place (deep-copy the model first)."""
    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny model saved as a model directory (what `load_model(path)` reads)."""
    model, tokenizer = tiny
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
