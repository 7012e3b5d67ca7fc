"""What travels over HTTP between ``rewarddance serve`` and its clients: images as base64 text, the reward context
as plain JSON fields. Shared by the server (:mod:`rewarddance.serving.app`) and the client
(:mod:`rewarddance.remote`); it imports neither FastAPI nor httpx, and nothing here unpickles anything.

A video is a list of frames, each encoded as an image is, or an object ``{"frames": [...], "frame_rate": 24.0,
"indices": [0, 4, 8], "total_frames": 12}``: ``frame_rate`` (frames per second of the source) lets the server sample
by ``fps``; ``indices`` and ``total_frames`` say where frames sampled by the sender sit in their source (Qwen3-VL
writes each frame's time into the prompt). All but ``frames`` are optional.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import fields

import torch
from PIL import Image

from ..context import Example, RewardContext
from ..images import MAX_IMAGE_PIXELS, ImageError, load_image, to_tensor
from ..video import Clip, FrameSample, sample_indices

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


def _video_fields(item, label: str) -> tuple[list, float | None, list[int] | None, int | None]:
    """``(frames, frame_rate, indices, total_frames)`` of a request's video, each checked."""
    if isinstance(item, list):
        return item, None, None, None
    if not isinstance(item, dict):
        raise RequestError(f"{label}: expected a video: a list of frames, or an object with 'frames'")
    unknown = sorted(set(item) - {"frames", "frame_rate", "indices", "total_frames"})
    if unknown:
        raise RequestError(
            f"{label}: unknown field {unknown[0]!r} (a video has frames, frame_rate, indices, total_frames)"
        )
    frames, rate, indices, total = (item.get(k) for k in ("frames", "frame_rate", "indices", "total_frames"))
    if not isinstance(frames, list):
        raise RequestError(f"{label}: 'frames' must be a list of base64 images")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
        raise RequestError(f"{label}: frame_rate must be a positive number, got {rate!r}")
    if indices is not None and not isinstance(indices, list):
        raise RequestError(f"{label}: indices must be a list of integers")
    for name, value in (("total_frames", total), *(("indices", i) for i in indices or ())):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise RequestError(f"{label}: {name} must hold integers >= 0, got {value!r}")
    return frames, (None if rate is None else float(rate)), indices, total


def decode_video(
    item, label: str, max_pixels: int, max_frames: int, num_frames=None, fps=None, cache: dict | None = None
) -> Clip:
    """A request's video (see the module docstring) -> a :class:`~rewarddance.video.Clip` of its frames, sampled
    here when ``num_frames`` / ``fps`` are given (only the kept frames are decoded). Each frame is checked as an
    image is (``max_pixels``); more than ``max_frames`` frames, none, frames of different sizes, or indices that do
    not fit are a :class:`RequestError` naming ``label``. ``cache`` maps base64 text to images already decoded."""
    frames, rate, indices, total = _video_fields(item, label)
    n = len(frames)
    if n == 0:
        raise RequestError(f"{label}: the video has no frames")
    if n > max_frames:
        raise RequestError(f"{label}: {n} frames exceed the server's limit of {max_frames} per video")
    if indices is not None:
        if len(indices) != n or any(b <= a for a, b in zip(indices, indices[1:])):
            raise RequestError(f"{label}: indices must be {n} increasing frame numbers, one per frame")
        if num_frames is not None or fps is not None:
            raise RequestError(
                f"{label}: the frames were sampled already (indices given); leave out num_frames and fps"
            )
    indices = indices if indices is not None else list(range(n))
    total = indices[-1] + 1 if total is None else total
    if total <= indices[-1]:
        raise RequestError(f"{label}: total_frames must exceed the last index {indices[-1]}, got {total}")
    try:
        keep = sample_indices(n, num_frames, fps, rate, label)
    except ValueError as err:  # VideoError (naming the video) or a bad num_frames / fps (naming the field)
        raise RequestError(str(err)) from err
    cache = {} if cache is None else cache
    out = []
    for k in keep:
        where = f"{label} frame {k}"
        if not isinstance(frames[k], str):
            raise RequestError(f"{where}: expected base64 text, got {type(frames[k]).__name__}")
        if frames[k] not in cache:
            cache[frames[k]] = decode_image(frames[k], where, max_pixels)
        out.append(to_tensor(cache[frames[k]]))
        if out[-1].shape != out[0].shape:
            (h, w), (h0, w0) = out[-1].shape[-2:], out[0].shape[-2:]
            raise RequestError(
                f"{label}: frame {k} is {w}x{h} but frame {keep[0]} is {w0}x{h0}; the frames of a video must have one size"
            )
    sample = FrameSample(label, tuple(indices[k] for k in keep), total, rate)
    return Clip(torch.stack(out), sample)  # [T, 3, H, W] float in [0, 1]


def encode_video(clip: Clip, label: str = "video") -> dict:
    """A :class:`~rewarddance.video.Clip` -> a request's video: its frames as base64 PNG (lossless: the server sees
    the pixels the local judge would), the source's frame rate and where the frames sit in the source."""
    return {
        "frames": [encode_image(f, f"{label} frame {k}") for k, f in enumerate(clip.frames.detach().cpu())],
        "frame_rate": clip.sample.source_fps,
        "indices": list(clip.sample.indices),
        "total_frames": clip.sample.source_frames,
    }


def sample_to_json(sample: FrameSample) -> dict:
    """The frames a video was scored on, as the server reports them."""
    return {"indices": list(sample.indices), "total_frames": sample.source_frames, "frame_rate": sample.source_fps}


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
    first = body.get("first_frame")  # image-to-video: one image for every video, or one per video
    if first is not None:
        seen: dict[str, Image.Image] = {}  # equal text, one image: the videos share it in their prompt's prefix
        items = [first] if isinstance(first, str) else first
        if not isinstance(items, list) or not items:
            raise RequestError("first_frame: expected a base64 image or a list of them")
        for k, x in enumerate(items):
            where = "first_frame" if isinstance(first, str) else f"first_frame[{k}]"
            if not isinstance(x, str):
                raise RequestError(f"{where}: expected base64 text, got {type(x).__name__}")
            if x not in seen:
                seen[x] = decode_image(x, where, max_pixels)
        kwargs["first_frame"] = seen[first] if isinstance(first, str) else [seen[x] for x in items]
    try:
        return RewardContext(**kwargs)
    except (TypeError, ValueError) as err:
        raise RequestError(f"context: {err}") from err
