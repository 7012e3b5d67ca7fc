"""The ShapesWorld scene: coloured shapes on a grey background, described exactly enough to render at any size.

A :class:`Scene` is the ground truth behind every image in ShapesWorld: a list of :class:`ShapeObject` (shape,
colour, centre, size, rotation) and a :class:`Background` (style and its parameters). Coordinates are fractions of
the image side, ``x`` to the right and ``y`` downwards, so one scene renders identically at 32 px and at 512 px.

The palette is chosen for the verifier (``verify.py``): the six chromatic colours sit at least 14 degrees of hue
from the verifier's bin edges and have chroma (max - min channel) of 135 or more; white and black are far from
the backgrounds, whose every pixel stays in the grey band ``BACKGROUND_RANGE`` with chroma of 10 or less.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# RGB, 0-255. Hues: red 358, orange 29, yellow 57, green 131, blue 226, purple 281 degrees.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 125, 10),
    "yellow": (240, 230, 25),
    "green": (35, 170, 60),
    "blue": (35, 80, 225),
    "purple": (145, 45, 190),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

BACKGROUND_STYLES: tuple[str, ...] = ("plain", "gradient", "noise")  # in-domain
HELD_OUT_BACKGROUND = "stripes"  # out-of-domain only
ALL_BACKGROUNDS: tuple[str, ...] = (*BACKGROUND_STYLES, HELD_OUT_BACKGROUND)
BACKGROUND_RANGE: tuple[int, int] = (95, 165)  # every background pixel's channel values stay inside this band

# Colour-shape combinations that never appear in the in-domain split; every out-of-domain scene shows one.
# Each shape is held out in two colours and each chromatic colour in one shape, so a colour or shape change can
# always avoid them.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "triangle"),
        ("green", "circle"),
        ("blue", "square"),
        ("yellow", "circle"),
        ("purple", "square"),
        ("orange", "triangle"),
    }
)

# Radius of the shape's circumscribed circle as a multiple of ``size / 2``, per shape: squares and triangles are
# drawn a little larger than circles of the same ``size`` so that their areas are closer.
SHAPE_SCALE: dict[str, float] = {"circle": 1.0, "square": 1.12, "triangle": 1.3}


class ShapesError(ValueError):
    """A user-facing ShapesWorld error: bad prompt, bad scene, unreadable folder or image."""


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    ``x``, ``y``: centre as fractions of the image width and height (y grows downwards). ``size``: diameter of a
    circle of the same nominal size, as a fraction of the image side (the drawn extent is ``size * SHAPE_SCALE``).
    ``rotation``: degrees, counter-clockwise on screen; ignored for circles.
    """

    shape: str
    colour: str
    x: float
    y: float
    size: float
    rotation: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ShapesError(f"unknown shape {self.shape!r}; known shapes: {', '.join(SHAPES)}")
        if self.colour not in COLOURS:
            raise ShapesError(f"unknown colour {self.colour!r}; known colours: {', '.join(COLOUR_NAMES)}")
        if not 0.0 < self.size < 1.0:
            raise ShapesError(f"object size must be a fraction of the image side in (0, 1), got {self.size}")

    @property
    def radius(self) -> float:
        """Radius of the circumscribed circle, as a fraction of the image side."""
        return 0.5 * self.size * SHAPE_SCALE[self.shape]

    @property
    def combo(self) -> tuple[str, str]:
        """The (colour, shape) pair."""
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Background:
    """A background style and its parameters (grey levels 0-255, angles in degrees, a seed for textures).

    ``plain``: ``level`` everywhere. ``gradient``: a linear ramp of total height ``contrast`` centred on ``level``
    along ``angle``. ``noise``: a smooth random texture of amplitude ``contrast`` on a ``frequency`` x
    ``frequency`` grid drawn from ``seed``. ``stripes`` (held out): a sine of amplitude ``contrast`` with
    ``frequency`` cycles per side along ``angle``. Every style adds ``tint`` per channel, then clips to
    ``BACKGROUND_RANGE``.
    """

    style: str = "plain"
    level: float = 130.0
    contrast: float = 0.0
    angle: float = 0.0
    frequency: float = 4.0
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.style not in ALL_BACKGROUNDS:
            raise ShapesError(f"unknown background style {self.style!r}; known: {', '.join(ALL_BACKGROUNDS)}")


@dataclass(frozen=True)
class Scene:
    """Objects on a background: the ground truth of one image."""

    objects: tuple[ShapeObject, ...]
    background: Background = field(default_factory=Background)

    def to_dict(self) -> dict:
        """A JSON-ready dict (the ``scene`` field of the on-disk format)."""
        return {
            "background": asdict(self.background),
            "objects": [asdict(o) for o in self.objects],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Inverse of :meth:`to_dict`; raises :class:`ShapesError` on unknown shapes, colours or styles."""
        try:
            bg = dict(data.get("background", {}))
            if "tint" in bg:
                bg["tint"] = tuple(float(t) for t in bg["tint"])
            objects = tuple(ShapeObject(**o) for o in data["objects"])
            return cls(objects=objects, background=Background(**bg))
        except (KeyError, TypeError) as err:
            raise ShapesError(f"malformed scene {data!r}: {err}") from err

    def with_objects(self, objects) -> Scene:
        """The same background with other objects."""
        return Scene(objects=tuple(objects), background=self.background)


def describe_objects(objects) -> str:
    """English list of objects grouped by colour and shape, e.g. ``"two red circles and a blue square"``."""
    if not objects:
        return "no shapes"
    counts: dict[tuple[str, str], int] = {}
    for o in objects:
        counts[(o.colour, o.shape)] = counts.get((o.colour, o.shape), 0) + 1
    parts = [noun_phrase(shape, n, colour) for (colour, shape), n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


NUMBER_WORDS: tuple[str, ...] = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def noun_phrase(shape: str, count: int = 1, colour: str | None = None, article: str = "a") -> str:
    """``noun_phrase("circle", 2, "red") -> "two red circles"``; count 1 uses ``article`` ("a" or "one")."""
    words = [colour, shape] if colour else [shape]
    if count == 1:
        lead = "an" if article == "a" and words[0][0] in "aeiou" else article
    elif 0 <= count < len(NUMBER_WORDS):
        lead = NUMBER_WORDS[count]
    else:
        lead = str(count)
    noun = " ".join(words) + ("" if count == 1 else "s")
    return f"{lead} {noun}"
