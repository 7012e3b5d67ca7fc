"""Video input for the reward model: decoding, uniform frame sampling, and scoring videos (``videos=``).

:meth:`RewardModel.score`, :meth:`~RewardModel.compare` and :meth:`~RewardModel.reward` hand their ``videos=``
argument here. A video is a ``[T, 3, H, W]`` tensor in [0, 1] (or one row of a ``[B, T, 3, H, W]`` batch), a list of
frames (PIL images, arrays, ``[3, H, W]`` tensors or image paths), or a file: mp4, webm, gif and whatever else FFmpeg
reads, decoded with PyAV (``pip install rewarddance[video]``), or a folder of frame images in name order.

Frames are sampled uniformly before anything else: ``num_frames`` picks that many, the first and the last included
(``round(linspace(0, T - 1, n))``, as qwen-vl-utils does), ``fps`` picks ``round(duration * fps)`` of them (the
video's frame rate must be known: files only). Which frames were used is kept in :class:`FrameSample`.

Families whose processor takes videos natively (Qwen2-VL, Qwen2.5-VL, Qwen3-VL: temporal patches, ``video_grid_thw``
and M-RoPE positions; LLaVA-OneVision) get the clip through the processor's ``videos=`` path and, for the
differentiable reward, :func:`rewarddance.preprocess.video_inputs`. The others see the frames as consecutive images.
Either way the prompt's token count is checked against the context, and an error names the video that does not fit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import MAX_IMAGE_PIXELS, ImageError, check_pixels, load_image, to_tensor

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class VideoError(ImageError):
    """A video that cannot be used; the message names it."""


class VideoTooLongError(VideoError):
    """A video's frames do not fit in the model's context window."""


@dataclass(frozen=True)
class FrameSample:
    """Which frames of one video were scored: ``indices`` into its ``source_frames`` frames, and their times in
    seconds when its frame rate ``source_fps`` is known (files)."""

    name: str
    indices: tuple[int, ...]
    source_frames: int
    source_fps: float | None = None

    @property
    def timestamps(self) -> tuple[float, ...] | None:
        return None if self.source_fps is None else tuple(i / self.source_fps for i in self.indices)


@dataclass
class Clip:
    """Sampled frames ``[T, 3, H, W]`` float in [0, 1] (gradients kept from a tensor input) and where they came
    from."""

    frames: torch.Tensor
    sample: FrameSample


# ---------------------------------------------------------------------------------------------------- sampling
def check_sampling(num_frames, fps) -> None:
    """``ValueError`` for a bad ``num_frames`` / ``fps`` pair (both given, not positive)."""
    if num_frames is not None and fps is not None:
        raise ValueError("num_frames and fps: give one of them, not both")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")


def sample_indices(
    total: int, num_frames: int | None = None, fps: float | None = None, source_fps=None, name="video"
) -> list[int]:
    """Uniformly spaced frame indices of a ``total``-frame video (all of them when neither is given)."""
    check_sampling(num_frames, fps)
    if total < 1:
        raise VideoError(f"{name}: the video has no frames")
    if fps is not None:
        if not source_fps:
            raise VideoError(
                f"{name}: sampling by fps needs the video's frame rate, which this input does not carry; "
                "give num_frames instead (or a video file)"
            )
        num_frames = min(total, max(1, round(total / source_fps * fps)))
    if num_frames is None:
        return list(range(total))
    if num_frames > total:
        raise VideoError(f"{name}: num_frames={num_frames} but the video has only {total} frames")
    return [int(i) for i in np.round(np.linspace(0, total - 1, num_frames))]


# ---------------------------------------------------------------------------------------------------- decoding
def _decode_file(path: Path, label: str, num_frames, fps) -> Clip:
    """Decode the sampled frames of a video file with PyAV (two passes when sampling: count, then keep)."""
    try:
        import av
    except ImportError as err:
        raise ImportError(f"{label}: decoding video files needs PyAV; pip install 'rewarddance[video]'") from err

    def frames_of(container):
        stream = container.streams.video[0]
        return stream, container.decode(stream)

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{label}: the file has no video stream")
            stream, frames = frames_of(container)
            rate = stream.average_rate or stream.guessed_rate
            source_fps = float(rate) if rate else None
            if num_frames is None and fps is None:
                kept = [f.to_ndarray(format="rgb24") for f in frames]
                total = len(kept)
            else:
                total = sum(1 for _ in frames)
        indices = list(range(total)) if num_frames is None and fps is None else None
        if indices is None:
            indices = sample_indices(total, num_frames, fps, source_fps, label)
            wanted, kept = set(indices), []
            with av.open(str(path)) as container:
                for k, f in enumerate(frames_of(container)[1]):
                    if k in wanted:
                        kept.append(f.to_ndarray(format="rgb24"))
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError, EOFError) as err:
        raise VideoError(f"{label}: unreadable or truncated video file ({err})") from err
    if not kept or len(kept) != len(indices):
        raise VideoError(f"{label}: the video has no frames" if not kept else f"{label}: frames changed on re-reading")
    h, w = kept[0].shape[:2]
    if h * w > MAX_IMAGE_PIXELS:
        raise VideoError(f"{label}: frames of {w}x{h} pixels exceed the limit of {MAX_IMAGE_PIXELS:,}")
    frames = torch.from_numpy(np.stack(kept)).permute(0, 3, 1, 2).float().div_(255.0)
    return Clip(frames, FrameSample(label, tuple(indices), total, source_fps))


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _frames_tensor(frames: list, label: str) -> torch.Tensor:
    """A list of frames (paths, PIL images, arrays or tensors) -> ``[T, 3, H, W]``, float tensors kept as they are
    (their gradients too)."""
    out = []
    for k, f in enumerate(frames):
        name = f"{label} frame {k}"
        if isinstance(f, torch.Tensor) and torch.is_floating_point(f) and f.ndim == 3 and f.shape[0] == 3:
            check_pixels(f, name)
            out.append(f)
        else:
            out.append(to_tensor(load_image(f, name=name)))
        if out[-1].shape != out[0].shape:
            raise VideoError(
                f"{label}: frame {k} is {tuple(out[-1].shape[-2:])} but frame 0 is {tuple(out[0].shape[-2:])}; "
                "the frames of a video must have one size"
            )
    if not out:
        raise VideoError(f"{label}: the video has no frames")
    return torch.stack(out)


def load_video(src, name: str | None = None, num_frames: int | None = None, fps: float | None = None) -> Clip:
    """Any supported video input -> its sampled :class:`Clip`. ``VideoError`` names ``name`` (or the path) for an
    unreadable, empty or inconsistent video and for sampling it cannot do."""
    label = name or (str(src) if isinstance(src, (str, os.PathLike)) else f"<{type(src).__name__}>")
    check_sampling(num_frames, fps)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise VideoError(f"{label}: no such file or folder")
        if not path.is_dir():
            return _decode_file(path, label, num_frames, fps)
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
        if not files:
            raise VideoError(f"{label}: the folder holds no frame images ({', '.join(FRAME_SUFFIXES)})")
        indices = sample_indices(len(files), num_frames, fps, None, label)
        frames = _frames_tensor([files[i] for i in indices], label)
        return Clip(frames, FrameSample(label, tuple(indices), len(files)))
    if isinstance(src, torch.Tensor):
        if src.ndim != 4 or src.shape[1] != 3:
            raise VideoError(f"{label}: expected a [T, 3, H, W] tensor in [0, 1], got shape {tuple(src.shape)}")
        frames = src.float().div(255.0) if src.dtype == torch.uint8 else src
        if frames.shape[0] > 0:
            check_pixels(frames, label)
    elif isinstance(src, (list, tuple)):
        frames = _frames_tensor(list(src), label)
    else:
        raise VideoError(f"{label}: unsupported video type {type(src).__name__}")
    indices = sample_indices(frames.shape[0], num_frames, fps, None, label)
    if indices != list(range(frames.shape[0])):
        frames = frames[indices]
    return Clip(frames, FrameSample(label, tuple(indices), src.shape[0] if isinstance(src, torch.Tensor) else len(src)))


def as_video_list(videos, what: str = "videos") -> list:
    """A batch argument -> a list of videos: a ``[B, T, 3, H, W]`` tensor, one ``[T, 3, H, W]`` tensor or path, or
    a sequence of videos."""
    if isinstance(videos, torch.Tensor):
        if videos.ndim == 5:
            return list(videos.unbind(0))
        if videos.ndim == 4:
            return [videos]
        raise VideoError(f"{what}: expected [B, T, 3, H, W] or [T, 3, H, W], got shape {tuple(videos.shape)}")
    if isinstance(videos, (str, os.PathLike)):
        return [videos]
    return list(videos)


def load_videos(videos, what: str, num_frames=None, fps=None) -> list[Clip]:
    return [load_video(v, name=_label(v, what, k), num_frames=num_frames, fps=fps) for k, v in enumerate(videos)]


def _label(src, what: str, k: int) -> str:
    return str(src) if isinstance(src, (str, os.PathLike)) else f"{what}[{k}]"


# ---------------------------------------------------------------------------------------------------- prompts
def native(rm) -> bool:
    """Whether ``rm`` takes videos through its processor's ``videos=`` path (else: frames as images)."""
    token = getattr(rm.processor, "video_token", None)
    if rm.family.video is None or getattr(rm.processor, "video_processor", None) is None or not token:
        return False
    probe = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "."}]}]
    return token in rm.processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)


def messages(context, prompt: str, pairwise: bool, frames: list[int] | None) -> list[dict]:
    """``context``'s messages with the reference and candidate images replaced by videos: one ``video`` part each,
    or (``frames``: the frame count of each video, reference first) that many image parts."""
    msgs = context.messages(prompt, pairwise)
    user = msgs[-1]["content"]
    slots = [k for k, part in enumerate(user) if part.get("type") == "image"][-(2 if pairwise else 1) :]
    for n, k in reversed(list(enumerate(slots))):
        parts = [{"type": "image"}] * frames[n] if frames is not None else [{"type": "video"}]
        user[k : k + 1] = parts
        before = user[k - 1] if k else None
        if before is not None and before.get("type") == "text":
            before["text"] = before["text"].replace("Image", "Video")  # "Image 1: " -> "Video 1: "
    return msgs


def _uint8(frames: torch.Tensor) -> torch.Tensor:
    """[T, 3, H, W] in [0, 1] -> uint8, rounded as :func:`rewarddance.images.load_image` rounds tensors."""
    return (frames.detach().float().clamp(0, 1).cpu() * 255.0 + 0.5).to(torch.uint8)


def _metadata(rm, clips: list[Clip]) -> dict:
    """Qwen3-VL writes each temporal patch's time into the prompt: give it the sampled indices and frame rate."""
    if rm.family.name != "qwen3_vl":
        return {}
    meta = [
        {
            "fps": c.sample.source_fps,
            "frames_indices": list(c.sample.indices),
            "total_num_frames": c.sample.source_frames,
        }
        for c in clips
    ]
    return {"video_metadata": meta}


def encode(rm, texts, ctx_images: list, refs: list[Clip] | None, cands: list[Clip], use_native: bool, blank=False):
    """Processor inputs of a batch: the examples' images, then (pairwise) the reference video and the candidate
    video of each item; ``blank``: zero frames of the same shapes, for a caller that supplies the pixels itself.
    The token count of each item is checked against the context, naming the video."""
    pairs = [([refs[i]] if refs is not None else []) + [cands[i]] for i in range(len(cands))]
    if use_native:
        clips = [c for pair in pairs for c in pair]
        vids = [torch.zeros(c.frames.shape, dtype=torch.uint8) if blank else _uint8(c.frames) for c in clips]
        images = [list(ctx_images) for _ in texts] if ctx_images else None
        kwargs = dict(videos=vids, do_sample_frames=False, **_metadata(rm, clips))
        inputs = rm.processor(text=texts, images=images, padding=True, return_tensors="pt", **kwargs)
    else:
        lists = [list(ctx_images) + [load_image(f) for c in pair for f in _uint8(c.frames)] for pair in pairs]
        inputs = rm.processor(text=texts, images=lists, padding=True, return_tensors="pt")
    if rm.max_length is not None:
        for i, n in enumerate(inputs["attention_mask"].sum(dim=1).tolist()):
            if n > rm.max_length:
                frames = sum(c.frames.shape[0] for c in pairs[i])
                raise VideoTooLongError(
                    f"{cands[i].sample.name}: with {frames} frames the prompt is {n} tokens, longer than the "
                    f"model's context of {rm.max_length}; sample fewer frames (num_frames= or fps=)"
                )
    return inputs


# ---------------------------------------------------------------------------------------------------- scoring
def _prepare(rm, videos, prompts, references, context, pairwise: bool, num_frames, fps):
    from .model import RewardContext

    context = context or RewardContext()
    if context.wants_reasons:
        raise ValueError("videos: decoded reasons (cot='reasoning_first' or decode_reasons) take images only so far")
    raw = as_video_list(videos, "videos")
    if not raw:
        raise ValueError("videos: the batch is empty")
    if pairwise and references is None:
        raise ValueError("references: pairwise comparison of videos needs a reference video per candidate")
    raw_refs = as_video_list(references, "references") if pairwise else None
    if pairwise and len(raw_refs) == 1 and len(raw) > 1:
        raw_refs = raw_refs * len(raw)
    _, prompts, _ = rm._items(list(range(len(raw))), prompts, raw_refs, context, pairwise)
    cands = load_videos(raw, "videos", num_frames, fps)
    refs = load_videos(raw_refs, "references", num_frames, fps) if pairwise else None
    return context, prompts, cands, refs


def _texts(rm, prompts, context, pairwise, cands, refs, use_native) -> list[str]:
    out = []
    for i, p in enumerate(prompts):
        counts = None if use_native else [c.frames.shape[0] for c in ([refs[i]] if pairwise else []) + [cands[i]]]
        msgs = messages(context, p, pairwise, counts)
        out.append(rm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    return out


def _batches(cands: list[Clip], refs: list[Clip] | None, size: int) -> list[list[int]]:
    """Item indices in batches of at most ``size`` whose videos have the same shapes (the stock processors stack
    the frames of a batch)."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cands):
        key = (tuple(c.frames.shape), tuple(refs[i].frames.shape) if refs is not None else None)
        groups.setdefault(key, []).append(i)
    return [idx[s : s + size] for idx in groups.values() for s in range(0, len(idx), size)]


def _no_images(images, what: str) -> None:
    if images is not None:
        raise ValueError(f"{what} and videos: give one of them, not both")


@torch.no_grad()
def score_videos(rm, images, videos, prompts, references, context, batch_size, num_frames, fps, pairwise=False):
    """:meth:`RewardModel.score` / :meth:`~RewardModel.compare` of videos (pairwise with ``references``): a
    ``RewardOutput`` whose ``videos`` records the sampled frames of each candidate."""
    from .model import RewardOutput

    _no_images(images, "images")
    pairwise = pairwise or references is not None
    context, prompts, cands, refs = _prepare(rm, videos, prompts, references, context, pairwise, num_frames, fps)
    out = _score(rm, prompts, context, pairwise, cands, refs, batch_size)
    if pairwise and context.average_orders:
        swapped = _score(rm, prompts, context, pairwise, refs, cands, batch_size)
        out = ((out[0] + 1.0 - swapped[0]) / 2, (out[1] - swapped[1]) / 2)
    return RewardOutput(p_yes=out[0], margin=out[1], videos=[c.sample for c in cands])


def _score(rm, prompts, context, pairwise, cands, refs, batch_size):
    use_native = native(rm)
    texts = _texts(rm, prompts, context, pairwise, cands, refs, use_native)
    ctx_images = [load_image(x, name=f"examples[{k}]") for k, x in enumerate(context.example_images(pairwise))]
    B = len(cands)
    size = batch_size or (B if rm.device.type == "cuda" else min(B, 4))
    p_yes, margin = torch.empty(B), torch.empty(B)
    for idx in _batches(cands, refs, size):
        sub_refs = [refs[i] for i in idx] if refs is not None else None
        inputs = encode(rm, [texts[i] for i in idx], ctx_images, sub_refs, [cands[i] for i in idx], use_native)
        p, m = rm.read(rm.hidden_states(inputs)[:, -1], context)
        p_yes[idx], margin[idx] = p.float().cpu(), m.float().cpu()
    rm.stats["plain_items"] += B
    return p_yes, margin


# ---------------------------------------------------------------------------------------------------- gradients
def reward_videos(rm, pixels, videos, prompts, references, context, output: str, num_frames, fps) -> torch.Tensor:
    """:meth:`RewardModel.reward` of videos: float32 ``[B]``, differentiable in the candidates' frames (references
    are detached targets)."""
    _no_images(pixels, "pixels")
    if output not in ("p_yes", "margin", "log_p"):
        raise ValueError(f"output must be 'p_yes', 'margin' or 'log_p', got {output!r}")
    pairwise = references is not None
    context, prompts, cands, refs = _prepare(rm, videos, prompts, references, context, pairwise, num_frames, fps)
    if context.cot == "reasoning_first":
        raise ValueError("context.cot='reasoning_first': reward() cannot decode the reasoning before the verdict")
    if pairwise:
        refs = [Clip(r.frames.detach(), r.sample) for r in refs]
    p, m = _differentiable(rm, prompts, context, pairwise, cands, refs)
    if pairwise and context.average_orders:
        p_swapped, m_swapped = _differentiable(rm, prompts, context, pairwise, refs, cands)
        p, m = (p + 1.0 - p_swapped) / 2, (m - m_swapped) / 2
    if output == "margin":
        return m
    return torch.log(p.clamp_min(1e-30)) if output == "log_p" else p


def _differentiable(rm, prompts, context, pairwise, cands, refs):
    from .preprocess import image_inputs, video_inputs

    use_native = native(rm)
    texts = _texts(rm, prompts, context, pairwise, cands, refs, use_native)
    ctx = [to_tensor(load_image(x, name=f"examples[{k}]")) for k, x in enumerate(context.example_images(pairwise))]
    blanks = [Image.new("RGB", (t.shape[-1], t.shape[-2])) for t in ctx]  # the text depends on sizes only
    inputs = dict(encode(rm, texts, blanks, refs, cands, use_native, blank=True))
    clips = [[refs[i], cands[i]] if pairwise else [cands[i]] for i in range(len(cands))]
    device = cands[0].frames.device
    if use_native:
        got = video_inputs(rm.processor, [c.frames.to(device) for pair in clips for c in pair], rm.family.name)
        grid = got.get("video_grid_thw")
        if grid is not None and not torch.equal(grid.cpu(), inputs["video_grid_thw"]):
            raise RuntimeError("video preprocessing: the torch grid differs from the processor's; please report")
        inputs.update(got)
        if ctx:
            per_sample = [image_inputs(rm.processor, [t.to(device) for t in ctx], rm.family.name) for _ in texts]
            inputs.update(rm.family.stack_image_inputs(per_sample))
    else:
        lists = [
            [t.to(device) for t in ctx] + [f for c in pair for f in c.frames.to(device).unbind(0)] for pair in clips
        ]
        per_sample = [image_inputs(rm.processor, lst, rm.family.name, validate=False) for lst in lists]
        inputs.update(rm.family.stack_image_inputs(per_sample))
    return rm.read(rm.hidden_states(inputs)[:, -1], context)


__all__ = ["Clip", "FrameSample", "VideoError", "VideoTooLongError", "as_video_list", "load_video", "sample_indices"]
