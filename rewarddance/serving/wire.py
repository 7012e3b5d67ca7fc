"""What travels over HTTP between ``rewarddance serve`` and its clients: images as base64 text, the reward context
as plain JSON fields. Shared by the server (:mod:`rewarddance.serving.app`) and the client
(:mod:`rewarddance.remote`); it imports neither FastAPI nor httpx, and nothing here unpickles anything.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import fields

from PIL import Image

from ..context import Example, RewardContext
from ..images import MAX_IMAGE_PIXELS, ImageError, load_image

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what the server decodes; anything else is refused, named
# RewardContext fields a request may set, each a JSON scalar (examples and answer_tokens are handled apart)
CONTEXT_FIELDS = (
    "task",
    "criteria",
    "question",
    "system",
    "cot",
    "decode_reasons",
    "max_reason_tokens",
    "normalize",
    "average_orders",
)


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP code (413 or 422), the message names the item."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def decode_image(data: str, label: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Base64 text (optionally a ``data:image/...;base64,`` URL) of a PNG, JPEG or WebP file -> an RGB image.

    The size is read from the header and checked against ``max_pixels`` before anything is decoded; every failure
    is a :class:`RequestError` (422) naming ``label``.
    """
    if not isinstance(data, str):
        raise RequestError(f"{label}: expected base64 text, got {type(data).__name__}")
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or not head.endswith(";base64"):
            raise RequestError(f"{label}: a data URL must be 'data:image/...;base64,<data>'")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"{label}: not valid base64 ({err})") from err
    if not raw:
        raise RequestError(f"{label}: empty image data")
    # opening reads the header only: the size is checked before a pixel is decoded. PIL's own global bomb limit is
    # left as it is (changing it would race with other threads); it is far above the server's default.
    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise RequestError(f"{label}: {w}x{h} = {w * h:,} pixels exceeds the server's limit of {max_pixels:,}")
            img.load()
            img = img.copy()
    except RequestError:
        raise
    except Exception as err:  # PIL raises many types for garbage bytes; every one of them is this item's fault
        raise RequestError(f"{label}: not a readable PNG, JPEG or WebP image ({type(err).__name__}: {err})") from err
    try:
        return load_image(img, name=label, max_pixels=max_pixels)
    except ImageError as err:
        raise RequestError(str(err)) from err


def encode_image(src, label: str = "image") -> str:
    """Any image :func:`rewarddance.images.load_image` reads (path, PIL image, array, tensor) -> base64 PNG text."""
    buf = io.BytesIO()
    load_image(src, name=label if not isinstance(src, str) else None).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def context_to_json(ctx: RewardContext) -> dict:
    """The fields of ``ctx`` that differ from the defaults, as JSON (example images as base64 PNG)."""
    default = RewardContext(task=ctx.task)
    out = {"task": ctx.task}
    for name in CONTEXT_FIELDS[1:]:
        value = getattr(ctx, name)
        if value != getattr(default, name):
            out[name] = value
    if ctx.answer_tokens is not None and ctx.answer_tokens != default.answer_tokens:
        out["answer_tokens"] = [[t] if isinstance(t, (str, int)) else list(t) for t in ctx.answer_tokens]
    if ctx.examples:
        out["examples"] = [
            {
                "image": encode_image(ex.image, f"examples[{k}].image"),
                "prompt": ex.prompt,
                "verdict": ex.verdict,
                "reason": ex.reason,
                "reference": None if ex.reference is None else encode_image(ex.reference, f"examples[{k}].reference"),
            }
            for k, ex in enumerate(ctx.examples)
        ]
    return out


def context_from_json(body: dict, defaults: dict, max_pixels: int = MAX_IMAGE_PIXELS) -> RewardContext:
    """A :class:`RewardContext` from a request's fields; ``defaults`` fill the ones it leaves out (the judge's own
    task and chain-of-thought mode). Bad values are a :class:`RequestError` naming the field."""
    known = {f.name for f in fields(RewardContext)}
    kwargs = {k: v for k, v in defaults.items() if k in known}
    kwargs.update({k: body[k] for k in CONTEXT_FIELDS if body.get(k) is not None})
    if body.get("answer_tokens") is not None:
        tokens = body["answer_tokens"]
        if not isinstance(tokens, (list, tuple)) or len(tokens) != 2:
            raise RequestError("answer_tokens: expected [yes_tokens, no_tokens]")
        kwargs["answer_tokens"] = tuple(tuple(t) if isinstance(t, list) else t for t in tokens)
    examples = []
    for k, ex in enumerate(body.get("examples") or []):
        if not isinstance(ex, dict) or "image" not in ex or "verdict" not in ex:
            raise RequestError(f"examples[{k}]: expected an object with image, prompt and verdict")
        ref = ex.get("reference")
        examples.append(
            Example(
                image=decode_image(ex["image"], f"examples[{k}].image", max_pixels),
                prompt=str(ex.get("prompt") or ""),
                verdict=bool(ex["verdict"]),
                reason=ex.get("reason"),
                reference=None if ref is None else decode_image(ref, f"examples[{k}].reference", max_pixels),
            )
        )
    kwargs["examples"] = tuple(examples)
    try:
        return RewardContext(**kwargs)
    except (TypeError, ValueError) as err:
        raise RequestError(f"context: {err}") from err
