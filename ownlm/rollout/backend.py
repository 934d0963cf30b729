"""Rollout backends: one interface over the in-process torch sampler and a vLLM engine.

backend = make_backend("torch", model, tokenizer)
groups = backend.sample(prompt_ids, n=4, params=SamplingParams(max_new_tokens=48))
...optimizer.step()...
backend.update_weights(model)  # a no-op for "torch", a weight sync for "vllm"
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from ownlm.errors import ConfigError
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import Completions, SamplingParams


class RolloutBackend(Protocol):
    """Something that samples n completions per prompt from the current policy."""

    def sample(self, prompt_ids: list[list[int]], n: int, params: SamplingParams) -> Completions:
        """n samples per prompt, rows prompt-major."""
        ...

    def update_weights(self, model: Any) -> None:
        """Make the next `sample` use the weights `model` has now."""
        ...


class TorchBackend:
    """The in-process sampler; it samples from the training model itself."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def sample(self, prompt_ids: list[list[int]], n: int, params: SamplingParams) -> Completions:
        """Sample with `sample_completions`, in eval mode (no dropout), restoring the mode after."""
        was_training = self.model.training
        self.model.eval()
        try:
            return sample_completions(self.model, self.tokenizer, prompt_ids, n, params)
        finally:
            self.model.train(was_training)

    def update_weights(self, model: Any) -> None:
        """Nothing to copy: the backend samples from the trainer's model object itself."""
        self.model = model


def make_backend(
    name: Literal["torch", "vllm"], model: Any, tokenizer: Any, **opts: Any
) -> RolloutBackend:
    """Build the named backend; opts go to the backend's constructor (vLLM engine settings)."""
    if name == "torch":
        if opts:
            raise ConfigError(
                f"the torch backend takes no options, got {', '.join(sorted(opts))}; "
                "remove them or use backend 'vllm'"
            )
        return TorchBackend(model, tokenizer)
    if name == "vllm":
        from ownlm.rollout.vllm_backend import VLLMBackend

        return VLLMBackend(model, tokenizer, **opts)
    raise ConfigError(f"unknown rollout backend '{name}'; use 'torch' or 'vllm'")
