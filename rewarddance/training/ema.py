"""An exponential moving average of the LoRA weights a diffusion trainer optimises (``ema_decay`` > 0).

The reward-driven steps of ReFL and GRPO are noisy (a few samples a step), so the LoRA they leave behind carries
that noise on top of the base model; an average over the last steps is meant to keep what they agree on. With
``ema_decay`` set, the trainers evaluate, keep-best and export the averaged weights and train the live ones; the
average is saved in every checkpoint (``ema.safetensors``) and restored on resume, so a resumed run equals an
uninterrupted one. The averaging itself is diffusers' :class:`~diffusers.training_utils.EMAModel` (its decay warms
up as ``(1 + n) / (10 + n)`` until it reaches ``ema_decay``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

EMA_FILE = "ema"  # ema.safetensors in a checkpoint


class LoraEMA:
    """The averaged copy of a :class:`~.diffusion_loop.Trainable`'s parameters; with ``decay`` 0 every method does
    nothing, so a trainer calls them unconditionally."""

    def __init__(self, params: list, decay: float, resumed_from: Path | None = None, resumed: dict | None = None):
        self.params, self.model = params, None
        if not decay:
            return
        from diffusers.training_utils import EMAModel

        self.model = EMAModel(params, decay=decay)
        if resumed_from is not None:
            self.restore(Path(resumed_from), resumed or {})

    @property
    def on(self) -> bool:
        return self.model is not None

    def update(self) -> None:
        """Fold the live weights into the average (after each optimiser step)."""
        if self.on:
            self.model.step(self.params)

    @contextlib.contextmanager
    def applied(self):
        """Inside: the trained parameters hold the averaged weights; the live ones come back on leaving."""
        if not self.on:
            yield
            return
        self.model.store(self.params)
        self.model.copy_to(self.params)
        try:
            yield
        finally:
            self.model.restore(self.params)

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        """What the checkpoint's JSON keeps (the number of averaged steps: the decay's warm-up depends on it)."""
        return {"ema_steps": self.model.optimization_step} if self.on else {}

    def tensors(self) -> dict:
        """The averaged weights as a checkpoint file (``{"ema": {index: tensor}}``), or nothing."""
        if not self.on:
            return {}
        return {EMA_FILE: {f"{i:05d}": s.detach().cpu() for i, s in enumerate(self.model.shadow_params)}}

    def restore(self, checkpoint: Path, resumed: dict) -> None:
        path = checkpoint / f"{EMA_FILE}.safetensors"
        if not path.is_file():  # a checkpoint of a run without ema_decay: the average starts here
            from .metrics import say

            say(f"ema_decay: {checkpoint} holds no average; it starts from the resumed weights")
            return
        from safetensors.torch import load_file

        saved = load_file(path)
        if len(saved) != len(self.params):
            raise ValueError(f"{path}: {len(saved)} averaged tensors for {len(self.params)} trained parameters")
        with torch.no_grad():
            for i, (s, p) in enumerate(zip(self.model.shadow_params, self.params)):
                t = saved[f"{i:05d}"]
                if t.shape != p.shape:
                    raise ValueError(f"{path}: tensor {i} has shape {tuple(t.shape)}, the LoRA's is {tuple(p.shape)}")
                s.copy_(t.to(s.device, s.dtype))
        self.model.optimization_step = int(resumed.get("ema_steps", 0))


def lora_ema(cfg, tr) -> LoraEMA:
    """The average of ``tr``'s LoRA for ``cfg.ema_decay`` (restored from the checkpoint ``tr`` resumed from)."""
    if cfg.ema_decay and tr.rt.fsdp:
        raise ValueError("ema_decay: not supported with distributed fsdp (the LoRA is sharded); use ddp or 0")
    return LoraEMA(tr.params, cfg.ema_decay, tr.resumed_from, tr.resumed)
