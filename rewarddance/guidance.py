"""Reward-guided sampling inside a diffusers pipeline's own loop: a ``PipelineCallback`` for ``callback_on_step_end``.

At chosen steps the callback recovers the clean-image prediction ``x0`` of every latent in the batch from the
latents before and after the step (exact for the deterministic schedulers of :mod:`rewarddance.pipelines`; no
extra denoiser call), decodes it with the pipeline's VAE, scores it with the reward model, and then resamples the
batch as particles (Feynman-Kac steering, Singhal et al., 2025) or prunes it to the best paths. The batch keeps
its size: a replaced latent becomes a copy of a surviving one, with part of its noise drawn afresh so the copies
diverge (``refresh``). With several prompts, each prompt's rows are resampled among themselves (diffusers orders the
batch prompt-major: prompt ``i`` holds rows ``i * n .. i * n + n - 1``), so a latent never moves to another prompt.

    cb = RewardGuidanceCallback(rm, "a red circle", every=5)
    images = run_guided(pipe, "a red circle", cb, num_images_per_prompt=4).images
    cb.history  # per scored step: scores, ancestors

Video pipelines (Wan 2.1 / 2.2, CogVideoX, LTX-Video, and their image-to-video pipelines) work the same way: ``x0``
is decoded to clips (whole: their VAEs are causal in time, see :mod:`rewarddance.video_pipelines`) and judged with
``videos=`` on ``judge_frames`` frames sampled uniformly from each. Latent entries a step leaves unchanged (the
conditioning frame of LTX-Video's image-to-video) stay as they are in every copy.
"""

from __future__ import annotations

import inspect
import math

import torch
from diffusers.callbacks import PipelineCallback

from .pipelines import (
    VIDEO_FAMILIES,
    PipelineError,
    check_scheduler,
    compose,
    decode,
    decompose,
    levels,
    model_levels,
    pipeline_family,
)
from .video_pipelines import JUDGE_FRAMES, i2v_context, judge_sampling

POTENTIALS = ("max", "diff", "sum")
MODES = ("resample", "prune")


def check_pipeline(pipe) -> str:
    """The pipeline's family, after checking it has a VAE, a supported scheduler and ``callback_on_step_end``."""
    family = pipeline_family(pipe)
    check_scheduler(pipe.scheduler)
    params = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" not in params or "latents" not in getattr(pipe, "_callback_tensor_inputs", ()):
        raise PipelineError(f"{type(pipe).__name__} does not support callback_on_step_end with 'latents'")
    return family


class RewardGuidanceCallback(PipelineCallback):
    """Scores ``x0`` predictions at chosen steps and resamples or prunes the batch.

    Args:
        rm: a :class:`~rewarddance.RewardModel` (anything with ``score(pixels, prompts)``).
        prompt: one prompt, one per pipeline prompt (in the pipeline's order), or one per batch row. Consecutive
            rows with the same prompt form a group; resampling and pruning stay within a group.
        steps: step indices at which to score (each >= 1: the latents before the step are needed); default every
            ``every``-th step.
        every: spacing of the default steps.
        mode: ``resample`` (multinomial over the potentials, Feynman-Kac steering) or ``prune`` (keep the ``keep``
            best of each prompt's rows, refill with their copies).
        potential: ``max`` (gain in the best reward so far), ``diff`` (gain since the last scored step) or ``sum``
            (the reward itself) -- each scaled by ``lam`` into a log-weight.
        refresh: fraction (0-1) of a copy's noise variance drawn afresh; 0 makes exact copies.
        height, width: image size, needed for Flux only when not square, and for LTX-Video (with ``num_frames``):
            both pack their latents into tokens. :func:`run_guided` takes them from the pipeline call.
        num_frames: the clip length asked of a video pipeline (LTX-Video; CogVideoX 1.5).
        judge_frames: video pipelines: frames of each clip the judge sees, sampled uniformly (None: all).
        context: the judge's :class:`~rewarddance.RewardContext` (videos: ``video_alignment`` when None; with an
            image-to-video call :func:`run_guided` shows the judge the ``image`` as the first frame).
        seed: seeds the resampling and the refreshed noise.
    """

    tensor_inputs = ["latents"]

    def __init__(
        self,
        rm,
        prompt,
        steps=None,
        every: int = 5,
        mode: str = "resample",
        potential: str = "max",
        lam: float = 10.0,
        keep: int | None = None,
        refresh: float = 0.5,
        height: int | None = None,
        width: int | None = None,
        context=None,
        seed: int = 0,
        num_frames: int | None = None,
        judge_frames: int | None = JUDGE_FRAMES,
    ):
        super().__init__(cutoff_step_ratio=1.0)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if potential not in POTENTIALS:
            raise ValueError(f"potential must be one of {POTENTIALS}, got {potential!r}")
        if not 0.0 <= refresh <= 1.0:
            raise ValueError(f"refresh must be in [0, 1], got {refresh}")
        if steps is not None and any(int(s) < 1 for s in steps):
            raise ValueError(f"steps must be >= 1 (x0 needs the latents before the step), got {list(steps)}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.rm, self.prompt, self.context = rm, prompt, context
        self.steps = None if steps is None else sorted({int(s) for s in steps})
        self.every, self.mode, self.potential, self.lam = every, mode, potential, lam
        self.keep, self.refresh, self.height, self.width, self.seed = keep, refresh, height, width, seed
        self.num_frames, self.judge_frames = num_frames, judge_frames
        self._call = {}  # what run_guided knows of the current call: sizes, and an image-to-video context
        self.reset()

    def reset(self) -> None:
        """Forget the last run (called automatically when a run starts at step 0)."""
        self.history: list[dict] = []
        self.rm_calls = 0
        self.images_scored = 0
        self._prev = None
        self._levels = self._read_at = None
        self._family: str | None = None  # the pipeline's, read when a run starts
        self._last = None  # per particle: reward at the last scored step
        self._best = None  # per particle: best reward so far
        self._gen = torch.Generator().manual_seed(self.seed)

    def scoring_steps(self, num_steps: int) -> list[int]:
        if self.steps is not None:
            return [s for s in self.steps if s < num_steps]
        return [i for i in range(1, num_steps) if (i + 1) % self.every == 0]

    def _prompts(self, B: int) -> list[str]:
        if isinstance(self.prompt, str):
            return [self.prompt] * B
        prompts = list(self.prompt)
        if B % len(prompts):
            raise ValueError(f"{len(prompts)} prompts do not divide a batch of {B} latents")
        per = B // len(prompts)  # num_images_per_prompt rows per prompt, in the pipelines' order
        return [p for p in prompts for _ in range(per)]

    def _size(self, pipe, latents) -> tuple[int, int]:
        if self.height and self.width:
            return self.height, self.width
        if self._call.get("height") and self._call.get("width"):
            return self._call["height"], self._call["width"]
        if latents.ndim == 3:  # Flux packs 2x2 latent patches into tokens
            side = 2 * math.isqrt(latents.shape[1]) * pipe.vae_scale_factor
            return side, side
        return latents.shape[-2] * pipe.vae_scale_factor, latents.shape[-1] * pipe.vae_scale_factor

    def _score(self, pipeline, x0: torch.Tensor, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Decode the ``x0`` predictions and judge them: images, or clips ``[B, T, 3, H, W]`` for a video pipeline
        (``judge_frames`` of each); ``p_yes`` float32 ``[B]``."""
        family = self._family or check_pipeline(pipeline)
        if family not in VIDEO_FAMILIES:
            height, width = self._size(pipeline, latents)
            pixels = decode(pipeline, x0, height, width)
            return self.rm.score(pixels, prompts, context=self.context).p_yes.float().cpu()
        call = self._call
        height, width = self.height or call.get("height"), self.width or call.get("width")
        clips = list(decode(pipeline, x0, height, width, self.num_frames or call.get("num_frames")))
        context = self.context if self.context is not None else call.get("context")
        frames = judge_sampling(clips, self.judge_frames)
        return self.rm.score(videos=clips, prompts=prompts, context=context, num_frames=frames).p_yes.float().cpu()

    def _log_weights(self, r: torch.Tensor) -> torch.Tensor:
        last = self._last if self._last is not None else torch.zeros_like(r)
        best = self._best if self._best is not None else torch.zeros_like(r)
        if self.potential == "sum":
            inc = r
        elif self.potential == "diff":
            inc = r - last
        else:
            inc = torch.maximum(best, r) - best
        return self.lam * inc

    @staticmethod
    def _groups(prompts: list[str]) -> list[range]:
        """Runs of consecutive rows with the same prompt: the rows of one prompt in diffusers' prompt-major order."""
        groups, start = [], 0
        for i in range(1, len(prompts) + 1):
            if i == len(prompts) or prompts[i] != prompts[start]:
                groups.append(range(start, i))
                start = i
        return groups

    def _ancestors(self, r: torch.Tensor, groups: list[range]) -> torch.Tensor:
        """The row each row continues from, chosen within its own prompt's rows; sorted within each group, so
        copies of one ancestor are adjacent."""
        anc = torch.empty(r.numel(), dtype=torch.long)
        logw = self._log_weights(r)
        for rows in groups:
            n = len(rows)
            if self.mode == "prune":
                k = self.keep or max(1, n // 2)
                if not 1 <= k <= n:
                    raise ValueError(f"keep must be between 1 and the rows per prompt ({n}), got {k}")
                best = torch.argsort(r[rows.start : rows.stop], descending=True, stable=True)[:k]
                local = best[torch.arange(n) % k]
            else:
                lw = logw[rows.start : rows.stop]
                w = torch.softmax(lw - lw.max(), dim=0)
                local = torch.multinomial(w, n, replacement=True, generator=self._gen)
            anc[rows.start : rows.stop] = local.sort().values + rows.start
        return anc

    @torch.no_grad()
    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        i = int(step_index)
        if i == 0:
            self.reset()
            self._family = check_pipeline(pipeline)
        if self._levels is None:
            self._levels = levels(pipeline.scheduler)
            self._read_at = model_levels(pipeline.scheduler)  # where a step took its latents from (DDIM: its t)
        num_steps = len(self._levels) - 1
        plan = self.scoring_steps(num_steps)
        latents = callback_kwargs["latents"]
        out = {}
        if i in plan and self._prev is not None:
            x0, e = decompose(self._prev.float(), latents.float(), self._read_at[i], self._levels[i + 1])
            B = latents.shape[0]
            prompts = self._prompts(B)
            r = self._score(pipeline, x0.to(latents.dtype), latents, prompts)
            self.rm_calls += 1
            self.images_scored += B
            anc = self._ancestors(r, self._groups(prompts))
            e = e[anc.to(e.device)]
            if self.refresh > 0:
                first = torch.ones(B, dtype=torch.bool)
                first[1:] = anc[1:] != anc[:-1]  # the first copy of each ancestor keeps its noise
                noise = torch.randn(e.shape, generator=self._gen).to(e.device, e.dtype)
                mixed = math.sqrt(1 - self.refresh) * e + math.sqrt(self.refresh) * noise
                e = torch.where(first.to(e.device).view(-1, *[1] * (e.ndim - 1)), e, mixed)
            new = compose(x0[anc.to(x0.device)], e, self._levels[i + 1]).to(latents.dtype)
            still = self._prev == latents  # entries the step left alone (a conditioning frame): kept exactly
            if still.any():
                idx = anc.to(latents.device)
                new = torch.where(still[idx], latents[idx], new)
            self._best = torch.maximum(self._best, r) if self._best is not None else r.clone()
            self._last, self._best = r[anc], self._best[anc]
            self.history.append({"step": i, "scores": r.tolist(), "ancestors": anc.tolist()})
            out["latents"] = new
            latents = new
        self._prev = latents.clone() if (i + 1) in plan else None
        return out


def run_guided(pipe, prompt, callback: RewardGuidanceCallback, **pipe_kwargs):
    """``pipe(prompt, callback_on_step_end=callback, ...)`` after checking that the pipeline can take it.

    The callback learns the call's ``height``, ``width`` and ``num_frames`` (given, or the pipeline's defaults) where
    it was not given them, and for an image-to-video call without a ``context`` judges with ``image`` as the first
    frame."""
    family = check_pipeline(pipe)
    if not isinstance(prompt, str) and len(prompt) > 1 and isinstance(callback.prompt, str):
        raise ValueError(
            f"callback.prompt: one prompt for a pipeline call with {len(prompt)} prompts; give the callback the same "
            "list so each prompt's images are scored and resampled among themselves"
        )
    call = {}
    params = inspect.signature(type(pipe).__call__).parameters
    for name in ("height", "width", "num_frames"):
        value = pipe_kwargs.get(name, params[name].default if name in params else None)
        if isinstance(value, int):
            call[name] = value
    if family in VIDEO_FAMILIES and callback.context is None:  # image-to-video: judged from the image onwards
        call["context"] = i2v_context(pipe_kwargs.get("image"))
    callback._call = call
    callback.reset()
    try:
        return pipe(
            prompt=prompt,
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=callback.tensor_inputs,
            **pipe_kwargs,
        )
    finally:
        callback._call = {}  # a later direct call of the pipeline must not see this call's sizes
