"""What the search and the guidance callback need from a diffusers text-to-image pipeline, one helper per family.

Supported: UNet pipelines (Stable Diffusion 1.5 / 2.x, SDXL; epsilon, v-prediction or sample prediction) with
``DDIMScheduler`` (eta 0) or ``EulerDiscreteScheduler``, and flow-matching transformer pipelines (SD3 / 3.5,
Flux) with ``FlowMatchEulerDiscreteScheduler``. Pipelines are used as they are: their own text encoding, latent
preparation and VAE; nothing is subclassed or patched. Video pipelines (Wan 2.1 / 2.2, CogVideoX with
``CogVideoXDDIMScheduler``, LTX-Video) are families here too; what differs for them lives in
:mod:`rewarddance.video_pipelines`.

Every noise level is written as ``x = a * x0 + s * e`` (``e`` the noise): VP latents (DDIM) have ``a = sqrt(abar)``,
``s = sqrt(1 - abar)``; Euler's sigma-space latents ``a = 1, s = sigma``; flow matching ``a = 1 - sigma, s = sigma``.
The schedulers named above move deterministically from one level to the next as ``x' = a' * x0 + s' * e``, so
two consecutive latents give back ``x0`` and ``e`` (:func:`decompose`), and a level can be re-noised upward
(:func:`renoise`) or a predicted ``(x0, e)`` moved to any later level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

FAMILIES = ("unet", "sd3", "flux")
# video families, by the class of their denoiser (a Wan 2.2 pipeline may hold only its low-noise expert)
VIDEO_TRANSFORMERS = {
    "WanTransformer3DModel": "wan",
    "CogVideoXTransformer3DModel": "cogvideox",
    "LTXVideoTransformer3DModel": "ltx",
}
VIDEO_FAMILIES = tuple(VIDEO_TRANSFORMERS.values())
SCHEDULERS = ("DDIMScheduler", "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler", "CogVideoXDDIMScheduler")
DDIM_LIKE = ("DDIMScheduler", "CogVideoXDDIMScheduler")  # CogVideoX's DDIM takes the same deterministic step


class PipelineError(ValueError):
    """A pipeline (or its scheduler) this module cannot drive, named with the reason."""


def pipeline_family(pipe) -> str:
    """``unet`` (SD 1.5 / 2.x / SDXL), ``sd3``, ``flux``, or a video family (``wan``, ``cogvideox``, ``ltx``: see
    :data:`VIDEO_FAMILIES`); a clear error for anything else or a missing VAE."""
    if getattr(pipe, "vae", None) is None:
        raise PipelineError(f"{type(pipe).__name__} has no VAE: the reward model needs decoded images")
    if getattr(pipe, "unet", None) is not None:
        return "unet"
    denoiser = getattr(pipe, "transformer", None)
    if denoiser is None:
        denoiser = getattr(pipe, "transformer_2", None)
    transformer = type(denoiser).__name__
    if transformer.startswith("SD3Transformer"):
        return "sd3"
    if transformer.startswith("FluxTransformer"):
        return "flux"
    if transformer in VIDEO_TRANSFORMERS:
        return VIDEO_TRANSFORMERS[transformer]
    raise PipelineError(
        f"{type(pipe).__name__} is not supported: expected a UNet pipeline (SD 1.5 / 2.x / SDXL), "
        "StableDiffusion3Pipeline, FluxPipeline, or a Wan, CogVideoX or LTX-Video pipeline "
        f"(its denoiser is a {transformer})"
    )


def check_scheduler(scheduler) -> str:
    name = type(scheduler).__name__
    if name == "CogVideoXDPMScheduler":
        raise PipelineError(
            "scheduler CogVideoXDPMScheduler is not supported here: its step adds fresh noise whatever eta and its "
            "second-order update reads the previous step's x0, so a level's latents do not fix the next level's; "
            "use CogVideoXDDIMScheduler on the same noise levels "
            "(CogVideoXDDIMScheduler.from_config(pipe.scheduler.config))"
        )
    if name not in SCHEDULERS:
        raise PipelineError(f"scheduler {name} is not supported here; use one of {', '.join(SCHEDULERS)}")
    return name


def levels(scheduler) -> list[tuple[float, float]]:
    """``(a, s)`` of the latents before each step and after the last (length steps + 1), for a scheduler on which
    ``set_timesteps`` has been called (by the pipeline or by :class:`Sampler`). DDIM steps from timestep ``t`` to
    ``t - num_train_timesteps // steps``, the next timestep only on an even spacing (not "trailing" spacing of a step
    count that does not divide 1000): the latents lie at the level it lands on, read at the next timestep's level
    (:func:`model_levels`)."""
    name = check_scheduler(scheduler)
    if name in DDIM_LIKE:
        acp, final = scheduler.alphas_cumprod, float(scheduler.final_alpha_cumprod)
        ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        ts = [int(t) for t in scheduler.timesteps]
        abar = [float(acp[ts[0]])] + [float(acp[t - ratio]) if t >= ratio else final for t in ts]
        return [(math.sqrt(x), math.sqrt(1.0 - x)) for x in abar]
    sigmas = [float(s) for s in scheduler.sigmas]
    if name == "EulerDiscreteScheduler":
        return [(1.0, s) for s in sigmas]
    return [(1.0 - s, s) for s in sigmas]


def model_levels(scheduler) -> list[tuple[float, float]]:
    """``(a, s)`` at which the scheduler reads the denoiser's output at each step (length steps): the level of the
    step's timestep. It is :func:`levels` ``[k]`` but for DDIM on an uneven spacing, whose latents lie at ``t' -
    num_train_timesteps // steps`` (``t'`` the step before's; a timestep or so off), while its pipelines read them at
    ``t``, as the Sampler does."""
    if check_scheduler(scheduler) in DDIM_LIKE:
        abar = [float(scheduler.alphas_cumprod[int(t)]) for t in scheduler.timesteps]
        return [(math.sqrt(x), math.sqrt(1.0 - x)) for x in abar]
    return levels(scheduler)[:-1]


def decompose(before: torch.Tensor, after: torch.Tensor, lv0, lv1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, e)`` from the latents before and after one deterministic step between levels ``lv0`` and ``lv1``."""
    (a0, s0), (a1, s1) = lv0, lv1
    det = a0 * s1 - s0 * a1
    x0 = (s1 * before - s0 * after) / det
    e = (a0 * after - a1 * before) / det
    return x0, e


def compose(x0: torch.Tensor, e: torch.Tensor, lv) -> torch.Tensor:
    return lv[0] * x0 + lv[1] * e


def renoise(x: torch.Tensor, lv_from, lv_to, generator: torch.Generator | None = None) -> torch.Tensor:
    """Move latents at ``lv_from`` up to the noisier level ``lv_to`` with fresh Gaussian noise (the forward process)."""
    (a0, s0), (a1, s1) = lv_from, lv_to
    keep = a1 / a0 if a0 > 0 else 1.0  # a0 = 0: pure noise (zero terminal SNR), only a level of pure noise is above it
    extra = s1**2 - (keep * s0) ** 2
    if extra < -1e-6:
        raise ValueError(f"renoise: level {lv_to} is less noisy than {lv_from}")
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device="cpu").to(x.device, x.dtype)
    return keep * x + math.sqrt(max(extra, 0.0)) * noise


def stochastic_std(lv, lv_next, eta: float) -> float:
    """The noise scale of one stochastic step from level ``lv`` to ``lv_next`` (generalised DDIM with ``eta``).

    A stochastic step keeps the marginals of the deterministic one: ``x' = a' * x0 + sqrt(s'^2 - std^2) * e +
    std * z`` with fresh ``z``. ``eta = 1`` gives the posterior of the forward process (DDPM),
    ``std^2 = s'^2 * (1 - (a * s' / (a' * s))^2)``; smaller ``eta`` scales ``std`` down, and 0 is the plain DDIM
    step. Written in ``(a, s)`` it holds for every scheduler here: VP (DDIM), sigma-space (Euler) and flow
    matching. A step to a clean level (``s' = 0``, the last of Euler and flow schedules) has no noise."""
    (a0, s0), (a1, s1) = lv, lv_next
    if s0 <= 0 or s1 <= 0:
        return 0.0
    ratio = (a0 * s1) / (a1 * s0)
    return eta * s1 * math.sqrt(max(0.0, 1.0 - ratio * ratio))


def flow_sde_stds(levels, noise_level: float) -> list[float]:
    """Flow-GRPO's noise scale of each step of a flow-matching schedule (levels ``(1 - t, t)``): ``noise_level *
    sqrt(t / (1 - t)) * sqrt(t - t')``, the ``1 - t`` of a first level at ``t = 1`` read at the second level (as
    Flow-GRPO does, so the first step is finite). Unlike Flow-GRPO's code, the step to the clean level (``t' = 0``)
    stays deterministic: it has no density here, as in :func:`stochastic_std`."""
    ts = [float(s) for _, s in levels]
    stds = []
    for k in range(len(ts) - 1):
        t, t_next = ts[k], ts[k + 1]
        if t_next <= 0 or t <= t_next:
            stds.append(0.0)
            continue
        one_minus = 1.0 - (ts[1] if t >= 1.0 else t)
        stds.append(noise_level * math.sqrt(t / one_minus) * math.sqrt(t - t_next))
    return stds


def flow_sde_mean(x0: torch.Tensor, e: torch.Tensor, lv, lv_next, std: float) -> torch.Tensor:
    """The mean of Flow-GRPO's Euler-Maruyama step of the flow SDE, ``x + dt (v + sigma_t^2 / (2 t) (x + (1 - t) v))``
    with ``v = e - x0``, ``dt = t' - t`` and ``std = sigma_t sqrt(-dt)``. Since ``x + (1 - t) v = e``, it is
    ``a' x0 + (t' - std^2 / (2 t)) e``: the marginal-keeping mean of :func:`stochastic_mean` to first order in ``std^2``."""
    return lv_next[0] * x0 + (lv_next[1] - std * std / (2.0 * lv[1])) * e


def stochastic_mean(x0: torch.Tensor, e: torch.Tensor, lv_next, std: float) -> torch.Tensor:
    """The mean of the stochastic step to ``lv_next`` whose noise scale is ``std``, from a predicted ``(x0, e)``."""
    a1, s1 = lv_next
    return a1 * x0 + math.sqrt(max(s1 * s1 - std * std, 0.0)) * e


def free_mean(values: torch.Tensor, pinned: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of each row of ``values`` over its free elements: those not ``pinned`` (a bool mask broadcastable to
    ``values``, :attr:`Sampler.pinned`; None: every element is free). float32 ``[B]``."""
    values = values.float()
    if pinned is None:
        return values.flatten(1).mean(1)
    free = (~pinned.to(values.device)).expand_as(values).flatten(1)
    return (values.flatten(1) * free).sum(1) / free.sum(1).clamp(min=1)


def gaussian_logp(x: torch.Tensor, mean: torch.Tensor, std: float, pinned: torch.Tensor | None = None) -> torch.Tensor:
    """Log-density of ``x`` under ``N(mean, std^2 I)`` per row, averaged over the latent's elements (as Flow-GRPO
    and DDPO do, so its size does not depend on the resolution): float32 ``[B]``. With ``pinned`` (positions the
    sampler holds fixed, whose density is a constant) only the free elements count, so a held conditioning frame or
    image channels do not dilute the log-ratio of the rest."""
    if std <= 0:
        raise ValueError(f"gaussian_logp: std must be positive, got {std}")
    z = (x.float() - mean.float()) / std
    per = -0.5 * z * z - math.log(std) - 0.5 * math.log(2 * math.pi)
    return free_mean(per, pinned)


def decode(pipe, x0: torch.Tensor, height: int, width: int, num_frames: int | None = None) -> torch.Tensor:
    """Latents of clean images -> pixels ``[B, 3, H, W]`` float32 in [0, 1] through the pipeline's VAE; of clean
    videos -> clips ``[B, T, 3, H, W]`` (:func:`rewarddance.video_pipelines.decode_video`; ``num_frames``, the clip
    length asked of the pipeline, is needed by LTX-Video only)."""
    family = pipeline_family(pipe)
    if family in VIDEO_FAMILIES:
        from .video_pipelines import decode_video

        return decode_video(pipe, x0, height, width, num_frames)
    vae = pipe.vae
    latents = x0
    if family == "flux":
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    latents = latents.to(vae.dtype) / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None and family != "unet":
        latents = latents + vae.config.shift_factor
    image = vae.decode(latents, return_dict=False)[0]
    return (image.float() / 2 + 0.5).clamp(0, 1)


@dataclass
class SamplerConfig:
    """Settings of a :class:`Sampler` run; the defaults follow each pipeline's own."""

    num_inference_steps: int = 30
    guidance_scale: float | None = None  # None: the pipeline's default (SD 7.5, SDXL 5.0, SD3 7.0, Flux 3.5)
    height: int | None = None  # None: the pipeline's default size
    width: int | None = None
    negative_prompt: str | list[str] | None = None  # one for every row, or a list: row i's own (one per prompt)
    max_sequence_length: int = 256  # T5 tokens (SD3, Flux, and the video pipelines)
    num_frames: int | None = None  # video pipelines: frames per clip; None: the pipeline's default
    guidance_scale_2: float | None = None  # Wan 2.2's low-noise expert; None: guidance_scale
    frame_rate: int | None = None  # LTX-Video scales its positions by it; None: the pipeline's default (25)
    use_dynamic_cfg: bool = False  # CogVideoX: the guidance scale follows its pipelines' cosine schedule per step
    # image-to-video pipelines: the conditioning image (a path, PIL image, array or tensor) for every row, or a list of
    # one per prompt; None: the images the prompts carry (rewarddance.video_pipelines.ImagePrompt)
    image: object = field(default=None, repr=False, compare=False)
    # the module called in the denoiser's place, with the same arguments: a trainer's DistributedDataParallel wrapper
    # of it, through which the backward pass averages the gradients over the processes (None: the pipeline's own)
    denoiser: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    # the same for Wan 2.2's low-noise expert (transformer_2); None: the pipeline's own
    denoiser_2: torch.nn.Module | None = field(default=None, repr=False, compare=False)


class Sampler:
    """Drives a pipeline's denoiser one level at a time: the building block of search over paths and of ReFL.

    ``prompt`` is one prompt for every latent row, or a list of them, one per row (a batch of different prompts,
    each row conditioned on its own text and, with classifier-free guidance, paired with its own negative).
    ``predict(x, k)`` runs the denoiser (with classifier-free guidance where the pipeline uses it) on latents at
    level ``k`` and returns ``(x0, e)``; ``levels[k]`` is the ``(a, s)`` of level ``k``; ``evaluations`` counts
    denoiser evaluations per sample (a guided call counts once). ``pinned`` marks latent positions the pipeline holds
    fixed (an image-to-video conditioning frame; None for none): :meth:`step` keeps them, :meth:`pin` restores them.
    """

    pinned: torch.Tensor | None = None  # bool, broadcastable to the latents

    def __new__(cls, pipe=None, *args, **kwargs):
        """``Sampler(pipe, ...)`` of a video pipeline is a :class:`rewarddance.video_pipelines.VideoSampler`."""
        if cls is Sampler and pipe is not None and pipeline_family(pipe) in VIDEO_FAMILIES:
            from .video_pipelines import VideoSampler

            return super().__new__(VideoSampler)
        return super().__new__(cls)

    def __init__(self, pipe, prompt: str | list[str], config: SamplerConfig | None = None):
        if isinstance(prompt, (list, tuple)):
            if not prompt or not all(isinstance(x, str) for x in prompt):
                raise ValueError(f"prompt: expected a string or a non-empty list of strings, got {prompt!r}")
            prompt = list(prompt)
        elif not isinstance(prompt, str):
            raise ValueError(f"prompt: expected a string or a list of strings, got {type(prompt).__name__}")
        self.pipe, self.prompt, self.cfg = pipe, prompt, config or SamplerConfig()
        self.rows = len(prompt) if isinstance(prompt, list) else 1  # rows of conditioning
        self.family = pipeline_family(pipe)
        if self.cfg.image is not None and self.family not in VIDEO_FAMILIES:
            raise PipelineError(f"image: {type(pipe).__name__} makes images from text; it takes no conditioning image")
        self.scheduler_name = check_scheduler(pipe.scheduler)
        if self.cfg.use_dynamic_cfg and self.family != "cogvideox":
            raise PipelineError(f"use_dynamic_cfg: {type(pipe).__name__} has no dynamic guidance (CogVideoX only)")
        self.device = pipe._execution_device
        c = self.cfg
        default_height, default_width = self._default_size()
        self.height, self.width = c.height or default_height, c.width or default_width
        g = c.guidance_scale
        self.guidance = g if g is not None else self._default_guidance()
        self.evaluations = 0
        self.denoiser = c.denoiser or (pipe.unet if self.family == "unet" else pipe.transformer)
        self._encode()
        self._set_timesteps()
        self.levels = levels(pipe.scheduler)
        self.model_levels = model_levels(pipe.scheduler)  # the levels predict reads the denoiser's output at
        self.timesteps = pipe.scheduler.timesteps.to(self.device)

    # -------------------------------------------------------------------------------------------- set up
    def _default_size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels when the config gives none."""
        p = self.pipe
        if self.family == "unet":
            side = p.unet.config.sample_size * p.vae_scale_factor
        elif self.family == "sd3":
            side = p.transformer.config.sample_size * p.vae_scale_factor
        else:
            side = getattr(p, "default_sample_size", 128) * p.vae_scale_factor
        return side, side

    def _default_guidance(self) -> float:
        sdxl = self.family == "unet" and hasattr(self.pipe, "text_encoder_2")
        return 5.0 if sdxl else {"unet": 7.5, "sd3": 7.0, "flux": 3.5}[self.family]

    def _negatives(self):
        """The negative prompt as the pipelines take it: a list (one per prompt) with a list of prompts."""
        neg = self.cfg.negative_prompt
        if isinstance(neg, (list, tuple)):
            if not isinstance(self.prompt, list) or len(neg) != self.rows or not all(isinstance(n, str) for n in neg):
                raise ValueError(f"negative_prompt: a list needs one string per prompt ({self.rows}), got {neg!r}")
            return list(neg)
        if isinstance(self.prompt, list) and neg is not None:
            return [neg] * self.rows  # the pipelines take a list of negatives with a list of prompts, not one string
        return neg

    @property
    def cfg_on(self) -> bool:
        return self.family != "flux" and self.guidance > 1.0

    @torch.no_grad()
    def _encode(self) -> None:
        """Text conditioning, ``[rows, ...]`` per tensor; a list of prompts gets a negative per row."""
        p, dev, neg = self.pipe, self.device, self._negatives()
        cond: dict = {}
        if self.family == "unet" and hasattr(p, "text_encoder_2"):  # SDXL
            pe, npe, pooled, npooled = p.encode_prompt(
                prompt=self.prompt,
                device=dev,
                num_images_per_prompt=1,
                do_classifier_free_guidance=self.cfg_on,
                negative_prompt=neg,
            )
            proj = p.text_encoder_2.config.projection_dim if p.text_encoder_2 is not None else pooled.shape[-1]
            size = (self.height, self.width)
            time_ids = p._get_add_time_ids(size, (0, 0), size, dtype=pe.dtype, text_encoder_projection_dim=proj)
            cond.update(pe=pe, npe=npe, pooled=pooled, npooled=npooled, time_ids=time_ids.to(dev))
        elif self.family == "unet":
            pe, npe = p.encode_prompt(self.prompt, dev, 1, self.cfg_on, negative_prompt=neg)
            cond.update(pe=pe, npe=npe)
        elif self.family == "sd3":
            pe, npe, pooled, npooled = p.encode_prompt(
                prompt=self.prompt,
                prompt_2=None,
                prompt_3=None,
                device=dev,
                num_images_per_prompt=1,
                do_classifier_free_guidance=self.cfg_on,
                negative_prompt=neg,
                max_sequence_length=self.cfg.max_sequence_length,
            )
            cond.update(pe=pe, npe=npe, pooled=pooled, npooled=npooled)
        else:
            pe, pooled, text_ids = p.encode_prompt(
                prompt=self.prompt,
                prompt_2=None,
                device=dev,
                num_images_per_prompt=1,
                max_sequence_length=self.cfg.max_sequence_length,
            )
            lh = 2 * (self.height // (p.vae_scale_factor * 2))  # the latent grid, as FluxPipeline.prepare_latents
            lw = 2 * (self.width // (p.vae_scale_factor * 2))
            img_ids = p._prepare_latent_image_ids(1, lh // 2, lw // 2, dev, pe.dtype)  # shared by every row
            cond.update(pe=pe, pooled=pooled, text_ids=text_ids, img_ids=img_ids)
        self.cond = cond

    def _set_timesteps(self) -> None:
        sched, n = self.pipe.scheduler, self.cfg.num_inference_steps
        if self.scheduler_name != "FlowMatchEulerDiscreteScheduler":
            sched.set_timesteps(n, device=self.device)
            return
        kwargs = {}
        if self.family == "flux":
            kwargs["sigmas"] = np.linspace(1.0, 1.0 / n, n)  # the Flux pipeline's schedule
        if sched.config.get("use_dynamic_shifting", False):
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            seq = (self.height // self.pipe.vae_scale_factor // 2) * (self.width // self.pipe.vae_scale_factor // 2)
            kwargs["mu"] = calculate_shift(
                seq,
                sched.config.get("base_image_seq_len", 256),
                sched.config.get("max_image_seq_len", 4096),
                sched.config.get("base_shift", 0.5),
                sched.config.get("max_shift", 1.15),
            )
        if "sigmas" in kwargs:
            sched.set_timesteps(sigmas=kwargs.pop("sigmas"), device=self.device, **kwargs)
        else:
            sched.set_timesteps(n, device=self.device, **kwargs)

    # -------------------------------------------------------------------------------------------- sampling
    def initial_latents(self, seeds: list[int]) -> torch.Tensor:
        """Level-0 latents for each seed, as the pipeline itself would draw them for that seed."""
        p = self.pipe
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        dtype = self.cond["pe"].dtype
        B = len(seeds)
        if self.family == "flux":
            ch = p.transformer.config.in_channels // 4
            return p.prepare_latents(B, ch, self.height, self.width, dtype, self.device, gens)[0]
        ch = p.unet.config.in_channels if self.family == "unet" else p.transformer.config.in_channels
        return p.prepare_latents(B, ch, self.height, self.width, dtype, self.device, gens)

    def _guided(self, run, x, scale: float | None = None):
        if not self.cfg_on:
            return run(x, "pos")
        neg, pos = run(torch.cat([x, x]), "both").chunk(2)
        return neg + (self.guidance if scale is None else scale) * (pos - neg)

    def _cond_rows(self, name: str, which: str, B: int, index: torch.Tensor | None) -> torch.Tensor:
        """Conditioning ``name`` for ``B`` latent rows (``index``: see :meth:`_rows_of`); ``which="both"`` puts each
        row's negative (``"n" + name``) first, as :meth:`_guided` expects."""

        def pick(key):
            cond = self.cond[key]
            return cond.expand(B, *cond.shape[1:]) if index is None else cond[index]

        return pick(name) if which == "pos" else torch.cat([pick("n" + name), pick(name)])

    def _rows_of(self, B: int, rows) -> torch.Tensor | None:
        """Which conditioning row each of ``B`` latent rows uses: None for all of one prompt (broadcast)."""
        if rows is not None:
            index = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
            if index.numel() != B or (B and (int(index.min()) < 0 or int(index.max()) >= self.rows)):
                raise ValueError(f"rows: expected {B} indices into {self.rows} prompts, got {index.tolist()}")
            return index.to(self.device)
        if self.rows not in (1, B):
            raise ValueError(f"x: {B} latent rows for {self.rows} prompts; pass rows= to say which prompt each uses")
        return None

    def predict(self, x: torch.Tensor, k: int, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, e)`` predicted from latents ``x`` at level ``k`` (one denoiser evaluation per sample).

        With a list of prompts, row ``i`` of ``x`` is conditioned on prompt ``i``, or on prompt ``rows[i]`` when
        ``rows`` is given (a subset of the batch). Differentiable: call it under ``torch.no_grad()`` when no
        gradient is wanted (as the search does)."""
        p, c, B = self.pipe, self.cond, x.shape[0]
        a, s = self.model_levels[k]  # (DDIM: the level of the timestep the denoiser is given)
        t = self.timesteps[k]
        index = self._rows_of(B, rows)
        self.evaluations += B

        def cond_rows(name, which):
            return self._cond_rows(name, which, B, index)  # each row's own negative first with "both"

        if self.family == "unet":
            scale = math.sqrt(a * a + s * s)  # VP latents are x / scale
            abar = (a / scale) ** 2

            def run(inp, which):
                extra = {}
                if "pooled" in c:
                    n = inp.shape[0]
                    ids = c["time_ids"].expand(n, -1)
                    extra["added_cond_kwargs"] = {"text_embeds": cond_rows("pooled", which), "time_ids": ids}
                text = cond_rows("pe", which)
                return self.denoiser(inp, t, encoder_hidden_states=text, return_dict=False, **extra)[0]

            xv = x / scale
            out = self._guided(run, xv).to(x.dtype)
            kind = p.scheduler.config.prediction_type
            if kind == "epsilon":
                e = out
                x0 = (xv - math.sqrt(1 - abar) * e) / math.sqrt(abar)
            elif kind == "v_prediction":
                x0 = math.sqrt(abar) * xv - math.sqrt(1 - abar) * out
                e = math.sqrt(1 - abar) * xv + math.sqrt(abar) * out
            else:  # "sample"
                x0 = out
                e = (xv - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
            return x0, e

        if self.family == "sd3":

            def run(inp, which):
                ts = t.expand(inp.shape[0])
                return self.denoiser(
                    hidden_states=inp,
                    timestep=ts,
                    encoder_hidden_states=cond_rows("pe", which),
                    pooled_projections=cond_rows("pooled", which),
                    return_dict=False,
                )[0]

            v = self._guided(run, x).to(x.dtype)
        else:
            guidance = None
            if p.transformer.config.guidance_embeds:
                guidance = torch.full((B,), self.guidance, device=x.device, dtype=torch.float32)
            v = self.denoiser(
                hidden_states=x,
                timestep=t.expand(B).to(x.dtype) / 1000,
                guidance=guidance,
                pooled_projections=cond_rows("pooled", "pos"),
                encoder_hidden_states=cond_rows("pe", "pos"),
                txt_ids=c["text_ids"],
                img_ids=c["img_ids"],
                return_dict=False,
            )[0].to(x.dtype)
        sigma = s
        return x - sigma * v, x + (1 - sigma) * v

    def step(self, x: torch.Tensor, k: int, to: int | None = None, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise latents at level ``k`` to level ``to`` (default ``k + 1``); returns (new latents, x0 predicted).
        ``rows`` as in :meth:`predict`."""
        x0, e = self.predict(x, k, rows=rows)
        return self.pin(compose(x0, e, self.levels[k + 1 if to is None else to]), x), x0

    def pin(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """``new`` with the :attr:`pinned` positions taken from ``old`` (latents moved by re-noising or a stochastic
        step keep their conditioning frame); ``new`` itself when nothing is pinned."""
        return new if self.pinned is None else torch.where(self.pinned, old, new)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return decode(self.pipe, x0, self.height, self.width)
