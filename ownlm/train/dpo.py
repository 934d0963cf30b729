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
from pydantic import BaseModel, Field, model_validator

from ownlm.config import dump_config
from ownlm.errors import DataError
from ownlm.models.load import load_model
from ownlm.train.checkpoint import (
    MetricsLog,
    find_resume,
    load_trainer_state,
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
    max_steps: int = 50
    lr: float = 5e-5

    @model_validator(mode="after")
    def _check_beta(self) -> DPOConfig:
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        return self


class RunSummary(BaseModel):
    """What a DPO run did, printed by the CLI."""

    run_dir: str
    final_dir: str
    steps: int
    resumed_from_step: int | None
    train_pairs: int
    eval_pairs: int
    eval_reward_margin_before: float | None
    eval_reward_margin_after: float | None
    eval_reward_accuracy_before: float | None
    eval_reward_accuracy_after: float | None
    eval_logp_accuracy_before: float | None
    eval_logp_accuracy_after: float | None
    train_loss_last: float | None
    seconds: float


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
    run_dir = start_run(cfg.run_dir, seed=cfg.seed, threads=cfg.threads)

    # Data first: a malformed row should stop the run before the model loads.
    pairs, eval_pairs = read_train_eval(
        read_pairs, cfg.train_file, cfg.eval_file,
        eval_fraction=cfg.eval_fraction, seed=cfg.seed, noun="pairs",
    )  # fmt: skip

    # Model and reference. LoRA: the reference is the base with adapters disabled. Full: a frozen
    # copy of the starting weights (loaded from cfg.model again when resuming).
    resume = find_resume(run_dir, cfg.resume, cfg.model_dump(mode="json"), cfg.resume_keys)
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
    optimizer, scheduler = adamw_with_schedule(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
        max_steps=cfg.max_steps, schedule=cfg.lr_schedule,
    )  # fmt: skip
    start_step = 0
    if resume is not None:
        load_trainer_state(resume, optimizer, scheduler)
        start_step = resume.step
    metrics = MetricsLog(run_dir / "metrics.jsonl", start_step if resume is not None else None)
    dump_config(cfg, run_dir / "config.yaml")

    def evaluate() -> dict[str, float]:
        policy = _eval_logprobs(model, eval_tok, pad_id, cfg.micro_batch_size)
        return _eval_metrics(policy, eval_ref, cfg.beta)

    if start_step == 0:
        metrics.append({"step": 0, **evaluate()})

    # Loop: one optimizer step per batch_size pairs, accumulated over micro-batches.
    bar = step_bar(start_step, cfg.max_steps, enabled=cfg.progress, desc="dpo")
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
        if is_due(done, cfg.eval_every_steps, cfg.max_steps):
            record.update(evaluate())
        metrics.append(record)
        bar.set_postfix(
            {k.split("/")[1]: f"{v:.4g}" for k, v in record.items() if "loss" in k or "margin" in k}
        )
        if is_due(done, cfg.save_every_steps, cfg.max_steps):
            meta = {"recipe": "dpo", "data_position": done, "config": cfg.model_dump(mode="json")}
            save_checkpoint(
                run_dir, done, model, tokenizer, optimizer, scheduler, meta,
                keep_last=cfg.keep_last_checkpoints,
            )  # fmt: skip
    bar.close()

    # Save: final/ loads with transformers (full) or peft (LoRA adapter on cfg.model's dir).
    meta = {"recipe": "dpo", "data_position": cfg.max_steps, "config": cfg.model_dump(mode="json")}
    final = save_checkpoint(
        run_dir, cfg.max_steps, model, tokenizer, None, None, meta, name="final"
    )
    evals = [r for r in metrics.records if "eval/reward_margin" in r]
    losses = [r["train/loss"] for r in metrics.records if "train/loss" in r]

    def first_last(key: str) -> tuple[float | None, float | None]:
        return (evals[0][key], evals[-1][key]) if evals else (None, None)

    margin_b, margin_a = first_last("eval/reward_margin")
    acc_b, acc_a = first_last("eval/reward_accuracy")
    lacc_b, lacc_a = first_last("eval/logp_accuracy")
    return RunSummary(
        run_dir=str(run_dir),
        final_dir=str(final),
        steps=cfg.max_steps,
        resumed_from_step=resume.step if resume is not None else None,
        train_pairs=len(train_tok),
        eval_pairs=len(eval_tok),
        eval_reward_margin_before=margin_b,
        eval_reward_margin_after=margin_a,
        eval_reward_accuracy_before=acc_b,
        eval_reward_accuracy_after=acc_a,
        eval_logp_accuracy_before=lacc_b,
        eval_logp_accuracy_after=lacc_a,
        train_loss_last=losses[-1] if losses else None,
        seconds=time.perf_counter() - t_start,
    )
