"""Data parallelism under ``accelerate launch`` (or ``torchrun``): one process per device, same model on each.

Nothing here imports accelerate unless the job was launched with several processes. On a machine without CUDA,
accelerate only starts a gloo process group when told it runs on the CPU, so :func:`process_state` says so.
"""

from __future__ import annotations

import os

import torch


def process_state():
    """accelerate's ``PartialState`` when launched with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def average_gradients(params, state) -> None:
    """All-reduce the gradients of ``params`` to their mean over the processes (a missing gradient counts as 0)."""
    if state is None:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= state.num_processes


def any_process(flag: bool, state) -> bool:
    """True on every process when ``flag`` is true on at least one (keeps the processes in step)."""
    if state is None:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=state.device)
    dist.all_reduce(t)
    return bool(t.item())


def sum_over_processes(n: int, state) -> int:
    if state is None:
        return n
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.long, device=state.device)
    dist.all_reduce(t)
    return int(t.item())


def shutdown() -> None:
    """Tear down the process group, if one was started, before the interpreter exits: left to exit-time cleanup,
    gloo can abort a finished process ("terminate called without an active exception") and fail the launch."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
