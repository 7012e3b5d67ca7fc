"""Models that ship inside the package, trained here on ShapesWorld, so that the main job runs offline.

- ``shapes-s``, ``shapes-m``, ``shapes-l``: generative reward models (tiny LLaVA, the project's own tokenizer) of
  three sizes, pointwise judges of prompt alignment on 56 x 56 ShapesWorld images.
- ``shapes-gen``: a small text-to-image diffusers ``StableDiffusionPipeline`` (32 x 32 px) that draws ShapesWorld
  prompts imperfectly.

Each is an ordinary Hugging Face / diffusers folder with a ``README.md`` model card (data, steps, seed, measured
accuracy) and a ``card.json`` holding the same numbers for tests. ``RewardModel.from_pretrained("shapes-m")`` and
:func:`load_generator` find them by name; a local folder of the same name takes precedence. The seeded scripts
that reproduce them are in :mod:`rewarddance.recipes.shapes`; this package holds the folders and the resolver.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REWARD_MODELS = ("shapes-s", "shapes-m", "shapes-l")
GENERATOR = "shapes-gen"
DEFAULT_RM = "shapes-m"


class BundledModelError(ValueError):
    """A bundled model name that this installation does not hold."""


def available() -> list[str]:
    """Names of the bundled models present in this installation."""
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "card.json").exists())


def is_bundled_name(name: str | os.PathLike) -> bool:
    """True for ``shapes-*`` names that are not an existing local path."""
    text = str(name)
    return text in (*REWARD_MODELS, GENERATOR) and not Path(text).exists()


def bundled_path(name: str) -> Path:
    """The folder of bundled model ``name``; a clear error listing what is there otherwise."""
    path = ROOT / name
    if name not in (*REWARD_MODELS, GENERATOR) or not (path / "card.json").exists():
        have = ", ".join(available()) or "none"
        raise BundledModelError(f"{name!r} is not a bundled model of this installation (bundled: {have})")
    return path


def resolve(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """The folder of a bundled model named ``name_or_path``; anything else (a local path, a hub id) unchanged."""
    return bundled_path(str(name_or_path)) if is_bundled_name(name_or_path) else name_or_path


def card(name: str) -> dict:
    """The measured facts of bundled model ``name`` (``card.json``: data, steps, seed, accuracy, minutes)."""
    return json.loads((bundled_path(name) / "card.json").read_text(encoding="utf-8"))


def load_generator(name_or_path: str | os.PathLike = GENERATOR, device="cpu", dtype=None):
    """The bundled ShapesWorld text-to-image pipeline (or a diffusers folder), float32 on the CPU by default."""
    import torch

    from ..shapes.generator import load_generator as _load

    return _load(resolve(name_or_path), device=device, dtype=dtype or torch.float32)


def generator_defaults(pipe) -> dict:
    """``guidance_scale``, ``num_inference_steps`` and image size the generator was trained to be used with."""
    path = Path(pipe.config._name_or_path) / "training.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))["config"] if path.exists() else {}
    size = cfg.get("image_size", pipe.unet.config.sample_size * pipe.vae_scale_factor)
    return {
        "guidance_scale": cfg.get("guidance_scale", 4.0),
        "num_inference_steps": cfg.get("num_inference_steps", 20),
        "height": size,
        "width": size,
    }
