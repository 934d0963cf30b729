"""Direct preference optimisation (Rafailov et al. 2023) on preference-pair JSONL.

    ownlm train dpo --config examples/dpo.yaml
    ownlm train dpo --config examples/dpo.yaml --set beta=0.2 --set lora=null

The reference is the starting model, frozen: for LoRA the same weights with the adapters switched
off (no second copy in memory), for full fine-tuning a frozen copy. Logged: train/loss and the
implicit rewards (reward_margin = beta * ((pc - rc) - (pr - rr)), reward_accuracy = share of pairs
with margin > 0), the same on held-out pairs (eval/...), and eval/logp_accuracy, the share of
held-out pairs whose chosen answer has the higher summed log-prob under the policy itself.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator

from ownlm.errors import DataError
from ownlm.models.load import load_model
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
from ownlm.train.losses import dpo_loss
from ownlm.train.recipe_config import FileRecipeConfig, check_max_seq_len
from ownlm.train.schedule import adamw_with_schedule, is_due, optimizer_step, step_bar
from ownlm.train.sequence_logprobs import sequence_logprobs


class DPOConfig(FileRecipeConfig):
    """Every knob of the DPO recipe (the shared ones are in FileRecipeConfig)."""

    resume_keys: ClassVar[tuple[str, ...]] = (*FileRecipeConfig.resume_keys, "beta")

    run_dir: str = "runs/dpo"
    beta: float = Field(
        0.1,
        description="scale of the implicit reward; lower lets the policy drift further from ref",
    )
    batch_size: int = Field(8, description="pairs per optimizer step")
    micro_batch_size: int = Field(
        4, description="pairs per forward/backward; batch_size / this = accumulation"
    )
    lr: float = 5e-5

    @model_validator(mode="after")
    def _check_beta(self) -> DPOConfig:
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        return self


def _pair_logprobs(model: Any, pairs: list[TokenizedPair], pad_id: int) -> torch.Tensor:
    """Summed response log-probs, (2, B): row 0 chosen, row 1 rejected, in one forward."""
    b = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    logp = sequence_logprobs(model, b["input_ids"], b["attention_mask"], b["loss_mask"])
    return logp.view(2, len(pairs))


@torch.no_grad()
def _eval_logprobs(model: Any, pairs: list[TokenizedPair], pad_id: int, micro: int) -> torch.Tensor:
    """(2, N) summed log-probs of all held-out pairs under model, in micro-batches."""
    was_training = model.training
    model.eval()
    chunks = [
        _pair_logprobs(model, pairs[i : i + micro], pad_id) for i in range(0, len(pairs), micro)
    ]
    out = torch.cat(chunks, dim=1)
    model.train(was_training)
    return out


def _eval_metrics(policy: torch.Tensor, ref: torch.Tensor, beta: float) -> dict[str, float]:
    margin = beta * ((policy[0] - ref[0]) - (policy[1] - ref[1]))  # (N,)
    return {
        "eval/reward_margin": float(margin.mean()),
        "eval/reward_accuracy": float((margin > 0).float().mean()),
        "eval/logp_accuracy": float((policy[0] > policy[1]).float().mean()),
    }


def train_dpo(cfg: DPOConfig) -> RunSummary:
    """Train cfg.model to prefer chosen over rejected answers; return held-out margins."""
    t_start = time.perf_counter()
    run_dir, resume = start_run(cfg)

    # Data first: a malformed row should stop the run before the model loads.
    pairs, eval_pairs = read_train_eval(
        read_pairs, cfg.train_file, cfg.eval_file,
        eval_fraction=cfg.eval_fraction, seed=cfg.seed, noun="pairs",
    )  # fmt: skip

    # Model and reference. LoRA: the reference is the base with adapters disabled. Full: a frozen
    # copy of the starting weights (loaded from cfg.model again when resuming).
    reference: Any = None
    if cfg.lora is None:
        reference, _ = load_model(cfg.model)
        reference.requires_grad_(False)
    model, tokenizer = load_trainable_model(
        cfg.model, cfg.lora, resume.path if resume is not None else None
    )
    check_max_seq_len(model, cfg.max_seq_len)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def reference_mode() -> contextlib.AbstractContextManager[Any]:
        return model.disable_adapter() if reference is None else contextlib.nullcontext()

    ref_model = model if reference is None else reference

    train_tok = [tokenize_pair(tokenizer, p, cfg.max_seq_len) for p in pairs]
    eval_tok = [tokenize_pair(tokenizer, p, cfg.max_seq_len) for p in eval_pairs]
    for name, tok in ((cfg.train_file, train_tok), (cfg.eval_file or "eval split", eval_tok)):
        for i, p in enumerate(tok):
            if sum(p.chosen.loss_mask[1:]) == 0 or sum(p.rejected.loss_mask[1:]) == 0:
                raise DataError(
                    f"{name} pair {i + 1}: no response token fits in max_seq_len "
                    f"{cfg.max_seq_len}; raise max_seq_len or shorten the prompt"
                )
    # The reference never changes: score the held-out pairs under it once.
    with reference_mode():
        eval_ref = _eval_logprobs(ref_model, eval_tok, pad_id, cfg.micro_batch_size)

    # Optimizer and schedule; a resumed run restores them with the RNG states.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = adamw_with_schedule(params, cfg, schedule=cfg.lr_schedule)
    start_step, metrics = restore_run(run_dir, cfg, resume, optimizer, scheduler)

    def evaluate() -> dict[str, float]:
        policy = _eval_logprobs(model, eval_tok, pad_id, cfg.micro_batch_size)
        return _eval_metrics(policy, eval_ref, cfg.beta)

    if start_step == 0:
        metrics.append({"step": 0, **evaluate()})

    # Loop: one optimizer step per batch_size pairs, accumulated over micro-batches.
    bar = step_bar(start_step, cfg.steps, enabled=cfg.progress, desc="dpo")
    for step in bar:
        t0 = time.perf_counter()
        batch = [
            train_tok[i] for i in batch_indices(len(train_tok), cfg.seed, step, cfg.batch_size)
        ]
        loss_sum, margin_sum, correct, n_tokens = 0.0, 0.0, 0, 0
        for i in range(0, cfg.batch_size, cfg.micro_batch_size):
            micro = batch[i : i + cfg.micro_batch_size]
            with torch.no_grad(), reference_mode():
                ref = _pair_logprobs(ref_model, micro, pad_id)  # (2, m)
            policy = _pair_logprobs(model, micro, pad_id)  # (2, m)
            loss, margin = dpo_loss(policy[0], policy[1], ref[0], ref[1], beta=cfg.beta)
            # dpo_loss averages over the micro-batch; weight it to average over the whole batch.
            share = len(micro) / cfg.batch_size
            (loss * share).backward()
            loss_sum += float(loss.detach()) * share
            margin_sum += float(margin) * share
            pair_margin = (policy[0] - ref[0]) - (policy[1] - ref[1])
            correct += int((pair_margin.detach() > 0).sum())
            n_tokens += sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in micro)
        grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
        step_s = time.perf_counter() - t0

        done = step + 1
        record: dict[str, Any] = {
            "step": done,
            "train/loss": loss_sum,
            "train/reward_margin": margin_sum,
            "train/reward_accuracy": correct / cfg.batch_size,
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "time/step_s": step_s,
            "time/tokens_per_s": n_tokens / step_s,
        }
        if is_due(done, cfg.eval_every_steps, cfg.steps):
            record.update(evaluate())
        metrics.append(record)
        bar.set_postfix(
            {k.split("/")[1]: f"{v:.4g}" for k, v in record.items() if "loss" in k or "margin" in k}
        )
        if is_due(done, cfg.save_every_steps, cfg.steps):
            save_checkpoint(
                run_dir, done, model, tokenizer, optimizer, scheduler, run_meta("dpo", cfg, done),
                keep_last=cfg.keep_checkpoints,
            )  # fmt: skip
    bar.close()

    # Save: final/ loads with transformers (full) or peft (LoRA adapter on cfg.model's dir).
    meta = run_meta("dpo", cfg, cfg.steps)
    final = save_checkpoint(run_dir, cfg.steps, model, tokenizer, None, None, meta, name="final")
    return RunSummary.from_run(
        "dpo", final, cfg.steps, resume, metrics,
        train_examples=len(train_tok), eval_examples=len(eval_tok), started=t_start,
    )  # fmt: skip
