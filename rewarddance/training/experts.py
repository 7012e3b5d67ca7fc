"""Two-expert video pipelines in the diffusion trainers: Wan 2.2 A14B, whose ``transformer`` (the high-noise expert)
denoises the steps at timesteps of at least ``boundary_ratio * num_train_timesteps`` and ``transformer_2`` (the
low-noise expert) the steps below.

The setting ``experts`` (``both``, ``high`` or ``low``) chooses the experts that get a LoRA, each a LoRA of its own.
:class:`Experts` holds the trained ones under the pipeline's names for them, so one optimiser steps them all, a
checkpoint's weights are keyed by expert (exact resume restores each), the ``keep_best`` snapshot covers both and the
export writes one diffusers file and one ComfyUI file per trained expert (:func:`export_suffix`; the diffusers file of
the low-noise expert loads with ``load_lora_weights(..., load_into_transformer_2=True)``). Each expert goes through
``accelerator.prepare`` on its own, and the sampler calls the prepared modules (``SamplerConfig.denoiser`` and
``denoiser_2``), choosing the expert of each level by its timestep as the pipeline does. So ReFL's gradient reaches the
LoRA of whichever expert runs at a row's stop level (none where that expert is untrained), GRPO's log-probability of a
sampled step is recomputed by the expert that sampled it, and its KL term measures against the base with the LoRAs off
(:meth:`Experts.disable_adapters`). Two experts train in one process for now.
"""

from __future__ import annotations

import torch

NAMES = {"high": "transformer", "low": "transformer_2"}  # the pipeline's attribute of each expert
# the export files of each expert: pytorch_lora_weights{suffix}.safetensors and lora_comfyui{suffix}.safetensors
SUFFIXES = {"transformer": "", "transformer_2": "_low_noise"}


def has_two_experts(pipe) -> bool:
    """Whether ``pipe`` switches between two denoisers: ``transformer`` and ``transformer_2`` and a
    ``boundary_ratio`` (without one a Wan pipeline runs ``transformer`` only)."""
    config = getattr(pipe, "config", None) or {}
    both = getattr(pipe, "transformer", None) is not None and getattr(pipe, "transformer_2", None) is not None
    return both and config.get("boundary_ratio") is not None


def check_experts(cfg, pipe) -> None:
    """``experts`` high or low chooses one of two experts: an error naming it for a pipeline with one denoiser, and for
    a Wan 2.2 pipeline that holds only its low-noise expert (no ``transformer``)."""
    name = type(pipe).__name__
    if getattr(pipe, "transformer_2", None) is not None and getattr(pipe, "transformer", None) is None:
        raise ValueError(
            f"pretrained: {name} holds only Wan 2.2's low-noise expert (transformer_2, no transformer); the trainers "
            "need the high-noise expert too"
        )
    if cfg.experts != "both" and not has_two_experts(pipe):
        raise ValueError(
            f"experts {cfg.experts}: chooses one of Wan 2.2's two experts, but {name} has one denoiser "
            "(use experts both)"
        )


class Experts(torch.nn.Module):
    """The trained experts of a two-expert pipeline, as children named like the pipeline's attributes
    (``transformer``, ``transformer_2``): their parameters, and so a checkpoint's keys and a snapshot's, carry the
    expert's name. ``callers``: the module the sampler calls for each, as ``accelerator.prepare`` returned it."""

    def __init__(self, pipe, names: list[str]):
        super().__init__()
        for name in names:
            self.add_module(name, getattr(pipe, name))
        self.callers: dict = {}

    def disable_adapters(self) -> None:
        for expert in self.children():
            expert.disable_adapters()

    def enable_adapters(self) -> None:
        for expert in self.children():
            expert.enable_adapters()

    def enable_gradient_checkpointing(self) -> None:
        for expert in self.children():
            expert.enable_gradient_checkpointing()


def trained_experts(cfg, pipe, rt) -> Experts | None:
    """The :class:`Experts` that ``cfg.experts`` chooses of a two-expert pipeline (None for any other pipeline). Over
    several processes they are refused: a process whose rows all stop on one expert would leave the other's gradient
    reduction waiting."""
    if not has_two_experts(pipe):
        return None
    if rt.accelerator.num_processes > 1:
        raise ValueError(
            f"{type(pipe).__name__} has two experts (Wan 2.2); training them runs in one process for now: launch "
            "without several processes"
        )
    for name in NAMES.values():  # frozen, the untrained one too: no gradient may build up in its weights
        getattr(pipe, name).requires_grad_(False)
    return Experts(pipe, [NAMES[e] for e in ("high", "low") if cfg.experts in ("both", e)])


def experts_of(denoiser) -> list[torch.nn.Module]:
    """The modules that carry a LoRA: the experts of an :class:`Experts`, else the denoiser itself."""
    return list(denoiser.children()) if isinstance(denoiser, Experts) else [denoiser]


def prepare(accelerator, denoiser, optimizer):
    """``accelerator.prepare`` of every trained module and the optimiser: ``(the first prepared module, optimiser)``;
    an :class:`Experts` keeps each prepared expert in ``callers``."""
    *models, optimizer = accelerator.prepare(*experts_of(denoiser), optimizer)
    if isinstance(denoiser, Experts):
        denoiser.callers = dict(zip([name for name, _ in denoiser.named_children()], models))
    return models[0], optimizer


def sampler_callers(tr) -> dict:
    """The ``SamplerConfig`` fields of the modules the sampler calls while training ``tr`` (a
    :class:`~.diffusion_loop.Trainable`, or None: the pipeline's own): ``denoiser``, and for two experts
    ``denoiser_2`` (None for an untrained expert: the pipeline's)."""
    if tr is None:
        return {"denoiser": None}
    if not isinstance(tr.denoiser, Experts):
        return {"denoiser": tr.model}
    called = tr.denoiser.callers
    return {"denoiser": called.get("transformer"), "denoiser_2": called.get("transformer_2")}


def own_forwards(denoiser) -> None:
    """:func:`~.engine.own_forward` of every trained module (accelerate's mixed precision wrapped each forward)."""
    from .engine import own_forward

    for module in experts_of(denoiser):
        own_forward(module)


def expert_of_steps(pipe, timesteps) -> list[str]:
    """The expert (``high`` / ``low``) that runs each step of a schedule of ``timesteps``, as the pipeline picks it."""
    boundary = pipe.config["boundary_ratio"] * pipe.scheduler.config.num_train_timesteps
    return ["high" if float(t) >= boundary else "low" for t in timesteps]


def trained_steps(cfg, pipe, timesteps, steps) -> list[int]:
    """Those of ``steps`` (indices into the schedule of ``timesteps``) that run a trained expert: all of them for a
    one-expert pipeline."""
    if not has_two_experts(pipe) or cfg.experts == "both":
        return list(steps)
    runs = expert_of_steps(pipe, timesteps)
    return [k for k in steps if runs[k] == cfg.experts]


def check_expert_levels(cfg, pipe, timesteps, steps, setting: str) -> None:
    """Before training: the trained ``steps`` (``setting`` names them, e.g. ``stop_range [1, 2]``) must reach a trained
    expert, else a clear error naming ``experts`` and the boundary step; with ``experts both``, a note when they reach
    one expert only (the other's LoRA stays as initialised)."""
    if not has_two_experts(pipe):
        return
    from .metrics import say

    runs = expert_of_steps(pipe, timesteps)
    low = runs.index("low") if "low" in runs else len(runs)  # the boundary: the first low-noise step
    where = (
        f"the high-noise expert runs steps 0..{low - 1} and the low-noise one steps {low}..{len(runs) - 1} of the "
        f"{len(runs)}-step schedule (boundary_ratio {pipe.config['boundary_ratio']}: the boundary is step {low})"
    )
    reached = sorted({runs[k] for k in steps})  # ("high" sorts before "low")
    if cfg.experts != "both" and cfg.experts not in reached:
        raise ValueError(
            f"experts {cfg.experts}: {setting} reaches only {' and '.join(reached)}-noise steps, so nothing would "
            f"train; {where}"
        )
    if cfg.experts == "both" and len(reached) == 1:
        say(f"experts both: {setting} reaches only the {reached[0]}-noise expert, whose LoRA alone trains; {where}")


def export_suffix(name: str) -> str:
    """The file-name suffix of an expert's exported LoRA (``transformer``: none; ``transformer_2``: ``_low_noise``)."""
    return SUFFIXES[name]


def expert_weights(state_dict: dict, name: str) -> dict:
    """The weights of expert ``name`` in a state dict of an :class:`Experts` (keys ``<name>.<parameter>``), keyed by the
    expert's own parameter names."""
    return {k[len(name) + 1 :]: v for k, v in state_dict.items() if k.startswith(name + ".")}
