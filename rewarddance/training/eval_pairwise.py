"""What an evaluation of the diffusion trainers asks a judge that compares two images.

A pointwise judge is asked "does this image match the prompt?" and the evaluation's reward is its mean P(yes). A run
whose reward is pairwise (GRPO's ``reward: win_rate``, ReFL's ``mode: pairwise``) or whose judge was trained pairwise
has no pointwise question to ask: its P(yes) to one image is not a figure the judge was made for, and a win rate
within a group averages 0.5 by construction. So the evaluation asks what Pref-GRPO reports: how often an image of the
trained model beats the base model's image of the same prompt and seed (:class:`BaseWinRate`). The base images are
drawn once with the LoRA switched off (again after a resume: the seeds are fixed), both orders are asked and
averaged, so the figure is exactly 0.5 before training and above 0.5 when the judge prefers the trained model.
"""

from __future__ import annotations

import contextlib

import torch

from ..pipelines import Sampler


def compares(cfg, rm) -> bool:
    """Whether the evaluation of this run asks the judge to compare (see the module's docstring)."""
    trained_for = getattr(rm, "trained_for", None)
    pairwise_judge = trained_for is not None and trained_for.objective == "pairwise"
    return getattr(cfg, "reward", None) == "win_rate" or getattr(cfg, "mode", None) == "pairwise" or pairwise_judge


def score_samples(rm, samples: torch.Tensor, prompts, context, num_frames=None):
    """``rm.score`` of images ``[N, 3, H, W]`` or of clips ``[N, T, 3, H, W]`` on ``num_frames`` frames of each."""
    if samples.ndim == 5:
        return rm.score(videos=samples, prompts=prompts, context=context, num_frames=num_frames)
    return rm.score(samples, prompts, context=context)


def compare_samples(rm, cand: torch.Tensor, ref: torch.Tensor, prompts, context, num_frames=None):
    """``rm.compare``: P(``cand`` better than ``ref``, shown first), images or clips as in :func:`score_samples`."""
    if cand.ndim == 5:
        return rm.compare(references=ref, prompts=prompts, context=context, videos=cand, num_frames=num_frames)
    return rm.compare(cand, ref, prompts, context=context)


@contextlib.contextmanager
def lora_off(denoiser):
    """``denoiser`` (a module with peft adapters, or :class:`~.experts.Experts`) with its LoRA switched off."""
    denoiser.disable_adapters()
    try:
        yield
    finally:
        denoiser.enable_adapters()


def sample_eval_images(pipe, sampler_cfg, prompt: str, index: int, count: int, steps: int) -> torch.Tensor:
    """The evaluation's fixed-seed samples of eval prompt ``index``: ``count`` images (or clips), seeds
    ``10_000 + 100 * index + j``, the pipeline's deterministic schedule of ``steps`` levels."""
    sampler = Sampler(pipe, prompt, sampler_cfg)
    x = sampler.initial_latents([10_000 + index * 100 + j for j in range(count)])
    for k in range(steps):
        x, _ = sampler.step(x, k)
    return sampler.decode(x)


class BaseWinRate:
    """``win(images, prompt, index)``: for each image, P(it is better than the base model's image of the same prompt
    and seed) by ``rm``, the two orders averaged. The base images are sampled with ``denoiser``'s LoRA off on first
    use of each eval prompt and kept. Clips ``[n, T, 3, H, W]`` are compared the same way on ``num_frames`` frames
    of each; ``context`` replaces the run's (an image-to-video clip's own first frame)."""

    def __init__(self, rm, context, pipe, sampler_cfg, denoiser, count: int, steps: int):
        self.rm, self.context = rm, context
        self.pipe, self.sampler_cfg, self.denoiser = pipe, sampler_cfg, denoiser
        self.count, self.steps = count, steps
        self.base: dict[int, torch.Tensor] = {}

    def base_images(self, prompt: str, index: int) -> torch.Tensor:
        if index not in self.base:
            with torch.no_grad(), lora_off(self.denoiser):
                self.base[index] = sample_eval_images(  # kept in CPU memory: clips of a real model are large
                    self.pipe, self.sampler_cfg, prompt, index, self.count, self.steps
                ).cpu()
        return self.base[index]

    def __call__(self, images: torch.Tensor, prompt: str, index: int, context=None, num_frames=None) -> torch.Tensor:
        base = self.base_images(prompt, index).to(images.device, images.dtype)
        asked, context = [prompt] * len(images), context or self.context
        with torch.no_grad():
            beats = compare_samples(self.rm, images, base, asked, context, num_frames).p_yes.float().cpu()
            loses = compare_samples(self.rm, base, images, asked, context, num_frames).p_yes.float().cpu()
        return (beats + 1.0 - loses) / 2


def eval_judge(cfg, rm, pipe, sampler_cfg, denoiser, context):
    """The evaluation's reward of each image or clip, ``judge(samples, prompt, index, context=None,
    num_frames=None)`` (float32, CPU): the win rate over the base model where :func:`compares` (``denoiser``: the
    module whose LoRA is switched off for the base images), else the judge's P(yes). ``context`` replaces the
    run's; clips ``[n, T, 3, H, W]`` are judged on ``num_frames`` frames of each."""
    if compares(cfg, rm) and denoiser is not None:
        return BaseWinRate(rm, context, pipe, sampler_cfg, denoiser, cfg.eval_images, cfg.num_inference_steps)

    run_context = context

    def p_yes(samples, prompt, index, context=None, num_frames=None):
        return score_samples(rm, samples, prompt, context or run_context, num_frames).p_yes.float().cpu()

    return p_yes
