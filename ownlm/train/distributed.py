"""Learners on torch.distributed: a recipe run under `torchrun` splits each step over processes.

    torchrun --nproc-per-node 2 -m ownlm train sft --config examples/sft.yaml

Each process takes every N-th micro-batch of a step (all of them see the same batch, drawn from
the seed and the step); the gradients are summed across processes (`all_reduce`, gloo on CPU,
NCCL on GPU) before the optimizer step. Every micro-batch's loss is already divided by the
whole batch's counted tokens, so the summed gradient is the one a single process accumulates:
N processes give one process's losses and weights, to float summation order, and a run saved
by N processes resumes with any number. Rank 0 alone writes checkpoints, the metrics log and the
progress bar; the others keep identical weights and optimizer states.

Why by hand and not DistributedDataParallel: DDP averages gradients over processes, which equals
the single-process step only when every process holds the same number of counted tokens; the sum
of token-normalised micro-batches is exact for any split, and a step's all-reduce is one call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ownlm.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the learners (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether micro-batch `index` of a step is this process's."""
        return index % self.size == self.rank


def init_world(device: str = "cpu") -> World:
    """Join the process group torchrun set up (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT in the
    environment); one process without them."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ.get("RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        try:
            dist.init_process_group(backend, rank=rank, world_size=size)
        except (RuntimeError, ValueError) as err:
            raise ConfigError(
                f"cannot join the torchrun process group ({backend}, rank {rank} of {size}): "
                f"{err}; start the run with `torchrun --nproc-per-node N -m ownlm train ...`"
            ) from None
    return World(rank, size)


def sum_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Sum every parameter's gradient over the processes (one flat all-reduce)."""
    if world.size == 1:
        return
    grads = []
    for p in params:
        if p.grad is None:  # this process had no micro-batch that reached it
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def sum_values(values: list[float], world: World) -> list[float]:
    """Sum numbers (losses, token counts) over the processes."""
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(x) for x in t]


def finish(world: World) -> None:
    """Leave the process group at the end of a run."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
