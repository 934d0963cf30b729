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
import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, model_validator
from tqdm import tqdm

from ownlm.config import Config, dump_config
from ownlm.errors import ConfigError, DataError
from ownlm.models.load import load_model
from ownlm.train.checkpoint import (
    check_resume_compatible,
    keep_metrics_until,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
    seed_everything,
)
from ownlm.train.datasets import (
    TokenizedPair,
    batch_indices,
    collate,
    epoch_order,
    read_pairs,
    tokenize_pair,
)
from ownlm.train.lora import LoraSpec, add_lora
from ownlm.train.losses import dpo_loss
from ownlm.train.schedule import lr_factor
from ownlm.train.sequence_logprobs import sequence_logprobs

# Config keys that change a run's numbers: a resumed run must agree with its checkpoint on them.
RESUME_KEYS = [
    "model", "train_file", "eval_file", "eval_fraction", "seed", "max_seq_len", "batch_size",
    "micro_batch_size", "max_steps", "beta", "lr", "lr_schedule", "warmup_steps", "weight_decay",
    "max_grad_norm", "lora",
]  # fmt: skip


class DPOConfig(Config):
    """Every knob of the DPO recipe."""

    model: str = "smollm2-135m"
    train_file: str
    eval_file: str | None = None  # None: hold out eval_fraction of train_file
    eval_fraction: float = 0.1
    run_dir: str = "runs/dpo"
    seed: int = 0
    beta: float = 0.1
    max_seq_len: int = 512
    batch_size: int = 8  # pairs per optimizer step
    micro_batch_size: int = 4  # pairs per forward/backward; batch_size / this = accumulation
    max_steps: int = 50
    lr: float = 5e-5
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoraSpec | None = LoraSpec()  # None (`lora: null`): train all weights
    eval_every_steps: int = 10
    save_every_steps: int = 25
    keep_last_checkpoints: int = 2
    resume: bool = True  # continue from the newest step_N/ in run_dir if there is one
    # torch CPU threads; None keeps torch's default. On a busy shared machine 1 can be 3x faster
    # than 2, because threads of one op wait for each other at every barrier.
    threads: int | None = None
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> DPOConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        for key in ("max_steps", "batch_size", "micro_batch_size", "eval_every_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
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
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    # Data first: a malformed row should stop the run before the model loads.
    pairs = read_pairs(cfg.train_file)
    if cfg.eval_file is not None:
        eval_pairs = read_pairs(cfg.eval_file)
    else:
        order = epoch_order(len(pairs), cfg.seed, epoch=-1)
        n_eval = max(1, round(len(pairs) * cfg.eval_fraction))
        if n_eval >= len(pairs):
            raise DataError(
                f"{cfg.train_file}: {len(pairs)} pairs are too few to hold out "
                f"{cfg.eval_fraction:.0%} for eval; add pairs or pass eval_file"
            )
        eval_pairs = [pairs[i] for i in order[:n_eval]]
        pairs = [pairs[i] for i in order[n_eval:]]

    # Model and reference. LoRA: the reference is the base with adapters disabled. Full: a frozen
    # copy of the starting weights (loaded from cfg.model again when resuming).
    resume = latest_checkpoint(run_dir) if cfg.resume else None
    if resume is not None:
        check_resume_compatible(resume, cfg.model_dump(mode="json"), RESUME_KEYS)
    reference: Any = None
    if cfg.lora is None:
        reference, tokenizer = load_model(cfg.model)
        reference.requires_grad_(False)
        model, _ = load_model(str(resume.path) if resume is not None else cfg.model)
    else:
        model, tokenizer = load_model(cfg.model)
        model = add_lora(model, cfg.lora, resume.path if resume is not None else None)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.max_seq_len > max_pos:
        raise ConfigError(
            f"max_seq_len {cfg.max_seq_len} exceeds the model's {max_pos} positions; lower it"
        )
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
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, schedule=cfg.lr_schedule
        ),
    )
    start_step = 0
    metrics_path = run_dir / "metrics.jsonl"
    if resume is not None:
        load_trainer_state(resume, optimizer, scheduler)
        start_step = resume.step
    records = keep_metrics_until(metrics_path, start_step if resume is not None else None)
    dump_config(cfg, run_dir / "config.yaml")

    def log(record: dict[str, Any]) -> None:
        records.append(record)
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def evaluate() -> dict[str, float]:
        policy = _eval_logprobs(model, eval_tok, pad_id, cfg.micro_batch_size)
        return _eval_metrics(policy, eval_ref, cfg.beta)

    if start_step == 0:
        log({"step": 0, **evaluate()})

    # Loop: one optimizer step per batch_size pairs, accumulated over micro-batches.
    bar = tqdm(
        range(start_step, cfg.max_steps),
        initial=start_step,
        total=cfg.max_steps,
        disable=not cfg.progress,
        desc="dpo",
    )
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
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_s = time.perf_counter() - t0

        done = step + 1
        record: dict[str, Any] = {
            "step": done,
            "train/loss": loss_sum,
            "train/reward_margin": margin_sum,
            "train/reward_accuracy": correct / cfg.batch_size,
            "train/grad_norm": float(grad_norm),
            "train/lr": lr,
            "time/step_s": step_s,
            "time/tokens_per_s": n_tokens / step_s,
        }
        if done % cfg.eval_every_steps == 0 or done == cfg.max_steps:
            record.update(evaluate())
        log(record)
        bar.set_postfix(
            {k.split("/")[1]: f"{v:.4g}" for k, v in record.items() if "loss" in k or "margin" in k}
        )
        if done % cfg.save_every_steps == 0 or done == cfg.max_steps:
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
    evals = [r for r in records if "eval/reward_margin" in r]
    losses = [r["train/loss"] for r in records if "train/loss" in r]

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
