"""Preference pairs: (prompt, chosen, rejected, reason) with hard and easy negatives.

The chosen scene satisfies the prompt. A *hard* negative changes exactly one attribute of it, keeping the
background and every other object:

- ``hard-count``: one object of the prompt's kind too many or too few (a missing object for ``single_object``
  and ``two_object``);
- ``hard-colour``: a named object takes another colour, or (``color_attr``) the two named colours swap places,
  the attribute-binding error;
- ``hard-shape``: a named object takes another shape, keeping its colour, place and size;
- ``hard-relation``: the objects are mirrored across the image's vertical (left/right) or horizontal
  (above/below) midline, which reverses the relation and keeps everything else.

An ``easy`` negative is a random scene of another prompt that fails this one. The reason is a sentence about the
rejected image that names the mismatch, usable as chain-of-thought ground truth for a reasoning reward model.
Every rejected scene is checked to fail the prompt and to stay in its split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .prompts import CATEGORIES, OPPOSITE, PromptSpec, check, dominant_relation
from .sample import (
    Example,
    LayoutConfig,
    allowed_colours,
    example_rng,
    iter_examples,
    make_object,
    place_objects,
    sample_example,
    scene_in_split,
)
from .scene import COLOUR_NAMES, SHAPES, Scene, ShapeObject, ShapesError, describe_objects, noun_phrase

NEGATIVES: tuple[str, ...] = ("hard-count", "hard-colour", "hard-shape", "hard-relation", "easy")
HARD_NEGATIVES: dict[str, tuple[str, ...]] = {
    "single_object": ("hard-count", "hard-shape"),
    "two_object": ("hard-count", "hard-shape"),
    "counting": ("hard-count", "hard-shape"),
    "colors": ("hard-colour", "hard-shape"),
    "position": ("hard-relation", "hard-shape"),
    "color_attr": ("hard-colour", "hard-shape"),
}
EASY_SHARE = 0.2  # fraction of pairs whose rejected image is a random scene
_PAIR_STREAM = 7  # rng stream of the negative, separate from the chosen example's


@dataclass(frozen=True)
class Pair:
    """A preference pair: the chosen example, the rejected scene, the negative's kind, and the reason."""

    chosen: Example
    rejected: Scene
    negative: str
    reason: str

    @property
    def prompt(self) -> str:
        """The prompt text."""
        return self.chosen.prompt


def _ask(spec: PromptSpec) -> str:
    return spec.text.removeprefix("a photo of ")


def _named_indices(spec: PromptSpec, scene: Scene) -> list[list[int]]:
    """Per prompt phrase, the indices of scene objects that match it."""
    return [[i for i, o in enumerate(scene.objects) if req.matches(o)] for req in spec.objects]


def _replace(scene: Scene, index: int, **changes) -> Scene:
    """``scene`` with object ``index`` changed (a new shape keeps the rotation; circles have none)."""
    objs = list(scene.objects)
    o = objs[index]
    fields = {"shape": o.shape, "colour": o.colour, "x": o.x, "y": o.y, "size": o.size, "rotation": o.rotation}
    fields.update(changes)
    if fields["shape"] == "circle":
        fields["rotation"] = 0.0
    objs[index] = ShapeObject(**fields)
    return scene.with_objects(objs)


def _valid(ex: Example, rejected: Scene) -> bool:
    """A rejected scene must fail the prompt and keep the split: in-domain rules for ``id``, the held-out
    background for ``ood`` (a colour change may remove the held-out combination from an ``ood`` negative)."""
    if check(ex.spec, rejected.objects)[0]:
        return False
    if ex.split == "id":
        return scene_in_split(rejected, "id")
    return rejected.background.style == ex.scene.background.style


Made = tuple[Scene, str] | None


def _hard_count(ex: Example, rng: np.random.Generator, config: LayoutConfig) -> Made:
    spec, scene = ex.spec, ex.scene
    named = _named_indices(spec, scene)
    if spec.category != "counting":  # single_object / two_object: one named object is missing
        k = int(rng.integers(len(spec.objects)))
        drop = set(named[k])
        new = scene.with_objects(o for i, o in enumerate(scene.objects) if i not in drop)
        shown = describe_objects(new.objects)
        return new, f"The image has no {spec.objects[k].noun}, but the prompt asks for {_ask(spec)}; it shows {shown}."
    req, have = spec.objects[0], named[0]
    for target in rng.permutation([m for m in (req.count - 1, req.count + 1) if 0 <= m <= 5]).tolist():
        if target < len(have):
            drop = set(rng.choice(have, size=len(have) - target, replace=False).tolist())
            new = scene.with_objects(o for i, o in enumerate(scene.objects) if i not in drop)
        else:  # one more of the counted kind, as large as the others (no shrinking: it must stay visible)
            placed = [(o.x, o.y, o.radius) for o in scene.objects]
            size = float(np.mean([scene.objects[i].size for i in have])) if have else 0.2
            try:
                (pos,) = place_objects([req.shape], rng, config, placed=placed, sizes=[size], rounds=1)
            except ValueError:
                continue
            colour = req.colour or str(rng.choice(allowed_colours(req.shape, ex.split)))
            new = scene.with_objects([*scene.objects, make_object(req.shape, colour, pos, rng)])
        shown = noun_phrase(req.shape, target, req.colour, "one")
        return new, f"The image shows {shown}, but the prompt asks for {req.phrase('one')}."
    return None


def _hard_shape(ex: Example, rng: np.random.Generator, config: LayoutConfig) -> Made:
    spec, scene = ex.spec, ex.scene
    prompt_shapes = {r.shape for r in spec.objects}
    candidates = []  # (object index, new shape)
    for idxs in _named_indices(spec, scene):
        for i in idxs:
            for shape in SHAPES:
                # with two phrases, a shape the prompt names could satisfy the other phrase
                if shape != scene.objects[i].shape and (len(spec.objects) == 1 or shape not in prompt_shapes):
                    candidates.append((i, shape))
    for j in rng.permutation(len(candidates)).tolist():
        i, shape = candidates[j]
        new = _replace(scene, i, shape=shape)
        if _valid(ex, new):
            o = scene.objects[i]
            now, was = noun_phrase(shape, 1, o.colour), noun_phrase(o.shape, 1, o.colour)
            return new, f"The image shows {now} instead of {was}; the prompt asks for {_ask(spec)}."
    return None


def _hard_colour(ex: Example, rng: np.random.Generator, config: LayoutConfig) -> Made:
    spec, scene = ex.spec, ex.scene
    named = _named_indices(spec, scene)
    if spec.category == "color_attr" and rng.random() < 0.5:  # attribute binding: the two colours swap
        i, j = named[0][0], named[1][0]
        a, b = scene.objects[i], scene.objects[j]
        new = _replace(_replace(scene, i, colour=b.colour), j, colour=a.colour)
        if _valid(ex, new):
            return new, (
                f"The colours are swapped: the {a.shape} is {b.colour} and the {b.shape} is {a.colour}, "
                f"but the prompt asks for {_ask(spec)}."
            )
    for k in rng.permutation(len(spec.objects)).tolist():
        i = named[k][0]
        o = scene.objects[i]
        named_colours = {r.colour for r in spec.objects}
        for colour in rng.permutation([c for c in COLOUR_NAMES if c not in named_colours]).tolist():
            new = _replace(scene, i, colour=colour)
            if _valid(ex, new):
                return new, f"The {o.shape} is {colour}, but the prompt asks for {_ask(spec)}."
    return None


def _mirror(o: ShapeObject, horizontal: bool) -> ShapeObject:
    """The object mirrored across the vertical (``horizontal=True``) or horizontal midline of the image."""
    if horizontal:
        return ShapeObject(o.shape, o.colour, round(1.0 - o.x, 4), o.y, o.size, round((-o.rotation) % 360.0, 2))
    return ShapeObject(o.shape, o.colour, o.x, round(1.0 - o.y, 4), o.size, round((180.0 - o.rotation) % 360.0, 2))


def _hard_relation(ex: Example, rng: np.random.Generator, config: LayoutConfig) -> Made:
    spec, scene = ex.spec, ex.scene
    new = scene.with_objects(_mirror(o, spec.relation in ("left of", "right of")) for o in scene.objects)
    (i, *_), (j, *_) = _named_indices(spec, new)
    ra, rb = spec.objects
    actual = dominant_relation(new.objects[i], new.objects[j])
    if actual != OPPOSITE[spec.relation]:  # pragma: no cover - the sampler's jitter keeps the axis dominant
        return None
    return new, (
        f"The {ra.noun} is {actual} the {rb.noun}, but the prompt asks for the {ra.noun} {spec.relation} the {rb.noun}."
    )


def _easy(ex: Example, rng: np.random.Generator, config: LayoutConfig) -> Made:
    for _ in range(50):
        category = str(rng.choice([c for c in CATEGORIES if c != ex.category]))
        other = sample_example(category, rng, ex.split, config)
        if not check(ex.spec, other.scene.objects)[0]:
            shown = describe_objects(other.scene.objects)
            return other.scene, f"The image shows {shown}, which does not match the prompt: {_ask(ex.spec)}."
    return None  # pragma: no cover


_MAKERS = {
    "hard-count": _hard_count,
    "hard-shape": _hard_shape,
    "hard-colour": _hard_colour,
    "hard-relation": _hard_relation,
    "easy": _easy,
}


def make_pair(
    ex: Example, rng: np.random.Generator, negative: str | None = None, config: LayoutConfig | None = None
) -> Pair:
    """A preference pair for example ``ex``.

    ``negative`` picks the rejected image's kind; by default ``easy`` with probability ``EASY_SHARE``, otherwise
    one of the category's hard kinds at random. A kind that cannot apply to the category (or to this scene)
    falls back to the category's other kinds, then ``easy``.
    """
    config = config or LayoutConfig()
    hard = HARD_NEGATIVES[ex.category]
    if negative is None:
        negative = "easy" if rng.random() < EASY_SHARE else str(rng.choice(hard))
    if negative not in NEGATIVES:
        raise ShapesError(f"unknown negative kind {negative!r}; known: {', '.join(NEGATIVES)}")
    for kind in dict.fromkeys([negative, *hard, "easy"]):
        if kind != "easy" and kind not in hard:
            continue
        made = _MAKERS[kind](ex, rng, config)
        if made is not None and _valid(ex, made[0]):
            return Pair(chosen=ex, rejected=made[0], negative=kind, reason=made[1])
    raise RuntimeError(f"no negative for {ex.prompt!r}")  # pragma: no cover - easy always finds one


def iter_pairs(
    n: int,
    seed: int = 0,
    split: str = "id",
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    config: LayoutConfig | None = None,
    start: int = 0,
) -> Iterator[Pair]:
    """Pairs ``start .. start + n - 1``, made one at a time; pair ``i`` depends only on ``(seed, split, i)``.

    The chosen side of pair ``i`` is example ``i`` of :func:`.sample.sample_examples` with the same arguments.
    """
    for i, ex in enumerate(iter_examples(n, seed, split, categories, config, start), start):
        yield make_pair(ex, example_rng(seed, split, i, _PAIR_STREAM), config=config)


def sample_pairs(
    n: int,
    seed: int = 0,
    split: str = "id",
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    config: LayoutConfig | None = None,
    start: int = 0,
) -> list[Pair]:
    """``n`` pairs cycling through ``categories`` (see :func:`iter_pairs`)."""
    return list(iter_pairs(n, seed, split, categories, config, start))
