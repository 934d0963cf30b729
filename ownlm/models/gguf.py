"""`ownlm models export`: a model (name, HF dir, run dir, LoRA adapter) as GGUF files for
llama.cpp and Ollama, written beside its weights, with an Ollama Modelfile.

    ownlm models export --set model=runs/demo/loop/cycle-1/sft/final
    ownlm models export --set model=smollm2-135m --set 'quantizations=[f16,q8_0,q4_k_m]'

The conversion is llama.cpp's own (ownlm/models/llama_cpp.py). The gateway exports what it
serves by itself; this command is for serving the model elsewhere (`ollama create`, a
llama-server of your own).
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, Field

from ownlm.config import Config
from ownlm.models.chat import NO_THOUGHT_MARKER, THINK_OFF_PREFIX
from ownlm.models.llama_cpp import Quantization, export_gguf


class ExportGGUFConfig(Config):
    """Which model, which GGUF types."""

    model: str = Field(description="model name, HF dir, run dir or LoRA adapter dir")
    quantizations: list[Quantization] = Field(
        default_factory=lambda: ["f16", "q8_0"], min_length=1, description="GGUF types to write"
    )
    overwrite: bool = Field(False, description="write files that exist again")


class ExportGGUFSummary(BaseModel):
    """The files written."""

    model: str
    files: dict[str, str]  # quantization -> GGUF path
    modelfile: str
    time_s: float


# Ollama's Go template for a ChatML model (SmolLM2), opening a no-think answer like ownlm does.
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def modelfile_text(gguf: Path, chat_template: str | None) -> str:
    """An Ollama Modelfile for a GGUF (the template spelled out when the model is ChatML)."""
    lines = [f"FROM ./{gguf.name}"]
    if chat_template is not None and "<|im_start|>" in chat_template:
        opening = "" if NO_THOUGHT_MARKER in chat_template else THINK_OFF_PREFIX
        template = CHATML_TEMPLATE + opening
        lines += [f'TEMPLATE """{template}"""', 'PARAMETER stop "<|im_end|>"']
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def export_command(cfg: ExportGGUFConfig) -> ExportGGUFSummary:
    """Write each GGUF (reusing up-to-date ones) and a Modelfile for the first one."""
    from ownlm.models.load import load_tokenizer

    start = time.perf_counter()
    model = cfg.model
    files = {q: export_gguf(model, q, overwrite=cfg.overwrite) for q in cfg.quantizations}
    first = next(iter(files.values()))
    template = getattr(load_tokenizer(model), "chat_template", None)
    modelfile = first.parent / "Modelfile"
    modelfile.write_text(modelfile_text(first, template))
    return ExportGGUFSummary(
        model=model,
        files={q: str(p) for q, p in files.items()},
        modelfile=str(modelfile),
        time_s=time.perf_counter() - start,
    )
