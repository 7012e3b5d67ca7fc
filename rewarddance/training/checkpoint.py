"""Atomic, resumable training checkpoints shared by the trainers.

A checkpoint is a folder ``step-{N:07d}`` holding ``trainable.safetensors`` (the parameters being trained),
``optimizer.pt`` (optimiser and LR-scheduler state), ``rng.pt`` (Python, numpy and torch generator states) and
``state.json`` (step and anything the trainer adds). It is written to a temporary folder and renamed into place,
so a crash never leaves a half-written checkpoint where a resume would find it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    folder: str | os.PathLike,
    step: int,
    model,
    optimizer,
    scheduler=None,
    extra=None,
    keep=2,
    full_state: tuple[dict, dict] | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``folder`` atomically; keep the newest ``keep`` checkpoints.

    ``full_state``: ``(weights, optimizer state)`` already gathered by :func:`gather_full_state` from a sharded
    (FSDP) model; the optimiser state is then keyed by parameter name and :func:`load_checkpoint` restores it so."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:07d}"
    tmp = folder / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights, optim = full_state if full_state else (trainable_state(model), optimizer.state_dict())
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "trainable.safetensors")
    torch.save(
        {
            "optimizer": optim,
            "by_name": full_state is not None,
            "scheduler": scheduler.state_dict() if scheduler else None,
        },
        tmp / "optimizer.pt",
    )
    torch.save(
        {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        tmp / "rng.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}, indent=2), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(folder)[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def gather_full_state(model, optimizer=None) -> tuple[dict, dict | None]:
    """The trainable weights and (with ``optimizer``) the optimiser state of an FSDP-sharded ``model`` as full CPU
    tensors, keyed by parameter name. Every process must call it (it gathers); only the first process gets them,
    the others ``{}``."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    weights = get_model_state_dict(model, options=options)
    return weights, None if optimizer is None else get_optimizer_state_dict(model, optimizer, options=options)


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def load_trainable(path: str | os.PathLike, model) -> None:
    """Copy a checkpoint's trainable weights into ``model`` (an unsharded one)."""
    path = Path(path)
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ValueError(f"checkpoint {path} has parameters the model lacks: {missing[:3]} ...")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def load_checkpoint(path: str | os.PathLike, model, optimizer, scheduler=None, sharded: bool = False) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its ``state.json``. ``sharded``: an FSDP
    model, whose weights :func:`load_trainable` put in before sharding and whose optimiser state must be by name."""
    path = Path(path)
    if not sharded:
        load_trainable(path, model)
    opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    if sharded and not opt.get("by_name"):
        raise ValueError(f"{path}: written by a run without FSDP; resume it with distributed: ddp")
    if opt.get("by_name"):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, opt["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(opt["optimizer"])
    if scheduler is not None and opt["scheduler"] is not None:
        scheduler.load_state_dict(opt["scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


class StopFlag:
    """Turns SIGINT / SIGTERM into a flag the training loop checks between steps (it then saves and exits)."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
