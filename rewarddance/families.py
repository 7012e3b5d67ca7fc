"""Family adapters: the few facts about each VLM family that the reward model needs.

A family is chosen from the config's ``model_type``. The adapter knows which processor outputs belong to the
images (so per-image inputs can be cut out and batched again for the shared-prefix path), how to stack them across
samples, whether the family uses multimodal rotary positions (Qwen M-RoPE) that must be passed explicitly when a
KV cache is reused, and which differentiable preprocessing pipeline (``rewarddance.preprocess``) turns its pixels
into model inputs.

:data:`FAMILIES` is the one registry of supported families: adding a family is one :class:`Family` entry here
(plus, for the test suite, one tiny-model entry in ``rewarddance.testing.tiny.TINY_FAMILIES`` under the same name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .preprocess import (
    _idefics3,
    _internvl,
    _llava,
    _llava_onevision,
    _llava_onevision_video,
    _qwen_vl,
    _qwen_vl_video,
)


class UnsupportedModelError(ValueError):
    """The checkpoint's ``model_type`` has no family adapter."""


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts, dim=0)


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``[1, n_i, ...]`` tensors along dim 0, zero-padding dim 1 to the largest ``n_i``."""
    n = max(p.shape[1] for p in parts)
    out = []
    for p in parts:
        if p.shape[1] < n:
            pad = p.new_zeros((p.shape[0], n - p.shape[1], *p.shape[2:]))
            p = torch.cat([p, pad], dim=1)
        out.append(p)
    return torch.cat(out, dim=0)


@dataclass(frozen=True)
class Family:
    """How one VLM family turns images into inputs and lays them out beside the text."""

    name: str
    model_types: tuple[str, ...]
    image_keys: tuple[str, ...]  # processor outputs that describe images
    stack: dict[str, Callable[[list[torch.Tensor]], torch.Tensor]]  # how to batch each key across samples
    # (images of one sample, the processor's settings) -> image inputs: the family's differentiable preprocessing
    preprocess: Callable[[list[torch.Tensor], Any], dict[str, torch.Tensor]]
    mrope: bool = False  # Qwen-style 3-D rotary positions
    images_depend_on_sample: bool = False  # an image's inputs change with the number of images in its sample
    # (clips [T, 3, H, W] of one batch, the video processor's settings) -> video inputs, for a family whose
    # processor takes videos natively; None: videos are given as their frames, several images
    video: Callable[[list[torch.Tensor], Any], dict[str, torch.Tensor]] | None = None

    def stack_image_inputs(self, per_sample: list[dict]) -> dict:
        """Merge the image inputs of several samples into one batch, key by key."""
        out = {}
        for key in self.image_keys:
            parts = [d[key] for d in per_sample if key in d and d[key] is not None]
            if parts:
                out[key] = self.stack[key](parts)
        return out


_QWEN = dict(
    image_keys=("pixel_values", "image_grid_thw"),
    stack={"pixel_values": _cat, "image_grid_thw": _cat},
    preprocess=_qwen_vl,
    mrope=True,
    video=_qwen_vl_video,
)
_IDEFICS = dict(
    image_keys=("pixel_values", "pixel_attention_mask"),
    stack={"pixel_values": _cat_padded, "pixel_attention_mask": _cat_padded},
    preprocess=_idefics3,
)
_PIXELS_ONLY = dict(image_keys=("pixel_values",), stack={"pixel_values": _cat})

FAMILIES: tuple[Family, ...] = (
    Family("qwen2_vl", ("qwen2_vl",), **_QWEN),
    Family("qwen2_5_vl", ("qwen2_5_vl",), **_QWEN),
    Family("qwen3_vl", ("qwen3_vl", "qwen3_vl_moe"), **_QWEN),
    Family("internvl", ("internvl",), **_PIXELS_ONLY, preprocess=_internvl),
    Family("idefics3", ("idefics3",), **_IDEFICS),
    Family("smolvlm", ("smolvlm",), **_IDEFICS),
    Family("llava", ("llava",), **_PIXELS_ONLY, preprocess=_llava),
    Family(
        "llava_onevision",
        ("llava_onevision",),
        image_keys=("pixel_values", "image_sizes", "batch_num_images"),
        stack={"pixel_values": _cat_padded, "image_sizes": _cat, "batch_num_images": _cat},
        preprocess=_llava_onevision,
        images_depend_on_sample=True,
        video=_llava_onevision_video,
    ),
)
FAMILY_NAMES: tuple[str, ...] = tuple(f.name for f in FAMILIES)


def supported_model_types() -> list[str]:
    return sorted(t for f in FAMILIES for t in f.model_types)


def family_named(name: str) -> Family:
    """The family called ``name`` (e.g. ``"llava"``); ``ValueError`` lists the names."""
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILY_NAMES)}")


def family_for(model_type: str) -> Family:
    """The adapter for a config ``model_type``; :class:`UnsupportedModelError` lists the supported ones."""
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise UnsupportedModelError(
        f"model_type {model_type!r} is not a supported reward-model family; supported: "
        f"{', '.join(supported_model_types())}"
    )
