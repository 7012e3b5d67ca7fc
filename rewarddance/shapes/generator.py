"""A small ShapesWorld text-to-image model: a real diffusers StableDiffusionPipeline trained here on the CPU.

Built from configs (no download) and trained from a seed in two stages on rendered ShapesWorld scenes:

1. an ``AutoencoderKL`` (3 levels, 4x downsampling: 32 x 32 px <-> 8 x 8 x 8 latents) on reconstruction loss with a
   small KL term; its ``scaling_factor`` is set from the latents' standard deviation, as Stable Diffusion's is;
2. a ``UNet2DConditionModel`` and a small ``CLIPTextModel`` together on the usual noise-prediction loss (DDPM,
   scaled-linear betas), with the prompt dropped to "" for a share of the batch so classifier-free guidance works.

The tokenizer is a byte-level BPE trained on ShapesWorld's prompt words, so every word is one token. The model is
meant to be imperfect: after ~20 minutes of CPU training it draws the colours and rough shapes of a prompt but often
misses counts, relations and shapes, which leaves a reward model room to help (best-of-N, search, ReFL).

    python -m rewarddance.recipes.shapes generator --out ./shapes-gen   # then DiffusionPipeline.from_pretrained(...)
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .prompts import CATEGORIES
from .render import render_array
from .sample import example_rng, sample_examples, sample_prompt


@dataclass
class GeneratorConfig:
    """How the ShapesWorld generator is built and trained (every field is saved in ``training.json``)."""

    image_size: int = field(default=32, metadata={"help": "image side in px (a multiple of 4)"})
    n_images: int = field(default=40000, metadata={"help": "training scenes, rendered once (in-domain split)"})
    data_seed: int = field(default=31, metadata={"help": "ShapesWorld seed of the training scenes"})
    seed: int = field(default=0, metadata={"help": "seed of initial weights, batches and noise"})
    vae_channels: tuple[int, ...] = field(default=(16, 32, 32), metadata={"help": "VAE block widths (len-1 halvings)"})
    latent_channels: int = field(default=8, metadata={"help": "latent channels"})
    vae_steps: int = field(default=6000, metadata={"help": "autoencoder training steps"})
    vae_batch: int = field(default=32, metadata={"help": "autoencoder batch size"})
    vae_lr: float = field(default=1e-3, metadata={"help": "autoencoder learning rate (AdamW, cosine)"})
    vae_kl: float = field(default=1e-6, metadata={"help": "weight of the KL term"})
    text_hidden: int = field(default=64, metadata={"help": "CLIP text encoder width"})
    text_layers: int = field(default=2, metadata={"help": "CLIP text encoder layers"})
    unet_channels: tuple[int, ...] = field(default=(64, 128), metadata={"help": "UNet block widths"})
    unet_layers: int = field(default=1, metadata={"help": "UNet resnet layers per block"})
    unet_steps: int = field(default=7000, metadata={"help": "UNet + text encoder training steps"})
    unet_batch: int = field(default=128, metadata={"help": "UNet batch size"})
    unet_lr: float = field(default=5e-4, metadata={"help": "UNet + text encoder learning rate (AdamW, cosine)"})
    drop_prompt: float = field(default=0.1, metadata={"help": "share of prompts replaced by '' (for CFG)"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA of the UNet and text weights (saved); 0 = off"})
    min_snr_gamma: float = field(default=5.0, metadata={"help": "min-SNR loss weighting min(SNR, g)/SNR; 0 = off"})
    checkpoint_every: int = field(default=500, metadata={"help": "UNet steps between resumable checkpoints"})
    max_length: int = field(default=24, metadata={"help": "tokenizer length (prompts are at most ~14 tokens)"})
    guidance_scale: float = field(default=4.0, metadata={"help": "default classifier-free guidance of the demo"})
    num_inference_steps: int = field(default=20, metadata={"help": "default sampling steps of the demo"})

    def __post_init__(self):
        self.vae_channels = tuple(self.vae_channels)
        self.unet_channels = tuple(self.unet_channels)
        factor = 2 ** (len(self.vae_channels) - 1)
        if self.image_size % (factor * 2 ** (len(self.unet_channels) - 1)):
            raise ValueError(f"image_size {self.image_size} must be divisible by the VAE and UNet downsampling")
        for name in ("n_images", "vae_steps", "unet_steps", "vae_batch", "unet_batch", "text_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be >= 0, got {self.min_snr_gamma}")
        if not 0 <= self.drop_prompt < 1:
            raise ValueError(f"drop_prompt must be in [0, 1), got {self.drop_prompt}")


def prompt_words() -> list[str]:
    """Every word ShapesWorld prompts use, in and out of domain (the tokenizer's training text)."""
    words: set[str] = set()
    for split in ("id", "ood"):
        for i in range(600):
            words.update(sample_prompt(CATEGORIES[i % len(CATEGORIES)], example_rng(0, split, i), split).text.split())
    return sorted(words)


def build_tokenizer(max_length: int = 24):
    """Byte-level BPE over ShapesWorld's words (each word one token), CLIP-style begin/end tokens, pad = end."""
    from ..bpe import build_bpe_tokenizer

    texts = [" ".join(prompt_words())] * 8
    return build_bpe_tokenizer(texts, max_length, vocab_size=1000, add_prefix_space=True)


def build_pipeline(cfg: GeneratorConfig):
    """The untrained pipeline (float32, CPU): tokenizer, CLIP text encoder, VAE, UNet, DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg.max_length)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=cfg.text_hidden * 2,
            num_attention_heads=4,
            num_hidden_layers=cfg.text_layers,
            max_position_embeddings=cfg.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=cfg.text_hidden,
        )
    )
    levels = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=16,
        sample_size=cfg.image_size,
    )
    n = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size // 2 ** (levels - 1),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        layers_per_block=cfg.unet_layers,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def render_training_set(cfg: GeneratorConfig) -> tuple[list[str], torch.Tensor]:
    """Prompts and images ``[N, 3, S, S]`` in [-1, 1] of ``cfg.n_images`` in-domain scenes, all six categories."""
    examples = sample_examples(cfg.n_images, seed=cfg.data_seed, split="id", categories=CATEGORIES)
    pixels = np.stack([render_array(ex.scene, cfg.image_size) for ex in examples])  # N, S, S, 3 uint8
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    return [ex.prompt for ex in examples], images


def _cosine(optimizer, steps: int, warmup: int = 100):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _log(log, text: str) -> None:
    if log is not None:
        log(text)


def train_vae(vae, images: torch.Tensor, cfg: GeneratorConfig, log=print) -> dict:
    """Reconstruction (L1 + MSE) plus ``cfg.vae_kl`` x KL; returns the final losses."""
    gen = torch.Generator().manual_seed(cfg.seed)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = _cosine(opt, cfg.vae_steps)
    recent: list[float] = []
    for step in range(cfg.vae_steps):
        idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=gen)
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = (recon - x).abs().mean() + ((recon - x) ** 2).mean()
        loss = rec + cfg.vae_kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [rec.item()])[-100:]
        if (step + 1) % 500 == 0:
            _log(log, f"vae step {step + 1}/{cfg.vae_steps}: reconstruction {np.mean(recent):.4f}")
    vae.eval()
    return {"reconstruction": float(np.mean(recent))}


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior means ``[N, C, h, w]`` (unscaled)."""
    return torch.cat([vae.encode(images[i : i + batch]).latent_dist.mean for i in range(0, len(images), batch)])


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights ``min(SNR(t), gamma) / SNR(t)`` for noise prediction (Hang et al., 2023); ones when
    ``gamma`` is 0."""
    if not gamma:
        return torch.ones(len(t))
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return snr.clamp(max=gamma) / snr


def train_denoiser(
    pipe,
    prompts: list[str],
    latents: torch.Tensor,
    cfg: GeneratorConfig,
    log=print,
    work: Path | None = None,
    clock=None,
) -> dict:
    """UNet and text encoder on noise prediction over scaled latents; returns the final loss.

    With ``cfg.ema_decay`` the weights left in ``pipe`` are the exponential moving average. With ``work`` a
    checkpoint (weights, EMA, optimiser, schedule, batch RNG) is written every ``cfg.checkpoint_every`` steps and
    an interrupted run continues from it exactly (``clock()``, when given, is the run's seconds so far, kept beside
    the checkpoint).
    """
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas_cumprod = noise_sched.alphas_cumprod
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=cfg.max_length, return_tensors="pt").input_ids
    empty = pipe.tokenizer([""], padding="max_length", max_length=cfg.max_length, return_tensors="pt").input_ids
    unet, text = pipe.unet, pipe.text_encoder
    unet.train()
    text.train()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    sched = _cosine(opt, cfg.unet_steps)
    ema = [p.detach().clone() for p in params] if cfg.ema_decay else None
    recent: list[float] = []
    first = 0
    checkpoint = work / "unet-checkpoint.pt" if work is not None else None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        with torch.no_grad():
            for p, v in zip(params, state["params"]):
                p.copy_(v)
        if ema is not None:
            ema = [v.clone() for v in state["ema"]]
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        gen.set_state(state["rng"])
        first, recent = int(state["step"]), list(state["recent"])
        _log(log, f"unet: resumed at step {first} from {checkpoint}")
    for step in range(first, cfg.unet_steps):
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=gen)
        x0 = latents[idx]
        tokens = ids[idx].clone()
        drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.drop_prompt
        tokens[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        noisy = noise_sched.add_noise(x0, noise, t)
        context = text(tokens)[0]
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(alphas_cumprod, t, cfg.min_snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:  # the usual warm-up: the average forgets its random start quickly
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        recent = (recent + [per_sample.mean().item()])[-200:]
        if (step + 1) % 500 == 0:
            _log(log, f"unet step {step + 1}/{cfg.unet_steps}: loss {np.mean(recent):.4f}")
        if checkpoint is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.unet_steps:
            state = {
                "params": [p.detach() for p in params],
                "ema": ema or [],
                "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(),
                "rng": gen.get_state(),
                "step": step + 1,
                "recent": recent,
            }
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
            if clock is not None:
                (work / "elapsed.json").write_text(json.dumps({"seconds": clock()}), encoding="utf-8")
    if ema is not None:
        with torch.no_grad():
            for p, v in zip(params, ema):
                p.copy_(v)
    unet.eval()
    text.eval()
    return {"loss": float(np.mean(recent))}


def train_generator(cfg: GeneratorConfig, out_dir: str | os.PathLike, log=print, work=None) -> Path:
    """Build, train (VAE, then UNet + text encoder) and ``save_pretrained`` the pipeline into ``out_dir``.

    ``work``: a folder for the finished VAE and the UNet's checkpoints; a run interrupted there continues.
    """
    out = Path(out_dir)
    start = time.time()
    torch.manual_seed(cfg.seed)
    pipe = build_pipeline(cfg)
    prompts, images = render_training_set(cfg)
    _log(log, f"rendered {len(images)} scenes in {time.time() - start:.0f} s")
    work = Path(work) if work is not None else None
    elapsed = 0.0
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        saved = work / "config.json"
        if saved.exists() and json.loads(saved.read_text(encoding="utf-8")) != json.loads(json.dumps(asdict(cfg))):
            raise ValueError(f"{work} holds a run with another config; use a new --work folder")
        saved.write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
        clock = work / "elapsed.json"
        elapsed = json.loads(clock.read_text(encoding="utf-8"))["seconds"] if clock.exists() else 0.0
    vae_done = work / "vae" if work is not None else None
    if vae_done is not None and (vae_done / "stats.json").exists():
        from diffusers import AutoencoderKL

        pipe.vae.load_state_dict(AutoencoderKL.from_pretrained(vae_done).state_dict())
        vae_stats = json.loads((vae_done / "stats.json").read_text(encoding="utf-8"))
        pipe.vae.eval()
        _log(log, f"vae: reused {vae_done}")
    else:
        vae_stats = train_vae(pipe.vae, images, cfg, log)
        if vae_done is not None:
            pipe.vae.save_pretrained(vae_done, safe_serialization=True)
            (vae_done / "stats.json").write_text(json.dumps(vae_stats) + "\n", encoding="utf-8")
            (work / "elapsed.json").write_text(json.dumps({"seconds": elapsed + time.time() - start}), "utf-8")
    latents = encode_latents(pipe.vae, images)
    # Stable Diffusion's convention: the denoiser sees latents scaled to unit standard deviation
    scaling = float(1.0 / latents.std())
    pipe.vae.register_to_config(scaling_factor=scaling)
    _log(log, f"latents {tuple(latents.shape[1:])}, scaling_factor {scaling:.4f}")
    unet_stats = train_denoiser(
        pipe, prompts, latents * scaling, cfg, log, work, clock=lambda: elapsed + time.time() - start
    )
    pipe.save_pretrained(out, safe_serialization=True)
    record = {
        "config": asdict(cfg),
        "vae": vae_stats,
        "unet": unet_stats,
        "minutes": round((elapsed + time.time() - start) / 60, 1),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _log(log, f"saved to {out} after {record['minutes']} min")
    return out


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu", dtype=torch.float32):
    """The trained pipeline from ``path`` (a diffusers folder), progress bar off."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=dtype, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
