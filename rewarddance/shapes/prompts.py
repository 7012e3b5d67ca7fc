"""Prompts in GenEval's six categories, their parser, and the rule that says whether a set of objects satisfies one.

GenEval (Ghosh et al., 2023) checks text-to-image alignment per category; ShapesWorld keeps its category tags and
its templates with shapes in place of COCO classes:

================  ==============================================  ======================================
category          template                                        passes when the image has
================  ==============================================  ======================================
single_object     a photo of a circle                             at least one circle
two_object        a photo of a circle and a square                a circle and a square
counting          a photo of three circles (one to four)          exactly three circles
colors            a photo of a red circle                         a red circle
position          a photo of a circle left of a square            a circle left of a square
color_attr        a photo of a red circle and a blue square       a red circle and a blue square
================  ==============================================  ======================================

Relations are read from object centres (image y grows downwards): "A left of B" holds when the direction from B
to A is within 60 degrees of "left", as in GenEval's position rule. Distinct requirements must be met by distinct
objects. :func:`check` applies the rule to any objects with ``shape``, ``colour``, ``x`` and ``y`` attributes: the
ground-truth objects of a scene or the verifier's detections.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import combinations

from .scene import COLOUR_NAMES, NUMBER_WORDS, SHAPES, ShapesError, describe_objects, noun_phrase

CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# unit direction of "A <relation> B" from B to A, screen coordinates (y down)
RELATION_DIRECTION: dict[str, tuple[float, float]] = {
    "left of": (-1.0, 0.0),
    "right of": (1.0, 0.0),
    "above": (0.0, -1.0),
    "below": (0.0, 1.0),
}
RELATION_COS = 0.5  # "A left of B" needs cos(angle to the relation's direction) > 0.5, i.e. within 60 degrees
PROMPT_PREFIX = "a photo of "
_PREFIXES = ("a photo of ", "an image of ", "a picture of ", "a drawing of ")
_RELATION_RE = re.compile(r"\s(left of|right of|above|below)\s")


@dataclass(frozen=True)
class ObjectReq:
    """One noun phrase of a prompt: a shape, an optional colour, and how many (exact only for ``counting``)."""

    shape: str
    colour: str | None = None
    count: int = 1

    def matches(self, obj) -> bool:
        """True when ``obj`` (anything with ``shape`` and ``colour``) is this kind of object."""
        return obj.shape == self.shape and (self.colour is None or obj.colour == self.colour)

    def phrase(self, article: str = "a") -> str:
        """``"a red circle"``, ``"an orange square"``, ``"three squares"``."""
        return noun_phrase(self.shape, self.count, self.colour, article)

    @property
    def noun(self) -> str:
        """The phrase without article or number: ``"red circle"``."""
        return f"{self.colour} {self.shape}" if self.colour else self.shape


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: category, noun phrases, and for ``position`` how ``objects[0]`` relates to ``objects[1]``."""

    category: str
    objects: tuple[ObjectReq, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        """The prompt in ShapesWorld's template, e.g. ``"a photo of a red circle and a blue square"``."""
        if self.category == "counting":
            return PROMPT_PREFIX + self.objects[0].phrase(article="one")
        if self.category == "position":
            a, b = self.objects
            return f"{PROMPT_PREFIX}{a.phrase()} {self.relation} {b.phrase()}"
        return PROMPT_PREFIX + " and ".join(o.phrase() for o in self.objects)


def _parse_phrase(phrase: str, prompt: str) -> tuple[ObjectReq, bool]:
    """Parse ``"three red circles"`` -> (ObjectReq, counted) where counted says a number word was used."""
    words = phrase.split()
    if not words:
        raise ShapesError(f"cannot read an object in prompt {prompt!r}")
    count, counted = 1, False
    if words[0] in ("a", "an"):
        words = words[1:]
    elif words[0] in NUMBER_WORDS[1:] or words[0].isdigit():
        count = int(words[0]) if words[0].isdigit() else NUMBER_WORDS.index(words[0])
        counted = True
        words = words[1:]
    if not words:
        raise ShapesError(f"no shape named in {phrase!r} of prompt {prompt!r}")
    noun = words[-1]
    shape = noun[:-1] if noun.endswith("s") and noun[:-1] in SHAPES else noun
    if shape not in SHAPES:
        raise ShapesError(f"unknown shape {noun!r} in prompt {prompt!r}; known shapes: {', '.join(SHAPES)}")
    plural = shape != noun
    if plural and not counted:
        raise ShapesError(f"plural {noun!r} needs a number (two to four) in prompt {prompt!r}")
    if count < 1:
        raise ShapesError(f"count must be at least one in prompt {prompt!r}")
    colours = words[:-1]
    for word in colours:
        if word not in COLOUR_NAMES:
            raise ShapesError(f"unknown colour {word!r} in prompt {prompt!r}; known colours: {', '.join(COLOUR_NAMES)}")
    if len(colours) > 1:
        raise ShapesError(f"more than one colour for one object in prompt {prompt!r}")
    return ObjectReq(shape=shape, colour=colours[0] if colours else None, count=count), counted


def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a ShapesWorld prompt (any of the six templates, case and a final period ignored).

    Raises :class:`ShapesError` naming the word for an unknown colour or shape, or for a sentence outside the
    templates.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ShapesError(f"empty prompt: {prompt!r}")
    text = " ".join(prompt.lower().replace(",", " ").split()).rstrip(".").strip()
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    match = _RELATION_RE.search(f" {text} ")
    if match:
        relation = match.group(1)
        left, right = text[: match.start()], text[match.end() - 1 :]
        a, ca = _parse_phrase(left.strip(), prompt)
        b, cb = _parse_phrase(right.strip(), prompt)
        if a.count != 1 or b.count != 1:
            raise ShapesError(f"position prompts relate one object to one object: {prompt!r}")
        return PromptSpec("position", (a, b), relation)
    parts = [p.strip() for p in text.split(" and ")]
    if len(parts) > 2:
        raise ShapesError(f"at most two objects per prompt, got {len(parts)} in {prompt!r}")
    if len(parts) == 2:
        (a, ca), (b, cb) = (_parse_phrase(p, prompt) for p in parts)
        if ca or cb or a.count != 1 or b.count != 1:
            raise ShapesError(f"two-object prompts name one of each object: {prompt!r}")
        category = "color_attr" if a.colour and b.colour else "two_object"
        return PromptSpec(category, (a, b))
    req, counted = _parse_phrase(parts[0], prompt)
    if counted:
        return PromptSpec("counting", (req,))
    return PromptSpec("colors" if req.colour else "single_object", (req,))


def relation_holds(a, b, relation: str) -> bool:
    """True when object ``a`` is ``relation`` object ``b`` (centres ``x``, ``y``; y down)."""
    dx, dy = a.x - b.x, a.y - b.y
    norm = math.hypot(dx, dy)
    if norm < 1e-9:
        return False
    ux, uy = RELATION_DIRECTION[relation]
    return (dx * ux + dy * uy) / norm > RELATION_COS


def dominant_relation(a, b) -> str:
    """The relation of ``a`` to ``b`` that holds best (for reasons: "the circle is right of the square")."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def caption(objects) -> str:
    """A scene's description for caption pretraining: the objects left to right, grouped by colour and shape with
    counts, and for two objects the relation between them, e.g. ``"a red circle and a blue square; the red circle
    is left of the blue square"``. Ordered by position so that the text is a function of the image; taken from the
    verifier's ground truth, so a model that learns to write it has learnt to see what prompts ask about."""
    objects = sorted(objects, key=lambda o: (o.x, o.y))
    text = describe_objects(objects)
    if len(objects) == 2:
        a, b = objects
        text += f"; the {a.colour} {a.shape} is {dominant_relation(a, b)} the {b.colour} {b.shape}"
    return text


def _assign(reqs: list[ObjectReq], objects: list, used: set[int]) -> bool:
    """Backtracking: can each requirement (``count`` objects each) be met by distinct, unused objects?"""
    if not reqs:
        return True
    req, rest = reqs[0], reqs[1:]
    free = [i for i, o in enumerate(objects) if i not in used and req.matches(o)]
    if len(free) < req.count:
        return False
    if len(reqs) == 1:
        return True
    # try each way to give this requirement its objects (scenes hold a handful of objects, prompts two phrases)
    return any(_assign(rest, objects, used | set(pick)) for pick in combinations(free, req.count))


def check(spec: PromptSpec, objects) -> tuple[bool, str]:
    """Does a set of objects satisfy the prompt? Returns ``(passed, reason)``; the reason names the mismatch.

    ``objects``: scene objects or detections (``shape``, ``colour``, ``x``, ``y``).
    """
    objects = list(objects)
    seen = describe_objects(objects)
    if spec.category == "counting":
        req = spec.objects[0]
        n = sum(req.matches(o) for o in objects)
        if n == req.count:
            return True, f"the image shows {req.phrase('one')}"
        found = noun_phrase(req.shape, n, req.colour, "one")
        wanted = NUMBER_WORDS[req.count] if req.count < len(NUMBER_WORDS) else str(req.count)
        return False, f"the image shows {found} instead of {wanted}"
    if spec.category == "position":
        ra, rb = spec.objects
        side_a = [o for o in objects if ra.matches(o)]
        side_b = [o for o in objects if rb.matches(o)]
        if not side_a or not side_b:
            missing = ra if not side_a else rb
            return False, f"the image has no {missing.noun}; it shows {seen}"
        for a in side_a:
            for b in side_b:
                if a is not b and relation_holds(a, b, spec.relation):
                    return True, f"the {ra.noun} is {spec.relation} the {rb.noun}"
        a, b = side_a[0], next((o for o in side_b if o is not side_a[0]), side_b[0])
        actual = dominant_relation(a, b) if a is not b else "the same object as"
        return False, f"the {ra.noun} is {actual} the {rb.noun}, not {spec.relation} it"
    reqs = list(spec.objects)
    for req in reqs:
        if not any(req.matches(o) for o in objects):
            return False, f"the image has no {req.noun}; it shows {seen}"
    if not _assign(reqs, objects, set()):
        return False, f"one object cannot be both {' and '.join(r.phrase() for r in reqs)}; it shows {seen}"
    return True, f"the image shows {' and '.join(r.phrase() for r in reqs)}"
