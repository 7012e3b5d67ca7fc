"""Video pipelines in the search and the guidance callback: Wan 2.1 / 2.2, CogVideoX and LTX-Video (diffusers).

:mod:`rewarddance.pipelines` writes every noise level as ``x = a * x0 + s * e``; that holds for video latents as it
does for images (Wan and LTX-Video are flow matching, ``a = 1 - sigma``; CogVideoX is VP with its own DDIM), so the
search, the guidance callback's ``x0`` recovery and re-noising carry over. What differs is here: the latent layouts,
``[B, C, F, h, w]`` (Wan), ``[B, F, C, h, w]`` (CogVideoX) and packed tokens ``[B, F * h * w, C]`` (LTX-Video);
the denoisers' arguments; and decoding, which gives clips ``[B, T, 3, H, W]`` in [0, 1] for the judge's
``videos=``.

Decoding: the three VAEs are causal in time (each decoded frame depends on the latent frames before it, through
causal convolutions and the caches they carry from chunk to chunk), so one frame cannot be decoded on its own. Frames
are sampled uniformly with the first and the last included, and decoding up to the last frame is decoding the whole
clip: the clip is decoded whole, one clip at a time to bound memory, and the judge samples its ``num_frames`` from it.

:class:`VideoSampler` (what ``Sampler(pipe, ...)`` builds for a video pipeline) drives the text-to-video pipelines
(``WanPipeline`` with one or two experts, ``CogVideoXPipeline``, ``LTXPipeline``) level by level. Image-to-video
pipelines run in best-of-N and under the guidance callback, inside their own loops; the level-by-level sampler does not
prepare their image conditioning, and says so.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from .pipelines import VIDEO_FAMILIES, PipelineError, Sampler, SamplerConfig, pipeline_family

TEXT_TO_VIDEO = ("WanPipeline", "CogVideoXPipeline", "LTXPipeline")
JUDGE_FRAMES = 8  # frames of a clip the judge sees by default, sampled uniformly (first and last included)


def judge_sampling(clips, judge_frames: int | None) -> int | None:
    """The ``num_frames`` to score ``clips`` with: ``judge_frames``, capped at the shortest clip (None: every frame)."""
    if judge_frames is None:
        return None
    if isinstance(judge_frames, bool) or not isinstance(judge_frames, int) or judge_frames < 1:
        raise ValueError(f"judge_frames must be a positive integer or None, got {judge_frames!r}")
    return min(judge_frames, *(int(c.shape[0]) for c in clips))


def is_video_pipeline(pipe) -> bool:
    """Whether ``pipe`` is a Wan, CogVideoX or LTX-Video pipeline (of any task)."""
    try:
        return pipeline_family(pipe) in VIDEO_FAMILIES
    except PipelineError:
        return False


def takes_image(pipe) -> bool:
    """Whether the pipeline's call takes a conditioning ``image`` (image-to-video)."""
    return "image" in inspect.signature(type(pipe).__call__).parameters


def call_default(pipe, name: str):
    """The default of argument ``name`` of the pipeline's ``__call__`` (None when it has none)."""
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def is_video_batch(items) -> bool:
    """Whether a generator's output (or a list of candidates) holds videos: a ``[B, T, 3, H, W]`` tensor or array,
    or a sequence whose items are ``[T, 3, H, W]`` tensors / arrays or lists of frames."""
    if isinstance(items, (torch.Tensor, np.ndarray)):
        return items.ndim == 5
    if isinstance(items, (list, tuple)) and items:
        first = items[0]
        return isinstance(first, (list, tuple)) or (isinstance(first, (torch.Tensor, np.ndarray)) and first.ndim == 4)
    return False


def generated_clips(videos) -> list[torch.Tensor]:
    """A generator's videos -> a list of ``[T, 3, H, W]`` float32 clips in [0, 1] on the CPU: a ``[B, T, 3, H, W]``
    tensor or ``[T, 3, H, W]`` tensors; arrays are frames as images (``[T, H, W, 3]``, as diffusers' ``"np"`` output);
    lists of frames as :func:`rewarddance.video.load_video` takes them."""
    from .video import load_video

    rows = list(videos.unbind(0)) if isinstance(videos, torch.Tensor) else list(videos)
    clips = []
    for i, v in enumerate(rows):
        frames = v.detach().float().cpu() if isinstance(v, torch.Tensor) else list(v)  # arrays: one frame each
        clips.append(load_video(frames, name=f"generated video {i}").frames.detach().float().cpu().clamp(0, 1))
    return clips


def per_seed_kwargs(pipe, kwargs: dict, n: int) -> dict:
    """A pipeline call's ``kwargs`` for ``n`` rows with one generator each: LTX-Video's image-to-video encodes one
    ``image`` per generator, so a single image is repeated ``n`` times (Wan's takes one image for every row)."""
    image = kwargs.get("image")
    if is_video_pipeline(pipe) and pipeline_family(pipe) == "ltx" and not isinstance(image, (list, tuple, type(None))):
        return {**kwargs, "image": [image] * n}
    return kwargs


def i2v_context(image):
    """The judge's context for clips made from ``image`` (image-to-video): ``video_alignment`` shown the image as the
    first frame; None without an image."""
    if image is None:
        return None
    from .context import RewardContext

    return RewardContext(task="video_alignment", first_frame=image)


def _ltx_grid(pipe, height: int, width: int, num_frames: int) -> tuple[int, int, int]:
    """LTX-Video's latent grid ``(frames, height, width)`` for a clip of ``num_frames`` frames of ``height x width``."""
    frames = (num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
    return frames, height // pipe.vae_spatial_compression_ratio, width // pipe.vae_spatial_compression_ratio


@torch.no_grad()
def decode_video(pipe, x0: torch.Tensor, height=None, width=None, num_frames=None) -> torch.Tensor:
    """Latents of clean clips -> ``[B, T, 3, H, W]`` float32 in [0, 1], decoded whole, one clip at a time (see the
    module's note on causal VAEs). ``height``, ``width`` and ``num_frames`` (the pipeline call's) unpack LTX-Video's
    tokens and are required there; CogVideoX 1.5 uses ``num_frames`` to drop the frames its pipeline padded in front."""
    return decode_clips(pipe, x0, height, width, num_frames)


def decode_clips(pipe, x0: torch.Tensor, height=None, width=None, num_frames=None) -> torch.Tensor:
    """:func:`decode_video` with gradients to ``x0`` (ReFL on a video pipeline back-propagates through the VAE)."""
    family = pipeline_family(pipe)
    if family not in VIDEO_FAMILIES:
        raise PipelineError(f"decode_video: {type(pipe).__name__} is not a video pipeline")
    vae = pipe.vae
    latents = x0
    if family == "wan":  # [B, C, F, h, w], normalised per channel
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, torch.float32)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, torch.float32)
        latents = latents.float() * std + mean
    elif family == "cogvideox":  # [B, F, C, h, w], scaled
        patch_t = pipe.transformer.config.patch_size_t
        if patch_t is not None and num_frames is not None:  # CogVideoX 1.5 pads the latent frames in front
            want = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
            latents = latents[:, max(0, latents.shape[1] - want) :]
        latents = latents.permute(0, 2, 1, 3, 4).float() / vae.config.scaling_factor
    else:  # tokens [B, S, C]
        if not (height and width and num_frames):
            raise PipelineError(
                "LTX-Video packs its latents into tokens: decoding them needs height, width and num_frames "
                "(give them to the callback or the sampler)"
            )
        f, h, w = _ltx_grid(pipe, height, width, num_frames)
        ps, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        if latents.shape[1] != (f // pt) * (h // ps) * (w // ps):
            raise PipelineError(
                f"LTX-Video latents of {latents.shape[1]} tokens do not match a {num_frames}-frame "
                f"{height}x{width} clip; give the size the pipeline was called with"
            )
        latents = pipe._unpack_latents(latents, f // pt, h // ps, w // ps, ps, pt)
        latents = pipe._denormalize_latents(
            latents.float(), vae.latents_mean, vae.latents_std, vae.config.scaling_factor
        )
    clips = []
    for row in latents.to(vae.dtype).split(1):  # one clip at a time: a clip's activations are large
        if family == "ltx":
            # the pipeline's default decode: timestep 0 and no added noise when the VAE is timestep-conditioned
            t = torch.zeros(1, device=row.device, dtype=row.dtype) if vae.config.timestep_conditioning else None
            video = vae.decode(row, t, return_dict=False)[0]
        else:
            video = vae.decode(row, return_dict=False)[0]
        clips.append(video.float().permute(0, 2, 1, 3, 4))  # [1, 3, T, H, W] -> [1, T, 3, H, W]
    return (torch.cat(clips) / 2 + 0.5).clamp(0, 1)


class VideoSampler(Sampler):
    """:class:`rewarddance.pipelines.Sampler` for text-to-video pipelines: Wan 2.1 / 2.2 (``WanPipeline``; two
    experts switch at ``boundary_ratio``, the second guided by ``guidance_scale_2``), CogVideoX
    (``CogVideoXPipeline`` with ``CogVideoXDDIMScheduler``) and LTX-Video (``LTXPipeline``). Latents keep each
    pipeline's layout; :meth:`decode` gives clips ``[B, T, 3, H, W]``. ``num_frames`` and the other video settings
    come from :class:`~rewarddance.pipelines.SamplerConfig`, defaulting to the pipeline's own."""

    def __init__(self, pipe, prompt, config: SamplerConfig | None = None):
        name = type(pipe).__name__
        if not any(cls.__name__ in TEXT_TO_VIDEO for cls in type(pipe).__mro__) or takes_image(pipe):
            raise PipelineError(
                f"{name}: the level-by-level sampler (search over paths) drives the text-to-video pipelines "
                f"{', '.join(TEXT_TO_VIDEO)}; for image-to-video use best_of_n or RewardGuidanceCallback"
            )
        cfg = config or SamplerConfig()
        family = pipeline_family(pipe)
        frames = cfg.num_frames or call_default(pipe, "num_frames") or pipe.transformer.config.sample_frames
        if family == "wan" and frames % pipe.vae_scale_factor_temporal != 1:  # as WanPipeline rounds it
            frames = frames // pipe.vae_scale_factor_temporal * pipe.vae_scale_factor_temporal + 1
        self.num_frames = max(int(frames), 1)
        self.frame_rate = cfg.frame_rate or call_default(pipe, "frame_rate") or 25
        super().__init__(pipe, prompt, cfg)

    # -------------------------------------------------------------------------------------------- set up
    def _default_size(self) -> tuple[int, int]:
        p = self.pipe
        h, w = call_default(p, "height"), call_default(p, "width")
        if h is None or w is None:  # CogVideoX: the transformer's sample size
            h = p.transformer.config.sample_height * p.vae_scale_factor_spatial
            w = p.transformer.config.sample_width * p.vae_scale_factor_spatial
        return h, w

    def _default_guidance(self) -> float:
        return float(call_default(self.pipe, "guidance_scale"))

    @property
    def model(self):
        """The (first) denoiser: ``transformer``, or ``transformer_2`` of a Wan 2.2 pipeline that holds only it."""
        return self.denoiser if self.denoiser is not None else self.pipe.transformer_2

    @property
    def latent_frames(self) -> int:
        """Latent frames of a clip (CogVideoX 1.5 pads them to its temporal patch, as its pipeline does)."""
        p = self.pipe
        temporal = p.vae_temporal_compression_ratio if self.family == "ltx" else p.vae_scale_factor_temporal
        n = (self.num_frames - 1) // temporal + 1
        patch_t = p.transformer.config.patch_size_t if self.family == "cogvideox" else None
        return n + (-n) % patch_t if patch_t else n

    @torch.no_grad()
    def _encode(self) -> None:
        p, dev = self.pipe, self.device
        out = p.encode_prompt(
            prompt=self.prompt,
            negative_prompt=self._negatives(),
            do_classifier_free_guidance=self.cfg_on,
            num_videos_per_prompt=1,
            max_sequence_length=self.cfg.max_sequence_length,
            device=dev,
        )
        dtype = self.model.dtype
        if self.family == "ltx":
            pe, mask, npe, nmask = out
            cond = dict(pe=pe.to(dtype), mask=mask, npe=npe, nmask=nmask)
        else:
            pe, npe = out
            cond = dict(pe=pe.to(dtype), npe=npe)
        if cond["npe"] is not None:
            cond["npe"] = cond["npe"].to(dtype)
        self.rotary = None
        if self.family == "cogvideox" and p.transformer.config.use_rotary_positional_embeddings:
            self.rotary = p._prepare_rotary_positional_embeddings(self.height, self.width, self.latent_frames, dev)
        self.cond = cond

    def _set_timesteps(self) -> None:
        sched, n = self.pipe.scheduler, self.cfg.num_inference_steps
        if self.family != "ltx":  # Wan and CogVideoX: the scheduler's own spacing, as their pipelines set it
            sched.set_timesteps(n, device=self.device)
            return
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        f, h, w = _ltx_grid(self.pipe, self.height, self.width, self.num_frames)
        mu = calculate_shift(
            f * h * w,
            sched.config.get("base_image_seq_len", 256),
            sched.config.get("max_image_seq_len", 4096),
            sched.config.get("base_shift", 0.5),
            sched.config.get("max_shift", 1.15),
        )
        sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / n, n), mu=mu, device=self.device)

    # -------------------------------------------------------------------------------------------- sampling
    def initial_latents(self, seeds: list[int]) -> torch.Tensor:
        """Level-0 latents for each seed, as the pipeline itself draws them for that seed (one generator per row)."""
        p, B = self.pipe, len(seeds)
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        ch = self.model.config.in_channels
        if self.family == "cogvideox":
            temporal = p.vae_scale_factor_temporal
            frames = (self.latent_frames - 1) * temporal + 1
            dtype = self.cond["pe"].dtype
            return p.prepare_latents(B, ch, frames, self.height, self.width, dtype, self.device, gens)
        # Wan and LTX-Video keep their latents in float32 and cast them for the transformer
        return p.prepare_latents(B, ch, self.height, self.width, self.num_frames, torch.float32, self.device, gens)

    def _expert(self, t: torch.Tensor):
        """Wan 2.2's two experts: ``transformer`` above ``boundary_ratio * num_train_timesteps``, ``transformer_2``
        (guided by ``guidance_scale_2``) below; one model elsewhere."""
        p = self.pipe
        ratio = p.config.get("boundary_ratio") if self.family == "wan" else None
        if ratio is None or (self.denoiser is not None and float(t) >= ratio * p.scheduler.config.num_train_timesteps):
            return self.model, self.guidance
        g2 = self.cfg.guidance_scale_2
        return p.transformer_2, self.guidance if g2 is None else g2

    def predict(self, x: torch.Tensor, k: int, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, e)`` from latents ``x`` at level ``k``; as :meth:`Sampler.predict`."""
        p, B = self.pipe, x.shape[0]
        a, s = self.levels[k]
        t = self.timesteps[k]
        index = self._rows_of(B, rows)
        self.evaluations += B
        model, scale = self._expert(t)
        dtype = self.cond["pe"].dtype

        def run(inp, which):
            n = inp.shape[0]
            text = self._cond_rows("pe", which, B, index)
            if self.family == "wan":
                if p.config.get("expand_timesteps", False):  # Wan 2.2 TI2V-5B: one timestep per 2x2 latent patch
                    F, h, w = inp.shape[2], (inp.shape[3] + 1) // 2, (inp.shape[4] + 1) // 2
                    ts = t.expand(n, F * h * w)
                else:
                    ts = t.expand(n)
                return model(hidden_states=inp.to(dtype), timestep=ts, encoder_hidden_states=text, return_dict=False)[0]
            if self.family == "cogvideox":
                return model(
                    hidden_states=inp.to(dtype),
                    encoder_hidden_states=text,
                    timestep=t.expand(n),
                    image_rotary_emb=self.rotary,
                    return_dict=False,
                )[0]
            f, h, w = _ltx_grid(p, self.height, self.width, self.num_frames)
            ratio_s = p.vae_spatial_compression_ratio
            return model(
                hidden_states=inp.to(dtype),
                encoder_hidden_states=text,
                timestep=t.expand(n),
                encoder_attention_mask=self._cond_rows("mask", which, B, index),
                num_frames=f,
                height=h,
                width=w,
                rope_interpolation_scale=(p.vae_temporal_compression_ratio / self.frame_rate, ratio_s, ratio_s),
                return_dict=False,
            )[0]

        out = self._guided(run, x, scale).to(x.dtype)
        if self.family == "cogvideox":  # VP latents (a^2 + s^2 = 1)
            kind = p.scheduler.config.prediction_type
            if kind == "v_prediction":
                return a * x - s * out, s * x + a * out
            if kind == "epsilon":
                return (x - s * out) / a, out
            return out, (x - a * out) / s
        return x - s * out, x + (1 - s) * out  # flow matching: the transformer predicts e - x0

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents -> clips ``[B, T, 3, H, W]`` in [0, 1]."""
        return decode_video(self.pipe, x0, self.height, self.width, self.num_frames)


__all__ = [
    "VIDEO_FAMILIES",
    "VideoSampler",
    "decode_clips",
    "decode_video",
    "generated_clips",
    "i2v_context",
    "is_video_batch",
    "is_video_pipeline",
    "judge_sampling",
    "per_seed_kwargs",
    "takes_image",
]
