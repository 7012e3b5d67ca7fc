"""The ShapesWorld verifier: an image -> detected objects (colour, shape, box) -> pass or fail for a prompt.

A program, not a model (the issue's "GenEval without a detector"):

1. *Working size.* Images larger than ``work_size`` are box-downscaled (an integer factor), which also averages
   away noise. If the estimated pixel noise (median absolute Laplacian of the grey image) is above
   ``noise_threshold``, a 3 x 3 median filter is applied first.
2. *Colour segmentation.* Each pixel is background, white, black, or one of six hue bins. Backgrounds are grey
   (chroma <= 10, values 95-165), so a pixel is chromatic when its chroma (max - min channel) is at least
   ``chroma_min``, white when its smallest channel is at least ``white_min``, black when its largest is at most
   ``black_max``. Blending with a grey background (anti-aliasing, blur, JPEG chroma subsampling) scales chroma but
   keeps hue, so hue bins stay right up to an object's edge.
3. *Connected components* (8-connected) of the non-background pixels, by label propagation with pointer
   jumping in numpy; a component whose second colour holds a large share is split by colour. Components smaller
   than ``min_area_frac`` or larger than ``max_area_frac`` of the image are dropped.
4. *Shape from complex moments.* With ``z`` the pixel offset from the component's centroid as a complex number,
   ``t_k = |sum z^k| / sum |z|^k`` is rotation invariant and vanishes for shapes without k-fold symmetry: an
   equilateral triangle has ``t3 = 0.66, t4 = 0``, a square ``t3 = 0, t4 = 0.43``, a disc both 0. Sums over all
   pixels make this far steadier at 10 px than corner or perimeter counts.
5. *Check* the detections against the parsed prompt with :func:`.prompts.check`, the same rule that labels the
   ground-truth scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from .prompts import CATEGORIES, PromptSpec, check, parse_prompt
from .scene import COLOURS, ShapesError

# class index of each pixel: 0 background, then these colours
CLASS_NAMES: tuple[str, ...] = ("background", "red", "orange", "yellow", "green", "blue", "purple", "white", "black")
_HUE_CLASSES = np.array([1, 2, 3, 4, 5, 6, 1], dtype=np.uint8)  # bins between the hue edges, red wraps around


@dataclass(frozen=True)
class VerifierConfig:
    """Thresholds of the verifier; values are 0-255 channel units unless said otherwise."""

    work_size: int = 256  # images with a longer side are box-downscaled by an integer factor to at most this
    min_work_size: int = 64  # images with a shorter side are upsampled (bicubic, integer factor) to at least this
    noise_threshold: float = 2.5  # estimated noise std (0-255) above which a 3x3 median filter runs first
    chroma_min: float = 60.0  # max - min channel at or above which a pixel is chromatic
    white_min: float = 200.0  # smallest channel at or above which a non-chromatic pixel is white
    black_max: float = 55.0  # largest channel at or below which a pixel is black
    # hue bin edges in degrees: red | orange | yellow | green | blue | purple | red
    hue_edges: tuple[float, ...] = (14.0, 43.0, 90.0, 180.0, 252.0, 322.0)
    min_area_frac: float = 0.0015  # components below this fraction of the image area are noise
    min_area_px: int = 6  # and below this many pixels
    max_area_frac: float = 0.4  # components above this fraction are background (e.g. a coloured backdrop), not objects
    split_share: float = 0.2  # a component whose second colour holds this share of its pixels is split by colour
    edge_pad: int = 2  # px around a component's box searched for its faint edge when measuring its shape
    coverage_level: float = 0.5  # fraction of the object's contrast at which its outline is taken for the shape
    # measured on 600 scenes per size (half-coverage outlines): clean circles reach t3 0.10 and t4 0.16 at 32 px,
    # clean triangles have t3 >= 0.50 and squares t4 >= 0.20; a 1.5 px blur at 64 px lowers those to 0.39 and 0.15
    triangle_t3: float = 0.25  # t3 at or above which (and at or above t4) a component is a triangle
    square_t4: float = 0.17  # t4 at or above which a component is a square
    # strict checks: an image passes only if it is a clean scene (see ``scene_issue``); thresholds measured in
    # benchmarks/bench_shapes.py (mode ``strict``) on clean and corrupted renders and on ``corrupt.garbage``
    strict: bool = True  # False: the prompt rule alone, as before the strict checks
    max_noise: float = 45.0  # per-channel pixel noise std (0-255) above which the frame is noise, not a scene
    speckle_delta: float = 100.0  # a pixel this far (any channel) from its 3x3 median is a speck
    max_speckle: float = 0.03  # share of the frame in specks above which the scene is speckled
    background_band: tuple[float, float] = (70.0, 190.0)  # grey levels a background pixel may take (noise included)
    background_chroma: float = 40.0  # chroma above which an unlabelled pixel is not background
    max_unexplained: float = 0.05  # share of the frame that may be neither background nor part of an object
    min_object_frac: float = 0.005  # smaller components are specks (counted as unexplained), not objects
    min_fit: float = 0.75  # IoU of an object's outline with its shape's ideal outline at or above which it is a shape
    min_solidity: float = 0.8  # area over convex-hull area at or above which an outline is solid
    max_blur: float = 2.7  # edge blur (Gaussian sigma in px of a 64 px image) above which an object is a smear


@dataclass(frozen=True)
class Detection:
    """One detected object. ``box``: (x0, y0, x1, y1) pixels of the input image, x1/y1 exclusive; ``x``, ``y``:
    centroid as fractions of width and height; ``area``: pixels at working size; ``t3``/``t4``: shape moments."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]
    x: float
    y: float
    area: int
    t3: float
    t4: float


@dataclass(frozen=True)
class Verdict:
    """Result of verifying one image against one prompt. ``clean``: the image is a clean ShapesWorld scene (when
    not, ``passed`` is False and ``reason`` starts with ``"not a clean scene: "``)."""

    passed: bool
    reason: str
    category: str
    detections: tuple[Detection, ...] = field(default_factory=tuple)
    clean: bool = True


NOT_CLEAN = "not a clean scene: "  # the prefix of every reason given for an unclean image


def reason_sentence(reason: str) -> str:
    """A verdict's reason ("the image shows one square instead of three") as a sentence, as the rendered pairs
    write theirs (chain-of-thought targets)."""
    return reason[:1].upper() + reason[1:].rstrip(".") + "."


def _as_array(image) -> np.ndarray:
    """PIL image, path, or ``[H, W, 3]`` uint8 / float-in-[0, 1] array -> uint8 ``[H, W, 3]``."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ShapesError(f"image array must be [H, W, 3], got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.clip(np.asarray(arr, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return arr[:, :, :3]
    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as im:
                image = im.convert("RGB")
        except FileNotFoundError as err:
            raise ShapesError(f"image not found: {image}") from err
        except OSError as err:
            raise ShapesError(f"cannot read image {image}: {err}") from err
    return np.asarray(image.convert("RGB"))


def _noise_sigma(grey: np.ndarray) -> float:
    """Robust estimate of white-noise std from the 4-neighbour Laplacian (its std is sqrt(20) sigma).

    Near 0 on clean renders, including gradients and smooth textures, whose Laplacian is small.
    """
    lap = 4.0 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(np.median(np.abs(lap))) * 1.4826 / math.sqrt(20.0)


def classify_pixels(rgb: np.ndarray, config: VerifierConfig) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> ``[H, W]`` uint8 class index into ``CLASS_NAMES`` (0 = background)."""
    img = rgb.astype(np.float32)
    r, g, b = img[:, :, 0], img[:, :, 1], img[:, :, 2]
    mx, mn = img.max(axis=2), img.min(axis=2)
    chroma = mx - mn
    cls = np.zeros(mx.shape, dtype=np.uint8)
    cls[mn >= config.white_min] = 7
    cls[mx <= config.black_max] = 8
    chromatic = chroma >= config.chroma_min
    if chromatic.any():
        rc, gc, bc, mc, cc = r[chromatic], g[chromatic], b[chromatic], mx[chromatic], chroma[chromatic]
        hue = (
            np.where(
                mc == rc,
                np.mod((gc - bc) / cc, 6.0),
                np.where(mc == gc, (bc - rc) / cc + 2.0, (rc - gc) / cc + 4.0),
            )
            * 60.0
        )
        cls[chromatic] = _HUE_CLASSES[np.searchsorted(np.asarray(config.hue_edges), hue, side="right")]
    return cls


def label_components(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of equal non-zero class. ``[H, W]`` -> (labels ``[H, W]`` int, 0 = none; count).

    Label propagation (each pixel takes the smallest label among equal-class neighbours) with pointer jumping
    (label <- label of the pixel it names), all in numpy; it converges in a few dozen sweeps on blobs.
    """
    H, W = classes.shape
    n = H * W
    fg = classes > 0
    if not fg.any():
        return np.zeros((H, W), dtype=np.int32), 0
    sentinel = np.int64(n)
    lab = np.where(fg, np.arange(n, dtype=np.int64).reshape(H, W), sentinel)
    # (destination slice, source slice, link mask) for each of the 8 neighbour directions
    links = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = (slice(0, H - dy), slice(max(0, -dx), W - max(0, dx)))  # pixel
        b = (slice(dy, H), slice(max(0, dx), W - max(0, -dx)))  # its neighbour
        same = fg[a] & (classes[a] == classes[b])
        if same.any():
            links.append((a, b, same))
    while True:
        new = lab.copy()
        for a, b, same in links:
            np.minimum(new[a], np.where(same, lab[b], sentinel), out=new[a])
            np.minimum(new[b], np.where(same, lab[a], sentinel), out=new[b])
        flat = np.append(new.ravel(), sentinel)
        new = flat[new]  # pointer jumping: take the label of the pixel that the label names
        new = flat[new]
        if np.array_equal(new, lab):
            break
        lab = new
    roots, compact = np.unique(lab[fg], return_inverse=True)
    out = np.zeros((H, W), dtype=np.int32)
    out[fg] = compact.astype(np.int32) + 1
    return out, len(roots)


def _shape_of(t3: float, t4: float, config: VerifierConfig) -> str:
    if t3 >= config.triangle_t3 and t3 >= t4:
        return "triangle"
    if t4 >= config.square_t4:
        return "square"
    return "circle"


def _measure(labels: np.ndarray, count: int, classes: np.ndarray, config: VerifierConfig) -> list[dict]:
    """Per-component area, box, centroid, majority colour and second colour's pixel count (vectorised)."""
    H, W = labels.shape
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs] - 1
    area = np.bincount(ids, minlength=count)
    cx = np.bincount(ids, xs, minlength=count) / np.maximum(area, 1)
    cy = np.bincount(ids, ys, minlength=count) / np.maximum(area, 1)
    n_cls = len(CLASS_NAMES)
    hist = np.bincount(ids * n_cls + classes[ys, xs], minlength=count * n_cls).reshape(count, n_cls)
    order = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(area)[:-1]])
    x0 = np.minimum.reduceat(xs[order], starts)
    x1 = np.maximum.reduceat(xs[order], starts) + 1
    y0 = np.minimum.reduceat(ys[order], starts)
    y1 = np.maximum.reduceat(ys[order], starts) + 1
    min_area = max(config.min_area_px, config.min_area_frac * H * W)
    comps = []
    for i in np.nonzero((area >= min_area) & (area <= config.max_area_frac * H * W))[0]:
        shares = np.sort(hist[i, 1:])[::-1]
        comps.append(
            {
                "id": int(i) + 1,
                "area": int(area[i]),
                "cx": float(cx[i]),
                "cy": float(cy[i]),
                "box": (int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])),
                "colour": CLASS_NAMES[int(np.argmax(hist[i, 1:])) + 1],
                "second": float(shares[1]),
            }
        )
    return comps


def _moments(mask: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> tuple[float, float]:
    """Rotation-invariant ``(t3, t4)`` of a binary mask: ``|sum z^k| / sum |z|^k`` about its centroid."""
    ys, xs = yy[mask], xx[mask]
    z = (xs - xs.mean()) + 1j * (ys - ys.mean())
    mag = np.abs(z)
    z2 = z * z
    t3 = abs((z2 * z).sum()) / max(float((mag**3).sum()), 1e-9)
    t4 = abs((z2 * z2).sum()) / max(float((mag**4).sum()), 1e-9)
    return float(t3), float(t4)


def _outline(img: np.ndarray, labels: np.ndarray, comp: dict, config: VerifierConfig):
    """Half-coverage outline of one component in its padded box: ``(mask, yy, xx, coverage)``.

    The segmentation thresholds cut a blurred object at different fractions of its contrast per colour (a third
    for a saturated red, two thirds for white). Here the local background is the median of unlabelled pixels
    around the box, each pixel's coverage is its contrast along the object's colour direction over the object's
    90th-percentile contrast, and the mask is coverage >= ``coverage_level``. With JPEG's blurred chroma this
    roughly halves shape errors at 64 px (quality 30: 36 vs 67 of 557 objects). ``coverage`` is that map over
    unlabelled and own pixels (NaN elsewhere), scaled down by how far the object's contrast falls short of its
    palette colour's; None, and the mask the component itself, when there is too little background to measure.
    """
    H, W = labels.shape
    x0, y0, x1, y1 = comp["box"]
    pad = config.edge_pad
    X0, Y0, X1, Y1 = max(0, x0 - pad - 2), max(0, y0 - pad - 2), min(W, x1 + pad + 2), min(H, y1 + pad + 2)
    lab = labels[Y0:Y1, X0:X1]
    sub = img[Y0:Y1, X0:X1]  # [h, w, 3] float
    yy, xx = np.mgrid[Y0:Y1, X0:X1]
    own, free = lab == comp["id"], lab == 0
    if free.sum() >= 8:
        bg = np.median(sub[free], axis=0)
        diff = sub - bg
        direction = np.median(diff[own], axis=0)
        norm = float(np.linalg.norm(direction))
        if norm > 1e-6:
            proj = diff @ (direction / norm)
            peak = float(np.percentile(proj[own], 90))
            near = (xx >= x0 - pad) & (xx < x1 + pad) & (yy >= y0 - pad) & (yy < y1 + pad)
            mask = (own | (free & near)) & (proj >= config.coverage_level * peak)
            if mask.sum() >= max(config.min_area_px, 0.5 * comp["area"]) and peak > 0:
                # the palette colour's own contrast here: a faded object (smeared or blurred into a blob) is far
                # below it, so its coverage slope counts for less
                full = float((np.asarray(COLOURS.get(comp["colour"], bg), np.float32) - bg) @ (direction / norm))
                fade = min(1.0, peak / full) if full > 1e-6 else 1.0
                return mask, yy, xx, np.where(own | free, proj / peak, np.nan) * fade
    return own, yy, xx, None


def _shape_moments(img: np.ndarray, labels: np.ndarray, comp: dict, config: VerifierConfig) -> tuple[float, float]:
    """Shape moments of one component, measured on its half-coverage outline (:func:`_outline`)."""
    mask, yy, xx, _ = _outline(img, labels, comp, config)
    return _moments(mask, yy, xx)


def _ideal(mask: np.ndarray, yy: np.ndarray, xx: np.ndarray, shape: str) -> np.ndarray:
    """The ideal ``shape`` with the mask's area, centroid and orientation, rasterised at the same pixel centres.

    Orientation from the complex moments: a square's corners make ``sum z^4`` point at ``4 phi + 180`` degrees for
    a square turned by ``phi``; a triangle's corners make ``sum z^3`` point at three times a corner's direction.
    """
    area = float(mask.sum())
    ys, xs = yy[mask], xx[mask]
    z = (xx - xs.mean()) + 1j * (yy - ys.mean())
    zm = z[mask]
    if shape == "circle":
        return np.abs(z) <= math.sqrt(area / math.pi)
    if shape == "square":
        phi = (np.angle((zm**4).sum()) - math.pi) / 4.0
        w = z * np.exp(-1j * phi)
        return np.maximum(np.abs(w.real), np.abs(w.imag)) <= 0.5 * math.sqrt(area)
    corner = np.angle((zm**3).sum()) / 3.0
    inradius = math.sqrt(4.0 * area / math.sqrt(3.0)) / (2.0 * math.sqrt(3.0))
    inside = np.ones(z.shape, dtype=bool)
    for k in range(3):  # the edge opposite a corner faces away from it: normals at corner + 60 + 120 k degrees
        normal = corner + math.pi / 3.0 + 2.0 * math.pi * k / 3.0
        inside &= (z * np.exp(-1j * normal)).real <= inradius
    return inside


def _fit(mask: np.ndarray, yy: np.ndarray, xx: np.ndarray, shape: str) -> float:
    """Intersection over union of the outline with its ideal ``shape`` (1 = exactly that shape)."""
    ideal = _ideal(mask, yy, xx, shape)
    return float((mask & ideal).sum()) / max(float((mask | ideal).sum()), 1.0)


def _solidity(mask: np.ndarray) -> float:
    """Area over the area of the convex hull of the mask's pixels (as unit squares): 1 for a convex shape."""
    rows = np.nonzero(mask.any(axis=1))[0]
    first = mask[rows].argmax(axis=1)
    last = mask.shape[1] - mask[rows][:, ::-1].argmax(axis=1)
    pts = sorted({(x, y) for r, a, b in zip(rows, first, last) for x in (a, b) for y in (r, r + 1)})

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    hull: list = []
    for sweep in (pts, pts[::-1]):  # Andrew's monotone chain: lower then upper hull
        part: list = []
        for p in sweep:
            while len(part) >= 2 and cross(part[-2], part[-1], p) <= 0:
                part.pop()
            part.append(p)
        hull += part[:-1]
    xs, ys = np.array([p[0] for p in hull], float), np.array([p[1] for p in hull], float)
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))
    return float(mask.sum()) / max(area, 1.0)


def _edge_blur(mask: np.ndarray, coverage: np.ndarray | None) -> float:
    """Gaussian sigma (px) of the object's edge: a step blurred by sigma rises with slope ``1 / (sigma sqrt(2 pi))``
    at half coverage, so sigma is that over the median coverage slope on the outline's edge pixels (pixels at
    30-70 % coverage next to the half-coverage outline). 0 without a coverage map."""
    if coverage is None:
        return 0.0
    gy, gx = np.gradient(coverage)
    slope = np.hypot(gx, gy)
    inner = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    edge = (inner | ((coverage >= 0.3) & (coverage <= 0.7))) & np.isfinite(slope)
    if edge.sum() < 4:
        return 0.0
    return 1.0 / (math.sqrt(2.0 * math.pi) * max(float(np.median(slope[edge])), 1e-6))


def _channel_noise(rgb: np.ndarray) -> float:
    """Per-channel white-noise std (mean over channels) from the 4-neighbour Laplacian, as :func:`_noise_sigma`."""
    return sum(_noise_sigma(rgb[:, :, c].astype(np.float32)) for c in range(3)) / 3.0


def _speckle_share(rgb: np.ndarray, config: VerifierConfig) -> float:
    """Share of pixels that differ from their 3 x 3 median by more than ``speckle_delta`` in some channel."""
    med = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).filter(ImageFilter.MedianFilter(3)), dtype=np.int16)
    far = np.abs(rgb.astype(np.int16) - med).max(axis=2) > config.speckle_delta
    return float(far[1:-1, 1:-1].mean())


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pct(share: float) -> str:
    return f"{100.0 * share:.0f} %" if share >= 0.01 else f"{100.0 * share:.1f} %"


def scene_issue(
    rgb0: np.ndarray,
    rgb: np.ndarray,
    classes: np.ndarray,
    labels: np.ndarray,
    count: int,
    comps: list[dict],
    config: VerifierConfig,
) -> str | None:
    """Why an image is not a clean ShapesWorld scene (None when it is one). ``rgb0``: the input; ``rgb``, ``classes``,
    ``labels``: the working image, its pixel classes and components; ``comps``: the measured components (with
    ``t3``, ``t4`` and ``shape``).

    A clean scene has (1) pixel noise no stronger than the tolerated corruptions, (2) few isolated specks, (3) no
    region filling a large part of the frame, (4) objects whose outlines fit their shape, are solid, and have
    sharp enough edges, (5) every other pixel a background grey.
    """
    noise = _channel_noise(rgb0)
    if noise > config.max_noise:
        return f"the frame is noise (pixel noise std {noise:.0f}, more than {config.max_noise:.0f})"
    speckle = _speckle_share(rgb0, config) if min(rgb0.shape[:2]) >= 3 else 0.0
    if speckle > config.max_speckle:
        return f"{_pct(speckle)} of the frame is speckle"
    H, W = labels.shape
    frame = float(H * W)
    area = np.bincount(labels.ravel(), minlength=count + 1)
    if count and area[1:].max() > config.max_area_frac * frame:
        big = int(np.argmax(area[1:])) + 1
        colour = CLASS_NAMES[int(np.bincount(classes[labels == big]).argmax())]
        return f"{_article(colour)} {colour} region fills {_pct(area[big] / frame)} of the frame"
    img = rgb.astype(np.float32)
    explained = np.zeros((H, W), dtype=bool)
    pad = config.edge_pad + 2
    side = min(H, W)
    for c in comps:
        if c["area"] < config.min_object_frac * frame:
            continue
        mask, yy, xx, coverage = _outline(img, labels, c, config)
        where = f"{_article(c['colour'])} {c['colour']} blob at ({(c['cx'] + 0.5) / W:.2f}, {(c['cy'] + 0.5) / H:.2f})"
        fit = _fit(mask, yy, xx, c["shape"])
        if fit < config.min_fit:
            return f"{where} fits no shape (best fit to a {c['shape']} {fit:.2f}, needs {config.min_fit})"
        solidity = _solidity(mask)
        if solidity < config.min_solidity:
            return f"{where} is not solid (solidity {solidity:.2f}, needs {config.min_solidity})"
        blur = _edge_blur(mask, coverage) * 64.0 / side
        if blur > config.max_blur:
            return f"{where} is smeared (edge blur {blur:.1f} px at 64 px, at most {config.max_blur})"
        x0, y0, x1, y1 = c["box"]
        explained[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = True
    grey = img.mean(axis=2)
    chroma = img.max(axis=2) - img.min(axis=2)
    lo, hi = config.background_band
    odd = np.where(classes > 0, True, (grey < lo) | (grey > hi) | (chroma > config.background_chroma))
    # texture, not pixel noise: an odd pixel counts when two of its four neighbours are odd too
    odd[1:-1, 1:-1] &= (odd[:-2, 1:-1].astype(np.int8) + odd[2:, 1:-1] + odd[1:-1, :-2] + odd[1:-1, 2:]) >= 2
    unexplained = float((odd & ~explained).mean())
    if unexplained > config.max_unexplained:
        return f"{_pct(unexplained)} of the frame is unexplained texture"
    return None


def _analyse(image, config: VerifierConfig, strict: bool) -> tuple[list[Detection], str | None]:
    """Detections (left to right) and, when ``strict``, why the image is not a clean scene (None if it is)."""
    rgb0 = _as_array(image)
    H0, W0 = rgb0.shape[:2]
    if min(H0, W0) < 8:
        raise ShapesError(f"image too small to verify: {W0}x{H0} px")
    rgb = rgb0
    factor = max(1, math.ceil(max(H0, W0) / config.work_size))
    pil = None
    if factor > 1:
        pil = Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor)
        rgb = np.asarray(pil)
    grey = rgb.astype(np.float32).mean(axis=2)
    if _noise_sigma(grey) > config.noise_threshold:
        pil = pil or Image.fromarray(np.ascontiguousarray(rgb))
        pil = pil.filter(ImageFilter.MedianFilter(3))
        rgb = np.asarray(pil)
    up = math.ceil(config.min_work_size / min(rgb.shape[:2]))
    if up > 1:  # a finer grid halves the pixelation noise of the shape moments of 5-10 px objects
        pil = pil or Image.fromarray(np.ascontiguousarray(rgb))
        rgb = np.asarray(pil.resize((pil.width * up, pil.height * up), Image.Resampling.BICUBIC))
    H, W = rgb.shape[:2]
    classes = classify_pixels(rgb, config)
    labels, count = label_components((classes > 0).astype(np.uint8))
    comps = _measure(labels, count, classes, config) if count else []
    if any(c["second"] >= config.split_share * c["area"] and c["second"] >= config.min_area_px for c in comps):
        labels, count = label_components(classes)  # touching objects of different colours: split by colour
        comps = _measure(labels, count, classes, config)
    img = rgb.astype(np.float32)
    sx, sy = W0 / W, H0 / H
    dets = []
    for c in sorted(comps, key=lambda c: (c["cx"], c["cy"])):
        c["t3"], c["t4"] = _shape_moments(img, labels, c, config)
        c["shape"] = _shape_of(c["t3"], c["t4"], config)
        x0, y0, x1, y1 = c["box"]
        box = (int(x0 * sx), int(y0 * sy), min(W0, math.ceil(x1 * sx)), min(H0, math.ceil(y1 * sy)))
        dets.append(
            Detection(
                shape=c["shape"],
                colour=c["colour"],
                box=box,
                x=(c["cx"] + 0.5) / W,
                y=(c["cy"] + 0.5) / H,
                area=c["area"],
                t3=c["t3"],
                t4=c["t4"],
            )
        )
    if not strict:
        return dets, None
    dets = [d for d in dets if d.area >= config.min_object_frac * H * W]  # specks are not objects
    return dets, scene_issue(rgb0, rgb, classes, labels, count, comps, config)


def detect(image, config: VerifierConfig | None = None) -> list[Detection]:
    """Find the objects in an image (PIL, path, or ``[H, W, 3]`` array): colour, shape, box, centre.

    Objects are reported left to right. Works at any size; images above ``config.work_size`` are downscaled.
    No cleanliness check: :func:`verify` (or :func:`inspect_scene`) says whether the image is a clean scene.
    """
    return _analyse(image, config or VerifierConfig(), strict=False)[0]


def inspect_scene(image, config: VerifierConfig | None = None) -> tuple[list[Detection], str | None]:
    """Detections and why the image is not a clean ShapesWorld scene (``None`` when it is one)."""
    return _analyse(image, config or VerifierConfig(), strict=True)


def verify(image, prompt: str | PromptSpec, config: VerifierConfig | None = None) -> Verdict:
    """Check one image against one prompt: parse the prompt, detect objects, check that the image is a clean scene
    (unless ``config.strict`` is False), then apply the category's rule."""
    config = config or VerifierConfig()
    spec = prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)
    dets, issue = _analyse(image, config, strict=config.strict)
    if issue is not None:
        return Verdict(False, NOT_CLEAN + issue, spec.category, tuple(dets), clean=False)
    passed, reason = check(spec, dets)
    return Verdict(passed=passed, reason=reason, category=spec.category, detections=tuple(dets))


@dataclass
class Scoreboard:
    """GenEval-style tally: per-category accuracy and their mean as the overall score."""

    correct: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    def add(self, category: str, passed: bool) -> None:
        """Count one verdict."""
        self.total[category] = self.total.get(category, 0) + 1
        self.correct[category] = self.correct.get(category, 0) + int(bool(passed))

    def accuracy(self, category: str) -> float | None:
        """Fraction passed in ``category`` (None when it has no items)."""
        n = self.total.get(category, 0)
        return self.correct.get(category, 0) / n if n else None

    @property
    def overall(self) -> float | None:
        """Mean of the per-category accuracies over categories with items (GenEval's overall score)."""
        accs = [a for a in (self.accuracy(c) for c in self.total) if a is not None]
        return sum(accs) / len(accs) if accs else None

    @property
    def n(self) -> int:
        """Number of items counted."""
        return sum(self.total.values())

    def to_dict(self) -> dict:
        """``{"overall": ..., "n": ..., "categories": {name: {"n", "correct", "accuracy"}}}``."""
        return {
            "overall": self.overall,
            "n": self.n,
            "categories": {
                c: {"n": self.total[c], "correct": self.correct[c], "accuracy": self.accuracy(c)}
                for c in self.total
                if self.total[c]
            },
        }

    def table(self) -> str:
        """A plain-text table, one row per category and an overall row."""
        rows = [f"{'category':<14} {'n':>6} {'correct':>8} {'accuracy':>9}"]
        for c in self.total:
            if self.total[c]:
                rows.append(f"{c:<14} {self.total[c]:>6} {self.correct[c]:>8} {self.accuracy(c):>9.2%}")
        overall = self.overall
        rows.append(
            f"{'overall':<14} {self.n:>6} {sum(self.correct.values()):>8} "
            + (f"{overall:>9.2%}" if overall is not None else f"{'-':>9}")
        )
        return "\n".join(rows)
