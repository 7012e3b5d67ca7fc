"""Image corruptions for robustness tests and augmentation (Gaussian blur, JPEG, additive Gaussian noise), and
garbage images the strict verifier must reject.

Generated images are never clean; the verifier is tested under these at graded strengths (``CORRUPTIONS``).
Blur strength is given relative to a 64 px image so that one level means the same at every size. ``garbage``
makes images that are not ShapesWorld scenes at all (noise, textures, fills, blobs) or scenes spoilt far beyond
those strengths (:data:`GARBAGE`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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


# Garbage: images that are not ShapesWorld scenes, or scenes spoilt beyond the corruptions above. The strict
# verifier must call every one of them unclean (or, for an empty background, find no object), whatever the prompt.
GARBAGE: tuple[str, ...] = (
    "uniform-noise",  # every channel uniform in 0-255
    "gaussian-noise",  # every channel N(128, 60)
    "grey-noise",  # one uniform 0-255 value per pixel in all three channels
    "salt-pepper",  # a grey frame with 30 % of its pixels black or white
    "blob-noise",  # a smooth random colour field (bicubic upsampling of a 3-8 cell grid)
    "stripes",  # bands of two palette colours, 2-8 px wide, at a random angle
    "checkerboard",  # cells of a palette colour and a background grey or another palette colour
    "fill",  # the whole frame one palette colour (seed picks which) or a background grey
    "scene-on-noise",  # a correct scene whose background is uniform RGB noise
    "scene-speckle",  # a correct scene with 15 % of its pixels replaced by random palette colours
    "smear",  # a correct scene with a motion blur a quarter of the side long
    "heavy-blur",  # a correct scene with a Gaussian blur of 5 px at 64 px (the robustness tests stop at 2)
    "polygons",  # irregular polygons (5-9 corners at random radii) in palette colours on a ShapesWorld background
)


def garbage(kind: str, size: int = 64, seed: int = 0, scene=None) -> Image.Image:
    """A ``size`` px garbage image of ``kind`` (one of :data:`GARBAGE`), deterministic in ``seed``.

    The kinds built from a correct scene use ``scene`` (a :class:`~.scene.Scene`), or sample one from ``seed``.
    """
    from .render import _draw_objects, render, render_array, render_background
    from .sample import sample_background, sample_examples
    from .scene import BACKGROUND_RANGE, COLOURS

    if kind not in GARBAGE:
        raise ShapesError(f"unknown garbage kind {kind!r}; known: {', '.join(GARBAGE)}")
    rng = np.random.default_rng([seed, GARBAGE.index(kind)])
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    if scene is None and kind in ("scene-on-noise", "scene-speckle", "smear", "heavy-blur"):
        scene = sample_examples(1, seed=seed)[0].scene
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "uniform-noise":
        arr = rng.uniform(0, 256, size=(size, size, 3))
    elif kind == "gaussian-noise":
        arr = rng.normal(128.0, 60.0, size=(size, size, 3))
    elif kind == "grey-noise":
        arr = np.repeat(rng.uniform(0, 256, size=(size, size, 1)), 3, axis=2)
    elif kind == "salt-pepper":
        arr = np.full((size, size, 3), rng.uniform(*BACKGROUND_RANGE), dtype=np.float32)
        hit = rng.random((size, size)) < 0.3
        arr[hit] = np.where(rng.random((int(hit.sum()), 1)) < 0.5, 0.0, 255.0)
    elif kind == "blob-noise":
        cells = int(rng.integers(3, 9))
        grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
        arr = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    elif kind in ("stripes", "checkerboard"):
        period = float(rng.uniform(2, 8)) * 2 * size / 64.0
        a, b = rng.choice(len(palette), size=2, replace=False)
        second = palette[b] if rng.random() < 0.5 else np.full(3, rng.uniform(*BACKGROUND_RANGE), np.float32)
        theta = float(rng.uniform(0, np.pi))
        u = xx * np.cos(theta) + yy * np.sin(theta)
        on = np.floor(u / period) % 2 == 0
        if kind == "checkerboard":
            v = -xx * np.sin(theta) + yy * np.cos(theta)
            on = on ^ (np.floor(v / period) % 2 == 0)
        arr = np.where(on[:, :, None], palette[a], second)
    elif kind == "fill":
        choice = seed % (len(palette) + 1)
        level = palette[choice] if choice < len(palette) else np.full(3, rng.uniform(*BACKGROUND_RANGE))
        arr = np.broadcast_to(level, (size, size, 3))
    elif kind == "scene-on-noise":
        colour, cover = _draw_objects(scene, size)
        arr = rng.uniform(0, 256, size=(size, size, 3)) * (1.0 - cover) + colour
    elif kind == "scene-speckle":
        arr = render_array(scene, size).astype(np.float32)
        hit = rng.random((size, size)) < 0.15
        arr[hit] = palette[rng.integers(0, len(palette), size=int(hit.sum()))]
    elif kind == "smear":
        arr = render_array(scene, size).astype(np.float32)
        theta = float(rng.uniform(0, np.pi))
        steps = max(2, size // 4)
        pil = Image.fromarray(arr.astype(np.uint8))
        acc = np.zeros_like(arr)
        for k in range(steps):
            t = k - steps / 2
            shift = (round(t * np.cos(theta)), round(t * np.sin(theta)))
            acc += np.asarray(pil.transform(pil.size, Image.Transform.AFFINE, (1, 0, shift[0], 0, 1, shift[1])))
        arr = acc / steps
        arr = np.where(arr.sum(axis=2, keepdims=True) == 0, render_array(scene, size), arr)  # edges: no black border
    elif kind == "heavy-blur":
        return render(scene, size).filter(ImageFilter.GaussianBlur(5.0 * size / 64.0))
    else:  # polygons
        arr = render_background(sample_background(rng, "id"), size)
        pil = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(1, 4))):
            corners = int(rng.integers(5, 10))
            cx, cy = rng.uniform(0.25, 0.75, size=2) * size
            radii = rng.uniform(0.3, 1.0, size=corners) * rng.uniform(0.12, 0.25) * size
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=corners))
            pts = [(float(cx + r * np.cos(t)), float(cy + r * np.sin(t))) for r, t in zip(radii, angles)]
            draw.polygon(pts, fill=tuple(int(c) for c in palette[rng.integers(0, len(palette))]))
        return pil
    return Image.fromarray(np.clip(np.asarray(arr, dtype=np.float32) + 0.5, 0, 255).astype(np.uint8))
