"""Reward model from preference pairs: a scalar head on the policy model, Bradley-Terry loss.

    ownlm train rm --config examples/reward_model.yaml
    ownlm train rm --config examples/reward_model.yaml --set max_steps=100 --set lora=null

The model is the causal LM of `cfg.model` (LoRA adapters or all weights trained) without its LM
head, plus a linear head on the hidden state of the conversation's last token. The loss is
-log sigmoid(r_chosen - r_rejected) (Bradley & Terry 1952; Ouyang et al. 2022). Logged: train/loss
and train/accuracy (share of pairs with r_chosen > r_rejected), and on held-out pairs eval/loss,
eval/margin, eval/accuracy with its Wilson 95% interval.

A checkpoint is a normal model checkpoint (LoRA adapter or full weights, loadable by `load_model`)
plus `reward_head.safetensors`. `load_reward_model(path).score_texts(conversations)` scores
conversations whose last turn is the assistant's answer. Why not transformers'
`AutoModelForSequenceClassification`: it would need its own loader for the GGUF-converted
model and peft's `modules_to_save` for the head; a head on `get_decoder()`'s output reuses
`load_model` and `add_lora` unchanged.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, model_validator
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ownlm.config import Config, dump_config
from ownlm.errors import ConfigError, DataError, ModelLoadError
from ownlm.models.load import load_model, resolve_model_dir
from ownlm.train.checkpoint import (
    check_resume_compatible,
    keep_metrics_until,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
    seed_everything,
)
from ownlm.train.datasets import (
    Message,
    PreferencePair,
    TokenizedChat,
    TokenizedPair,
    batch_indices,
    collate,
    epoch_order,
    read_pairs,
    tokenize_pair,
)
from ownlm.train.lora import LoraSpec, add_lora
from ownlm.train.schedule import lr_factor

HEAD_FILE = "reward_head.safetensors"

# Config keys that change a run's numbers: a resumed run must agree with its checkpoint on them.
RESUME_KEYS = [
    "model", "train_file", "eval_file", "eval_fraction", "seed", "max_seq_len", "batch_size",
    "micro_batch_size", "max_steps", "lr", "lr_schedule", "warmup_steps", "weight_decay",
    "max_grad_norm", "lora",
]  # fmt: skip


class RewardModelConfig(Config):
    """Every knob of the reward-model recipe."""

    model: str = "smollm2-135m"
    train_file: str
    eval_file: str | None = None  # None: hold out eval_fraction of train_file
    eval_fraction: float = 0.1
    run_dir: str = "runs/rm"
    seed: int = 0
    max_seq_len: int = 512
    batch_size: int = 8  # pairs per optimizer step
    micro_batch_size: int = 4  # pairs per forward/backward; batch_size / this = accumulation
    max_steps: int = 100
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoraSpec | None = LoraSpec()  # None (`lora: null`): train all weights
    eval_every_steps: int = 25
    save_every_steps: int = 50
    keep_last_checkpoints: int = 2
    resume: bool = True  # continue from the newest step_N/ in run_dir if there is one
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> RewardModelConfig:
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
    """What a reward-model run did, printed by the CLI."""

    run_dir: str
    final_dir: str
    steps: int
    resumed_from_step: int | None
    train_pairs: int
    eval_pairs: int
    eval_accuracy_before: float | None
    eval_accuracy_after: float | None
    eval_accuracy_ci_low: float | None  # Wilson 95% interval of eval_accuracy_after
    eval_accuracy_ci_high: float | None
    eval_loss_after: float | None
    train_loss_last: float | None
    seconds: float


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected) over pairs; both (B,)."""
    return -F.logsigmoid(chosen - rejected).mean()


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (the same as eval's; train may not import
    eval)."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


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
        save_file({k: v.detach().contiguous() for k, v in self.head.state_dict().items()},
                  str(Path(out) / HEAD_FILE))  # fmt: skip


def _load_head(path: Path, hidden_size: int) -> torch.nn.Linear:
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


def train_reward_model(cfg: RewardModelConfig) -> RunSummary:
    """Train a scalar reward that ranks chosen above rejected; return held-out pair accuracy."""
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

    # Model (LoRA or full) and head; a resumed run loads both from its newest checkpoint.
    resume = latest_checkpoint(run_dir) if cfg.resume else None
    if resume is not None:
        check_resume_compatible(resume, cfg.model_dump(mode="json"), RESUME_KEYS)
    if cfg.lora is None:
        model, tokenizer = load_model(str(resume.path) if resume is not None else cfg.model)
    else:
        model, tokenizer = load_model(cfg.model)
        model = add_lora(model, cfg.lora, resume.path if resume is not None else None)
    hidden_size = int(model.config.hidden_size)
    if resume is not None:
        head = _load_head(resume.path, hidden_size)
    else:
        head = new_head(hidden_size, cfg.seed)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.max_seq_len > max_pos:
        raise ConfigError(
            f"max_seq_len {cfg.max_seq_len} exceeds the model's {max_pos} positions; lower it"
        )
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
        log({"step": 0, **evaluate()})

    # Loop: one optimizer step per batch_size pairs, accumulated over micro-batches.
    bar = tqdm(
        range(start_step, cfg.max_steps),
        initial=start_step,
        total=cfg.max_steps,
        disable=not cfg.progress,
        desc="rm",
    )
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
            "train/accuracy": correct / cfg.batch_size,
            "train/grad_norm": float(grad_norm),
            "train/lr": lr,
            "time/step_s": step_s,
            "time/tokens_per_s": n_tokens / step_s,
        }
        if done % cfg.eval_every_steps == 0 or done == cfg.max_steps:
            record.update(evaluate())
        log(record)
        bar.set_postfix(
            {k.split("/")[1]: f"{v:.4g}" for k, v in record.items() if "loss" in k or "acc" in k}
        )
        if done % cfg.save_every_steps == 0 or done == cfg.max_steps:
            meta = {"recipe": "rm", "data_position": done, "config": cfg.model_dump(mode="json")}
            save_checkpoint(
                run_dir, done, _ModelWithHead(model, head), tokenizer, optimizer, scheduler, meta,
                keep_last=cfg.keep_last_checkpoints,
            )  # fmt: skip
    bar.close()

    # Save: final/ loads with load_reward_model (and its model part with load_model).
    meta = {"recipe": "rm", "data_position": cfg.max_steps, "config": cfg.model_dump(mode="json")}
    final = save_checkpoint(
        run_dir, cfg.max_steps, _ModelWithHead(model, head), tokenizer, None, None, meta,
        name="final",
    )  # fmt: skip
    evals = [r for r in records if "eval/accuracy" in r]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    last = evals[-1] if evals else {}
    return RunSummary(
        run_dir=str(run_dir),
        final_dir=str(final),
        steps=cfg.max_steps,
        resumed_from_step=resume.step if resume is not None else None,
        train_pairs=len(train_tok),
        eval_pairs=len(eval_tok),
        eval_accuracy_before=evals[0]["eval/accuracy"] if evals else None,
        eval_accuracy_after=last.get("eval/accuracy"),
        eval_accuracy_ci_low=last.get("eval/accuracy_ci_low"),
        eval_accuracy_ci_high=last.get("eval/accuracy_ci_high"),
        eval_loss_after=last.get("eval/loss"),
        train_loss_last=losses[-1] if losses else None,
        seconds=time.perf_counter() - t_start,
    )


class RewardModel:
    """A trained reward model for inference: model without LM head, scalar head, tokenizer."""

    def __init__(self, model: Any, head: torch.nn.Linear, tokenizer: Any, max_seq_len: int) -> None:
        self.model, self.head, self.tokenizer = model, head, tokenizer
        self.max_seq_len = max_seq_len
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tokenize(self, messages: list[Message]) -> TokenizedChat:
        """Ids of a conversation ending in assistant turns, cut as in training (tokenize_pair)."""
        k = len(messages)
        while k > 0 and messages[k - 1]["role"] == "assistant":
            k -= 1
        if k == len(messages):
            raise DataError(
                f"conversation {messages!r:.120} does not end with an assistant message; "
                f"append the answer to score"
            )
        prompt, response = list(messages[:k]), list(messages[k:])
        return tokenize_pair(
            self.tokenizer, PreferencePair(prompt, response, response), self.max_seq_len
        ).chosen

    @torch.no_grad()
    def score_texts(self, messages_list: list[list[Message]], batch_size: int = 8) -> list[float]:
        """Reward of each conversation (its last turns the assistant's answer), in batches."""
        toks = [self.tokenize(m) for m in messages_list]
        out: list[float] = []
        for i in range(0, len(toks), batch_size):
            b = collate(toks[i : i + batch_size], self.pad_id)
            r = sequence_rewards(self.model, self.head, b["input_ids"], b["attention_mask"])
            out.extend(float(x) for x in r)
        return out


def load_reward_model(path: str | Path, *, max_seq_len: int = 512) -> RewardModel:
    """A reward model from a run dir, its final/ or a step_N/ (LoRA adapters merged)."""
    resolved = resolve_model_dir(str(path))
    model, tokenizer = load_model(str(resolved))
    head = _load_head(resolved, int(model.config.hidden_size))
    model.eval()
    head.eval()
    return RewardModel(model, head, tokenizer, max_seq_len)
