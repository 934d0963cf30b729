"""Supervised fine-tuning on chat JSONL: loss on assistant tokens only, LoRA or full weights.

    ownlm train sft --config examples/sft.yaml
    ownlm train sft --config examples/sft.yaml --set max_steps=60 --set lora=null

Writes <run_dir>/config.yaml, metrics.jsonl (train/loss, eval/loss, ...), step_N/ checkpoints that
resume exactly, and final/ (an HF model dir, or a peft adapter dir for LoRA).
"""

from __future__ import annotations

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
    TokenizedChat,
    batch_indices,
    collate,
    epoch_order,
    read_chats,
    tokenize_chat,
    truncate_chat,
)
from ownlm.train.lora import LoraSpec, add_lora
from ownlm.train.schedule import lr_factor
from ownlm.train.sequence_logprobs import counted_token_logprobs

# Config keys that change a run's numbers: a resumed run must agree with its checkpoint on them.
RESUME_KEYS = [
    "model", "train_file", "eval_file", "eval_fraction", "seed", "max_seq_len", "batch_size",
    "micro_batch_size", "max_steps", "lr", "lr_schedule", "warmup_steps", "weight_decay",
    "max_grad_norm", "lora",
]  # fmt: skip


class SFTConfig(Config):
    """Every knob of the SFT recipe."""

    model: str = "smollm2-135m"
    train_file: str
    eval_file: str | None = None  # None: hold out eval_fraction of train_file
    eval_fraction: float = 0.1
    run_dir: str = "runs/sft"
    seed: int = 0
    max_seq_len: int = 512
    batch_size: int = 8  # sequences per optimizer step
    micro_batch_size: int = 4  # sequences per forward/backward; batch_size / this = accumulation
    max_steps: int = 50
    lr: float = 2e-4
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
    def _check(self) -> SFTConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        for key in ("max_steps", "batch_size", "micro_batch_size", "eval_every_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        return self


class RunSummary(BaseModel):
    """What an SFT run did, printed by the CLI."""

    run_dir: str
    final_dir: str
    steps: int
    resumed_from_step: int | None
    train_examples: int
    eval_examples: int
    skipped_too_long: int
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_loss_last: float | None
    seconds: float


def _tokenize_all(tokenizer: Any, examples: list, max_seq_len: int) -> tuple[list, int]:
    out, skipped = [], 0
    for ex in examples:
        chat = truncate_chat(tokenize_chat(tokenizer, ex), max_seq_len)
        if chat is None:
            skipped += 1
        else:
            out.append(chat)
    return out, skipped


@torch.no_grad()
def _eval_loss(model: Any, chats: list[TokenizedChat], pad_id: int, micro: int) -> float:
    """Token-mean NLL over all counted tokens of the held-out set."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(chats), micro):
        b = collate(chats[i : i + micro], pad_id)
        logp, _ = counted_token_logprobs(model, b["input_ids"], b["attention_mask"], b["loss_mask"])
        total -= float(logp.sum())
        count += logp.numel()
    model.train()
    return total / max(count, 1)


def train_sft(cfg: SFTConfig) -> RunSummary:
    """Fine-tune cfg.model on cfg.train_file; return before/after held-out loss."""
    t_start = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    # Data first: a malformed row should stop the run before the model loads.
    examples = read_chats(cfg.train_file)
    if cfg.eval_file is not None:
        eval_examples = read_chats(cfg.eval_file)
    else:
        order = epoch_order(len(examples), cfg.seed, epoch=-1)
        n_eval = max(1, round(len(examples) * cfg.eval_fraction))
        if n_eval >= len(examples):
            raise DataError(
                f"{cfg.train_file}: {len(examples)} rows are too few to hold out "
                f"{cfg.eval_fraction:.0%} for eval; add rows or pass eval_file"
            )
        eval_examples = [examples[i] for i in order[:n_eval]]
        examples = [examples[i] for i in order[n_eval:]]

    # Model: the base, wrapped in LoRA adapters or trained whole; a resumed run loads its weights.
    resume = latest_checkpoint(run_dir) if cfg.resume else None
    if resume is not None:
        check_resume_compatible(resume, cfg.model_dump(mode="json"), RESUME_KEYS)
    if cfg.lora is None and resume is not None:
        model, tokenizer = load_model(str(resume.path))
    else:
        model, tokenizer = load_model(cfg.model)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.max_seq_len > max_pos:
        raise ConfigError(
            f"max_seq_len {cfg.max_seq_len} exceeds the model's {max_pos} positions; lower it"
        )
    if cfg.lora is not None:
        model = add_lora(model, cfg.lora, resume.path if resume is not None else None)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    train_chats, skipped = _tokenize_all(tokenizer, examples, cfg.max_seq_len)
    eval_chats, skipped_eval = _tokenize_all(tokenizer, eval_examples, cfg.max_seq_len)
    for name, chats in ((cfg.train_file, train_chats), (cfg.eval_file or "eval split", eval_chats)):
        if not chats:
            raise DataError(
                f"{name}: every row's answer starts after max_seq_len {cfg.max_seq_len} tokens; "
                f"raise max_seq_len"
            )
    if skipped + skipped_eval:
        tqdm.write(
            f"sft: skipped {skipped + skipped_eval} rows whose answer starts after "
            f"max_seq_len {cfg.max_seq_len}"
        )

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

    if start_step == 0:
        log({"step": 0, "eval/loss": _eval_loss(model, eval_chats, pad_id, cfg.micro_batch_size)})

    # Loop: one optimizer step per batch_size sequences, accumulated over micro-batches.
    bar = tqdm(
        range(start_step, cfg.max_steps),
        initial=start_step,
        total=cfg.max_steps,
        disable=not cfg.progress,
        desc="sft",
    )
    for step in bar:
        t0 = time.perf_counter()
        batch = [
            train_chats[i] for i in batch_indices(len(train_chats), cfg.seed, step, cfg.batch_size)
        ]
        # Normalise by the counted tokens of the whole batch, so 2x2 accumulation equals 1x4.
        n_counted = sum(sum(c.loss_mask[1:]) for c in batch)
        loss_sum, n_tokens = 0.0, 0
        for i in range(0, cfg.batch_size, cfg.micro_batch_size):
            b = collate(batch[i : i + cfg.micro_batch_size], pad_id)
            logp, _ = counted_token_logprobs(
                model, b["input_ids"], b["attention_mask"], b["loss_mask"]
            )
            loss = -logp.sum() / n_counted
            loss.backward()
            loss_sum += float(loss.detach())
            n_tokens += int(b["attention_mask"].sum())
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
            "train/grad_norm": float(grad_norm),
            "train/lr": lr,
            "train/counted_tokens": n_counted,
            "time/step_s": step_s,
            "time/tokens_per_s": n_tokens / step_s,
        }
        if done % cfg.eval_every_steps == 0 or done == cfg.max_steps:
            record["eval/loss"] = _eval_loss(model, eval_chats, pad_id, cfg.micro_batch_size)
        log(record)
        bar.set_postfix({k.split("/")[1]: f"{v:.4g}" for k, v in record.items() if "loss" in k})
        if done % cfg.save_every_steps == 0 or done == cfg.max_steps:
            meta = {"recipe": "sft", "data_position": done, "config": cfg.model_dump(mode="json")}
            save_checkpoint(
                run_dir, done, model, tokenizer, optimizer, scheduler, meta,
                keep_last=cfg.keep_last_checkpoints,
            )  # fmt: skip
    bar.close()

    # Save: final/ loads with transformers (full) or peft (LoRA adapter on cfg.model's dir).
    meta = {"recipe": "sft", "data_position": cfg.max_steps, "config": cfg.model_dump(mode="json")}
    final = save_checkpoint(
        run_dir, cfg.max_steps, model, tokenizer, None, None, meta, name="final"
    )
    evals = [r["eval/loss"] for r in records if "eval/loss" in r]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    return RunSummary(
        run_dir=str(run_dir),
        final_dir=str(final),
        steps=cfg.max_steps,
        resumed_from_step=resume.step if resume is not None else None,
        train_examples=len(train_chats),
        eval_examples=len(eval_chats),
        skipped_too_long=skipped + skipped_eval,
        eval_loss_before=evals[0] if evals else None,
        eval_loss_after=evals[-1] if evals else None,
        train_loss_last=losses[-1] if losses else None,
        seconds=time.perf_counter() - t_start,
    )
