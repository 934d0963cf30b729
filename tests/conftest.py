"""Shared pytest fixtures: a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ownlm.models.tiny import tiny_model


@pytest.fixture(autouse=True)
def _collect_test_clients() -> Iterator[None]:
    """Collect each test's garbage when it ends. Test code that leaves an HTTP client to the
    garbage collector (an openai client, a urllib response) would otherwise warn about its
    unclosed socket inside whichever later test triggers the collection, and fail that one
    (warnings are errors here)."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


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
