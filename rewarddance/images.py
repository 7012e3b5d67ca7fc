"""Image input at the edges of the library: files, PIL images, arrays and tensors in, RGB out.

The core works on ``[3, H, W]`` float tensors in [0, 1] (DESIGN.md, Conventions). Everything a user can hand us
goes through :func:`load_image`, which converts the odd modes (grayscale, palette, RGBA, 16-bit) instead of
rejecting them, and raises :class:`ImageError` naming the input for what cannot be read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

# Larger than any real generation (8k x 8k is 67 Mpx) yet far below what a crafted file can claim.
MAX_IMAGE_PIXELS = 100_000_000


class ImageError(ValueError):
    """An image that cannot be used; the message names the input."""


def _describe(src, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return f"<{type(src).__name__}>"


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; alpha is composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            hi = max(float(arr.max()), 1.0) if arr.max() > 1.0 else 1.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"{label}: cannot convert image mode {mode!r} to RGB ({err})") from err


def _open_file(path: Path, label: str, max_pixels: int) -> Image.Image:
    if not path.exists():
        raise ImageError(f"{label}: no such file")
    if path.is_dir():
        raise ImageError(f"{label}: is a directory, not an image")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # PIL's own bomb check (at open, past 2 x 89.5 Mpx) would refuse first, citing its limit, and would refuse a
    # max_pixels raised above it: ours replaces it. Opening reads the header only; nothing is decoded before the check.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"{label}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                    "(a decompression bomb or an unusually large file; raise max_pixels to allow it)"
                )
            img.load()
            return img.copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as err:  # PIL's check, were another thread to have restored it meanwhile
        raise ImageError(
            f"{label}: more pixels than the limit of {max_pixels:,} (a decompression bomb or an unusually large "
            "file; raise max_pixels to allow it)"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{label}: unreadable or truncated image file ({err})") from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = previous


def check_pixels(pixels: torch.Tensor, label: str = "pixels") -> None:
    """Raise :class:`ImageError` unless ``pixels`` is finite and within [0, 1] (1e-3 slack)."""
    if not torch.is_floating_point(pixels):
        raise ImageError(f"{label}: expected a float tensor in [0, 1], got dtype {pixels.dtype}")
    with torch.no_grad():
        if not bool(torch.isfinite(pixels).all()):
            raise ImageError(f"{label}: contains NaN or inf values")
        lo, hi = float(pixels.min()), float(pixels.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ImageError(f"{label}: values must lie in [0, 1], found range [{lo:.4g}, {hi:.4g}]")


def _tensor_to_pil(t: torch.Tensor, label: str) -> Image.Image:
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ImageError(f"{label}: expected a [3, H, W] or [H, W, 3] tensor, got shape {tuple(t.shape)}")
    if t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
        t = t.permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
    elif t.shape[0] in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
        t = t.permute(1, 2, 0)  # ambiguous tiny image: the core convention is channels first
    if t.dtype == torch.uint8:
        arr = t.detach().cpu().numpy()
    else:
        check_pixels(t, label)
        arr = (t.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    mode = "RGBA" if arr.shape[-1] == 4 else "RGB"
    return _to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode=mode), label)


def load_image(src, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Any supported image input -> an RGB ``PIL.Image``.

    ``src`` is a path, a ``PIL.Image``, a uint8/float ``numpy`` array ``[H, W(, C)]``, or a tensor ``[3, H, W]`` /
    ``[H, W, 3]`` (float in [0, 1] or uint8). Grayscale, palette, RGBA and 16-bit images are converted. Raises
    :class:`ImageError` naming ``name`` (or the path) for unreadable, truncated, oversized or non-finite input.
    """
    label = _describe(src, name)
    if isinstance(src, (str, os.PathLike)):
        img = _open_file(Path(src), label, max_pixels)
    elif isinstance(src, Image.Image):
        w, h = src.size
        if w * h > max_pixels:
            raise ImageError(f"{label}: {w}x{h} exceeds the limit of {max_pixels:,} pixels")
        img = src
    elif isinstance(src, torch.Tensor):
        return _tensor_to_pil(src, label)
    elif isinstance(src, np.ndarray):
        if src.dtype != np.uint8:
            if not np.isfinite(src).all():
                raise ImageError(f"{label}: contains NaN or inf values")
            src = (np.clip(src, 0, 1) * 255.0 + 0.5).astype(np.uint8)
        return load_image(Image.fromarray(src), name=label, max_pixels=max_pixels)
    else:
        raise ImageError(f"{label}: unsupported image type {type(src).__name__}")
    if min(img.size) < 1:
        raise ImageError(f"{label}: empty image of size {img.size}")
    return _to_rgb(img, label)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float32 tensor in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def as_image_list(images, what: str = "images") -> list:
    """Normalise a batch argument: a ``[B, 3, H, W]`` tensor, a single image, or a sequence -> a Python list."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            return list(images.unbind(0))
        if images.ndim == 3:
            return [images]
        raise ImageError(f"{what}: expected [B, 3, H, W] or [3, H, W], got shape {tuple(images.shape)}")
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    return list(images)
