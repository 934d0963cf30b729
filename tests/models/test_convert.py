"""ConvertConfig/convert_model: converts once, verifies greedy equality, names a missing GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ownlm.errors import ModelLoadError
from ownlm.models import convert as convert_mod
from ownlm.models import load as load_mod
from ownlm.models.convert import ConvertConfig, convert_model


def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nope.gguf does not exist"):
        convert_model(ConvertConfig(gguf_path=str(tmp_path / "nope.gguf")))


def test_converts_once_and_verifies(
    tiny: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def fake_load_gguf(path: Path, **_: Any) -> tuple[Any, Any]:
        calls.append(path)
        return tiny

    monkeypatch.setattr(load_mod, "load_gguf", fake_load_gguf)
    monkeypatch.setattr(convert_mod, "load_gguf", fake_load_gguf)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    cfg = ConvertConfig(gguf_path=str(gguf), out_dir=str(tmp_path / "out"), verify_new_tokens=4)
    first = convert_model(cfg)
    assert first.converted and first.verified is True
    assert (tmp_path / "out" / "model.safetensors").is_file()
    second = convert_model(cfg.model_copy(update={"verify": False}))
    assert not second.converted and second.verified is None
    assert len(calls) == 2  # one conversion + one verification; the second call did neither
