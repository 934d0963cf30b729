"""Sample completions on a llama-server: what the eval and the gate use to score a model in the
format and engine it will be served with (GGUF on llama.cpp, the gateway's default own engine).

    with LlamaServer(export_gguf(model, "f16"), parallel_slots=8) as server:
        outs = complete_on_server(server.base_url, prompt_ids, params, parallel=8)

Prompts are token ids from `encode_prompt`, as in the gateway; requests go out `parallel` at a
time so the server's slots decode them together.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ownlm.errors import ConfigError, ModelLoadError
from ownlm.models.llama_cpp import completion_request, finish_reason
from ownlm.rollout.types import SamplingParams


@dataclass(frozen=True)
class EngineCompletion:
    """One completion as llama-server returned it."""

    text: str
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    token_logprobs: tuple[float, ...] = ()  # of the sampled tokens, from the raw logits


def complete_on_server(
    base_url: str,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    parallel: int = 4,
    timeout_s: float = 600.0,
) -> list[EngineCompletion]:
    """One completion per prompt, in prompt order."""
    if params.thinking_budget_tokens is not None:
        raise ConfigError(
            "a thinking budget is enforced by ownlm's torch sampler only; use engine 'torch' "
            "or drop thinking_budget_tokens"
        )

    def one(i: int) -> EngineCompletion:
        seed = None if params.seed is None else params.seed + i
        body = completion_request(
            prompts[i],
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=tuple(params.stop),
            seed=seed,
            top_logprobs=1,
        )
        req = urllib.request.Request(
            base_url + "/completion",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                reply = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise ModelLoadError(
                f"llama-server refused a completion ({err.code}): {err.read()[:200]!r}"
            ) from err
        except (urllib.error.URLError, OSError) as err:
            raise ModelLoadError(f"llama-server at {base_url} failed: {err}") from err
        return EngineCompletion(
            reply.get("content", ""),
            int(reply.get("tokens_predicted", 0)),
            finish_reason(reply.get("stop_type")),
            tuple(float(p["logprob"]) for p in reply.get("completion_probabilities") or []),
        )

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        return list(pool.map(one, range(len(prompts))))
