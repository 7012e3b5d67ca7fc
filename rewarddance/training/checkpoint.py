"""Atomic, resumable training checkpoints shared by the trainers.

A checkpoint is a folder ``step-{N:07d}`` holding ``trainable.safetensors`` (the parameters being trained),
``optimizer.pt`` (optimiser and LR-scheduler state, and fp16 mixed precision's loss scale), ``rng.json`` (the Python
and numpy generator states), ``rng.safetensors`` (the torch generator state) and ``state.json`` (step and anything
the trainer adds). It is written to a temporary folder and renamed into place, so a crash never leaves a
half-written checkpoint where a resume would find it.

Resuming runs no code from the folder: ``optimizer.pt`` is read with ``torch.load(weights_only=True)``, which
accepts only tensors and plain containers, and the rest is safetensors and JSON. A checkpoint of the earlier
format (its generator states pickled in ``rng.pt``) is refused with a :class:`CheckpointError` that says so, without
unpickling anything: delete it (or the run's ``checkpoints`` folder), or resume it with the release that wrote it.
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed safely; the message names the folder and the file."""


def _rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """The Python and numpy generator states as JSON-ready values, and the torch one as a tensor."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "bit_generator": str(name),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    return plain, {"torch": torch.get_rng_state()}


def _set_rng_state(path: Path) -> None:
    plain = json.loads((path / "rng.json").read_text(encoding="utf-8"))
    py, npy = plain["python"], plain["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    keys = np.array(npy["keys"], dtype=np.uint32)
    np.random.set_state((npy["bit_generator"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])


def _load_optimizer_file(path: Path) -> dict:
    """``optimizer.pt`` through torch's weights-only unpickler: anything but tensors and plain containers (an object
    whose unpickling would run code) is refused before it is built."""
    import pickle

    try:
        return torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path / 'optimizer.pt'}: refused, it holds more than tensors and plain containers (not written by "
            f"rewarddance, or altered); delete this checkpoint to start afresh ({first})"
        ) from err


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
    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
    scaler=None,
) -> Path:
    """Write checkpoint ``step`` under ``folder`` atomically; keep the newest ``keep`` checkpoints.

    ``full_state``: ``(weights, optimizer state)`` already gathered by :func:`gather_full_state` from a sharded
    (FSDP) model; the optimiser state is then keyed by parameter name and :func:`load_checkpoint` restores it so.
    ``tensors``: more named sets of tensors, each written as ``name.safetensors`` inside the checkpoint.
    ``scaler``: fp16 mixed precision's ``GradScaler``, whose loss scale a resume continues from."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:07d}"
    tmp = folder / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights, optim = full_state if full_state else (trainable_state(model), optimizer.state_dict())
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "trainable.safetensors")
    for name, group in (tensors or {}).items():
        save_file({k: v.contiguous() for k, v in group.items()}, tmp / f"{name}.safetensors")
    torch.save(
        {
            "optimizer": optim,
            "by_name": full_state is not None,
            "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
        },
        tmp / "optimizer.pt",
    )
    plain, tensors = _rng_state()
    (tmp / "rng.json").write_text(json.dumps(plain), encoding="utf-8")
    save_file(tensors, tmp / "rng.safetensors")
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


def load_checkpoint(
    path: str | os.PathLike, model, optimizer, scheduler=None, sharded: bool = False, scaler=None
) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its ``state.json``. ``sharded``: an FSDP
    model, whose weights :func:`load_trainable` put in before sharding and whose optimiser state must be by name.

    Raises :class:`CheckpointError` for a checkpoint of the earlier, pickled format or an ``optimizer.pt`` holding
    anything but tensors and plain containers; nothing is restored then."""
    path = Path(path)
    if not (path / "rng.json").is_file() or not (path / "rng.safetensors").is_file():
        if (path / "rng.pt").exists():
            raise CheckpointError(
                f"{path}: this checkpoint predates the safe format (its rng.pt is a pickle, which resuming no longer "
                "loads); delete it to start afresh, or resume it with the rewarddance release that wrote it"
            )
        raise CheckpointError(f"{path}: incomplete checkpoint, rng.json or rng.safetensors is missing")
    opt = _load_optimizer_file(path)
    if not sharded:
        load_trainable(path, model)
    if sharded and not opt.get("by_name"):
        raise ValueError(f"{path}: written by a run without FSDP; resume it with distributed: ddp")
    if opt.get("by_name"):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, opt["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(opt["optimizer"])
    if scheduler is not None and opt["scheduler"] is not None:
        scheduler.load_state_dict(opt["scheduler"])
    if scaler is not None and opt.get("scaler"):
        scaler.load_state_dict(opt["scaler"])
    _set_rng_state(path)
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
