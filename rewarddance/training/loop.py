"""The optimisation loop the VLM trainers share (reward model, caption pretraining).

``start`` seeds, joins the process group (``accelerate launch``), loads the model, marks what trains and restores
the newest checkpoint; ``run`` takes optimiser steps with a caller's loss until ``max_steps`` or a Ctrl-C, averaging
gradients across processes, writing ``metrics.csv`` and atomic checkpoints. The trainers keep their data, loss and
evaluation; the settings each reads from its config are named in ``start`` and ``run``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..distributed import any_process, average_gradients, process_state
from ..model import RewardModel
from .checkpoint import StopFlag, list_checkpoints, load_checkpoint, save_checkpoint
from .metrics import append_csv, drop_rows_after, say

LM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


@dataclass
class Run:
    """What ``start`` set up: the model, what trains, the optimiser, the step reached, and the process layout."""

    rm: RewardModel
    module: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int
    state: object
    rank: int
    world: int


def mark_trainable(rm: RewardModel, cfg) -> torch.nn.Module:
    """Mark what trains (``cfg.train``: lora, projector, lm or all); for LoRA wrap the model with peft. Returns the
    module whose parameters train."""
    model = rm.model
    if cfg.train == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=cfg.lora_targets)
        peft_model = get_peft_model(model, lora)  # injects adapters in place; rm's references stay valid
        if not any(p.requires_grad for p in peft_model.parameters()):
            raise ValueError(f"lora_targets {cfg.lora_targets!r} matched no module of {cfg.model}")
        rm.model = peft_model
        return peft_model
    for name, p in model.named_parameters():
        if cfg.train == "all":
            p.requires_grad_(True)
        elif cfg.train == "lm":
            p.requires_grad_("language_model" in name or "lm_head" in name)
        else:  # projector
            p.requires_grad_(any(k in name for k in ("projector", "connector", "mlp1", "merger")))
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"train={cfg.train!r} selects no parameter of {cfg.model}")
    return model


def lr_lambda(cfg) -> Callable[[int], float]:
    """Linear warm-up over ``cfg.warmup_steps``, then cosine decay to 0 at ``cfg.max_steps``."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def batch_of(rows: list, step: int, batch_size: int, seed: int) -> list:
    """Rows of optimiser step ``step``: consecutive slices of per-epoch permutations (resumable from the step)."""
    n = len(rows)
    perms: dict[int, list[int]] = {}  # a batch spans one or two epochs: draw each permutation once
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(pos, n)
        if epoch not in perms:
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=gen).tolist()
        out.append(rows[perms[epoch][k]])
    return out


def start(cfg, out: Path) -> Run:
    """Seed, join the process group, load ``cfg.model``, mark what trains and resume from the newest checkpoint.

    Reads ``seed, device, model, dtype, quantization, train (+ lora_*), lr, weight_decay, warmup_steps, max_steps,
    resume``.
    """
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    state = process_state()  # several processes: each takes its slice of a batch_size x processes global batch
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    device = cfg.device or (str(state.device) if state else None)
    rm = RewardModel.from_pretrained(cfg.model, dtype=cfg.dtype, device=device, quantization=cfg.quantization)
    module = mark_trainable(rm, cfg)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    step = 0
    if cfg.resume and list_checkpoints(out / "checkpoints"):
        newest = list_checkpoints(out / "checkpoints")[-1]
        step = load_checkpoint(newest, module, optimizer, scheduler)["step"]
        if rank == 0:
            say(f"resuming from step {step} ({newest})")
    if rank == 0:  # rows of steps after the checkpoint were written by the run that stopped: they run again
        drop_rows_after(out / "metrics.csv", step)
    return Run(rm, module, params, optimizer, scheduler, step, state, rank, world)


def run(
    run: Run,
    cfg,
    out: Path,
    loss_fn: Callable[[int], dict],
    desc: str,
    progress: bool = True,
    after_step: Callable[[int], None] | None = None,
) -> tuple[list[dict], bool]:
    """Optimiser steps from ``run.step`` to ``cfg.max_steps``: ``loss_fn(step)`` returns this process's loss parts
    (``"loss"`` is minimised; every part is logged). Returns the history and whether a Ctrl-C stopped the run (a
    checkpoint is saved first). Reads ``batch_size, max_grad_norm, log_every, save_every, keep_checkpoints``."""
    from tqdm.auto import tqdm

    history: list[dict] = []
    written = 0  # rows of history already in metrics.csv
    bar = tqdm(total=cfg.max_steps, initial=run.step, desc=desc, disable=not progress)
    with StopFlag() as flag:
        while run.step < cfg.max_steps:
            run.rm.model.train()
            parts = loss_fn(run.step)
            run.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            average_gradients(run.params, run.state)
            torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.step += 1
            row = {"step": run.step, "lr": run.scheduler.get_last_lr()[0]}
            row.update({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()})
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if run.rank == 0 and cfg.log_every and (run.step % cfg.log_every == 0 or run.step == cfg.max_steps):
                append_csv(out / "metrics.csv", history[written:])
                written = len(history)
            if after_step is not None and run.step < cfg.max_steps:
                after_step(run.step)
            stop = any_process(flag.stop, run.state)
            if stop or run.step == cfg.max_steps or (cfg.save_every and run.step % cfg.save_every == 0):
                if run.rank == 0:
                    if cfg.log_every:  # every step up to a checkpoint is in metrics.csv
                        append_csv(out / "metrics.csv", history[written:])
                        written = len(history)
                    save_checkpoint(
                        out / "checkpoints",
                        run.step,
                        run.module,
                        run.optimizer,
                        run.scheduler,
                        keep=cfg.keep_checkpoints,
                    )
                if run.state:
                    run.state.wait_for_everyone()
            if stop:
                bar.close()
                return history, True
    bar.close()
    return history, False


def checksum(run: Run) -> float:
    """Sum of |trained parameters|: equal on every process when they trained in step."""
    return float(sum(p.detach().double().abs().sum() for p in run.params))
