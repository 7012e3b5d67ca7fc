"""Image corruptions for robustness tests and augmentation: Gaussian blur, JPEG, additive Gaussian noise.

Generated images are never clean; the verifier is tested under these at graded strengths (``CORRUPTIONS``).
Blur strength is given relative to a 64 px image so that one level means the same at every size.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from .scene import ShapesError

# graded strengths, mild to harsh: blur sigma in px at 64 px, JPEG quality, noise std in 0-255 units
CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "blur": (0.5, 1.0, 1.5, 2.0),
    "jpeg": (75, 50, 30, 15),
    "noise": (5.0, 10.0, 20.0, 30.0),
}


def corrupt(image: Image.Image, kind: str, level: float, seed: int = 0) -> Image.Image:
    """Apply one corruption to an RGB PIL image.

    ``kind``: ``blur`` (``level`` = Gaussian sigma in px of a 64 px image, scaled with the image side), ``jpeg``
    (``level`` = quality 1-95), ``noise`` (``level`` = std of additive Gaussian noise, 0-255 units; ``seed``
    fixes it).
    """
    image = image.convert("RGB")
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(level * min(image.size) / 64.0))
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(level))
        buf.seek(0)
        with Image.open(buf) as im:
            return im.convert("RGB")
    if kind == "noise":
        arr = np.asarray(image, dtype=np.float32)
        arr = arr + np.random.default_rng(seed).normal(0.0, level, size=arr.shape).astype(np.float32)
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    raise ShapesError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
