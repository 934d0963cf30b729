"""load_model: HF dirs, run dirs, LoRA adapters, clear errors; the real GGUF conversion (slow)."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from ownlm.errors import ModelLoadError
from ownlm.models import load as load_mod
from ownlm.models.load import load_model, make_plain, resolve_model_dir

PROMPT = [[1, 5, 9, 42, 7]]


def save_tiny(tiny: tuple[Any, Any], path: Path) -> Path:
    model, tok = tiny
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def logits_of(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(PROMPT)).logits


def test_hf_dir_round_trip(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    path = save_tiny(tiny, tmp_path / "m")
    model, tok = load_model(str(path))
    assert torch.equal(logits_of(model), logits_of(tiny[0]))
    assert not model.training
    assert tok.pad_token_id is not None and tok.padding_side == "left"


def test_run_dir_prefers_final_then_newest_step(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    run = tmp_path / "run"
    for name in ("step_2", "step_10", "step_9"):
        save_tiny(tiny, run / name)
    assert resolve_model_dir(str(run)) == run / "step_10"
    save_tiny(tiny, run / "final")
    assert resolve_model_dir(str(run)) == run / "final"


def test_lora_adapter_dir_is_merged(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base_dir = save_tiny(tiny, tmp_path / "base")
    base = copy.deepcopy(tiny[0])
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)  # B=0 at init would make the adapter a no-op
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(cfg))
    want = logits_of(peft_model)
    model, _ = load_model(str(tmp_path / "adapter"))
    assert not hasattr(model, "peft_config")
    assert torch.allclose(logits_of(model), want, atol=1e-5)
    assert not torch.allclose(want, logits_of(tiny[0]), atol=1e-3)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "nope", "does not exist"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
        (lambda p: p, "no config.json, adapter_config.json, final/ or step_N/"),
    ],
)
def test_bad_paths_name_the_path_and_what_to_pass(make: Any, match: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_dir_without_weights_or_with_broken_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_model(str(tmp_path))


def test_make_plain_removes_quantization_marks(tiny: tuple[Any, Any]) -> None:
    model = copy.deepcopy(tiny[0])
    model.config.quantization_config = {"quant_method": "gguf"}
    model.hf_quantizer = object()
    model.is_quantized = True
    make_plain(model)
    assert "quantization_config" not in model.config.to_dict()
    assert model.hf_quantizer is None and model.is_quantized is False


def test_concurrent_conversion_leaves_one_complete_dir(
    tiny: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    barrier = threading.Barrier(2)

    def fake_load_gguf(path: Path, **_: Any) -> tuple[Any, Any]:
        barrier.wait(timeout=30)  # both "processes" convert at the same time
        return tiny

    monkeypatch.setattr(load_mod, "load_gguf", fake_load_gguf)
    out = tmp_path / "cache" / "m"
    errors: list[BaseException] = []

    def convert() -> None:
        try:
            load_mod.convert_gguf(Path("x.gguf"), out)
        except BaseException as err:  # noqa: BLE001 - reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["m"]  # no temp dirs left behind
    model, _ = load_model(str(out))
    assert torch.equal(logits_of(model), logits_of(tiny[0]))


@pytest.mark.slow
def test_smollm2_conversion_matches_gguf_greedy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OWNLM_CACHE", str(tmp_path))
    ref, tok = load_mod.load_gguf(load_mod.smollm2_gguf_path())
    model, tok2 = load_model("smollm2-135m")
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    config = json.loads((tmp_path / "models" / "smollm2-135m-instruct" / "config.json").read_text())
    assert "quantization_config" not in config
    assert getattr(model, "hf_quantizer", None) is None and not getattr(
        model, "is_quantized", False
    )
    msgs = [{"role": "user", "content": "What is 12 + 7?"}]
    ids = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    kw = {"max_new_tokens": 16, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.no_grad():
        a = ref.generate(**ids, **kw)
        b = model.generate(**ids, **kw)
    assert torch.equal(a, b)
    assert tok2.decode(b[0]) == tok.decode(a[0])
    # trainable as a plain fp32 model
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    loss = model(**ids, labels=ids["input_ids"]).loss
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
