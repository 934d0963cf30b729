"""llama.cpp as ownlm's CPU engine: export a model to GGUF, run a managed `llama-server`.

    gguf = export_gguf("runs/demo/loop/cycle-1/grpo/final", "f16")  # beside the weights, once
    with LlamaServer(gguf, parallel_slots=4) as server:               # started and health-checked
        ... POST server.base_url + "/completion" ...

The tools come from the llama.cpp tree vendored in the pinned llama-cpp-python sdist, built once
by `scripts/build_llama_cpp.sh` into `.venv/llama.cpp` (the Makefile does it): `llama-server`
(continuous batching over parallel slots, token streaming), `llama-quantize`, and llama.cpp's own
HF -> GGUF converter with the gguf-py of the same commit. We do not write a converter or an
engine: both are llama.cpp's, kept in step with the models it supports.

The exported GGUF carries the chat template ownlm trains and evaluates with (the model's own
template plus the empty thought that `render_prompt` opens a no-think answer with), so
llama.cpp's or Ollama's chat endpoint prompts the model as the gate saw it.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

from ownlm.errors import ConfigError, ModelLoadError
from ownlm.models.chat import NO_THOUGHT_MARKER, THINK_OFF_PREFIX

# What llama.cpp's converter writes itself; the rest go through llama-quantize from f16.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZE_TYPES = ("q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "q4_1")
QUANTIZATIONS = CONVERTER_TYPES + QUANTIZE_TYPES
# Files a model dir needs for the converter, beyond its weights.
NEEDED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def _known_quantization(name: str) -> str:
    if name.lower() not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization '{name}'; use one of {', '.join(QUANTIZATIONS)}")
    return name.lower()


# A config field holding a GGUF type: checked when the config is loaded.
Quantization = Annotated[str, AfterValidator(_known_quantization)]


def llama_cpp_dir() -> Path:
    """The built llama.cpp kit: `$OWNLM_LLAMA_CPP`, else `<venv>/llama.cpp`."""
    env = os.environ.get("OWNLM_LLAMA_CPP")
    path = Path(env) if env else Path(sys.prefix) / "llama.cpp"
    if not (path / "bin" / "llama-server").is_file():
        raise ModelLoadError(
            f"llama.cpp is not built in {path}; run `make engine` (or "
            f"`scripts/build_llama_cpp.sh {path}`), or set OWNLM_LLAMA_CPP to a built kit"
        )
    return path


def check_quantization(name: str) -> str:
    """The quantization name in lower case, or a ConfigError listing the known ones."""
    q = name.lower()
    if q not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization '{name}'; use one of {', '.join(QUANTIZATIONS)}")
    return q


def gguf_path_for(model_dir: Path, quantization: str) -> Path:
    """Where `export_gguf` writes a model dir's GGUF of that quantization."""
    return model_dir / f"ownlm-{quantization}.gguf"


def export_gguf(model: str, quantization: str = "f16", *, overwrite: bool = False) -> Path:
    """GGUF file of a model (name, HF dir, run dir or LoRA adapter), written beside its weights.

    An up-to-date export (newer than the weights) is reused. A path that already is a .gguf file
    is returned as it is.
    """
    q = check_quantization(quantization)
    if str(model).endswith(".gguf"):
        if not Path(model).is_file():
            raise ModelLoadError(f"GGUF file {model} does not exist")
        return Path(model)
    from ownlm.models.load import resolve_model_dir

    model_dir = resolve_model_dir(str(model))
    out = gguf_path_for(model_dir, q)
    weights = [*model_dir.glob("*.safetensors"), *model_dir.glob("*.bin")]
    if not overwrite and out.is_file() and weights:
        if out.stat().st_mtime >= max(w.stat().st_mtime for w in weights):
            return out
    kit = llama_cpp_dir()
    with tempfile.TemporaryDirectory(prefix=".ownlm-gguf-", dir=model_dir) as tmp:
        stage = _stage_model_dir(model_dir, Path(tmp) / "model")
        direct = q in CONVERTER_TYPES
        first = Path(tmp) / ("out.gguf" if direct else "f16.gguf")
        _run(
            [sys.executable, str(kit / "convert_hf_to_gguf.py"), str(stage), "--outfile",
             str(first), "--outtype", q if direct else "f16"],
            f"llama.cpp's converter could not convert {model_dir}",
        )  # fmt: skip
        if not direct:
            final = Path(tmp) / "out.gguf"
            _run(
                [str(kit / "bin" / "llama-quantize"), str(first), str(final), q.upper()],
                f"llama-quantize could not make a {q} GGUF of {model_dir}",
            )
            first = final
        os.replace(first, out)
    return out


def _stage_model_dir(model_dir: Path, stage: Path) -> Path:
    """A dir the converter can read: the model's files (linked), LoRA merged, and the chat
    template ownlm prompts with."""
    if (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
        from ownlm.models.load import load_model

        merged, tokenizer = load_model(str(model_dir))
        merged.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
    else:
        stage.mkdir(parents=True)
        for f in model_dir.iterdir():
            if f.is_file() and not f.name.endswith(".gguf"):
                (stage / f.name).symlink_to(f.resolve())
    missing = [n for n in NEEDED_FILES if not (stage / n).is_file()]
    if not any(stage.glob("*.safetensors")) and not any(stage.glob("*.bin")):
        missing.append("model.safetensors (the weights)")
    if missing:
        raise ModelLoadError(
            f"cannot convert {model_dir} to GGUF: it has no {', '.join(missing)}; export a "
            "full model dir (a run's final/ holds all of them)"
        )
    _add_think_off_prefix(stage)
    return stage


def _add_think_off_prefix(stage: Path) -> None:
    """Make the staged chat template open a no-think answer as `render_prompt` does (with the
    empty thought, unless the template is marked to answer without one)."""
    suffix = "{% if add_generation_prompt %}" + THINK_OFF_PREFIX + "{% endif %}"
    jinja = stage / "chat_template.jinja"  # transformers 5 keeps the template here
    if jinja.is_file():
        template = jinja.read_text()
        if THINK_OFF_PREFIX not in template and NO_THOUGHT_MARKER not in template:
            jinja.unlink()  # a link to the model's own file: write a copy instead
            jinja.write_text(template + suffix)
        return
    tc_path = stage / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    template = tc.get("chat_template")
    if (
        isinstance(template, str)
        and THINK_OFF_PREFIX not in template
        and NO_THOUGHT_MARKER not in template
    ):
        tc["chat_template"] = template + suffix
        tc_path.unlink()
        tc_path.write_text(json.dumps(tc, indent=2))


def _run(cmd: list[str], what: str) -> None:
    # without NO_LOCAL_GGUF the converter imports the gguf-py beside it (its own commit's)
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise ModelLoadError(f"{what}: {lines[-1] if lines else f'exit {proc.returncode}'}")


# a llama.cpp log line of level E: "0.00.004.625 E gguf_init_from_reader: failed to read header"
_LOG_ERROR = re.compile(r"^[\d.]+ E (?:\w{3,4}\s+)?(.*)$")


UBATCH_TOKENS = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """One `llama-server` process on loopback, serving one GGUF with parallel slots."""

    def __init__(
        self,
        gguf: Path,
        *,
        parallel_slots: int = 4,
        context_tokens_per_slot: int = 2048,
        threads: int | None = None,
        ubatch_tokens: int = UBATCH_TOKENS,
        log_path: Path | None = None,
    ) -> None:
        self.gguf = Path(gguf)
        self.ubatch_tokens = ubatch_tokens
        self.parallel_slots = parallel_slots
        self.context_tokens_per_slot = context_tokens_per_slot
        self.threads = threads or os.cpu_count() or 1
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(llama_cpp_dir() / "bin" / "llama-server"),
            "--model", str(self.gguf),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--parallel", str(self.parallel_slots),
            "--ctx-size", str(self.context_tokens_per_slot * self.parallel_slots),
            "--threads", str(self.threads),
            "--threads-batch", str(self.threads),
            # 64-token micro-batches instead of llama.cpp's 512: decoding 4 slots on 2 cores was
            # faster in 5 of 6 alternating pairs (-6% to +17%, the demo model, 2026-12-03; the
            # machine's own speed drifted 20% within that hour); short prompts lose nothing.
            "--ubatch-size", str(self.ubatch_tokens),
            "--no-webui",
            "--jinja",
        ]  # fmt: skip

    def start(self, timeout_s: float = 120.0) -> None:
        """Spawn the process and wait until /health answers ok; its own error if it fails."""
        if not self.gguf.is_file():
            raise ModelLoadError(f"GGUF file {self.gguf} does not exist")
        self.port = free_port()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        else:
            self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                message = (
                    f"llama-server exited with code {self.proc.returncode} while starting on "
                    f"{self.gguf.name}: {self.last_error()}"
                )
                self.stop()
                raise ModelLoadError(message)
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise ModelLoadError(f"llama-server did not become healthy within {timeout_s:.0f} s")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=1.0) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def last_error(self) -> str:
        """The first error line of the process's output (llama.cpp logs the cause first)."""
        if self._log is None:
            return "no output"
        self._log.flush()
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read().decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        errors = [m.group(1) for ln in lines if (m := _LOG_ERROR.match(ln))]
        return (errors or lines[-1:] or ["no output"])[0][:400]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def completion_request(
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    stop: tuple[str, ...] = (),
    seed: int | None = None,
    stream: bool = False,
    top_logprobs: int | None = None,
) -> dict[str, Any]:
    """A llama-server /completion body that samples like ownlm's sampler.

    llama.cpp's defaults (top_k 40, min_p 0.05, repeat penalty 1.1) are turned off, so
    temperature 0 is plain greedy decoding, as in training and the gate. Greedy requests keep
    only the top token (top_k 1, the same choice), which spares each slot a pass of every
    sampler over the whole vocabulary per token.
    """
    body: dict[str, Any] = {
        "prompt": prompt_ids,
        "n_predict": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": 1 if temperature <= 0 else 0,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "stop": list(stop),
        "stream": stream,
        "cache_prompt": True,
        "return_tokens": True,
    }
    if seed is not None:
        body["seed"] = seed
    if top_logprobs is not None:  # per-token log-probabilities, from the raw logits' softmax
        body["n_probs"] = max(1, top_logprobs)
    return body


def openai_logprobs(reply: dict[str, Any], top_logprobs: int) -> dict[str, Any]:
    """llama-server's `completion_probabilities` as an OpenAI choice's `logprobs` object."""
    content = []
    for p in reply.get("completion_probabilities") or []:
        content.append(
            {
                "token": p.get("token", ""),
                "logprob": float(p.get("logprob", 0.0)),
                "bytes": p.get("bytes"),
                "top_logprobs": [
                    {"token": t.get("token", ""), "logprob": float(t.get("logprob", 0.0)),
                     "bytes": t.get("bytes")}
                    for t in (p.get("top_logprobs") or [])[:top_logprobs]
                ],
            }
        )  # fmt: skip
    return {"content": content}


def finish_reason(stop_type: str | None) -> str:
    """OpenAI's finish_reason for llama-server's stop_type."""
    return "length" if stop_type == "limit" else "stop"


def answer_confidence(token_logprobs: Sequence[float]) -> float:
    """exp(mean log-probability) of an answer's tokens: 1.0 for a certain answer, 0 for none.

    The one definition of the own model's confidence: the gate calibrates on it and the gateway
    escalates on it.
    """
    if not token_logprobs:
        return 0.0
    return math.exp(sum(token_logprobs) / len(token_logprobs))
