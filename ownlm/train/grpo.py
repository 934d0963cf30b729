"""GRPO-family recipe (GRPO, Dr. GRPO, DAPO, RLOO): RL with verifiable rewards, LoRA or full.

    ownlm train grpo --config examples/grpo_demo.yaml
    ownlm train grpo --config examples/grpo_demo.yaml --set loss=dapo --set steps=40

One function, `train_grpo(cfg)`, reads top to bottom: setup (seed, model, optimizer, env,
resume) -> loop (draw prompts by data position, sample a group per prompt, score, advantages,
loss, step) -> log -> save. The math is in `losses.py` (what each `loss:` does is its row of
`GRPO_LOSSES`), the training forward in `policy_logprobs.py`, the run's files (checkpoints,
metrics, summary) in `checkpoint.py`, the knobs every recipe shares in `recipe_config.py`.

Exact resume: sampling and the random-reward control draw from generators seeded by
(seed, step), prompts are drawn by data position, and checkpoints hold model, optimizer,
scheduler and RNG states, so a killed run resumed from its last checkpoint logs the same
metrics as one that was never stopped.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from ownlm.envs.base import Env, MultiTurnEnv, Task, is_multi_turn
from ownlm.envs.registry import EnvConfig, env_field, make_env
from ownlm.errors import ConfigError, OwnlmError
from ownlm.models.chat import encode_prompt, split_thinking
from ownlm.models.load import load_model
from ownlm.rollout.episodes import EpisodeBatch, run_episodes
from ownlm.rollout.sampler import sample_completions
from ownlm.rollout.types import Completions, SamplingParams
from ownlm.train.checkpoint import (
    RunSummary,
    restore_run,
    run_meta,
    save_checkpoint,
    start_run,
)
from ownlm.train.lora import LoraSpec, load_trainable_model
from ownlm.train.losses import (
    GRPO_LOSSES,
    LossName,
    batch_normalizer,
    clip_fraction,
    group_advantages,
    grpo_loss,
    zero_variance_groups,
)
from ownlm.train.policy_logprobs import completion_logprobs
from ownlm.train.recipe_config import RunConfig
from ownlm.train.schedule import adamw_with_schedule, is_due, optimizer_step, step_bar


class GRPOConfig(RunConfig):
    """Every knob of a GRPO-family run (the shared ones are in RunConfig)."""

    resume_keys: ClassVar[tuple[str, ...]] = (
        *RunConfig.resume_keys,
        "prompts_per_step", "group_size", "max_new_tokens", "loss", "reward_mode",
        "train_problems", "env", "max_episode_tokens",
    )  # fmt: skip

    run_dir: str = "runs/grpo"
    steps: int = Field(40, description="optimizer steps (one batch of groups each)")
    lr: float = 1e-5
    # On CPU, adapters make sampling slower than training all weights.
    lora: LoraSpec | None = None
    save_every_steps: int = 10
    env: EnvConfig = env_field()
    prompts_per_step: int = Field(4, description="prompts sampled per step, one group each")
    group_size: int = Field(4, description="samples per prompt; advantages compare within one")
    train_problems: int = Field(2000, description="size of the training task pool")
    # sampling
    max_new_tokens: int = Field(48, description="per answer; per assistant turn in multi-turn envs")
    max_episode_tokens: int = Field(
        384, description="multi-turn envs: a whole episode, tool results included"
    )
    temperature: float = Field(1.0, description="sampling temperature; must be > 0")
    top_p: float = Field(1.0, description="nucleus sampling; 1: off")
    enable_thinking: bool = Field(False, description="let the chat template open a <think> block")
    thinking_budget_tokens: int | None = Field(
        None, description="close the <think> block after this many tokens; null: no limit"
    )
    # optimisation (lr, betas, warm-up and clipping are in RunConfig; the lr is constant after
    # the warm-up)
    grad_accum_steps: int = Field(
        1, description="micro-batches per step; prompts_per_step must divide into them"
    )
    loss: LossName = Field(
        "grpo",
        description="grpo: std-scaled advantages, per-sequence token mean; dr_grpo: no std "
        "scaling, sum / max_new_tokens; dapo: clip-higher, token-level mean, drops zero-variance "
        "groups; rloo: leave-one-out baseline",
    )
    clip_eps_low: float = Field(0.2, description="PPO-style ratio clip below 1")
    clip_eps_high: float | None = Field(
        None, description="ratio clip above 1; null: 0.28 for dapo, clip_eps_low otherwise"
    )
    beta: float = Field(
        0.0, description="KL penalty to the initial model (k3); 0 needs no reference model"
    )
    # "random" keeps the reward distribution and the budget but the rewards carry no signal.
    reward_mode: Literal["verifier", "random"] = Field(
        "verifier",
        description="random: the control run, the batch's real rewards shuffled at random",
    )
    eval_every_steps: int = Field(0, description="held-out accuracy every this many; 0: never")
    eval_problems: int = Field(32, description="held-out problems per eval")
    max_error_rate: float = Field(
        0.2, description="stop the run when a step's share of failed rollouts exceeds this"
    )
    logprob_chunk_rows: int | None = Field(
        None, description="compute logits this many rows at a time to save memory; null: all"
    )
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="where the policy, its reference and the rollouts run: cpu, cuda or cuda:N",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="the weights' precision; bfloat16: a bf16 learner (GPU)"
    )

    @model_validator(mode="after")
    def _check_fits(self) -> GRPOConfig:
        if self.group_size < 2:
            raise ValueError(
                f"group_size is {self.group_size}, but GRPO compares samples of the same prompt: "
                "use group_size >= 2"
            )
        if self.prompts_per_step % self.grad_accum_steps:
            raise ValueError(
                f"prompts_per_step {self.prompts_per_step} does not split into "
                f"grad_accum_steps {self.grad_accum_steps} equal micro-batches; make it a multiple"
            )
        if self.thinking_budget_tokens is not None:
            if not self.enable_thinking:
                raise ValueError("thinking_budget_tokens needs enable_thinking: true")
            if self.thinking_budget_tokens >= self.max_new_tokens:
                raise ValueError(
                    f"thinking_budget_tokens {self.thinking_budget_tokens} leaves no room to "
                    f"answer within max_new_tokens {self.max_new_tokens}; lower the budget or "
                    "raise max_new_tokens"
                )
        if self.temperature <= 0:
            raise ValueError(
                f"temperature {self.temperature}: GRPO needs sampling (temperature > 0) so a group "
                "has different answers to compare"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        return self

    @property
    def eps_high(self) -> float:
        """The upper ratio clip: clip_eps_high, else the loss's default, else clip_eps_low."""
        if self.clip_eps_high is not None:
            return self.clip_eps_high
        default = GRPO_LOSSES[self.loss].clip_eps_high
        return default if default is not None else self.clip_eps_low


def train_grpo(cfg: GRPOConfig, *, env: Env | MultiTurnEnv | None = None) -> RunSummary:
    """Run GRPO-family training as configured; `env` overrides cfg.env (tests use a toy env)."""
    # ---- setup ------------------------------------------------------------------------------
    t_start = time.perf_counter()
    run_dir, resume = start_run(cfg)
    env = env if env is not None else make_env(cfg.env)
    multi_turn = is_multi_turn(env)  # tool-using episodes: rollout/episodes.py
    max_tokens = cfg.max_episode_tokens if multi_turn else cfg.max_new_tokens
    spec = GRPO_LOSSES[cfg.loss]  # what this `loss:` does: std scaling, estimator, reduction, ...
    device = torch_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    model, tokenizer = load_trainable_model(
        cfg.model, cfg.lora, resume.path if resume is not None else None
    )
    model.to(device=device, dtype=dtype)
    ref_model = make_reference(cfg)
    if ref_model is not None:
        ref_model.to(device=device, dtype=dtype)
    # AdamW fused (one kernel over all tensors; measured faster on CPU than foreach); the lr is
    # constant after the warm-up.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = adamw_with_schedule(params, cfg, fused=True)
    start_step, metrics = restore_run(run_dir, cfg, resume, optimizer, scheduler)

    train_tasks = env.tasks("train", cfg.train_problems)
    eval_tasks = env.tasks("test", cfg.eval_problems) if cfg.eval_every_steps else []
    order = torch.randperm(len(train_tasks), generator=torch.Generator().manual_seed(cfg.seed))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eps_high = cfg.eps_high

    # ---- loop -------------------------------------------------------------------------------
    bar = step_bar(start_step, cfg.steps, enabled=cfg.progress, desc="grpo")
    for step in bar:
        t0 = time.perf_counter()
        # draw prompts by data position: step s uses positions [s*P, (s+1)*P) of the order
        pos = step * cfg.prompts_per_step
        tasks = [
            train_tasks[int(order[(pos + i) % len(train_tasks)])]
            for i in range(cfg.prompts_per_step)
        ]
        prompt_ids = [
            encode_prompt(tokenizer, env.reset(t), enable_thinking=cfg.enable_thinking)
            for t in tasks
        ]

        # sample a group per prompt (whole episodes for a multi-turn env: tool-result tokens
        # come back with completion_mask False, so the loss below skips them)
        model.eval()
        episodes: EpisodeBatch | None = None
        if multi_turn:
            episodes = run_episodes(
                model, tokenizer, env, tasks, cfg.group_size,
                sampling_params(cfg, step, seed=True),
                max_episode_tokens=cfg.max_episode_tokens, enable_thinking=cfg.enable_thinking,
            )  # fmt: skip
            comps = episodes.completions
        else:
            comps = sample_completions(
                model, tokenizer, prompt_ids, cfg.group_size, sampling_params(cfg, step, seed=True)
            )
        t_rollout = time.perf_counter() - t0

        # score
        if episodes is not None:
            rewards, correct, well_formed, errors = score_episodes(env, tasks, episodes)
        else:
            rewards, correct, well_formed, errors = score_group(env, tasks, comps, cfg)
        if errors / len(rewards) > cfg.max_error_rate:
            raise OwnlmError(
                f"step {step}: {errors} of {len(rewards)} completions failed to score, above "
                f"max_error_rate {cfg.max_error_rate}; check the env or raise the limit"
            )
        if cfg.reward_mode == "random":
            shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 7)
            rewards = rewards[torch.randperm(len(rewards), generator=shuffle)]

        # advantages (DAPO drops groups whose rewards are all equal: they carry no signal)
        adv = group_advantages(
            rewards, cfg.group_size, scale_by_std=spec.scale_by_std, estimator=spec.estimator
        ).to(device)
        zero_var = zero_variance_groups(rewards, cfg.group_size)  # (P,)
        keep_groups = ~zero_var if spec.drop_flat_groups else torch.ones_like(zero_var)
        keep_rows = keep_groups.repeat_interleave(cfg.group_size)
        mask = comps.completion_mask & keep_rows.to(device).unsqueeze(1)
        # With beta 0, a group whose advantages are all 0 adds exactly nothing to the gradient:
        # it still counts in the loss's denominator, but its forward/backward is skipped.
        signal = keep_groups & ~zero_var if cfg.beta == 0 else keep_groups
        groups = signal.nonzero().flatten()

        # loss and step: micro-batches of whole groups; normalizer makes them add up to the batch
        t1 = time.perf_counter()
        model.train()
        normalizer = batch_normalizer(
            spec.reduction, rows=int(keep_rows.sum()), tokens=int(mask.sum()), max_tokens=max_tokens
        )
        total_loss, clip_frac, grad_norm, t_optim = 0.0, 0.0, 0.0, 0.0
        for micro in groups.tensor_split(cfg.grad_accum_steps):
            if len(micro) == 0:
                continue
            rows = (micro.unsqueeze(1) * cfg.group_size + torch.arange(cfg.group_size)).flatten()
            micro_prompts = [prompt_ids[int(g)] for g in micro]
            tokens, micro_mask = comps.tokens[rows], mask[rows]
            logp = completion_logprobs(
                model,
                micro_prompts,
                tokens,
                micro_mask,
                cfg.group_size,
                pad_id=pad_id,
                temperature=cfg.temperature,
                chunk_rows=cfg.logprob_chunk_rows,
            )
            ref_logp = None
            if cfg.beta != 0.0:
                ref_logp = reference_logprobs(
                    model, ref_model, micro_prompts, tokens, micro_mask, cfg.group_size,
                    pad_id=pad_id, temperature=cfg.temperature,
                )  # fmt: skip
            # one optimizer step per batch: the sampling policy is this policy, ratio = 1
            old_logp = logp.detach()
            loss = grpo_loss(
                logp,
                old_logp,
                adv[rows],
                micro_mask,
                variant=spec.reduction,
                clip_eps_low=cfg.clip_eps_low,
                clip_eps_high=eps_high,
                max_tokens=max_tokens,
                ref_logp=ref_logp,
                beta=cfg.beta,
                normalizer=normalizer,
            )
            loss.backward()
            total_loss += float(loss.detach())
            clip_frac += clip_fraction(
                logp, old_logp, micro_mask, clip_eps_low=cfg.clip_eps_low, clip_eps_high=eps_high
            ) * len(micro) / len(groups)  # fmt: skip
        # A batch without signal leaves the model, the optimizer's moments and the lr schedule
        # as they were (the schedule counts updates).
        lr = scheduler.get_last_lr()[0]
        if len(groups):
            t2 = time.perf_counter()
            grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
            t_optim = time.perf_counter() - t2
        t_train = time.perf_counter() - t1

        # ---- log ----------------------------------------------------------------------------
        n_tokens = comps.completion_mask.sum(dim=1).float()
        record: dict[str, float] = {
            "step": step + 1,
            "train/loss": total_loss,
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "train/clip_frac": clip_frac,
            "rollout/reward_mean": float(rewards.mean()),
            "rollout/reward_std": float(rewards.std()),
            "rollout/accuracy": float(correct.float().mean()),
            "rollout/well_formed": float(well_formed.float().mean()),
            "rollout/completion_tokens_mean": float(n_tokens.mean()),
            "rollout/truncated_frac": sum(r == "length" for r in comps.finish_reasons)
            / len(comps.finish_reasons),
            "rollout/groups_kept": float(keep_groups.sum()),
            "rollout/groups_with_signal": float(len(groups)),
            "rollout/error_rate": errors / len(rewards),
            "rollout/tokens_per_s": float(comps.stats.get("rollout/tokens_per_s", 0.0)),
            **(episodes.stats() if episodes is not None else {}),
            "time/rollout_s": t_rollout,
            "time/train_s": t_train,
            "time/optimizer_s": t_optim,
        }
        if cfg.eval_every_steps and (step + 1) % cfg.eval_every_steps == 0:
            record["eval/accuracy"] = eval_accuracy(model, tokenizer, env, eval_tasks, cfg)
        record["time/step_s"] = time.perf_counter() - t0
        metrics.append(record)
        bar.set_postfix_str(
            f"loss {record['train/loss']:+.4f} reward {record['rollout/reward_mean']:.3f} "
            f"acc {record['rollout/accuracy']:.2f} "
            f"len {record['rollout/completion_tokens_mean']:.0f} "
            f"{record['time/step_s']:.1f}s/step"
        )

        # ---- save ---------------------------------------------------------------------------
        if is_due(step + 1, cfg.save_every_steps, cfg.steps):
            save_checkpoint(
                run_dir, step + 1, model, tokenizer, optimizer, scheduler,
                run_meta("grpo", cfg, pos + len(tasks)), keep_last=cfg.keep_checkpoints,
            )  # fmt: skip
    bar.close()

    # final/: a plain transformers model dir (LoRA adapters merged into the weights).
    out = model.merge_and_unload() if cfg.lora is not None else model
    meta = run_meta("grpo", cfg, cfg.steps * cfg.prompts_per_step)
    final = save_checkpoint(run_dir, cfg.steps, out, tokenizer, None, None, meta, name="final")
    return RunSummary.from_run(
        "grpo", final, cfg.steps, resume, metrics,
        train_examples=len(train_tasks), eval_examples=len(eval_tasks), started=t_start,
    )  # fmt: skip


# ---- the steps above, as small functions ---------------------------------------------------


def torch_device(name: str) -> torch.device:
    """The torch device of `device:`, or a ConfigError when this machine has none such."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{name}': this torch ({torch.__version__}) sees no GPU; use device: cpu"
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{name}': this machine has {torch.cuda.device_count()} GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    return torch.device(name)


def make_reference(cfg: GRPOConfig) -> Any | None:
    """A frozen copy of the starting model for the KL term (full fine-tuning with beta > 0).

    None when beta is 0, and with LoRA, whose reference is the policy with its adapters off.
    """
    if cfg.beta == 0.0 or cfg.lora is not None:
        return None
    ref, _ = load_model(cfg.model)
    ref.requires_grad_(False)
    return ref


def reference_logprobs(
    model: Any, ref_model: Any | None, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """Token logps under the reference: ref_model, or the LoRA policy with adapters disabled."""
    with torch.no_grad():
        if ref_model is not None:
            return completion_logprobs(ref_model, *args, **kwargs)
        with model.disable_adapter():
            return completion_logprobs(model, *args, **kwargs)


def sampling_params(cfg: GRPOConfig, step: int, *, seed: bool) -> SamplingParams:
    """Sampling settings of a step; the seed depends on (run seed, step) only, for exact resume."""
    return SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed * 1_000_003 + step if seed else None,
        thinking_budget_tokens=cfg.thinking_budget_tokens,
    )


def score_group(
    env: Env, tasks: list[Task], comps: Completions, cfg: GRPOConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Rewards (P*n,), correct and well-formed flags, and how many completions failed to score.

    A completion whose scoring raises counts as reward 0 (a failed rollout is data). An env with
    `score_batch` (a reward model or a judge as its reward) scores the whole batch in one call.
    """
    answers = [split_thinking(t, thinking_open=cfg.enable_thinking)[1] for t in comps.texts]
    row_tasks = [tasks[i // comps.n] for i in range(len(answers))]
    score_batch = getattr(env, "score_batch", None)
    if score_batch is not None:
        try:
            scores = score_batch(row_tasks, answers)
            return (
                torch.tensor([float(s.reward) for s in scores]),
                torch.tensor([bool(s.correct) for s in scores]),
                torch.tensor([bool(s.well_formed) for s in scores]),
                0,
            )
        except (ValueError, KeyError, TypeError, ArithmeticError):
            pass  # score one by one below, counting the ones that fail
    rewards, correct, well_formed, errors = [], [], [], 0
    for task, answer in zip(row_tasks, answers, strict=True):
        try:
            s = env.score(task, answer)
        except (ValueError, KeyError, TypeError, ArithmeticError):
            errors += 1
            rewards.append(0.0)
            correct.append(False)
            well_formed.append(False)
            continue
        rewards.append(float(s.reward))
        correct.append(bool(s.correct))
        well_formed.append(bool(s.well_formed))
    return torch.tensor(rewards), torch.tensor(correct), torch.tensor(well_formed), errors


def score_episodes(
    env: Any, tasks: list[Task], batch: EpisodeBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """score_group for multi-turn episodes: env.score(task, transcript) per episode."""
    rewards, correct, well_formed, errors = [], [], [], 0
    n = batch.completions.n
    for i, ep in enumerate(batch.episodes):
        try:
            s = env.score(tasks[i // n], ep.transcript)
        except (ValueError, KeyError, TypeError, ArithmeticError):
            errors += 1
            s = None
        rewards.append(float(s.reward) if s is not None else 0.0)
        correct.append(bool(s.correct) if s is not None else False)
        well_formed.append(bool(s.well_formed) if s is not None else False)
    return torch.tensor(rewards), torch.tensor(correct), torch.tensor(well_formed), errors


def eval_accuracy(
    model: Any, tokenizer: Any, env: Any, tasks: list[Task], cfg: GRPOConfig
) -> float:
    """Greedy accuracy on the held-out slice (a quick signal; `ownlm eval` gives the CI)."""
    model.eval()
    correct = 0
    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=0.0,
        thinking_budget_tokens=cfg.thinking_budget_tokens,
    )
    if is_multi_turn(env):
        batch = run_episodes(
            model, tokenizer, env, tasks, 1, params,
            max_episode_tokens=cfg.max_episode_tokens, enable_thinking=cfg.enable_thinking,
        )  # fmt: skip
        return float(score_episodes(env, tasks, batch)[1].float().mean()) if tasks else 0.0
    for i in range(0, len(tasks), 16):
        chunk = tasks[i : i + 16]
        ids = [
            encode_prompt(tokenizer, env.reset(t), enable_thinking=cfg.enable_thinking)
            for t in chunk
        ]
        comps = sample_completions(model, tokenizer, ids, 1, params)
        for t, text in zip(chunk, comps.texts, strict=True):
            correct += env.score(
                t, split_thinking(text, thinking_open=cfg.enable_thinking)[1]
            ).correct
    return correct / max(len(tasks), 1)
