"""vLLM rollout backend (GPU machines): vLLM's offline `LLM` engine behind `RolloutBackend`.

    backend = make_backend("vllm", model, tokenizer, gpu_memory_utilization=0.3)

The engine starts from a copy of the training model saved to a temporary directory. After each
optimizer step, `update_weights(model)` loads the trainer's current weights into the engine's
model in place (`LLM.apply_model` + the vLLM model's `load_weights`, which takes Hugging Face
parameter names) and drops vLLM's prefix cache, whose KV entries came from the old weights.
The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so the weights are
handed over as tensors, not pickled to a worker process.

Logprobs are requested with `logprobs=0` (the sampled token only) and
`logprobs_mode="processed_logprobs"`, i.e. after temperature; vLLM applies top-p before taking
them, so with top_p < 1 they are under the truncated distribution, unlike the torch sampler.
The thinking budget runs in two passes: think up to the budget (stopping at `</think>`), then
append the close tag where it is missing and continue from there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from typing import Any

import torch

from ownlm.errors import ConfigError, ModelLoadError
from ownlm.models.chat import THINK_CLOSE, THINK_OPEN, think_close_ids
from ownlm.rollout.types import Completions, SamplingParams


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise ModelLoadError("vllm backend needs `pip install ownlm[vllm]` and a GPU") from err
    return vllm


class VLLMBackend:
    """Samples with a vLLM engine holding its own copy of the policy's weights."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        gpu_memory_utilization: float = 0.3,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
    ) -> None:
        self.vllm = _import_vllm()
        if hasattr(model, "peft_config"):
            raise ConfigError(
                "the vllm backend syncs full weights, not LoRA adapters; use backend 'torch' "
                "for LoRA runs, or train without LoRA"
            )
        self.tokenizer = tokenizer
        # The engine reads the weights once at start-up; the copy goes when the backend does.
        model_dir = tempfile.mkdtemp(prefix="ownlm-vllm-")
        weakref.finalize(self, shutil.rmtree, model_dir, ignore_errors=True)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            self.llm = self.vllm.LLM(
                model=model_dir,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                enforce_eager=enforce_eager,
                logprobs_mode="processed_logprobs",
            )
        except (RuntimeError, ValueError) as err:
            raise ModelLoadError(f"vLLM could not start on this machine: {err}") from err
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        eos = [tokenizer.eos_token_id, im_end if isinstance(im_end, int) else None]
        self.stop_ids = sorted({t for t in eos if t is not None and t != tokenizer.unk_token_id})
        self.forced_close = think_close_ids(tokenizer)

    def update_weights(self, model: Any) -> None:
        """Copy the trainer's current weights into the engine, then drop cached prefixes."""
        weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
        self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.llm.reset_prefix_cache()

    def sample(self, prompt_ids: list[list[int]], n: int, params: SamplingParams) -> Completions:
        """n samples per prompt, rows prompt-major, with the sampled tokens' logprobs."""
        start = time.perf_counter()
        budget = params.thinking_budget_tokens
        thinking = [budget is not None and self._opens_thought(p) for p in prompt_ids]
        plain = [p for p, t in zip(prompt_ids, thinking, strict=True) if not t]
        think = [p for p, t in zip(prompt_ids, thinking, strict=True) if t]
        plain_rows = iter(self._generate(plain, n, params, [params.max_new_tokens] * len(plain)))
        think_rows = iter(self._think_then_answer(think, n, params, budget) if think else [])
        rows = [next(think_rows if t else plain_rows) for t in thinking for _ in range(n)]
        return self._completions(prompt_ids, n, rows, time.perf_counter() - start)

    def _opens_thought(self, prompt: list[int]) -> bool:
        tail = self.tokenizer.decode(prompt[-32:], skip_special_tokens=False)
        return tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE)

    def _think_then_answer(
        self, prompts: list[list[int]], n: int, params: SamplingParams, budget: int | None
    ) -> list[dict[str, Any]]:
        """Think up to `budget` tokens (stopping at the close tag), close it if needed, answer."""
        assert budget is not None
        think_tokens = [min(budget, params.max_new_tokens)] * len(prompts)
        heads = self._generate(prompts, n, params, think_tokens, (THINK_CLOSE,))
        resume_rows, resume_prompts, rooms = [], [], []
        for k, head in enumerate(heads):
            closed = head["stop_hit"] == THINK_CLOSE
            if head["finish"] == "stop" and not closed:
                continue  # eos or a user stop string inside the thought: the sample is done
            if not closed:
                head["tokens"] += self.forced_close
                head["logprobs"] += [0.0] * len(self.forced_close)
                head["mask"] += [False] * len(self.forced_close)
            head["finish"], head["stop_hit"] = "length", None
            room = params.max_new_tokens - len(head["tokens"])
            if room > 0:
                resume_rows.append(head)
                resume_prompts.append(prompts[k // n] + head["tokens"])
                rooms.append(room)
        if resume_prompts:
            tails = self._generate(resume_prompts, 1, params, rooms)
            for head, tail in zip(resume_rows, tails, strict=True):
                for key in ("tokens", "logprobs", "mask"):
                    head[key] += tail[key]
                head["finish"], head["stop_hit"] = tail["finish"], tail["stop_hit"]
        return heads

    def _generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        params: SamplingParams,
        max_tokens: list[int],
        extra_stop: tuple[str, ...] = (),
    ) -> list[dict[str, Any]]:
        """One vLLM call (max_tokens per prompt); a dict per sample, prompt-major."""
        sampling = [
            self.vllm.SamplingParams(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=limit,
                stop=list(params.stop + extra_stop) or None,
                stop_token_ids=self.stop_ids,
                seed=None if params.seed is None else params.seed + i,
                logprobs=0,
                include_stop_str_in_output=True,
                skip_special_tokens=True,
            )
            for i, limit in enumerate(max_tokens)
        ]
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        if not prompts:
            return []
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        rows = []
        for request in outputs:
            for sample in sorted(request.outputs, key=lambda s: s.index):
                tokens = list(sample.token_ids)
                logps = [float(sample.logprobs[t][tok].logprob) for t, tok in enumerate(tokens)]
                stop_hit = sample.stop_reason if isinstance(sample.stop_reason, str) else None
                rows.append(
                    {
                        "tokens": tokens,
                        "logprobs": logps,
                        "mask": [True] * len(tokens),
                        "finish": "stop" if sample.finish_reason == "stop" else "length",
                        "stop_hit": stop_hit,
                    }
                )
        return rows

    def _completions(
        self, prompt_ids: list[list[int]], n: int, rows: list[dict[str, Any]], time_s: float
    ) -> Completions:
        """Right-pad the samples into tensors; texts without special tokens and stop string."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(1, max(len(r["tokens"]) for r in rows))
        tokens = torch.full((len(rows), width), pad, dtype=torch.long)
        logprobs = torch.zeros(len(rows), width, dtype=torch.float32)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        texts = []
        for i, row in enumerate(rows):
            k = len(row["tokens"])
            tokens[i, :k] = torch.tensor(row["tokens"], dtype=torch.long)
            logprobs[i, :k] = torch.tensor(row["logprobs"], dtype=torch.float32)
            mask[i, :k] = torch.tensor(row["mask"], dtype=torch.bool)
            text = self.tokenizer.decode(row["tokens"], skip_special_tokens=True)
            if row["stop_hit"] is not None and row["stop_hit"] in text:
                text = text[: text.rfind(row["stop_hit"])]
            texts.append(text)
        total = sum(len(r["tokens"]) for r in rows)
        return Completions(
            prompt_ids=[list(p) for p in prompt_ids],
            n=n,
            tokens=tokens,
            logprobs=logprobs,
            completion_mask=mask,
            texts=texts,
            finish_reasons=[r["finish"] for r in rows],
            stats={
                "rollout/tokens": float(total),
                "rollout/time_s": time_s,
                "rollout/tokens_per_s": total / time_s if time_s > 0 else 0.0,
            },
        )
