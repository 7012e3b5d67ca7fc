"""The engine of the diffusion trainers (phase 1 of :mod:`.diffusion_loop`): one ``accelerate.Accelerator`` per run.

It sets up the processes as ``accelerate launch`` / ``accelerate config`` describe them (one, or data parallel over
several GPUs or CPU processes), the mixed precision (``accelerator.autocast()`` and, through
``accelerator.prepare``, the denoiser's forward) and gradient accumulation (``accelerator.accumulate``). Over several
processes ``accelerator.prepare`` wraps the LoRA'd denoiser in DistributedDataParallel, whose backward pass averages
the gradients; with ``distributed: fsdp`` the denoiser is instead sharded here with FSDP2 (:func:`shard_denoiser`),
block by block, and only the optimiser goes through ``prepare``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .refl_config import DiffusionTrainConfig


@dataclass
class Runtime:
    """Phase 1: the run's ``accelerator``; ``state`` is its process state when there are several processes (else
    None); ``fsdp``: the denoiser is sharded over them (``distributed: fsdp``)."""

    accelerator: object
    state: object
    rank: int
    main: bool
    device: torch.device
    dtype: torch.dtype
    fsdp: bool


def make_accelerator(cfg: DiffusionTrainConfig):
    """The ``accelerate.Accelerator`` of a run: ``cfg.mixed_precision`` (None: what ``accelerate launch`` / ``accelerate
    config`` chose), ``cfg.gradient_accumulation_steps`` (a launcher's ``--gradient_accumulation_steps`` overrides
    it), on the CPU when there is no CUDA or ``cfg.device`` is the CPU. Without CUDA, accelerate starts the gloo
    process group of a multi-process launch only when told it runs on the CPU. Modules stay where phase 2 put them."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = not torch.cuda.is_available() or (cfg.device is not None and torch.device(cfg.device).type == "cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        # one process: accelerate's state is a process-wide singleton that refuses a new precision; a run in a
        # process that ran another (a notebook, the tests) starts from a fresh one, as a new process would
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        device_placement=False,
        # the frozen buffers are equal on every process; broadcasting them in each forward would also make the
        # main process's evaluations (the others do not run them) wait for the others
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    engine = accelerator.distributed_type.value  # one process, or data parallel over several: DDP or our FSDP2
    if engine != "NO" and not engine.startswith("MULTI_"):
        raise ValueError(
            f"accelerate is configured for {engine}; the diffusion trainers run in one process or data parallel "
            "(accelerate config: multi-GPU / multi-CPU) and shard the denoiser with `distributed: fsdp` in their config"
        )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("mixed_precision fp16 needs a GPU (accelerate does not autocast fp16 on the CPU); use bf16")
    return accelerator


def runtime(cfg: DiffusionTrainConfig) -> Runtime:
    accelerator = make_accelerator(cfg)
    several = accelerator.num_processes > 1
    rank = accelerator.process_index
    device = torch.device(cfg.device or accelerator.device)
    dtype = getattr(torch, cfg.dtype) if cfg.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    state = accelerator.state if several else None
    return Runtime(accelerator, state, rank, rank == 0, device, dtype, cfg.distributed == "fsdp" and several)


def shard_denoiser(denoiser, device: torch.device, dtype: torch.dtype) -> None:
    """FSDP (``fully_shard``) over the processes: each block of the denoiser, then the rest of it. The frozen
    weights and the fp32 LoRA are all-gathered in the model's ``dtype`` for compute; gradients reduce in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for name, child in denoiser.named_children():
        blocks = child if isinstance(child, torch.nn.ModuleList) and name.endswith("blocks") else []
        for block in list(blocks) + ([child] if name == "mid_block" and child is not None else []):
            fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(denoiser, mesh=mesh, mp_policy=policy)


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def torch_optimizer(optimizer):
    """The torch optimiser inside accelerate's ``AcceleratedOptimizer`` (checkpoints hold its state)."""
    from accelerate.optimizer import AcceleratedOptimizer

    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer


def own_forward(module: torch.nn.Module) -> None:
    """Undo ``accelerator.prepare``'s autocast wrapper of ``module.forward`` (mixed precision), back to the forward it
    had. (accelerate's ``unwrap_model(keep_fp32_wrapper=False)`` unwraps every ``__wrapped__`` layer, diffusers' own
    decorator of the denoiser's forward, which applies a LoRA scale, among them.)"""
    original = vars(module).pop("_original_forward", None)
    if original is None:
        return
    if getattr(original, "__func__", None) is type(module).forward:
        vars(module).pop("forward", None)  # the class's forward again
    else:
        module.forward = original
