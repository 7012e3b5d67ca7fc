"""ShapesWorld clips: shapes that move, grow, appear and disappear over T frames, prompts that name the motion, and a
verifier that tracks the objects from frame to frame (a verifiable video world for video reward models).

A :class:`ShapeClip` is a background and one :class:`Track` per object: its shape, colour and rotation, and for each
frame its centre, size and whether it is shown. Frame ``t`` is an ordinary :class:`~.scene.Scene` drawn by the image
renderer, so a clip renders at any size. Prompts come in three categories:

==========  ==================================================  =================================================
category    prompt                                              the clip passes when
==========  ==================================================  =================================================
motion      a red circle moves left                             the red circle's centre goes left, step by step
two_motion  a red circle moves up and a blue square grows       each named object makes its own motion
order       a red circle appears, then a blue square appears    both appear and stay, the red circle first
==========  ==================================================  =================================================

Motions: ``moves left|right|up|down``, ``grows``, ``shrinks``, ``appears``, ``disappears``. Every object of a clip
has a colour of its own, which is how the verifier tells the objects apart from frame to frame; a ``motion`` clip
may hold one still object besides the named one.

The verifier, :func:`.clip_verify.verify_clip`, finds the named objects in each frame and checks their tracks.

Preference pairs (:func:`make_clip_pair`, :func:`write_clip_dataset`): the chosen clip follows its prompt; the
rejected clip keeps the objects, colours, background and places and has another motion:

- ``reverse``: the chosen clip played backwards (right for left, shrinks for grows, disappears for appears). Its
  frames are the chosen clip's frames, so only their order tells the two apart.
- ``order`` (order prompts only): the two objects appear in the other order.
- ``static``: one frame of the chosen clip held for the whole clip.

On disk (:func:`write_clip_dataset`): ``info.json``, ``manifest.jsonl`` (``id``, ``prompt``, ``category``,
``video``, ``frames``, ``size``, ``clip``), with pairs ``pairs.jsonl`` (``id``, ``prompt``, ``category``,
``chosen``, ``rejected``, ``reason``, ``negative``, ``media`` = ``"video"``, ``frames``, ``size``,
``rejected_clip``), and ``clips/``: one folder of PNG frames per clip (``frame_00.png`` ...), or one lossless mp4 per
clip (``video_format="mp4"``, needs PyAV). Both are what :func:`rewarddance.video.load_video` and ``train-rm`` read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .render import MIN_SIZE, render_array
from .sample import allowed_colours, example_rng, random_rotation, sample_background
from .scene import COLOURS, SHAPE_SCALE, SHAPES, Background, Scene, ShapeObject, ShapesError

MOVES: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOTIONS: tuple[str, ...] = (*MOVES, "grows", "shrinks", "appears", "disappears")
_OPPOSITES = (("left", "right"), ("up", "down"), ("grows", "shrinks"), ("appears", "disappears"))
OPPOSITE_MOTION: dict[str, str] = {**dict(_OPPOSITES), **{b: a for a, b in _OPPOSITES}}
CLIP_CATEGORIES: tuple[str, ...] = ("motion", "two_motion", "order")
CLIP_NEGATIVES: tuple[str, ...] = ("reverse", "order", "static")
NEGATIVES_FOR: dict[str, tuple[str, ...]] = {
    "motion": ("reverse", "static"),
    "two_motion": ("reverse", "static"),
    "order": ("reverse", "order", "static"),
}
DEFAULT_FRAMES = 8
MIN_FRAMES = 6  # sampling: every appearance leaves at least two frames before it and two after
MAX_FRAMES = 32
CLIP_FORMAT = "shapesworld-clips"
VIDEO_FORMATS: tuple[str, ...] = ("png", "mp4")
_CLIP_STREAM, _PAIR_STREAM = 11, 12  # rng streams of clip examples and their negatives (images use 0 and 7)
_GERUND = {"grows": "growing", "shrinks": "shrinking", "appears": "appearing", "disappears": "disappearing"}


def motion_phrase(motion: str) -> str:
    """``"left"`` -> ``"moves left"``; ``"grows"`` -> ``"grows"``."""
    return f"moves {motion}" if motion in MOVES else motion


# ---------------------------------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Mover:
    """A named object of a clip prompt and its motion (one of :data:`MOTIONS`)."""

    shape: str
    colour: str
    motion: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ShapesError(f"unknown shape {self.shape!r}; known shapes: {', '.join(SHAPES)}")
        if self.colour not in COLOURS:
            raise ShapesError(f"unknown colour {self.colour!r}; known colours: {', '.join(COLOURS)}")
        if self.motion not in MOTIONS:
            raise ShapesError(f"unknown motion {self.motion!r}; known motions: {', '.join(MOTIONS)}")

    @property
    def noun(self) -> str:
        """``"red circle"``."""
        return f"{self.colour} {self.shape}"

    def phrase(self) -> str:
        """``"a red circle moves left"``."""
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.noun} {motion_phrase(self.motion)}"


@dataclass(frozen=True)
class ClipSpec:
    """A parsed clip prompt: its category (:data:`CLIP_CATEGORIES`) and named objects, in prompt order."""

    category: str
    movers: tuple[Mover, ...]

    def __post_init__(self) -> None:
        if self.category not in CLIP_CATEGORIES:
            raise ShapesError(f"unknown clip category {self.category!r}; known: {', '.join(CLIP_CATEGORIES)}")
        want = 1 if self.category == "motion" else 2
        if len(self.movers) != want:
            raise ShapesError(f"a {self.category} prompt names {want} object(s), got {len(self.movers)}")
        if len({m.colour for m in self.movers}) != len(self.movers):
            raise ShapesError("the objects of a clip prompt need colours of their own (the verifier tracks colours)")
        if self.category == "order" and any(m.motion != "appears" for m in self.movers):
            raise ShapesError("an order prompt is 'X appears, then Y appears'")

    @property
    def text(self) -> str:
        """The prompt text."""
        if self.category == "order":
            return f"{self.movers[0].phrase()}, then {self.movers[1].phrase()}"
        return " and ".join(m.phrase() for m in self.movers)


_PHRASE = re.compile(
    r"(?:an?|the|one)\s+(\w+)\s+(\w+)\s+(moves\s+(?:left|right|up|down)|grows|shrinks|appears|disappears)"
)


def _parse_mover(part: str, prompt: str) -> Mover:
    m = _PHRASE.fullmatch(part.strip())
    if m is None:
        raise ShapesError(
            f"cannot parse clip prompt {prompt!r}: {part.strip()!r} is not '<a> <colour> <shape> <motion>' "
            f"(motions: {', '.join(motion_phrase(x) for x in MOTIONS)})"
        )
    colour, shape, motion = m.group(1), m.group(2), m.group(3).removeprefix("moves ")
    if colour not in COLOURS or shape not in SHAPES:
        raise ShapesError(f"cannot parse clip prompt {prompt!r}: unknown colour or shape in {part.strip()!r}")
    return Mover(shape, colour, motion)


def parse_clip_prompt(prompt: str) -> ClipSpec:
    """``"a red circle moves left"`` -> :class:`ClipSpec`; :class:`ShapesError` names a prompt it cannot read."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ShapesError(f"clip prompt must be a non-empty string, got {prompt!r}")
    text = " ".join(prompt.strip().lower().rstrip(".").split())
    if ", then " in text:
        category, parts = "order", text.split(", then ")
    elif " and " in text:
        category, parts = "two_motion", text.split(" and ")
    else:
        category, parts = "motion", [text]
    return ClipSpec(category, tuple(_parse_mover(p, prompt) for p in parts))


# ---------------------------------------------------------------------------------------------------- clips
@dataclass(frozen=True)
class Track:
    """One object over the frames of a clip: per frame its centre (``xs``, ``ys``, fractions of the side), size (as
    :class:`~.scene.ShapeObject`'s) and whether it is ``shown``. A hidden frame keeps the place the object would
    have, so a reversed or reordered track stays well defined."""

    shape: str
    colour: str
    rotation: float
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    sizes: tuple[float, ...]
    shown: tuple[bool, ...]

    def object_at(self, t: int) -> ShapeObject | None:
        """The object as drawn in frame ``t`` (None when hidden)."""
        if not self.shown[t]:
            return None
        return ShapeObject(self.shape, self.colour, self.xs[t], self.ys[t], self.sizes[t], self.rotation)

    def radius(self, t: int) -> float:
        return 0.5 * self.sizes[t] * SHAPE_SCALE[self.shape]

    def reordered(self, order: list[int]) -> Track:
        """The track with its frames taken in ``order``."""
        xs, ys, sizes, shown = (tuple(seq[i] for i in order) for seq in (self.xs, self.ys, self.sizes, self.shown))
        return Track(self.shape, self.colour, self.rotation, xs, ys, sizes, shown)


@dataclass(frozen=True)
class ShapeClip:
    """Objects over ``frames`` frames on one background: the ground truth of a clip. The named objects' tracks come
    first, in prompt order, then any still object."""

    tracks: tuple[Track, ...]
    background: Background = field(default_factory=Background)

    @property
    def frames(self) -> int:
        """Number of frames."""
        return len(self.tracks[0].xs) if self.tracks else 0

    def scene(self, t: int) -> Scene:
        """Frame ``t`` as a scene."""
        objects = [o for o in (tr.object_at(t) for tr in self.tracks) if o is not None]
        return Scene(objects=tuple(objects), background=self.background)

    def reordered(self, order: list[int]) -> ShapeClip:
        """The clip with its frames taken in ``order`` (reversed, held, shuffled)."""
        return ShapeClip(tuple(tr.reordered(order) for tr in self.tracks), self.background)

    def reversed(self) -> ShapeClip:
        """The clip played backwards."""
        return self.reordered(list(range(self.frames))[::-1])

    def held(self, t: int) -> ShapeClip:
        """Frame ``t`` held for the whole clip."""
        return self.reordered([t] * self.frames)

    def to_dict(self) -> dict:
        """A JSON-ready dict (the ``clip`` field on disk)."""
        return {"background": asdict(self.background), "tracks": [asdict(tr) for tr in self.tracks]}

    @classmethod
    def from_dict(cls, data: dict) -> ShapeClip:
        """Inverse of :meth:`to_dict`."""
        try:
            bg = dict(data.get("background", {}))
            if "tint" in bg:
                bg["tint"] = tuple(float(t) for t in bg["tint"])
            tracks = []
            for tr in data["tracks"]:
                seqs = {k: tuple(tr[k]) for k in ("xs", "ys", "sizes", "shown")}
                tracks.append(Track(tr["shape"], tr["colour"], float(tr["rotation"]), **seqs))
            return cls(tracks=tuple(tracks), background=Background(**bg))
        except (KeyError, TypeError) as err:
            raise ShapesError(f"malformed clip {data!r}: {err}") from err


def render_clip(clip: ShapeClip, size: int = 48) -> list[np.ndarray]:
    """The frames of ``clip`` as uint8 ``[size, size, 3]`` arrays."""
    return [render_array(clip.scene(t), size) for t in range(clip.frames)]


# ---------------------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class ClipLayout:
    """How clips are laid out and how far things move; lengths are fractions of the frame side, sizes as
    :class:`~.scene.ShapeObject`'s."""

    move_size: tuple[float, float] = (0.2, 0.26)  # size of an object that moves
    shift: tuple[float, float] = (0.3, 0.45)  # how far it moves over the clip
    grow_start: tuple[float, float] = (0.17, 0.2)  # size of a growing object in its first frame
    growth: tuple[float, float] = (1.6, 1.8)  # its size in the last frame over the first
    still_size: tuple[float, float] = (0.2, 0.27)  # size of an object that appears, disappears or stays still
    still_prob: float = 0.3  # chance that a motion clip also holds a still object of another colour
    gap: float = 0.05  # smallest distance between two objects' circumscribed circles, in every frame
    margin: float = 0.03  # smallest distance between an object's circumscribed circle and the border
    tries: int = 500  # whole-clip placement attempts before giving up


@dataclass(frozen=True)
class ClipExample:
    """A clip prompt and a clip that follows it."""

    spec: ClipSpec
    clip: ShapeClip

    @property
    def prompt(self) -> str:
        return self.spec.text

    @property
    def category(self) -> str:
        return self.spec.category


def check_frames(frames: int) -> int:
    """Validate a sampling frame count."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise ShapesError(f"frames must be an integer from {MIN_FRAMES} to {MAX_FRAMES}, got {frames!r}")
    return frames


def sample_clip_spec(category: str, rng: np.random.Generator) -> ClipSpec:
    """A random prompt of ``category`` (in-domain colours, a colour per object)."""
    if category not in CLIP_CATEGORIES:
        raise ShapesError(f"unknown clip category {category!r}; known: {', '.join(CLIP_CATEGORIES)}")
    shapes = [str(s) for s in rng.permutation(SHAPES)]
    n = 1 if category == "motion" else 2
    colours: list[str] = []
    for s in shapes[:n]:
        colours.append(str(rng.choice([c for c in allowed_colours(s, "id") if c not in colours])))
    if category == "order":
        motions = ["appears", "appears"]
    else:
        motions = [str(rng.choice(MOTIONS)) for _ in range(n)]
    return ClipSpec(category, tuple(Mover(s, c, m) for s, c, m in zip(shapes, colours, motions)))


def _span(rng: np.random.Generator, radius: float, layout: ClipLayout) -> tuple[float, float]:
    lo = radius + layout.margin
    return float(rng.uniform(lo, 1 - lo)), lo


def _track(shape, colour, motion, frames, rng, layout: ClipLayout, switch: int | None = None) -> Track:
    """A random track of ``motion`` (None: still); ``switch``: the frame an object appears (or disappears) at."""
    t = np.linspace(0.0, 1.0, frames)
    shown = np.ones(frames, dtype=bool)
    if motion in MOVES:
        size = float(rng.uniform(*layout.move_size))
        lo = 0.5 * size * SHAPE_SCALE[shape] + layout.margin
        d = min(float(rng.uniform(*layout.shift)), 1 - 2 * lo - 1e-3)
        start = float(rng.uniform(lo, 1 - lo - d))
        dx, dy = MOVES[motion]
        along = start + d * t if dx + dy > 0 else start + d - d * t
        across = np.full(frames, rng.uniform(lo, 1 - lo))
        xs, ys = (along, across) if dx else (across, along)
        sizes = np.full(frames, size)
    elif motion in ("grows", "shrinks"):
        first = float(rng.uniform(*layout.grow_start))
        last = first * float(rng.uniform(*layout.growth))
        x, lo = _span(rng, 0.5 * last * SHAPE_SCALE[shape], layout)
        y = float(rng.uniform(lo, 1 - lo))
        sizes = first + (last - first) * t if motion == "grows" else last + (first - last) * t
        xs, ys = np.full(frames, x), np.full(frames, y)
    else:  # appears, disappears, or still (None)
        size = float(rng.uniform(*layout.still_size))
        x, lo = _span(rng, 0.5 * size * SHAPE_SCALE[shape], layout)
        xs, ys, sizes = np.full(frames, x), np.full(frames, float(rng.uniform(lo, 1 - lo))), np.full(frames, size)
        if motion is not None:
            k = switch if switch is not None else int(rng.integers(2, frames - 1))
            shown = np.arange(frames) >= k if motion == "appears" else np.arange(frames) < k
    xs, ys, sizes = (tuple(round(float(v), 4) for v in seq) for seq in (xs, ys, sizes))
    return Track(shape, colour, random_rotation(shape, rng), xs, ys, sizes, tuple(bool(s) for s in shown))


def _clear(tracks: list[Track], layout: ClipLayout) -> bool:
    """No two objects closer than ``layout.gap`` in any frame, shown or not (so every negative stays clear too)."""
    for t in range(len(tracks[0].xs)):
        for i in range(len(tracks)):
            for j in range(i + 1, len(tracks)):
                a, b = tracks[i], tracks[j]
                dist = float(np.hypot(a.xs[t] - b.xs[t], a.ys[t] - b.ys[t]))
                if dist < a.radius(t) + b.radius(t) + layout.gap:
                    return False
    return True


def clip_for(spec: ClipSpec, rng: np.random.Generator, frames: int = DEFAULT_FRAMES, layout: ClipLayout | None = None):
    """A random :class:`ShapeClip` of ``frames`` frames that follows ``spec``."""
    layout = layout or ClipLayout()
    check_frames(frames)
    extra = None
    if spec.category == "motion" and rng.random() < layout.still_prob:
        shape = str(rng.choice(SHAPES))
        taken = {m.colour for m in spec.movers}
        extra = (shape, str(rng.choice([c for c in allowed_colours(shape, "id") if c not in taken])))
    background = sample_background(rng, "id")
    for _ in range(layout.tries):
        switches: list[int | None] = [None] * len(spec.movers)
        if spec.category == "order":
            a = int(rng.integers(1, frames - 3))
            switches = [a, int(rng.integers(a + 2, frames - 1))]
        tracks = [_track(m.shape, m.colour, m.motion, frames, rng, layout, k) for m, k in zip(spec.movers, switches)]
        if extra is not None:
            tracks.append(_track(*extra, None, frames, rng, layout))
        if _clear(tracks, layout):
            return ShapeClip(tuple(tracks), background)
    raise ShapesError(f"cannot lay out a clip of {spec.text!r} without overlap in {layout.tries} tries")


def sample_clip_example(
    category: str, rng: np.random.Generator, frames: int = DEFAULT_FRAMES, layout: ClipLayout | None = None
) -> ClipExample:
    """One random clip prompt of ``category`` and a clip that follows it."""
    spec = sample_clip_spec(category, rng)
    return ClipExample(spec, clip_for(spec, rng, frames, layout))


def iter_clip_examples(
    n: int,
    seed: int = 0,
    categories: tuple[str, ...] | list[str] = CLIP_CATEGORIES,
    frames: int = DEFAULT_FRAMES,
    layout: ClipLayout | None = None,
    start: int = 0,
) -> Iterator[ClipExample]:
    """Examples ``start .. start + n - 1`` cycling through ``categories``; example ``i`` depends only on
    ``(seed, i)`` and the settings."""
    categories = tuple(categories)
    if not categories:
        raise ShapesError("no clip categories given")
    for c in categories:
        if c not in CLIP_CATEGORIES:
            raise ShapesError(f"unknown clip category {c!r}; known: {', '.join(CLIP_CATEGORIES)}")
    check_frames(frames)
    for i in range(start, start + n):
        rng = example_rng(seed, "id", i, _CLIP_STREAM)
        yield sample_clip_example(categories[i % len(categories)], rng, frames, layout)


# ---------------------------------------------------------------------------------------------------- negatives
@dataclass(frozen=True)
class ClipPair:
    """A preference pair of clips: the chosen example, the rejected clip, the negative's kind and a reason."""

    chosen: ClipExample
    rejected: ShapeClip
    negative: str
    reason: str

    @property
    def prompt(self) -> str:
        return self.chosen.prompt


def _instead(m: Mover) -> str:
    opposite = OPPOSITE_MOTION[m.motion]
    if m.motion in MOVES:
        return f"the {m.noun} moves {opposite}, not {m.motion}"
    return f"the {m.noun} {opposite} instead of {_GERUND[m.motion]}"


def make_clip_pair(example: ClipExample, negative: str, rng: np.random.Generator | None = None) -> ClipPair:
    """The pair of ``example`` with a rejected clip of kind ``negative`` (one of ``NEGATIVES_FOR[category]``)."""
    allowed = NEGATIVES_FOR[example.category]
    if negative not in allowed:
        raise ShapesError(f"negative {negative!r} does not apply to {example.category} clips; use one of {allowed}")
    clip, movers = example.clip, example.spec.movers
    if negative == "reverse":
        text = " and ".join(_instead(m) for m in movers)
        return ClipPair(example, clip.reversed(), negative, text[0].upper() + text[1:] + ".")
    if negative == "static":
        t = int((rng or np.random.default_rng(0)).integers(0, clip.frames))
        return ClipPair(example, clip.held(t), negative, "Nothing moves: the video holds one frame.")
    first, second = clip.tracks[0], clip.tracks[1]  # order: the two objects swap the frames they appear at
    swapped = (
        Track(first.shape, first.colour, first.rotation, first.xs, first.ys, first.sizes, second.shown),
        Track(second.shape, second.colour, second.rotation, second.xs, second.ys, second.sizes, first.shown),
    )
    rejected = ShapeClip(swapped + clip.tracks[2:], clip.background)
    return ClipPair(example, rejected, negative, f"The {movers[1].noun} appears before the {movers[0].noun}.")


def iter_clip_pairs(
    n: int,
    seed: int = 0,
    categories: tuple[str, ...] | list[str] = CLIP_CATEGORIES,
    negatives: tuple[str, ...] | list[str] = CLIP_NEGATIVES,
    frames: int = DEFAULT_FRAMES,
    layout: ClipLayout | None = None,
) -> Iterator[ClipPair]:
    """``n`` pairs, each negative drawn uniformly from the kinds in ``negatives`` that apply to its category."""
    negatives = tuple(negatives)
    for k in negatives:
        if k not in CLIP_NEGATIVES:
            raise ShapesError(f"unknown clip negative {k!r}; known: {', '.join(CLIP_NEGATIVES)}")
    for c in categories:
        if c in NEGATIVES_FOR and not set(NEGATIVES_FOR[c]) & set(negatives):
            raise ShapesError(f"none of the negatives {negatives} applies to {c} clips ({NEGATIVES_FOR[c]})")
    for i, ex in enumerate(iter_clip_examples(n, seed, categories, frames, layout)):
        rng = example_rng(seed, "id", i, _PAIR_STREAM)
        kinds = [k for k in negatives if k in NEGATIVES_FOR[ex.category]]
        yield make_clip_pair(ex, kinds[int(rng.integers(len(kinds)))], rng)


def shuffled_order(frames: int, rng: np.random.Generator) -> list[int]:
    """A random order of ``frames`` frames that is neither the identity nor the reversal (for 3+ frames)."""
    while True:
        order = [int(i) for i in rng.permutation(frames)]
        ident = list(range(frames))
        if frames < 3 or (order != ident and order != ident[::-1]):
            return order


# ---------------------------------------------------------------------------------------------------- on disk
def write_clip(frames: list[np.ndarray], path: str | os.PathLike, video_format: str = "png", fps: int = 8) -> Path:
    """Write uint8 frames as a folder of PNGs (``frame_00.png`` ...) or a lossless H.264 RGB mp4 (PyAV)."""
    path = Path(path)
    if video_format == "png":
        path.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(frames):
            Image.fromarray(f).save(path / f"frame_{k:02d}.png", compress_level=3)
        return path
    if video_format != "mp4":
        raise ShapesError(f"unknown video format {video_format!r}; use one of {', '.join(VIDEO_FORMATS)}")
    from ..video import write_video

    return write_video(path, frames, fps)  # lossless RGB, so the verifier reads what was drawn


def write_clip_dataset(
    out: str | os.PathLike,
    n: int,
    size: int = 48,
    frames: int = DEFAULT_FRAMES,
    seed: int = 0,
    pairs: bool = True,
    categories: tuple[str, ...] | list[str] = CLIP_CATEGORIES,
    negatives: tuple[str, ...] | list[str] = CLIP_NEGATIVES,
    video_format: str = "png",
    layout: ClipLayout | None = None,
    progress: bool = False,
) -> Path:
    """Render ``n`` clips (with ``pairs``, ``n`` preference pairs) into folder ``out``; returns the folder.

    ``info.json`` is written last, so a folder without it is an interrupted run (refused here; delete it). The
    ``pairs.jsonl`` is what ``rewarddance train-rm`` reads (``media: video``)."""
    if n < 1:
        raise ShapesError(f"n must be at least 1, got {n}")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ShapesError(f"size must be an integer of at least {MIN_SIZE} px, got {size!r}")
    if video_format not in VIDEO_FORMATS:
        raise ShapesError(f"unknown video format {video_format!r}; use one of {', '.join(VIDEO_FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ShapesError(f"{out} exists and is not an empty folder")
    categories = tuple(categories)
    if pairs:
        source: Iterator = iter_clip_pairs(n, seed, categories, negatives, frames, layout)
    else:
        source = iter_clip_examples(n, seed, categories, frames, layout)
    suffix = "" if video_format == "png" else ".mp4"
    out.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="clips", unit="clip", leave=False)
    pair_file = open(out / "pairs.jsonl", "w", encoding="utf-8") if pairs else None
    try:
        with open(out / "manifest.jsonl", "w", encoding="utf-8") as manifest:
            for i, item in enumerate(source):
                ex = item.chosen if pairs else item
                uid = f"clip-{i:06d}"
                video = f"clips/{uid}{suffix}"
                write_clip(render_clip(ex.clip, size), out / video, video_format)
                row = {"id": uid, "prompt": ex.prompt, "category": ex.category, "video": video, "frames": frames}
                manifest.write(json.dumps({**row, "size": size, "clip": ex.clip.to_dict()}) + "\n")
                if pair_file is not None:
                    rejected = f"clips/{uid}-rejected{suffix}"
                    write_clip(render_clip(item.rejected, size), out / rejected, video_format)
                    record = {
                        "id": uid,
                        "prompt": ex.prompt,
                        "category": ex.category,
                        "chosen": video,
                        "rejected": rejected,
                        "reason": item.reason,
                        "negative": item.negative,
                        "media": "video",
                        "frames": frames,
                        "size": size,
                        "rejected_clip": item.rejected.to_dict(),
                    }
                    pair_file.write(json.dumps(record) + "\n")
                if bar is not None:
                    bar.update()
    finally:
        if pair_file is not None:
            pair_file.close()
        if bar is not None:
            bar.close()
    info = {
        "format": CLIP_FORMAT,
        "version": 1,
        "seed": seed,
        "size": size,
        "frames": frames,
        "n": n,
        "pairs": pairs,
        "categories": list(categories),
        "negatives": list(negatives) if pairs else [],
        "video_format": video_format,
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


__all__ = [
    "CLIP_CATEGORIES",
    "CLIP_NEGATIVES",
    "MOTIONS",
    "NEGATIVES_FOR",
    "ClipExample",
    "ClipLayout",
    "ClipPair",
    "ClipSpec",
    "Mover",
    "ShapeClip",
    "Track",
    "clip_for",
    "iter_clip_examples",
    "iter_clip_pairs",
    "make_clip_pair",
    "parse_clip_prompt",
    "render_clip",
    "sample_clip_example",
    "shuffled_order",
    "write_clip",
    "write_clip_dataset",
]
