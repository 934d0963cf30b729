"""Supervised fine-tuning on chat JSONL: loss on assistant tokens only, LoRA or full weights.

    ownlm train sft --config examples/sft.yaml
    ownlm train sft --config examples/sft.yaml --set steps=60 --set lora=null

Writes <run_dir>/config.yaml, metrics.jsonl (train/loss, eval/loss, ...), step_N/ checkpoints that
resume exactly, and final/ (an HF model dir, or a peft adapter dir for LoRA).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from tqdm import tqdm

from ownlm.errors import DataError
from ownlm.models.chat import THINK_OPEN, mark_answers_without_thought
from ownlm.models.context import find_shared_context, has_context, install_context
from ownlm.train.checkpoint import (
    RunSummary,
    restore_run,
    run_meta,
    save_checkpoint,
    start_run,
)
from ownlm.train.datasets import (
    TokenizedChat,
    batch_indices,
    collate,
    read_chats,
    read_train_eval,
    tokenize_chat,
    truncate_chat,
)
from ownlm.train.distributed import finish, init_world, sum_gradients, sum_values
from ownlm.train.lora import load_trainable_model
from ownlm.train.recipe_config import FileRecipeConfig, check_max_seq_len
from ownlm.train.schedule import adamw_with_schedule, is_due, optimizer_step, step_bar
from ownlm.train.sequence_logprobs import counted_token_logprobs


class SFTConfig(FileRecipeConfig):
    """Every knob of the SFT recipe (the shared ones are in FileRecipeConfig)."""

    resume_keys: ClassVar[tuple[str, ...]] = (*FileRecipeConfig.resume_keys, "replay_file")

    run_dir: str = "runs/sft"
    batch_size: int = Field(8, description="chats per optimizer step")
    micro_batch_size: int = Field(
        4, description="chats per forward/backward; batch_size / this = accumulation"
    )
    lr: float = 2e-4
    # The cut goes into the saved chat template, so GRPO, the gate and the served model see the
    # same short prompts (ownlm/models/context.py).
    distill_context: bool = Field(
        True,
        description="learn what every chat shares (system prompt, fixed instructions) and cut it "
        "from the prompt",
    )
    replay_file: str | None = Field(
        None,
        description="chats trained on with train_file's but left out of the context "
        "distillation, e.g. the start model's own right answers on general prompts (the loop's "
        "replay_general writes them), which keep general ability",
    )
    # SFT renders answers as the chat template does, without the empty thought the hybrid format
    # opens a no-think answer with; marking the template makes every later stage do the same.
    drop_empty_thought: bool = Field(
        True,
        description="when no training answer holds a <think> thought, the trained model opens "
        "no-think answers without the empty thought (as trained; 9 prompt tokens less)",
    )


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
    run_dir, resume = start_run(cfg)
    world = init_world()  # under torchrun: this process's share of each step (distributed.py)

    # Data first: a malformed row should stop the run before the model loads.
    examples, eval_examples = read_train_eval(
        read_chats, cfg.train_file, cfg.eval_file,
        eval_fraction=cfg.eval_fraction, seed=cfg.seed, noun="rows",
    )  # fmt: skip
    if cfg.replay_file is not None and not Path(cfg.replay_file).is_file():
        raise DataError(f"replay_file {cfg.replay_file} does not exist")
    has_replay = cfg.replay_file is not None and Path(cfg.replay_file).stat().st_size > 0
    replay = read_chats(cfg.replay_file) if has_replay else []

    # Model: the base, wrapped in LoRA adapters or trained whole; a resumed run loads its weights.
    model, tokenizer = load_trainable_model(
        cfg.model, cfg.lora, resume.path if resume is not None else None
    )
    check_max_seq_len(model, cfg.max_seq_len)
    model.train()
    if cfg.distill_context and not has_context(tokenizer):
        shared = find_shared_context([ex.messages for ex in examples])
        if shared is not None:
            install_context(tokenizer, shared)
            tqdm.write(f"sft: context distillation: the model learns {shared.describe()}")
    if cfg.drop_empty_thought and not any(
        THINK_OPEN in str(m.get("content") or "")
        for ex in examples
        for m in ex.messages
        if m["role"] == "assistant"
    ):
        mark_answers_without_thought(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    if replay:  # after the context cut: the replayed prompts carry none of the app's shared text
        tqdm.write(f"sft: {len(replay)} replayed chats join {len(examples)} of the app's")
    train_chats, skipped = _tokenize_all(tokenizer, examples + replay, cfg.max_seq_len)
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
    optimizer, scheduler = adamw_with_schedule(params, cfg, schedule=cfg.lr_schedule)
    start_step, metrics = restore_run(
        run_dir, cfg, resume, optimizer, scheduler, write=world.is_main
    )

    if start_step == 0:
        metrics.append(
            {"step": 0, "eval/loss": _eval_loss(model, eval_chats, pad_id, cfg.micro_batch_size)}
        )

    # Loop: one optimizer step per batch_size sequences, accumulated over micro-batches.
    bar = step_bar(start_step, cfg.steps, enabled=cfg.progress and world.is_main, desc="sft")
    for step in bar:
        t0 = time.perf_counter()
        batch = [
            train_chats[i] for i in batch_indices(len(train_chats), cfg.seed, step, cfg.batch_size)
        ]
        # Normalise by the counted tokens of the whole batch, so 2x2 accumulation equals 1x4.
        n_counted = sum(sum(c.loss_mask[1:]) for c in batch)
        loss_sum, n_tokens = 0.0, 0
        for k, i in enumerate(range(0, cfg.batch_size, cfg.micro_batch_size)):
            if not world.mine(k):  # another learner process's micro-batch
                continue
            b = collate(batch[i : i + cfg.micro_batch_size], pad_id)
            logp, _ = counted_token_logprobs(
                model, b["input_ids"], b["attention_mask"], b["loss_mask"]
            )
            loss = -logp.sum() / n_counted
            loss.backward()
            loss_sum += float(loss.detach())
            n_tokens += int(b["attention_mask"].sum())
        sum_gradients(params, world)  # the whole batch's gradient in every process
        loss_sum, n_tokens = sum_values([loss_sum, n_tokens], world)
        grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
        step_s = time.perf_counter() - t0

        done = step + 1
        record: dict[str, Any] = {
            "step": done,
            "train/loss": loss_sum,
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "train/counted_tokens": n_counted,
            "time/step_s": step_s,
            "time/tokens_per_s": n_tokens / step_s,
        }
        if is_due(done, cfg.eval_every_steps, cfg.steps):
            record["eval/loss"] = _eval_loss(model, eval_chats, pad_id, cfg.micro_batch_size)
        metrics.append(record)
        bar.set_postfix({k.split("/")[1]: f"{v:.4g}" for k, v in record.items() if "loss" in k})
        if is_due(done, cfg.save_every_steps, cfg.steps) and world.is_main:
            save_checkpoint(
                run_dir, done, model, tokenizer, optimizer, scheduler, run_meta("sft", cfg, done),
                keep_last=cfg.keep_checkpoints,
            )  # fmt: skip
    bar.close()

    # Save: final/ loads with transformers (full) or peft (LoRA adapter on cfg.model's dir).
    meta = run_meta("sft", cfg, cfg.steps)
    final = run_dir / "final"
    if world.is_main:
        final = save_checkpoint(
            run_dir, cfg.steps, model, tokenizer, None, None, meta, name="final"
        )
    finish(world)
    return RunSummary.from_run(
        "sft", final, cfg.steps, resume, metrics,
        train_examples=len(train_chats), eval_examples=len(eval_chats), started=t_start,
        skipped_too_long=skipped + skipped_eval,
    )  # fmt: skip
