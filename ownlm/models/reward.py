"""A trained reward model at inference: load a run of `ownlm train rm` and score conversations.

    rm = load_reward_model("runs/rm")  # the run dir, its final/ or a step_N/
    rm.score_texts([[{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]])

A reward model is a causal LM without its LM head (LoRA adapters merged by `load_model`) plus a
linear head, saved as `reward_head.safetensors`, on the hidden state of the conversation's last
token. The recipe (`ownlm/train/reward_model.py`) trains and saves it; this module is the part
that envs (`reward: {kind: reward_model}`) and eval need, so they do not import train.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ownlm.errors import DataError, ModelLoadError
from ownlm.models.load import load_model, resolve_model_dir

HEAD_FILE = "reward_head.safetensors"

Message = dict[str, Any]  # OpenAI chat message: {"role": ..., "content": ...}


def new_head(hidden_size: int, seed: int) -> torch.nn.Linear:
    """The scalar head, seeded: weight ~ N(0, 1/(hidden+1)) like TRL's reward head, bias 0."""
    head = torch.nn.Linear(hidden_size, 1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(
            torch.randn(head.weight.shape, generator=gen) / math.sqrt(hidden_size + 1)
        )
        head.bias.zero_()
    return head


def save_head(head: torch.nn.Linear, out_dir: str | Path) -> None:
    """Write the head as `<out_dir>/reward_head.safetensors` beside the model's files."""
    tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(Path(out_dir) / HEAD_FILE))


def load_head(path: Path, hidden_size: int) -> torch.nn.Linear:
    """The head saved in a reward-model checkpoint directory."""
    file = path / HEAD_FILE
    if not file.is_file():
        raise ModelLoadError(
            f"no {HEAD_FILE} in {path}; pass the run dir (or final/, step_N/) of `ownlm train rm`"
        )
    head = torch.nn.Linear(hidden_size, 1)
    try:
        head.load_state_dict(load_file(str(file)))
    except RuntimeError as err:
        raise ModelLoadError(
            f"{file} does not fit a model of hidden size {hidden_size}: {err}"
        ) from err
    return head


def sequence_rewards(
    model: Any, head: torch.nn.Linear, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B,) head(hidden state at each row's last real token); rows may be right or left padded."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask)
    h = hidden.last_hidden_state  # (B, T, H)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (attention_mask * positions).argmax(dim=1)  # (B,)
    return head(h[torch.arange(h.shape[0]), last]).squeeze(-1)


def _template_ids(
    tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool
) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_conversation(tokenizer: Any, messages: list[Message], max_seq_len: int) -> list[int]:
    """Ids of a conversation ending in assistant turns, cut as training cuts a preference pair.

    The trailing assistant turns are the answer, the rest the prompt. A prompt longer than
    `max_seq_len // 2` keeps its last `max_seq_len // 2` tokens, then the whole is cut to
    `max_seq_len` (the rule of `ownlm.train.datasets.tokenize_pair`, whose chosen ids these equal).
    """
    for msg in messages:
        if "tool_calls" in msg or "tool_call_id" in msg:
            raise DataError(
                f"message {msg!r:.120} carries OpenAI tool-call fields; a reward model scores "
                f"plain role/content turns, so write the calls and results as text"
            )
    k = len(messages)
    while k > 0 and messages[k - 1]["role"] == "assistant":
        k -= 1
    if k == len(messages):
        raise DataError(
            f"conversation {messages!r:.120} does not end with an assistant message; "
            f"append the answer to score"
        )
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt_ids = _template_ids(tokenizer, turns[:k], add_generation_prompt=True)
    cut = max(0, len(prompt_ids) - max_seq_len // 2)
    ids = _template_ids(tokenizer, turns, add_generation_prompt=False)
    return ids[cut:][:max_seq_len]


class RewardModel:
    """A trained reward model for inference: model without LM head, scalar head, tokenizer."""

    def __init__(self, model: Any, head: torch.nn.Linear, tokenizer: Any, max_seq_len: int) -> None:
        self.model, self.head, self.tokenizer = model, head, tokenizer
        self.max_seq_len = max_seq_len
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def score_texts(self, messages_list: list[list[Message]], batch_size: int = 8) -> list[float]:
        """Reward of each conversation (its last turns the assistant's answer), in batches."""
        rows = [encode_conversation(self.tokenizer, m, self.max_seq_len) for m in messages_list]
        out: list[float] = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)  # right-padded
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, r in enumerate(chunk):
                ids[row, : len(r)] = torch.tensor(r, dtype=torch.long)
                attn[row, : len(r)] = 1
            out.extend(float(x) for x in sequence_rewards(self.model, self.head, ids, attn))
        return out


def load_reward_model(path: str | Path, *, max_seq_len: int = 512) -> RewardModel:
    """A reward model from a run dir, its final/ or a step_N/ (LoRA adapters merged)."""
    resolved = resolve_model_dir(str(path))
    model, tokenizer = load_model(str(resolved))
    head = load_head(resolved, int(model.config.hidden_size))
    model.eval()
    head.eval()
    return RewardModel(model, head, tokenizer, max_seq_len)
