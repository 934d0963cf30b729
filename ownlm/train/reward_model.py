"""Reward model from preference pairs: a scalar head on the policy model, Bradley-Terry loss.

    ownlm train rm --config examples/reward_model.yaml
    ownlm train rm --config examples/reward_model.yaml --set steps=100 --set lora=null

The model is the causal LM of `cfg.model` (LoRA adapters or all weights trained) without its LM
head, plus a linear head on the hidden state of the conversation's last token. The loss is
-log sigmoid(r_chosen - r_rejected) (Bradley & Terry 1952; Ouyang et al. 2022). Logged: train/loss
and train/accuracy (share of pairs with r_chosen > r_rejected), and on held-out pairs eval/loss,
eval/margin, eval/accuracy with its Wilson 95% interval.

A checkpoint is a normal model checkpoint (LoRA adapter or full weights, loadable by `load_model`)
plus `reward_head.safetensors`. `ownlm.models.reward.load_reward_model(path).score_texts(...)`
scores conversations whose last turn is the assistant's answer (the inference half lives in
models/, so envs can use it without importing train). Why not transformers'
`AutoModelForSequenceClassification`: it would need its own loader for the GGUF-converted
model and peft's `modules_to_save` for the head; a head on `get_decoder()`'s output reuses
`load_model` and `add_lora` unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ownlm.errors import DataError
from ownlm.models.reward import (
    load_head,
    load_reward_model,
    new_head,
    save_head,
    sequence_rewards,
)
from ownlm.stats import wilson_interval
from ownlm.train.checkpoint import (
    RunSummary,
    restore_run,
    run_meta,
    save_checkpoint,
    start_run,
)
from ownlm.train.datasets import (
    TokenizedPair,
    batch_indices,
    collate,
    read_pairs,
    read_train_eval,
    tokenize_pair,
)
from ownlm.train.lora import load_trainable_model
from ownlm.train.recipe_config import FileRecipeConfig, check_max_seq_len
from ownlm.train.schedule import adamw_with_schedule, is_due, optimizer_step, step_bar

__all__ = ["RewardModelConfig", "load_reward_model", "train_reward_model"]


class RewardModelConfig(FileRecipeConfig):
    """Every knob of the reward-model recipe (the shared ones are in FileRecipeConfig)."""

    run_dir: str = "runs/rm"
    batch_size: int = Field(8, description="pairs per optimizer step")
    micro_batch_size: int = Field(
        4, description="pairs per forward/backward; batch_size / this = accumulation"
    )
    steps: int = 100
    lr: float = 1e-4
    eval_every_steps: int = 25
    save_every_steps: int = 50


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected) over pairs; both (B,)."""
    return -F.logsigmoid(chosen - rejected).mean()


def _pair_rewards(
    model: Any, head: torch.nn.Linear, pairs: list[TokenizedPair], pad_id: int
) -> torch.Tensor:
    """(2, B) rewards: row 0 chosen, row 1 rejected, in one forward."""
    b = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    return sequence_rewards(model, head, b["input_ids"], b["attention_mask"]).view(2, len(pairs))


class _ModelWithHead:
    """What save_checkpoint saves: the (peft or full) model's files plus the head's."""

    def __init__(self, model: Any, head: torch.nn.Linear) -> None:
        self.model, self.head = model, head

    def save_pretrained(self, out: Path, safe_serialization: bool = True) -> None:
        self.model.save_pretrained(out, safe_serialization=safe_serialization)
        save_head(self.head, out)


def train_reward_model(cfg: RewardModelConfig) -> RunSummary:
    """Train a scalar reward that ranks chosen above rejected; return held-out pair accuracy."""
    t_start = time.perf_counter()
    run_dir, resume = start_run(cfg)

    # Data first: a malformed row should stop the run before the model loads.
    pairs, eval_pairs = read_train_eval(
        read_pairs, cfg.train_file, cfg.eval_file,
        eval_fraction=cfg.eval_fraction, seed=cfg.seed, noun="pairs",
    )  # fmt: skip

    # Model (LoRA or full) and head; a resumed run loads both from its newest checkpoint.
    model, tokenizer = load_trainable_model(
        cfg.model, cfg.lora, resume.path if resume is not None else None
    )
    hidden_size = int(model.config.hidden_size)
    if resume is not None:
        head = load_head(resume.path, hidden_size)
    else:
        head = new_head(hidden_size, cfg.seed)
    check_max_seq_len(model, cfg.max_seq_len)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    train_tok = [tokenize_pair(tokenizer, p, cfg.max_seq_len) for p in pairs]
    eval_tok = [tokenize_pair(tokenizer, p, cfg.max_seq_len) for p in eval_pairs]
    for name, tok in ((cfg.train_file, train_tok), (cfg.eval_file or "eval split", eval_tok)):
        for i, p in enumerate(tok):
            if sum(p.chosen.loss_mask) == 0 or sum(p.rejected.loss_mask) == 0:
                raise DataError(
                    f"{name} pair {i + 1}: no response token fits in max_seq_len "
                    f"{cfg.max_seq_len}; raise max_seq_len or shorten the prompt"
                )

    # Optimizer and schedule; a resumed run restores them with the RNG states.
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer, scheduler = adamw_with_schedule(params, cfg, schedule=cfg.lr_schedule)
    start_step, metrics = restore_run(run_dir, cfg, resume, optimizer, scheduler)

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        m = cfg.micro_batch_size
        chunks = [
            _pair_rewards(model, head, eval_tok[i : i + m], pad_id)
            for i in range(0, len(eval_tok), m)
        ]
        r = torch.cat(chunks, dim=1)  # (2, N)
        model.train()
        wins = int((r[0] > r[1]).sum())
        low, high = wilson_interval(wins, r.shape[1])
        return {
            "eval/loss": float(bradley_terry_loss(r[0], r[1])),
            "eval/margin": float((r[0] - r[1]).mean()),
            "eval/accuracy": wins / r.shape[1],
            "eval/accuracy_ci_low": low,
            "eval/accuracy_ci_high": high,
        }

    if start_step == 0:
        metrics.append({"step": 0, **evaluate()})

    # Loop: one optimizer step per batch_size pairs, accumulated over micro-batches.
    bar = step_bar(start_step, cfg.steps, enabled=cfg.progress, desc="rm")
    for step in bar:
        t0 = time.perf_counter()
        batch = [
            train_tok[i] for i in batch_indices(len(train_tok), cfg.seed, step, cfg.batch_size)
        ]
        loss_sum, correct, n_tokens = 0.0, 0, 0
        for i in range(0, cfg.batch_size, cfg.micro_batch_size):
            micro = batch[i : i + cfg.micro_batch_size]
            r = _pair_rewards(model, head, micro, pad_id)  # (2, m)
            loss = bradley_terry_loss(r[0], r[1])
            # the loss averages over the micro-batch; weight it to average over the whole batch.
            share = len(micro) / cfg.batch_size
            (loss * share).backward()
            loss_sum += float(loss.detach()) * share
            correct += int((r[0] > r[1]).sum())
            n_tokens += sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in micro)
        grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
        step_s = time.perf_counter() - t0
        done = step + 1
        record: dict[str, Any] = {
            "step": done,
            "train/loss": loss_sum,
            "train/accuracy": correct / cfg.batch_size,
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "time/step_s": step_s,
            "time/tokens_per_s": n_tokens / step_s,
        }
        if is_due(done, cfg.eval_every_steps, cfg.steps):
            record.update(evaluate())
        metrics.append(record)
        bar.set_postfix(
            {k.split("/")[1]: f"{v:.4g}" for k, v in record.items() if "loss" in k or "acc" in k}
        )
        if is_due(done, cfg.save_every_steps, cfg.steps):
            save_checkpoint(
                run_dir, done, _ModelWithHead(model, head), tokenizer, optimizer, scheduler,
                run_meta("rm", cfg, done), keep_last=cfg.keep_checkpoints,
            )  # fmt: skip
    bar.close()

    # Save: final/ loads with load_reward_model (and its model part with load_model).
    meta = run_meta("rm", cfg, cfg.steps)
    final = save_checkpoint(
        run_dir, cfg.steps, _ModelWithHead(model, head), tokenizer, None, None, meta,
        name="final",
    )  # fmt: skip
    return RunSummary.from_run(
        "rm", final, cfg.steps, resume, metrics,
        train_examples=len(train_tok), eval_examples=len(eval_tok), started=t_start,
    )  # fmt: skip
