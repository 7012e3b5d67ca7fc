"""The settings of a GRPO run (:class:`GRPOConfig`): the shared ones of
:class:`~.refl_config.DiffusionTrainConfig` and GRPO's own, each with help text, checked as a whole when built."""

from __future__ import annotations

from dataclasses import dataclass, field

from .refl_config import DiffusionTrainConfig

REWARDS = ("p_yes", "margin", "win_rate", "verifier")
SDES = ("ddim", "flow_grpo")


@dataclass
class GRPOConfig(DiffusionTrainConfig):
    """Settings of a GRPO run; ``from_yaml`` reads them; every field has help text."""

    group_size: int = field(default=4, metadata={"help": "samples per prompt (G); advantages compare them"})
    prompts_per_step: int = field(
        default=2,
        metadata={
            "help": "prompts per step (each sampled group_size times); gradient_accumulation_steps splits their "
            "groups into that many micro-batches for the loss"
        },
    )
    eta: float = field(
        default=1.0,
        metadata={
            "help": "noise of the stochastic sampler in (0, 1]: with sde ddim 1 is DDPM-like (0 would be DDIM); with "
            "sde flow_grpo Flow-GRPO's noise level (it uses 0.7)"
        },
    )
    sde: str = field(
        default="ddim",
        metadata={
            "help": "the stochastic sampler: ddim (generalised DDIM with eta; keeps the marginals; every scheduler) "
            "or flow_grpo (Flow-GRPO's Euler-Maruyama step of the flow SDE; flow-matching schedules: SD3, Flux, Wan)"
        },
    )
    reward: str = field(
        default="p_yes",
        metadata={
            "help": "p_yes or margin (pointwise judge), win_rate (each sample against its group, pairwise), or "
            "verifier (ShapesWorld prompts only: 1 when the strict verifier passes the image, else 0; a programmatic "
            "reward like GenEval's in Flow-GRPO; the judge then only measures)"
        },
    )
    train_steps: list[int] = field(
        default_factory=list,
        metadata={"help": "[lo, hi] sampled steps trained on, inclusive; empty: every stochastic step"},
    )
    train_subset: int = field(
        default=0, metadata={"help": "train on this many steps drawn from the window each step (0: all of it)"}
    )
    inner_epochs: int = field(default=1, metadata={"help": "optimiser steps on each batch of rollouts"})
    clip_range: float = field(default=1e-4, metadata={"help": "PPO clip of the ratio: [1 - c, 1 + c]"})
    adv_clip: float = field(default=5.0, metadata={"help": "advantages are clipped to [-adv_clip, adv_clip]"})
    adv_eps: float = field(default=1e-4, metadata={"help": "added to the group's std when normalising"})
    kl_weight: float = field(default=0.01, metadata={"help": "weight of the KL term to the base model (LoRA off)"})

    def __post_init__(self):
        super().__post_init__()
        n = self.num_inference_steps
        checks = [
            (
                self.group_size >= 2,
                f"group_size must be 2 or more (advantages compare the samples of a group), got {self.group_size}",
            ),
            (self.prompts_per_step >= 1, f"prompts_per_step must be 1 or more, got {self.prompts_per_step}"),
            (
                self.prompts_per_step % self.gradient_accumulation_steps == 0,
                f"prompts_per_step {self.prompts_per_step} must be a multiple of gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps} (each micro-batch takes whole groups)",
            ),
            (
                0 < self.eta <= 1,
                f"eta must be in (0, 1]: GRPO needs a stochastic sampler (eta 0 is deterministic), got {self.eta}",
            ),
            (self.reward in REWARDS, f"reward must be one of {REWARDS}, got {self.reward!r}"),
            (self.sde in SDES, f"sde must be one of {SDES}, got {self.sde!r}"),
            (self.cot in ("none", "judgment_first", "reasoning_first"), f"cot: unknown mode {self.cot!r}"),
            (len(self.train_steps) in (0, 2), f"train_steps must be [lo, hi] or empty, got {self.train_steps}"),
            (
                len(self.train_steps) != 2 or 0 <= self.train_steps[0] <= self.train_steps[1] < n,
                f"train_steps {self.train_steps} is outside the schedule of {n} steps (need 0 <= lo <= hi <= {n - 1})",
            ),
            (self.train_subset >= 0, f"train_subset must be 0 or more, got {self.train_subset}"),
            (self.inner_epochs >= 1, f"inner_epochs must be 1 or more, got {self.inner_epochs}"),
            (self.clip_range > 0 and self.adv_clip > 0 and self.adv_eps > 0, "clip_range, adv_clip, adv_eps > 0"),
            (self.kl_weight >= 0, f"kl_weight must be 0 or more, got {self.kl_weight}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"GRPOConfig: {msg}")
