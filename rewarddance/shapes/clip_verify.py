"""The ShapesWorld clip verifier: a clip (frames) and a clip prompt -> passed or failed, and why.

Runs the strict image verifier (:mod:`.verify`) on every frame, each of which must be a clean scene; finds each
named object in each frame by its colour (every object of a clip has its own) and reads its shape by majority over
the frames; then checks its track: a move by the centroid's displacement (at least ``min_shift`` of the side,
mostly along the named axis, no step back of more than ``step_slack``), growth by the area's ratio (no step back
either), appearance by the frame from which the object shows and stays, event order by those frames. Noise, a held
(static) frame and shuffled frames fail it. Prompts, clips and pairs: :mod:`.clips`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .clips import _GERUND, MOVES, OPPOSITE_MOTION, ClipSpec, Mover, parse_clip_prompt
from .scene import SHAPES, ShapesError
from .verify import NOT_CLEAN, VerifierConfig, _as_array, inspect_scene

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---------------------------------------------------------------------------------------------------- reading
def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _decode(path: Path, label: str) -> list[np.ndarray]:
    try:
        import av
    except ImportError as err:
        raise ShapesError(f"{label}: reading a video file needs PyAV (pip install 'rewarddance[video]')") from err
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ShapesError(f"{label}: the file has no video stream")
            return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    except ShapesError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise ShapesError(f"{label}: unreadable video file ({err})") from err


def read_clip(clip, name: str | None = None) -> list[np.ndarray]:
    """Any clip -> its frames as uint8 ``[H, W, 3]`` arrays, checked: at least 2 frames, all of one size.

    ``clip``: a folder of frame images (name order, numbers by value), a video file (PyAV), a ``[T, H, W, 3]`` array
    (uint8, or float in [0, 1]), a ``[T, 3, H, W]`` tensor in [0, 1], or a list of frames (PIL images, arrays,
    paths). :class:`ShapesError` names ``name`` (or the path) and the frame."""
    label = name or (str(clip) if isinstance(clip, (str, os.PathLike)) else "clip")
    if isinstance(clip, (str, os.PathLike)):
        path = Path(clip)
        if not path.exists():
            raise ShapesError(f"{label}: no such clip file or folder")
        if path.is_dir():
            items: list = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
        else:
            items = _decode(path, label)
    elif hasattr(clip, "detach"):  # a torch tensor, without importing torch here
        t = clip.detach().cpu()
        arr = (t if str(t.dtype) == "torch.uint8" else t.float()).numpy()
        if arr.ndim != 4 or arr.shape[1] != 3:
            raise ShapesError(f"{label}: expected a [T, 3, H, W] tensor, got shape {tuple(arr.shape)}")
        items = list(arr.transpose(0, 2, 3, 1))
    elif isinstance(clip, np.ndarray):
        if clip.ndim != 4 or clip.shape[-1] != 3:
            raise ShapesError(f"{label}: expected a [T, H, W, 3] array, got shape {clip.shape}")
        items = list(clip)
    elif isinstance(clip, (list, tuple)):
        items = list(clip)
    else:
        raise ShapesError(f"{label}: unsupported clip type {type(clip).__name__}")
    if not items:
        raise ShapesError(f"{label}: the clip has no frames")
    frames = []
    for k, item in enumerate(items):
        try:
            frame = _as_array(item)
        except ShapesError as err:
            raise ShapesError(f"{label} frame {k}: {err}") from err
        if frame.shape != (frames[0].shape if frames else frame.shape):
            h0, w0 = frames[0].shape[:2]
            raise ShapesError(
                f"{label}: frame {k} is {frame.shape[1]}x{frame.shape[0]} px but frame 0 is {w0}x{h0} px; "
                "the frames of a clip must have one size"
            )
        frames.append(frame)
    if len(frames) < 2:
        raise ShapesError(f"{label}: a clip needs at least 2 frames, got {len(frames)}")
    return frames


# ---------------------------------------------------------------------------------------------------- verifier
@dataclass(frozen=True)
class ClipVerifierConfig:
    """Thresholds of the clip verifier; lengths are fractions of the frame side."""

    min_shift: float = 0.12  # a move covers at least this (clips sample 0.3-0.45)
    max_cross: float = 0.5  # displacement across the named axis at most this share of the displacement along it
    step_slack: float = 0.02  # a move may step back by this much between frames (centroid jitter), no more
    min_growth: float = 1.5  # a growing object's area at the end over its area at the start (clips sample 2.6-3.2)
    area_slack: float = 0.1  # its area may fall by this share between frames, no more
    max_drift: float = 0.08  # an object that grows, shrinks, appears or disappears keeps its place to within this
    image: VerifierConfig = field(default_factory=VerifierConfig)  # the per-frame (strict) image verifier


@dataclass(frozen=True)
class Sighting:
    """A named object in one frame: centroid (fractions), area (working-size pixels) and the shape read there."""

    x: float
    y: float
    area: int
    shape: str


@dataclass(frozen=True)
class ClipVerdict:
    """Result of verifying a clip against a prompt. ``tracks``: per named object (prompt order), its sighting in each
    frame (None where absent). ``clean``: every frame is a clean scene (else ``reason`` names the first that is not)."""

    passed: bool
    reason: str
    category: str
    tracks: tuple[tuple[Sighting | None, ...], ...] = ()
    clean: bool = True


def _appearance(m: Mover, seen: list[bool], appear: bool) -> tuple[int | None, str | None]:
    """The frame at which ``m`` appears (``appear``) or disappears, or why its track is not one such change."""
    name = f"the {m.noun}"
    if seen[0] == appear:
        return None, f"{name} is {'already there' if appear else 'not there'} in the first frame"
    if seen[-1] != appear:
        return None, f"{name} is {'not there' if appear else 'still there'} in the last frame"
    k = seen.index(appear)
    if any(s != appear for s in seen[k:]):
        back = k + [s != appear for s in seen[k:]].index(True)
        return None, f"{name} {'appears' if appear else 'disappears'} at frame {k} and changes back at frame {back}"
    return k, None


def _still(m: Mover, track: list[Sighting | None], cfg: ClipVerifierConfig) -> str | None:
    """Why ``m`` does not keep its place (None when it does)."""
    xs = [s.x for s in track if s is not None]
    ys = [s.y for s in track if s is not None]
    drift = max(max(xs) - min(xs), max(ys) - min(ys))
    return f"the {m.noun} drifts by {drift:.2f}" if drift > cfg.max_drift else None


def _check_motion(m: Mover, track: list[Sighting | None], cfg: ClipVerifierConfig) -> tuple[bool, str]:
    """Whether the track of ``m`` makes its motion, and a short reason."""
    name = f"the {m.noun}"
    seen = [s is not None for s in track]
    if m.motion in ("appears", "disappears"):
        k, why = _appearance(m, seen, m.motion == "appears")
        if why:
            return False, why
        why = _still(m, track, cfg)
        return (False, why) if why else (True, f"{name} {m.motion} at frame {k}")
    if not all(seen):
        return False, f"{name} is missing in frame {seen.index(False)}"
    if m.motion in ("grows", "shrinks"):
        areas = [s.area for s in track]
        ratio = areas[-1] / max(areas[0], 1)
        grow = m.motion == "grows"
        if (ratio if grow else 1 / ratio) < cfg.min_growth:
            if (1 / ratio if grow else ratio) >= cfg.min_growth:
                return False, f"{name} {OPPOSITE_MOTION[m.motion]} instead of {_GERUND[m.motion]}"
            return False, f"{name} keeps its size (area x{ratio:.2f})"
        for k in range(len(areas) - 1):
            step = areas[k + 1] / max(areas[k], 1)
            if (step if grow else 1 / step) < 1 - cfg.area_slack:
                return False, f"{name} {'shrinks' if grow else 'grows'} between frames {k} and {k + 1}"
        why = _still(m, track, cfg)
        return (False, why) if why else (True, f"{name} {m.motion} (area x{ratio:.2f})")
    dx, dy = MOVES[m.motion]
    along = [s.x * dx + s.y * dy for s in track]  # larger further in the named direction
    across = [s.y if dx else s.x for s in track]
    shift, cross = along[-1] - along[0], across[-1] - across[0]
    if abs(shift) < cfg.min_shift and abs(cross) < cfg.min_shift:
        return False, f"{name} does not move (it shifts {max(abs(shift), abs(cross)):.2f})"
    if abs(cross) > cfg.max_cross * abs(shift):
        way = ("down" if cross > 0 else "up") if dx else ("right" if cross > 0 else "left")
        return False, f"{name} moves {way}, not {m.motion}"
    if shift < 0:
        return False, f"{name} moves {OPPOSITE_MOTION[m.motion]}, not {m.motion}"
    for k in range(len(along) - 1):
        if along[k + 1] - along[k] < -cfg.step_slack:
            return False, f"{name} moves back and forth ({OPPOSITE_MOTION[m.motion]} from frame {k} to {k + 1})"
    return True, f"{name} moves {m.motion} by {shift:.2f}"


def verify_clip(
    clip, prompt: str | ClipSpec, config: ClipVerifierConfig | None = None, name: str | None = None
) -> ClipVerdict:
    """Check a clip (see :func:`read_clip` for the forms) against a clip prompt: every frame a clean scene, each
    named object found by its colour in each frame, its shape by majority, then its motion. Returns a
    :class:`ClipVerdict`; a clip that cannot be read (no frames, frames of different sizes) raises
    :class:`ShapesError` naming ``name``."""
    config = config or ClipVerifierConfig()
    spec = prompt if isinstance(prompt, ClipSpec) else parse_clip_prompt(prompt)
    frames = read_clip(clip, name)
    tracks: list[list[Sighting | None]] = [[] for _ in spec.movers]
    for k, frame in enumerate(frames):
        dets, issue = inspect_scene(frame, config.image)
        if issue is not None:
            return ClipVerdict(False, f"frame {k} is {NOT_CLEAN}{issue}", spec.category, clean=False)
        for m, track in zip(spec.movers, tracks):
            same = [d for d in dets if d.colour == m.colour]
            if len(same) > 1:
                return ClipVerdict(False, f"frame {k} shows {len(same)} {m.colour} objects", spec.category)
            track.append(Sighting(same[0].x, same[0].y, same[0].area, same[0].shape) if same else None)
    done = tuple(tuple(t) for t in tracks)
    reasons = []
    for m, track in zip(spec.movers, tracks):
        shapes = [s.shape for s in track if s is not None]
        if not shapes:
            return ClipVerdict(False, f"no {m.colour} object in any frame", spec.category, done)
        read = max(SHAPES, key=shapes.count)
        if shapes.count(m.shape) * 2 < len(shapes):
            return ClipVerdict(False, f"the {m.colour} object is a {read}, not a {m.shape}", spec.category, done)
        if spec.category == "order":
            k, why = _appearance(m, [s is not None for s in track], True)
            if why is None:
                why = _still(m, track, config)
            if why is not None:
                return ClipVerdict(False, why, spec.category, done)
            reasons.append(k)
            continue
        ok, why = _check_motion(m, track, config)
        if not ok:
            return ClipVerdict(False, why, spec.category, done)
        reasons.append(why)
    if spec.category == "order":
        (a, b), (first, second) = reasons, spec.movers
        if a == b:
            return ClipVerdict(
                False, f"the {first.noun} and the {second.noun} appear together (frame {a})", "order", done
            )
        if a > b:
            return ClipVerdict(
                False, f"the {second.noun} appears first (frame {b}), then the {first.noun} (frame {a})", "order", done
            )
        return ClipVerdict(
            True, f"the {first.noun} appears at frame {a}, the {second.noun} at frame {b}", "order", done
        )
    return ClipVerdict(True, "; ".join(reasons), spec.category, done)


__all__ = ["ClipVerdict", "ClipVerifierConfig", "Sighting", "read_clip", "verify_clip"]
