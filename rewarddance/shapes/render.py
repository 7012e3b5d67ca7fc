"""Renderer: a :class:`~.scene.Scene` -> an anti-aliased RGB image of any size from 32 to 512 px (or more).

Objects are drawn with PIL on a canvas ``k`` times larger than the output (``k`` = 4 below 256 px, 2 above),
box-reduced, and composited over the background as premultiplied colour: ``out = bg * (1 - coverage) + colour *
coverage``. Objects never overlap (the sampler keeps a gap), so each output pixel mixes one object with the
background only, which keeps hue exact at the edges.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .scene import BACKGROUND_RANGE, COLOURS, Background, Scene, ShapesError

MIN_SIZE = 16  # below this a 2-object scene has objects of 2-3 px


def supersample_factor(size: int) -> int:
    """Supersampling factor used for a ``size`` px render (4 below 256 px, 2 from 256 px)."""
    return 4 if size < 256 else 2


def render_background(bg: Background, size: int) -> np.ndarray:
    """The background alone: float32 ``[size, size, 3]`` in 0-255, every value inside ``BACKGROUND_RANGE``."""
    lo, hi = BACKGROUND_RANGE
    u = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5  # pixel centres in [-0.5, 0.5]
    x, y = u[None, :], u[:, None]
    theta = math.radians(bg.angle)
    c, s = math.cos(theta), math.sin(theta)
    if bg.style == "plain":
        field = np.full((size, size), bg.level, dtype=np.float32)
    elif bg.style == "gradient":
        t = (x * c + y * s) / (0.5 * (abs(c) + abs(s)))  # -1 .. 1 from corner to corner along the angle
        field = bg.level + 0.5 * bg.contrast * t
    elif bg.style == "noise":
        cells = max(2, int(round(bg.frequency)))
        grid = np.random.default_rng(bg.seed).standard_normal((cells + 1, cells + 1)).astype(np.float32)
        grid = np.clip(grid, -2.0, 2.0) * 0.5  # -1 .. 1
        smooth = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
        field = bg.level + bg.contrast * np.asarray(smooth, dtype=np.float32)
    elif bg.style == "stripes":
        field = bg.level + bg.contrast * np.sin(2.0 * math.pi * bg.frequency * (x * c + y * s))
    else:  # Background validates its style; this guards against a new style without a renderer
        raise ShapesError(f"no renderer for background style {bg.style!r}")
    field = np.broadcast_to(field, (size, size)).astype(np.float32)
    tint = np.asarray(bg.tint, dtype=np.float32)
    return np.clip(field[:, :, None] + tint, lo, hi)


def _polygon(cx: float, cy: float, radius: float, corners: int, start_deg: float) -> list[tuple[float, float]]:
    """Vertices of a regular polygon, screen coordinates (y down), first vertex at ``start_deg``."""
    return [
        (
            cx + radius * math.cos(math.radians(start_deg + 360.0 * i / corners)),
            cy + radius * math.sin(math.radians(start_deg + 360.0 * i / corners)),
        )
        for i in range(corners)
    ]


def _draw_objects(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied colour ``[size, size, 3]`` (0-255) and coverage ``[size, size, 1]`` (0-1) of all objects."""
    k = supersample_factor(size)
    big = size * k
    colour_layer = Image.new("RGB", (big, big), (0, 0, 0))
    cover_layer = Image.new("L", (big, big), 0)
    draw_c, draw_m = ImageDraw.Draw(colour_layer), ImageDraw.Draw(cover_layer)
    for obj in scene.objects:
        cx, cy, r = obj.x * big, obj.y * big, obj.radius * big
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            box = [cx - r, cy - r, cx + r, cy + r]
            draw_c.ellipse(box, fill=fill)
            draw_m.ellipse(box, fill=255)
        else:
            # rotation is counter-clockwise on screen, i.e. towards negative screen angles
            corners, start = (4, 45.0) if obj.shape == "square" else (3, -90.0)
            pts = _polygon(cx, cy, r, corners, start - obj.rotation)
            draw_c.polygon(pts, fill=fill)
            draw_m.polygon(pts, fill=255)
    colour = np.asarray(colour_layer.reduce(k), dtype=np.float32)
    cover = np.asarray(cover_layer.reduce(k), dtype=np.float32)[:, :, None] / 255.0
    return colour, cover


def render_array(scene: Scene, size: int = 64) -> np.ndarray:
    """Render ``scene`` as a uint8 ``[size, size, 3]`` RGB array."""
    if not isinstance(size, int) or size < MIN_SIZE:
        raise ShapesError(f"render size must be an integer of at least {MIN_SIZE} px, got {size!r}")
    bg = render_background(scene.background, size)
    colour, cover = _draw_objects(scene, size)
    out = bg * (1.0 - cover) + colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render ``scene`` as a ``size`` x ``size`` RGB PIL image."""
    return Image.fromarray(render_array(scene, size))
