"""Seeded sampling of prompts and the scenes that satisfy them, balanced per category, in two splits.

``split="id"`` (in-domain): backgrounds ``plain``, ``gradient``, ``noise``; no object anywhere has a colour-shape
combination from ``HELD_OUT_COMBOS``. ``split="ood"`` (out-of-domain): the held-out ``stripes`` background, and
every scene shows at least one held-out combination on an object its prompt names (for ``colors`` and
``color_attr`` the prompt itself names it). So no in-domain image shares its background style or any of those
combinations with an out-of-domain image.

Example ``i`` of a run depends only on ``(seed, split, i)``: asking for more examples extends a data set without
changing the ones already made.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .prompts import CATEGORIES, RELATION_DIRECTION, RELATIONS, ObjectReq, PromptSpec, check
from .scene import (
    BACKGROUND_RANGE,
    BACKGROUND_STYLES,
    COLOUR_NAMES,
    HELD_OUT_BACKGROUND,
    HELD_OUT_COMBOS,
    SHAPE_SCALE,
    SHAPES,
    Background,
    Scene,
    ShapeObject,
    ShapesError,
)

SPLITS: tuple[str, ...] = ("id", "ood")
_SPLIT_CODE = {"id": 1, "ood": 2}


@dataclass(frozen=True)
class LayoutConfig:
    """How scenes are laid out (object sizes, gaps, margins, jitter); lengths are fractions of the image side."""

    size_by_count: tuple[tuple[float, float], ...] = ((0.22, 0.32), (0.22, 0.32), (0.19, 0.26), (0.17, 0.22))
    """object size range for scenes of 1-2, 3, and 4+ objects (index min(n, 4) - 1)"""
    gap: float = 0.05  # smallest distance between two objects' circumscribed circles
    margin: float = 0.03  # smallest distance between an object's circumscribed circle and the border
    relation_jitter: float = 25.0  # degrees a position scene's direction may deviate from the named axis
    distractor_prob: float = 0.3  # chance that a counting scene also holds one object of another shape
    tries: int = 200  # placement attempts before shrinking the objects by 10 %


@dataclass(frozen=True)
class Example:
    """A prompt and a scene that satisfies it."""

    spec: PromptSpec
    scene: Scene
    split: str

    @property
    def prompt(self) -> str:
        """The prompt text."""
        return self.spec.text

    @property
    def category(self) -> str:
        """The GenEval category."""
        return self.spec.category


def check_split(split: str) -> str:
    """Validate a split name."""
    if split not in SPLITS:
        raise ShapesError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def allowed_colours(shape: str, split: str) -> list[str]:
    """Colours a ``shape`` may take in in-domain scenes (all colours for out-of-domain)."""
    if split == "ood":
        return list(COLOUR_NAMES)
    return [c for c in COLOUR_NAMES if (c, shape) not in HELD_OUT_COMBOS]


def held_out_colours(shape: str) -> list[str]:
    """Colours held out for ``shape``."""
    return [c for c in COLOUR_NAMES if (c, shape) in HELD_OUT_COMBOS]


def scene_in_split(scene: Scene, split: str) -> bool:
    """True when ``scene`` obeys the split's rules (background style and colour-shape combinations)."""
    has_held_out = any(o.combo in HELD_OUT_COMBOS for o in scene.objects)
    if split == "id":
        return scene.background.style in BACKGROUND_STYLES and not has_held_out
    return scene.background.style == HELD_OUT_BACKGROUND and has_held_out


def example_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for example ``index`` of a run (independent of the run's length)."""
    return np.random.default_rng([int(seed), _SPLIT_CODE[check_split(split)], int(index), int(stream)])


def sample_background(rng: np.random.Generator, split: str) -> Background:
    """A random background of the split's styles, every pixel inside ``BACKGROUND_RANGE``."""
    style = HELD_OUT_BACKGROUND if split == "ood" else str(rng.choice(BACKGROUND_STYLES))
    lo, hi = BACKGROUND_RANGE
    contrast = {
        "plain": 0.0,
        "gradient": rng.uniform(20, 40),
        "noise": rng.uniform(8, 15),
        "stripes": rng.uniform(8, 12),
    }[style]
    half = contrast if style in ("noise", "stripes") else contrast / 2
    level = rng.uniform(lo + 10 + half, hi - 10 - half)
    return Background(
        style=style,
        level=round(float(level), 2),
        contrast=round(float(contrast), 2),
        angle=round(float(rng.uniform(0, 360)), 2),
        frequency=round(float(rng.uniform(2, 4) if style == "stripes" else rng.uniform(3, 6)), 2),
        tint=tuple(round(float(t), 2) for t in rng.uniform(-5, 5, size=3)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_prompt(category: str, rng: np.random.Generator, split: str = "id") -> PromptSpec:
    """A random prompt of ``category``; for ``ood``, ``colors`` and ``color_attr`` name a held-out combination."""
    if category not in CATEGORIES:
        raise ShapesError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    shapes = [str(s) for s in rng.permutation(SHAPES)]
    if category == "single_object":
        return PromptSpec(category, (ObjectReq(shapes[0]),))
    if category == "two_object":
        return PromptSpec(category, (ObjectReq(shapes[0]), ObjectReq(shapes[1])))
    if category == "counting":
        return PromptSpec(category, (ObjectReq(shapes[0], count=int(rng.integers(1, 5))),))
    if category == "position":
        relation = str(rng.choice(RELATIONS))
        return PromptSpec(category, (ObjectReq(shapes[0]), ObjectReq(shapes[1])), relation)
    first = held_out_colours(shapes[0]) if split == "ood" else allowed_colours(shapes[0], split)
    c1 = str(rng.choice(first))
    if category == "colors":
        return PromptSpec(category, (ObjectReq(shapes[0], c1),))
    c2 = str(rng.choice([c for c in allowed_colours(shapes[1], split) if c != c1]))
    reqs = [ObjectReq(shapes[0], c1), ObjectReq(shapes[1], c2)]
    if rng.random() < 0.5:
        reqs.reverse()
    return PromptSpec(category, tuple(reqs))


def object_sizes(n: int, rng: np.random.Generator, config: LayoutConfig) -> list[float]:
    """``n`` object sizes from the range for scenes of ``n`` objects."""
    lo, hi = config.size_by_count[min(max(n, 1), len(config.size_by_count)) - 1]
    return [float(rng.uniform(lo, hi)) for _ in range(n)]


def _radius(shape: str, size: float) -> float:
    return 0.5 * size * SHAPE_SCALE[shape]


def _fits(x: float, y: float, r: float, placed: list[tuple[float, float, float]], config: LayoutConfig) -> bool:
    lo = r + config.margin
    if not (lo <= x <= 1 - lo and lo <= y <= 1 - lo):
        return False
    return all(math.hypot(x - px, y - py) >= r + pr + config.gap for px, py, pr in placed)


def place_objects(
    shapes: list[str],
    rng: np.random.Generator,
    config: LayoutConfig,
    placed: list[tuple[float, float, float]] | None = None,
    sizes: list[float] | None = None,
    rounds: int = 30,
) -> list[tuple[float, float, float]]:
    """Centres and sizes ``(x, y, size)`` for ``shapes``, clear of each other and of ``placed`` (x, y, radius).

    Rejection sampling; after ``config.tries`` failures the sizes shrink by 10 % and it starts over, at most
    ``rounds`` times (then :class:`ShapesError`).
    """
    placed = list(placed or [])
    sizes = list(sizes) if sizes is not None else object_sizes(len(shapes) + len(placed), rng, config)[: len(shapes)]
    for _ in range(rounds):
        out: list[tuple[float, float, float]] = []
        taken = list(placed)
        for shape, size in zip(shapes, sizes):
            r = _radius(shape, size)
            lo = r + config.margin
            for _ in range(config.tries):
                x, y = rng.uniform(lo, 1 - lo, size=2)
                if _fits(x, y, r, taken, config):
                    out.append((float(x), float(y), size))
                    taken.append((float(x), float(y), r))
                    break
            else:
                break
        if len(out) == len(shapes):
            return out
        sizes = [s * 0.9 for s in sizes]
    raise ShapesError(f"cannot place {len(shapes)} more objects without overlap")


def place_related(
    shape_a: str, shape_b: str, relation: str, rng: np.random.Generator, config: LayoutConfig
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Positions ``(x, y, size)`` for A and B such that A is clearly ``relation`` B (within the jitter)."""
    size_a, size_b = object_sizes(2, rng, config)
    ux, uy = RELATION_DIRECTION[relation]
    base = math.atan2(uy, ux)
    for _ in range(30):
        ra, rb = _radius(shape_a, size_a), _radius(shape_b, size_b)
        for _ in range(config.tries):
            theta = base + math.radians(rng.uniform(-config.relation_jitter, config.relation_jitter))
            dist = rng.uniform(ra + rb + config.gap + 0.04, 0.9)
            lo = rb + config.margin
            bx, by = rng.uniform(lo, 1 - lo, size=2)
            ax, ay = bx + dist * math.cos(theta), by + dist * math.sin(theta)
            if _fits(ax, ay, ra, [(bx, by, rb)], config):
                return (float(ax), float(ay), size_a), (float(bx), float(by), size_b)
        size_a, size_b = size_a * 0.9, size_b * 0.9
    raise ShapesError(f"cannot place a {shape_a} {relation} a {shape_b}")  # pragma: no cover


def random_rotation(shape: str, rng: np.random.Generator) -> float:
    """A rotation in degrees over the shape's symmetry period (0 for circles)."""
    period = {"circle": 0.0, "square": 90.0, "triangle": 120.0}[shape]
    return round(float(rng.uniform(0, period)), 2) if period else 0.0


def make_object(shape: str, colour: str, pos: tuple[float, float, float], rng: np.random.Generator) -> ShapeObject:
    """A :class:`ShapeObject` at ``pos`` = (x, y, size) with a random rotation."""
    x, y, size = pos
    return ShapeObject(shape, colour, round(x, 4), round(y, 4), round(size, 4), random_rotation(shape, rng))


def scene_for(
    spec: PromptSpec, rng: np.random.Generator, split: str = "id", config: LayoutConfig | None = None
) -> Scene:
    """A random scene that satisfies ``spec`` and the split's rules."""
    config = config or LayoutConfig()
    check_split(split)
    # shapes and colours (None = free) of the objects the prompt names, then extras
    named: list[tuple[str, str | None]] = []
    for req in spec.objects:
        named += [(req.shape, req.colour)] * req.count
    extras: list[str] = []
    if spec.category == "counting" and rng.random() < config.distractor_prob:
        extras.append(str(rng.choice([s for s in SHAPES if s != spec.objects[0].shape])))
    colours = [c if c else str(rng.choice(allowed_colours(s, split))) for s, c in named]
    colours += [str(rng.choice(allowed_colours(s, split))) for s in extras]
    shapes = [s for s, _ in named] + extras
    if split == "id" and any((c, s) in HELD_OUT_COMBOS for s, c in named):
        raise ShapesError(f"prompt {spec.text!r} names a held-out colour-shape combination; use split='ood'")
    if split == "ood" and not any((c, s) in HELD_OUT_COMBOS for c, s in zip(colours[: len(named)], shapes)):
        free = [i for i, (_, c) in enumerate(named) if c is None]
        if not free:
            raise ShapesError(
                f"an out-of-domain scene needs a held-out combination, and {spec.text!r} fixes every colour"
            )
        i = int(rng.choice(free))
        colours[i] = str(rng.choice(held_out_colours(shapes[i])))
    if spec.category == "position":
        positions = list(place_related(shapes[0], shapes[1], spec.relation, rng, config))
    else:
        positions = place_objects(shapes, rng, config)
    objects = [make_object(s, c, p, rng) for s, c, p in zip(shapes, colours, positions)]
    order = rng.permutation(len(objects))  # the file order of objects says nothing about the prompt
    scene = Scene(objects=tuple(objects[i] for i in order), background=sample_background(rng, split))
    passed, reason = check(spec, scene.objects)
    if not passed:  # pragma: no cover - a sampler bug, not a user error
        raise RuntimeError(f"sampled scene does not satisfy {spec.text!r}: {reason}")
    return scene


def sample_example(
    category: str, rng: np.random.Generator, split: str = "id", config: LayoutConfig | None = None
) -> Example:
    """One random example (prompt and satisfying scene) of ``category``."""
    spec = sample_prompt(category, rng, split)
    return Example(spec=spec, scene=scene_for(spec, rng, split, config), split=split)


def iter_examples(
    n: int,
    seed: int = 0,
    split: str = "id",
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    config: LayoutConfig | None = None,
    start: int = 0,
) -> Iterator[Example]:
    """Examples ``start .. start + n - 1`` cycling through ``categories``, made one at a time."""
    check_split(split)
    categories = tuple(categories)
    if not categories:
        raise ShapesError("no categories given")
    for c in categories:
        if c not in CATEGORIES:
            raise ShapesError(f"unknown category {c!r}; known: {', '.join(CATEGORIES)}")
    for i in range(start, start + n):
        yield sample_example(categories[i % len(categories)], example_rng(seed, split, i), split, config)


def sample_examples(
    n: int,
    seed: int = 0,
    split: str = "id",
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    config: LayoutConfig | None = None,
    start: int = 0,
) -> list[Example]:
    """``n`` examples cycling through ``categories`` (balanced to within one per category), reproducible by seed.

    Example ``i`` depends only on ``(seed, split, i)``; ``start`` skips the first ones.
    """
    return list(iter_examples(n, seed, split, categories, config, start))
