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
(``WanPipeline`` with one or two experts, ``CogVideoXPipeline``, ``LTXPipeline``) and the image-to-video ones
(``WanImageToVideoPipeline``, ``CogVideoXImageToVideoPipeline``, ``LTXImageToVideoPipeline``) level by level, preparing
the image conditioning as their own calls do: Wan concatenates a first-frame mask and the image's VAE latents to the
latents' channels (and, Wan 2.1, gives the transformer the image's CLIP embeddings); LTX-Video, and Wan 2.2 TI2V
(``expand_timesteps``), hold the first latent frame at the image's latents with timestep 0 there. CogVideoX
concatenates the image's latents (then blank frames) to the latents' channels too, but samples them with each seed's
generator, so they travel with the sampler's latents as their second half of channels, ``[B, F, 2C, h, w]``. Those
held positions are :attr:`VideoSampler.pinned`: every step keeps them, and code that moves latents by other means
(re-noising, a stochastic step) puts them back with :meth:`~rewarddance.pipelines.Sampler.pin`. The image comes from
``SamplerConfig.image`` or from prompts that carry one (:class:`ImagePrompt`, as the trainers read them from a
``.jsonl`` file). CogVideoX's dynamic guidance (``SamplerConfig.use_dynamic_cfg``) follows its pipelines' schedule
(:func:`dynamic_guidance`); its ``CogVideoXDPMScheduler`` is refused (stochastic and second-order: see
:func:`rewarddance.pipelines.check_scheduler`).
"""

from __future__ import annotations

import inspect
import math
import os

import numpy as np
import torch

from .pipelines import VIDEO_FAMILIES, PipelineError, Sampler, SamplerConfig, pipeline_family

TEXT_TO_VIDEO = ("WanPipeline", "CogVideoXPipeline", "LTXPipeline")
# the image-to-video pipelines the level-by-level sampler drives
IMAGE_TO_VIDEO = ("WanImageToVideoPipeline", "CogVideoXImageToVideoPipeline", "LTXImageToVideoPipeline")
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


def pipeline_task(pipe) -> str | None:
    """``"t2v"`` or ``"i2v"`` for a pipeline :class:`VideoSampler` drives (by its class or a parent's name), else None
    (another video pipeline, such as CogVideoX's image-to-video, or not a video pipeline)."""
    names = {cls.__name__ for cls in type(pipe).__mro__}
    if names & set(IMAGE_TO_VIDEO):
        return "i2v"
    if names & set(TEXT_TO_VIDEO) and not takes_image(pipe):
        return "t2v"
    return None


class ImagePrompt(str):
    """A prompt that carries its image-to-video conditioning image: ``image`` (a path, PIL image, array or tensor;
    None for none) and ``where`` (where it was read, ``prompts.jsonl:3``, for error messages). It is a ``str`` wherever
    a prompt goes (text encoders, the judge), so a trainer's prompts take their images along; :class:`VideoSampler`
    conditions each row on its prompt's image when ``SamplerConfig.image`` is None."""

    def __new__(cls, text: str, image=None, where: str | None = None):
        obj = super().__new__(cls, text)
        obj.image, obj.where = image, where
        return obj

    def __reduce__(self):
        return (ImagePrompt, (str(self), self.image, self.where))


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
    """A pipeline call's ``kwargs`` for ``n`` rows with one generator each: the image-to-video pipelines of LTX-Video
    and CogVideoX encode one ``image`` per generator, so a single image is repeated ``n`` times (Wan's takes one image
    for every row)."""
    image = kwargs.get("image")
    per_seed = is_video_pipeline(pipe) and pipeline_family(pipe) in ("ltx", "cogvideox")
    if per_seed and not isinstance(image, (list, tuple, type(None))):
        return {**kwargs, "image": [image] * n}
    return kwargs


def dynamic_guidance(scale: float, t: int, steps: int) -> float:
    """CogVideoX's dynamic guidance scale (``use_dynamic_cfg``) at timestep ``t`` of a ``steps``-step call, computed as
    its pipelines do: ``1 + scale * (1 - cos(pi * ((steps - t) / steps) ** 5)) / 2``, with ``t`` the timestep's value
    (0 to 999, as diffusers writes it), not the step's index."""
    return 1 + scale * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2)


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
        latents = latents[:, :, : vae.config.latent_channels]  # (image-to-video: the image's latents follow)
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
    (``CogVideoXPipeline`` with ``CogVideoXDDIMScheduler``) and LTX-Video (``LTXPipeline``); and for image-to-video
    pipelines: ``WanImageToVideoPipeline`` (Wan 2.1 with CLIP, Wan 2.2 A14B, Wan 2.2 TI2V),
    ``CogVideoXImageToVideoPipeline`` (1.0 and 1.5) and ``LTXImageToVideoPipeline``, conditioned on
    ``SamplerConfig.image`` (one image, or one per prompt) or on the images the prompts carry (:class:`ImagePrompt`).
    Latents keep each pipeline's layout; :meth:`decode` gives clips ``[B, T, 3, H, W]``. ``num_frames`` and the other
    video settings come from :class:`~rewarddance.pipelines.SamplerConfig`, defaulting to the pipeline's own."""

    def __init__(self, pipe, prompt, config: SamplerConfig | None = None):
        name = type(pipe).__name__
        self.task = pipeline_task(pipe)
        if self.task is None:
            raise PipelineError(
                f"{name}: the level-by-level sampler (search over paths, training) drives "
                f"{', '.join(TEXT_TO_VIDEO + IMAGE_TO_VIDEO)}; for other pipelines use best_of_n or "
                "RewardGuidanceCallback"
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
    def model_module(self):
        """The module of :attr:`model`, whose ``config`` and ``dtype`` are read: a trainer's DDP wrapper has neither
        (it is called in the denoiser's place, see ``SamplerConfig.denoiser``), its ``module`` has both."""
        return getattr(self.model, "module", self.model)

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
        dtype = self.model_module.dtype
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
        images = self._row_images()
        if images is not None:
            self._encode_images(images, out[0].dtype)

    def _row_images(self) -> list | None:
        """The conditioning image of each prompt row (None for text-to-video), with a clear error for a missing one."""
        given, name = self.cfg.image, type(self.pipe).__name__
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt]
        if given is None:
            given = [getattr(x, "image", None) for x in prompts]  # ImagePrompt
            given = None if all(x is None for x in given) else given
        elif isinstance(given, (list, tuple)):
            if len(given) != self.rows:
                raise ValueError(f"image: a list needs one image per prompt ({self.rows}), got {len(given)}")
            given = list(given)
        else:
            given = [given] * self.rows
        if self.task == "t2v":
            if given is not None:
                raise PipelineError(f"image: {name} is a text-to-video pipeline; it takes no conditioning image")
            return None
        if given is None:
            raise PipelineError(
                f"{name} is an image-to-video pipeline: give its conditioning image (SamplerConfig(image=...), or "
                "prompts that carry one)"
            )
        for i, x in enumerate(given):
            if x is None:
                where = getattr(prompts[i], "where", None) or f"prompt {i}"
                raise ValueError(f"image: {where} ({str(prompts[i])!r}) has no conditioning image for {name}")
        return given

    def _encode_images(self, images: list, dtype: torch.dtype) -> None:
        """The image conditioning of each row, as the pipeline's call prepares it. Wan: ``cond["image_latents"]`` (the
        first-frame mask and the VAE latents of the image followed by blank frames, ``[rows, 4 + C, f, h, w]``) and,
        with a CLIP image encoder, ``cond["image_embeds"]``; Wan 2.2 TI2V: the image's latents that hold the first
        latent frame (:attr:`pinned`). LTX-Video and CogVideoX: the preprocessed images (``[rows, 3, H, W]``), whose
        latents :meth:`initial_latents` samples with each seed's generator as the pipeline does; they are pinned
        (LTX-Video: the first latent frame's tokens; CogVideoX: the latents' second half of channels)."""
        from .images import load_image

        p, dev, H, W = self.pipe, self.device, self.height, self.width
        keys, index, pixels = {}, [], []
        for i, x in enumerate(images):  # each distinct image once
            key = os.fspath(x) if isinstance(x, (str, os.PathLike)) else id(x)
            if key not in keys:
                keys[key] = len(pixels)
                img = load_image(x, name=None if isinstance(x, (str, os.PathLike)) else f"image[{i}]")
                pixels.append((img, p.video_processor.preprocess(img, height=H, width=W)))  # [1, 3, H, W] in [-1, 1]
            index.append(keys[key])
        self.image_rows = torch.tensor(index)  # the distinct image of each conditioning row
        if self.family in ("ltx", "cogvideox"):
            self.image_pixels = torch.cat([px for _, px in pixels]).to(dev, dtype)
        if self.family == "cogvideox":  # channels [latents, image latents], as the transformer reads them
            C = p.transformer.config.in_channels // 2
            self.pinned = (torch.arange(2 * C, device=dev) >= C).view(1, 1, 2 * C, 1, 1)
            return
        if self.family == "ltx":
            f, h, w = _ltx_grid(p, H, W, self.num_frames)
            mask = torch.zeros(1, 1, f, h, w, device=dev)
            mask[:, :, 0] = 1.0  # the first latent frame is the image's
            ps, pt = p.transformer_spatial_patch_size, p.transformer_temporal_patch_size
            packed = p._pack_latents(mask, ps, pt).squeeze(-1)  # [1, S]
            self.timestep_scale = 1 - packed  # each token's timestep is t times this: 0 on the image
            self.pinned = packed[..., None] > 0.5  # [1, S, 1]
            return
        vae, z = p.vae, p.vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(dev, torch.float32)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(dev, torch.float32)
        expand = p.config.get("expand_timesteps", False)
        f, h, w = self.latent_frames, H // p.vae_scale_factor_spatial, W // p.vae_scale_factor_spatial
        latents, embeds = [], []
        with torch.no_grad():
            for img, px in pixels:
                px = px.to(dev, torch.float32)[:, :, None]  # [1, 3, 1, H, W]
                if not expand:  # the image, then blank frames to the clip's length
                    px = torch.cat([px, px.new_zeros(1, 3, self.num_frames - 1, H, W)], dim=2)
                lat = vae.encode(px.to(vae.dtype)).latent_dist.mode().to(dev, torch.float32)
                latents.append((lat - mean) * inv_std)
                if p.transformer is not None and p.transformer.config.image_dim is not None:  # Wan 2.1: CLIP
                    embeds.append(p.encode_image(img, dev).to(self.model_module.dtype))
        rows = self.image_rows.to(dev)
        if expand:  # Wan 2.2 TI2V: the first latent frame is the image's, at timestep 0
            self.image_latents = torch.cat(latents)[rows]  # [rows, C, 1, h, w]
            self.pinned = torch.zeros(1, 1, f, h, w, dtype=torch.bool, device=dev)
            self.pinned[:, :, 0] = True
            self.timestep_scale = (~self.pinned)[0, 0, :, ::2, ::2].flatten().float()  # per 2x2 patch, 0 on the image
            return
        # the first-frame mask as WanImageToVideoPipeline.prepare_latents builds it: 4 channels, one per pixel frame
        # of a latent frame; 1 on the first pixel frame (repeated 4 times over the first latent frame)
        temporal = p.vae_scale_factor_temporal
        frame_mask = torch.zeros(1, 1, self.num_frames, h, w)
        frame_mask[:, :, 0] = 1.0
        first = frame_mask[:, :, :1].repeat_interleave(temporal, dim=2)
        frame_mask = torch.cat([first, frame_mask[:, :, 1:]], dim=2).view(1, -1, temporal, h, w)
        frame_mask = frame_mask.transpose(1, 2).to(dev)  # [1, 4, f, h, w]
        cond = torch.cat([torch.cat([frame_mask, lat], dim=1) for lat in latents])[rows]
        self.cond.update(image_latents=cond, nimage_latents=cond)  # the negatives see the same image
        if embeds:
            clip = torch.cat(embeds)[rows]
            self.cond.update(image_embeds=clip, nimage_embeds=clip)

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
    def initial_latents(self, seeds: list[int], rows=None) -> torch.Tensor:
        """Level-0 latents for each seed, as the pipeline itself draws them for that seed (one generator per row).
        Image-to-video: row ``i`` is conditioned on prompt ``rows[i]``'s image (``rows`` as in :meth:`predict`); LTX-Video
        and CogVideoX sample that image's latents with the seed's generator first, as their pipelines do (CogVideoX's
        follow the latents on the channels: ``[B, F, 2C, h, w]``)."""
        p, B = self.pipe, len(seeds)
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        ch = self.model_module.config.in_channels
        if self.task == "i2v":
            index = self._rows_of(B, rows)  # None: one prompt for all rows, or one per row
            if index is None:
                index = torch.zeros(B, dtype=torch.long) if self.rows == 1 else torch.arange(B)
            image_rows = index.cpu()
            if self.family == "ltx":
                pixels = self.image_pixels[self.image_rows[image_rows].to(self.image_pixels.device)]
                args = (pixels, B, ch, self.height, self.width, self.num_frames, torch.float32, self.device, gens)
                return p.prepare_latents(*args)[0]
            if self.family == "cogvideox":
                pixels = self.image_pixels[self.image_rows[image_rows].to(self.image_pixels.device)]
                frames = (self.latent_frames - 1) * p.vae_scale_factor_temporal + 1
                dtype = self.cond["pe"].dtype
                args = (pixels, B, ch // 2, frames, self.height, self.width, dtype, self.device, gens)
                return torch.cat(p.prepare_latents(*args), dim=2)  # [B, F, C + C, h, w]
            from diffusers.utils.torch_utils import randn_tensor

            h, w = self.height // p.vae_scale_factor_spatial, self.width // p.vae_scale_factor_spatial
            shape = (B, p.vae.config.z_dim, self.latent_frames, h, w)
            x = randn_tensor(shape, generator=gens, device=self.device, dtype=torch.float32)
            if self.pinned is not None:  # Wan 2.2 TI2V: the first latent frame is the image's
                x = torch.where(self.pinned, self.image_latents[image_rows.to(self.device)], x)
            return x
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
        low = self.cfg.denoiser_2 if self.cfg.denoiser_2 is not None else p.transformer_2  # (a trainer's prepared one)
        return low, self.guidance if g2 is None else g2

    def predict(self, x: torch.Tensor, k: int, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, e)`` from latents ``x`` at level ``k``; as :meth:`Sampler.predict`."""
        p, B = self.pipe, x.shape[0]
        a, s = self.model_levels[k]
        t = self.timesteps[k]
        index = self._rows_of(B, rows)
        self.evaluations += B
        model, scale = self._expert(t)
        if self.cfg.use_dynamic_cfg:  # CogVideoX: the scale of this step's timestep
            scale = dynamic_guidance(self.guidance, int(t), len(self.timesteps))
        dtype = self.cond["pe"].dtype

        def run(inp, which):
            n = inp.shape[0]
            text = self._cond_rows("pe", which, B, index)
            if self.family == "wan":
                if p.config.get("expand_timesteps", False):  # Wan 2.2 TI2V-5B: one timestep per 2x2 latent patch
                    F, h, w = inp.shape[2], (inp.shape[3] + 1) // 2, (inp.shape[4] + 1) // 2
                    ts = t.expand(n, F * h * w) if self.pinned is None else (self.timestep_scale * t).expand(n, -1)
                else:
                    ts = t.expand(n)
                image = {}
                if "image_latents" in self.cond:  # image-to-video: mask and image latents after the latents' channels
                    inp = torch.cat([inp, self._cond_rows("image_latents", which, B, index)], dim=1)
                if "image_embeds" in self.cond:  # Wan 2.1: the image's CLIP embeddings
                    image["encoder_hidden_states_image"] = self._cond_rows("image_embeds", which, B, index)
                return model(
                    hidden_states=inp.to(dtype), timestep=ts, encoder_hidden_states=text, return_dict=False, **image
                )[0]
            if self.family == "cogvideox":  # (image-to-video: the image's latents are the channels' second half)
                ofs = None  # CogVideoX 1.5 I2V embeds an "ofs" of its pipeline's constant 2
                if p.transformer.config.ofs_embed_dim is not None:
                    ofs = torch.full((1,), 2.0, device=inp.device, dtype=dtype)
                return model(
                    hidden_states=inp.to(dtype),
                    encoder_hidden_states=text,
                    timestep=t.expand(n),
                    ofs=ofs,
                    image_rotary_emb=self.rotary,
                    return_dict=False,
                )[0]
            f, h, w = _ltx_grid(p, self.height, self.width, self.num_frames)
            ratio_s = p.vae_spatial_compression_ratio
            ts = t.expand(n)
            if self.pinned is not None:  # image-to-video: timestep 0 on the image's tokens
                ts = ts.unsqueeze(-1) * self.timestep_scale
            return model(
                hidden_states=inp.to(dtype),
                encoder_hidden_states=text,
                timestep=ts,
                encoder_attention_mask=self._cond_rows("mask", which, B, index),
                num_frames=f,
                height=h,
                width=w,
                rope_interpolation_scale=(p.vae_temporal_compression_ratio / self.frame_rate, ratio_s, ratio_s),
                return_dict=False,
            )[0]

        out = self._guided(run, x, scale).to(x.dtype)
        if self.family == "cogvideox":  # VP latents (a^2 + s^2 = 1)
            held = x[:, :, out.shape[2] :]  # image-to-video: the image's latents, kept as x0 and e (pinned)
            x = x[:, :, : out.shape[2]]
            kind = p.scheduler.config.prediction_type
            if kind == "v_prediction":
                x0, e = a * x - s * out, s * x + a * out
            elif kind == "epsilon":
                x0, e = (x - s * out) / a, out
            else:
                x0, e = out, (x - a * out) / s
            return torch.cat([x0, held], dim=2), torch.cat([e, held], dim=2)
        # flow matching: the transformer predicts e - x0; a pinned position is clean, x0 = e = x keeps it at any level
        return self.pin(x - s * out, x), self.pin(x + (1 - s) * out, x)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents -> clips ``[B, T, 3, H, W]`` in [0, 1]."""
        return decode_video(self.pipe, x0, self.height, self.width, self.num_frames)


__all__ = [
    "ImagePrompt",
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
    "pipeline_task",
    "takes_image",
]
