"""Several processes (``accelerate launch --num_processes N`` or ``torchrun``): the few collective operations vlmq
needs, each a no-op with one process.

The launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup`
joins the group (NCCL on CUDA, gloo on CPU) and, on CUDA, pins the process to GPU ``LOCAL_RANK``. Gradients are
averaged by an all-reduce after each update's backward passes (what DDP does, without wrapping the model), and
every statistic that rewrites the critic heads (PopArt, whitening) is summed over processes before it is applied,
so every process holds identical weights.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def setup() -> None:
    """Join the process group the launcher describes (idempotent; nothing to do with one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return
    if torch.distributed.is_initialized():
        return
    cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes checkpoints, metrics and progress bars (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over all processes, in place (unchanged with one process)."""
    if active():
        torch.distributed.all_reduce(t)
    return t


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over processes (one flat all-reduce)."""
    if not active() or world_size() == 1:
        return
    for p in params:  # a parameter without a gradient here may have one elsewhere: the shapes must agree
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gather(obj: Any) -> list[Any]:
    """Every process's `obj` (picklable), in rank order, on every process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
