"""Video input for the reward model: decoding, uniform frame sampling, and scoring videos (``videos=``).

:meth:`RewardModel.score`, :meth:`~RewardModel.compare` and :meth:`~RewardModel.reward` hand their ``videos=``
argument here. A video is a ``[T, 3, H, W]`` tensor in [0, 1] (or one row of a ``[B, T, 3, H, W]`` batch), a list of
frames (PIL images, arrays, ``[3, H, W]`` tensors or image paths), or a file: mp4, webm, gif and whatever else FFmpeg
reads, decoded with PyAV (``pip install rewarddance[video]``), or a folder of frame images in name order; a
:class:`Clip` (frames sampled already, with their :class:`FrameSample`) is taken as it is.

Frames are sampled uniformly before anything else: ``num_frames`` picks that many, the first and the last included
(``round(linspace(0, T - 1, n))``, as qwen-vl-utils does), ``fps`` picks ``round(duration * fps)`` of them (the
video's frame rate must be known: files only). Which frames were used is kept in :class:`FrameSample`.

Families whose processor takes videos natively (Qwen2-VL, Qwen2.5-VL, Qwen3-VL: temporal patches, ``video_grid_thw``
and M-RoPE positions; LLaVA-OneVision) get the clip through the processor's ``videos=`` path and, for the
differentiable reward, :func:`rewarddance.preprocess.video_inputs`; Qwen2.5-VL and Qwen3-VL are also told when the
sampled frames were taken, when the source's frame rate is known. The others see the frames as consecutive images.
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

from .images import MAX_IMAGE_PIXELS, ImageError, as_image_list, check_pixels, load_image, to_tensor
from .preference import pair_up, preference_of

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


def write_video(path: str | os.PathLike, frames, fps: float = 8) -> Path:
    """Write a lossless mp4 (H.264 in RGB at crf 0, ``libx264rgb``) that :func:`load_video` reads back exactly:
    ``frames`` a ``[T, 3, H, W]`` tensor in [0, 1] or uint8 frames ``[T, H, W, 3]`` (an array or a list)."""
    try:
        import av
    except ImportError as err:
        raise ImportError(f"{path}: writing video files needs PyAV; pip install 'rewarddance[video]'") from err
    if isinstance(frames, torch.Tensor):
        frames = list(frames.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    frames = [np.ascontiguousarray(f) for f in frames]
    if any(f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 for f in frames):
        raise VideoError(f"{path}: frames must be a [T, 3, H, W] tensor in [0, 1] or uint8 [T, H, W, 3]")
    if not frames:
        raise VideoError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=fps, options={"crf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "rgb24"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    return path


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
    if isinstance(src, Clip):  # decoded and sampled already (rewarddance serve builds these from a request)
        if num_frames is not None or fps is not None:
            raise VideoError(f"{label}: a Clip is sampled already; leave out num_frames and fps")
        return src
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
    """A batch argument -> a list of videos: a ``[B, T, 3, H, W]`` tensor, one ``[T, 3, H, W]`` tensor, path or
    :class:`Clip`, or a sequence of videos."""
    if isinstance(videos, torch.Tensor):
        if videos.ndim == 5:
            return list(videos.unbind(0))
        if videos.ndim == 4:
            return [videos]
        raise VideoError(f"{what}: expected [B, T, 3, H, W] or [T, 3, H, W], got shape {tuple(videos.shape)}")
    if isinstance(videos, (str, os.PathLike, Clip)):
        return [videos]
    return list(videos)


def load_videos(videos, what: str, num_frames=None, fps=None) -> list[Clip]:
    """Each video loaded once: an object given several times (one reference for every candidate) gives the same
    :class:`Clip`, which the shared-prefix path recognises."""
    seen: dict[int, Clip] = {}
    for k, v in enumerate(videos):
        if id(v) not in seen:
            seen[id(v)] = load_video(v, name=_label(v, what, k), num_frames=num_frames, fps=fps)
    return [seen[id(v)] for v in videos]


def first_frames(context, B: int) -> list[Image.Image] | None:
    """The image-to-video conditioning image of each of ``B`` videos (``context.first_frame``: one image for all,
    or a list / ``[B, 3, H, W]`` tensor of one per video), or None."""
    given = context.first_frame
    if given is None:
        return None
    if not (isinstance(given, (list, tuple)) or (isinstance(given, torch.Tensor) and given.ndim == 4)):
        return [load_image(given, name=None if isinstance(given, (str, os.PathLike)) else "first_frame")] * B
    items = as_image_list(given, "first_frame")
    if len(items) == 1:
        items = items * B
    if len(items) != B:
        raise ValueError(f"first_frame: got {len(items)} images for {B} videos; give one, or one per video")
    seen: dict[int, Image.Image] = {}
    for k, x in enumerate(items):
        if id(x) not in seen:
            seen[id(x)] = load_image(x, name=None if isinstance(x, (str, os.PathLike)) else f"first_frame[{k}]")
    return [seen[id(x)] for x in items]


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
    """``context``'s messages for videos: one ``video`` part for the reference and one for the candidate, or
    (``frames``: the frame count of each video, reference first) that many image parts in their place."""
    msgs = context.messages(prompt, pairwise, video=True)
    if frames is not None:
        user = msgs[-1]["content"]
        slots = [k for k, part in enumerate(user) if part.get("type") == "video"]
        for n, k in reversed(list(enumerate(slots))):
            user[k : k + 1] = [{"type": "image"} for _ in range(frames[n])]
    return msgs


def _uint8(frames: torch.Tensor) -> torch.Tensor:
    """[T, 3, H, W] in [0, 1] -> uint8, rounded as :func:`rewarddance.images.load_image` rounds tensors."""
    return (frames.detach().float().clamp(0, 1).cpu() * 255.0 + 0.5).to(torch.uint8)


def _metadata(rm, clips: list[Clip]) -> dict:
    """The sampled indices and the source's frame rate, for the processors that read time from them: Qwen3-VL
    writes each temporal patch's time into the prompt, and Qwen2.5-VL spaces its temporal M-RoPE positions by the
    seconds a temporal patch spans (``second_per_grid_ts``: temporal_patch_size / the sampled frames' rate, kept /
    source frames x source rate, as qwen-vl-utils computes it). A clip of unknown rate (``source_fps`` None) gets
    the processor's default rate. Qwen2-VL's positions count temporal patches, with no time in them."""
    if rm.family.name not in ("qwen3_vl", "qwen2_5_vl"):
        return {}
    if rm.family.name == "qwen2_5_vl" and all(c.sample.source_fps is None for c in clips):
        return {}  # nothing to tell it: its default rate, as before
    meta = [
        {
            "fps": c.sample.source_fps,
            "frames_indices": list(c.sample.indices),
            "total_num_frames": c.sample.source_frames,
        }
        for c in clips
    ]
    return {"video_metadata": meta}


def pil_frames(clip: Clip, cache: dict | None = None) -> list[Image.Image]:
    """The frames of ``clip`` as images; ``cache`` (by clip) hands the same image objects to every item showing
    that clip, as the shared-prefix path needs."""
    if cache is None:
        return [load_image(f) for f in _uint8(clip.frames)]
    if id(clip) not in cache:
        cache[id(clip)] = (clip, [load_image(f) for f in _uint8(clip.frames)])  # the clip kept alive with its id
    return cache[id(clip)][1]


def encode(rm, texts, ctx_lists: list[list], refs, cands: list[Clip], use_native: bool, blank=False, cache=None):
    """Processor inputs of a batch: each item's context images (``ctx_lists[i]``: the examples', then the first
    frame), then (pairwise) the reference video and the candidate video; ``blank``: zero frames of the same shapes,
    for a caller that supplies the pixels itself; ``cache``: see :func:`pil_frames`. The token count of each item
    is checked against the context, naming the video."""
    pairs = [([refs[i]] if refs is not None else []) + [cands[i]] for i in range(len(cands))]
    if use_native:
        clips = [c for pair in pairs for c in pair]
        vids = [torch.zeros(c.frames.shape, dtype=torch.uint8) if blank else _uint8(c.frames) for c in clips]
        images = [list(x) for x in ctx_lists] if any(ctx_lists) else None
        kwargs = dict(videos=vids, do_sample_frames=False, **_metadata(rm, clips))
        inputs = rm.processor(text=texts, images=images, padding=True, return_tensors="pt", **kwargs)
    else:
        lists = [list(ctx_lists[i]) + [f for c in pair for f in pil_frames(c, cache)] for i, pair in enumerate(pairs)]
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
    """Checked arguments: ``(context, prompts, candidate clips, reference clips or None, context images)``; the
    context images of item ``i`` are the examples' images, then its first frame (image-to-video)."""
    from .model import RewardContext

    context = context or RewardContext(task="video_alignment")
    if context.wants_reasons:
        raise ValueError("videos: decoded reasons (cot='reasoning_first' or decode_reasons) take images only so far")

    def items(c, p, r, ctx):
        return rm._items(c, p, r, ctx, pairwise)

    prompts, cands, refs, firsts = load_batch(items, videos, prompts, references, context, pairwise, num_frames, fps)
    examples = [load_image(x, name=f"examples[{k}]") for k, x in enumerate(context.example_images(pairwise))]
    ctx = [examples + ([firsts[i]] if firsts is not None else []) for i in range(len(cands))]
    return context, prompts, cands, refs, ctx


def load_batch(items, videos, prompts, references, context, pairwise: bool, num_frames, fps):
    """The checked and decoded videos of one scoring call, for local and remote judges alike: ``(prompts, candidate
    clips, reference clips or None, first frames or None)``. ``items(cands, prompts, refs, context)`` is the judge's
    own check of the prompts and references against the batch; one reference serves every candidate."""
    raw = as_video_list(videos, "videos")
    if not raw:
        raise ValueError("videos: the batch is empty")
    if pairwise and references is None:
        raise ValueError("references: pairwise comparison of videos needs a reference video per candidate")
    raw_refs = as_video_list(references, "references") if pairwise else None
    if pairwise and len(raw_refs) == 1 and len(raw) > 1:
        raw_refs = raw_refs * len(raw)
    _, prompts, _ = items(list(range(len(raw))), prompts, raw_refs, context)
    firsts = first_frames(context, len(raw))
    cands = load_videos(raw, "videos", num_frames, fps)
    refs = load_videos(raw_refs, "references", num_frames, fps) if pairwise else None
    return prompts, cands, refs, firsts


def _texts(rm, prompts, context, pairwise, cands, refs, use_native) -> list[str]:
    out = []
    for i, p in enumerate(prompts):
        counts = None if use_native else [c.frames.shape[0] for c in ([refs[i]] if pairwise else []) + [cands[i]]]
        msgs = messages(context, p, pairwise, counts)
        out.append(rm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    return out


def _batches(cands: list[Clip], refs: list[Clip] | None, size: int, todo: list[int]) -> list[list[int]]:
    """The item indices ``todo`` in batches of at most ``size`` whose videos have the same shapes (the stock
    processors stack the frames of a batch)."""
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        c = cands[i]
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
    context, prompts, cands, refs, ctx = _prepare(rm, videos, prompts, references, context, pairwise, num_frames, fps)
    out = _score(rm, prompts, context, pairwise, cands, refs, ctx, batch_size)
    if pairwise and context.average_orders:
        swapped = _score(rm, prompts, context, pairwise, refs, cands, ctx, batch_size)
        out = ((out[0] + 1.0 - swapped[0]) / 2, (out[1] - swapped[1]) / 2)
    return RewardOutput(p_yes=out[0], margin=out[1], videos=[c.sample for c in cands])


def _score(rm, prompts, context, pairwise, cands, refs, ctx, batch_size):
    from .model import CPU_BATCH, CPU_SUFFIX_BATCH

    use_native = native(rm)
    texts = _texts(rm, prompts, context, pairwise, cands, refs, use_native)
    B = len(cands)
    cuda = rm.device.type == "cuda"
    size = batch_size or (B if cuda else min(B, CPU_BATCH))
    p_yes, margin = torch.empty(B), torch.empty(B)
    done = set()
    if rm.prefix_cache and B > 1:  # native videos: Qwen-VL and LLaVA-OneVision (prefix.score_shared_videos)
        suffix = batch_size or (B if cuda else CPU_SUFFIX_BATCH)
        done = _score_shared(rm, texts, ctx, refs, cands, use_native, context, suffix, p_yes, margin)
    todo = [i for i in range(B) if i not in done]
    for idx in _batches(cands, refs, size, todo):
        sub_refs = [refs[i] for i in idx] if refs is not None else None
        sub_ctx = [ctx[i] for i in idx]
        inputs = encode(rm, [texts[i] for i in idx], sub_ctx, sub_refs, [cands[i] for i in idx], use_native)
        p, m = rm.read(rm.hidden_states(inputs)[:, -1], context)
        p_yes[idx], margin[idx] = p.float().cpu(), m.float().cpu()
    rm.stats["plain_items"] += len(todo)
    return p_yes, margin


def _score_shared(rm, texts, ctx, refs, cands, use_native, context, suffix_batch, p_yes, margin) -> set[int]:
    """The shared-prefix path (:mod:`rewarddance.prefix`) for each group of items that differ only in their
    candidate video (the same text, context images and reference clip): the prefix runs once per group. Writes
    their scores into ``p_yes`` / ``margin`` and returns the indices it scored."""
    from .prefix import score_shared, score_shared_videos

    groups: dict[tuple, list[int]] = {}
    for i, text in enumerate(texts):
        key = (text, id(refs[i]) if refs is not None else None, *(id(x) for x in ctx[i]))
        groups.setdefault(key, []).append(i)
    cache: dict = {}  # each clip's frames as images, the same objects in every item that shows them
    done: set[int] = set()
    for idx in (idx for idx in groups.values() if len(idx) > 1):
        sub_refs = (lambda i: [refs[i]]) if refs is not None else (lambda i: None)
        full = [encode(rm, [texts[i]], [ctx[i]], sub_refs(i), [cands[i]], use_native, cache=cache) for i in idx]
        if use_native:
            res = score_shared_videos(rm, full, context, suffix_batch)
        else:
            lists = [ctx[i] + [f for c in (sub_refs(i) or []) + [cands[i]] for f in pil_frames(c, cache)] for i in idx]
            tail = cands[idx[0]].frames.shape[0]
            res = score_shared(rm, [texts[i] for i in idx], lists, context, suffix_batch, tail=tail, full=full)
        if res is not None:
            p_yes[idx], margin[idx] = res
            done.update(idx)
            rm.stats["prefix_cached_items"] += len(idx)
    return done


def prefer_videos(rm, a, b, videos, prompts, context, objective: str, batch_size, num_frames, fps):
    """:meth:`RewardModel.prefer` of two batches of videos ``videos=(a, b)``: pairwise, :meth:`~RewardModel.compare`
    with ``a`` as the reference; pointwise, each video scored alone and Bradley-Terry on the margins."""
    if a is not None or b is not None:
        raise ValueError("a, b and videos: give the two batches as videos=(a, b), not both")
    if not isinstance(videos, (tuple, list)) or len(videos) != 2:
        raise ValueError("videos: prefer() takes a pair of video batches, videos=(a, b)")
    a, b = as_video_list(videos[0], "videos[0]"), as_video_list(videos[1], "videos[1]")
    a, b = pair_up(a, b, ("videos[0]", "videos[1]"), "videos")
    kw = dict(context=context, batch_size=batch_size, num_frames=num_frames, fps=fps)
    return preference_of(  # through the judge's own verbs: a remote judge (rewarddance.openai_judge) shares this
        a,
        b,
        prompts,
        objective,
        lambda x, ref, p: rm.compare(videos=x, references=ref, prompts=p, **kw),
        lambda x, p: rm.score(videos=x, prompts=p, **kw),
    )


# ---------------------------------------------------------------------------------------------------- gradients
def reward_videos(rm, pixels, videos, prompts, references, context, output: str, num_frames, fps) -> torch.Tensor:
    """:meth:`RewardModel.reward` of videos: float32 ``[B]``, differentiable in the candidates' frames (references
    are detached targets)."""
    _no_images(pixels, "pixels")
    if output not in ("p_yes", "margin", "log_p"):
        raise ValueError(f"output must be 'p_yes', 'margin' or 'log_p', got {output!r}")
    pairwise = references is not None
    context, prompts, cands, refs, ctx = _prepare(rm, videos, prompts, references, context, pairwise, num_frames, fps)
    if context.cot == "reasoning_first":
        raise ValueError("context.cot='reasoning_first': reward() cannot decode the reasoning before the verdict")
    if pairwise:
        refs = [Clip(r.frames.detach(), r.sample) for r in refs]
    p, m = _differentiable(rm, prompts, context, pairwise, cands, refs, ctx)
    if pairwise and context.average_orders:
        p_swapped, m_swapped = _differentiable(rm, prompts, context, pairwise, refs, cands, ctx)
        p, m = (p + 1.0 - p_swapped) / 2, (m - m_swapped) / 2
    if output == "margin":
        return m
    return torch.log(p.clamp_min(1e-30)) if output == "log_p" else p


def _differentiable(rm, prompts, context, pairwise, cands, refs, ctx_images):
    from .preprocess import image_inputs, video_inputs

    use_native = native(rm)
    texts = _texts(rm, prompts, context, pairwise, cands, refs, use_native)
    ctx = [[to_tensor(x) for x in lst] for lst in ctx_images]
    blanks = [[Image.new("RGB", x.size) for x in lst] for lst in ctx_images]  # the text depends on sizes only
    inputs = dict(encode(rm, texts, blanks, refs, cands, use_native, blank=True))
    clips = [[refs[i], cands[i]] if pairwise else [cands[i]] for i in range(len(cands))]
    device = cands[0].frames.device
    if use_native:
        got = video_inputs(rm.processor, [c.frames.to(device) for pair in clips for c in pair], rm.family.name)
        grid = got.get("video_grid_thw")
        if grid is not None and not torch.equal(grid.cpu(), inputs["video_grid_thw"]):
            raise RuntimeError("video preprocessing: the torch grid differs from the processor's; please report")
        inputs.update(got)
        if any(ctx):
            per_sample = [image_inputs(rm.processor, [t.to(device) for t in lst], rm.family.name) for lst in ctx]
            inputs.update(rm.family.stack_image_inputs(per_sample))
    else:
        lists = [
            [t.to(device) for t in ctx[i]] + [f for c in pair for f in c.frames.to(device).unbind(0)]
            for i, pair in enumerate(clips)
        ]
        per_sample = [image_inputs(rm.processor, lst, rm.family.name, validate=False) for lst in lists]
        inputs.update(rm.family.stack_image_inputs(per_sample))
    return rm.read(rm.hidden_states(inputs)[:, -1], context)


__all__ = ["Clip", "FrameSample", "VideoError", "VideoTooLongError", "as_video_list", "load_video", "sample_indices"]
