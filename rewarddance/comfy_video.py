"""Videos in the ComfyUI nodes (Score Videos, Compare Videos; Best-of-N Select and the Reward-Guided Sampler on
videos), testable without ComfyUI; :mod:`rewarddance.comfy` holds the rest of the nodes' logic.

ComfyUI has no batch-of-videos type. A video travels as an IMAGE batch of its frames ``[T, H, W, C]`` (several
videos: their frames one after another, ``frames_per_video`` each), or as a VIDEO object (Load Video, Create Video)
whose ``get_components()`` gives those frames and their frame rate; the nodes' ``frame_rate`` input gives an
IMAGE batch one, and a VIDEO's own rate wins over it. Video models' latents are 5-D (Wan:
``[B, C, T, H, W]``) and ComfyUI's video VAEs decode them to ``[B, T, H, W, C]``. Whatever the input, the judge gets
each video as ``[T', 3, H, W]`` frames sampled here (:func:`sample_clip`) and scores it with ``videos=``
(:mod:`rewarddance.video`); when the frame rate is known the frames go as a :class:`~rewarddance.video.Clip` that
carries it and the sampled indices, so the judges whose positions or prompt hold time (Qwen2.5-VL, Qwen3-VL) are
told when each frame was taken.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from .comfy import NodeInputError, _ctx, _judge_name, _preference_table, frames_of, to_bchw
from .context import RewardContext
from .judge_info import mismatches
from .video import Clip, FrameSample, VideoError, sample_indices
from .video_pipelines import JUDGE_FRAMES, judge_sampling

log = logging.getLogger(__name__)


@dataclass
class VideoBatch:
    """Videos from one node input: each an IMAGE ``[T, H, W, C]`` of its frames, their frame rate (frames per
    second) when known (a VIDEO's, or the node's ``frame_rate`` for an IMAGE batch), and where that rate came from,
    for the node's text output ("" when unknown)."""

    frames: list[torch.Tensor]
    frame_rate: float | None = None
    rate_note: str = ""


def split_videos(image: torch.Tensor, frames_per_video: int = 0, name: str = "video") -> list[torch.Tensor]:
    """An IMAGE batch of frames ``[N, H, W, C]`` -> videos ``[T, H, W, C]``: the whole batch as one video
    (``frames_per_video`` 0), else consecutive runs of ``frames_per_video`` frames, which must divide ``N``."""
    to_bchw(image, name)  # the checks: an IMAGE batch, not empty, finite
    if isinstance(frames_per_video, bool) or not isinstance(frames_per_video, int) or frames_per_video < 0:
        raise NodeInputError(f"frames_per_video must be 0 (one video) or a positive number, got {frames_per_video!r}")
    N = image.shape[0]  # frames of every video, one video after another
    if frames_per_video == 0:
        return [image]
    if N % frames_per_video:
        raise NodeInputError(
            f"{name}: {N} frames do not split into videos of frames_per_video = {frames_per_video}; "
            "the batch size must be a multiple of it (0: the whole batch is one video)"
        )
    return list(image.split(frames_per_video))


def check_frame_rate(frame_rate) -> float | None:
    """The node's ``frame_rate`` input (0: unknown) -> frames per second or None; a clear error if it is bad."""
    if isinstance(frame_rate, bool) or not isinstance(frame_rate, (int, float)) or not frame_rate >= 0:
        raise NodeInputError(
            f"frame_rate must be 0 (unknown) or a positive number of frames per second, got {frame_rate!r}"
        )
    if not math.isfinite(frame_rate):
        raise NodeInputError(f"frame_rate must be a finite number of frames per second, got {frame_rate!r}")
    return float(frame_rate) or None


def video_input(value, frames_per_video: int = 0, name: str = "video", frame_rate: float = 0.0) -> VideoBatch:
    """A node's video input -> :class:`VideoBatch`: an IMAGE batch of frames (split by :func:`split_videos`), whose
    rate is ``frame_rate`` (0: unknown), or a ComfyUI VIDEO (anything with ``get_components()``: its ``images``
    are the frames, ``frame_rate`` their rate, which wins over the node's ``frame_rate``)."""
    given, rate, note = check_frame_rate(frame_rate), None, ""
    if hasattr(value, "get_components"):
        parts = value.get_components()
        value, rate = parts.images, getattr(parts, "frame_rate", None)
        rate = float(rate) if rate else None
        if rate is not None:
            note = f"{name}: {rate:g} fps (the VIDEO's own)"
            if given is not None and abs(given - rate) > 1e-6 * rate:
                note += f"; frame_rate {given:g} differs and is not used"
    if rate is None and given is not None:
        rate, note = given, f"{name}: {given:g} fps (the frame_rate input)"
    return VideoBatch(split_videos(value, frames_per_video, name), rate, note)


def _with_rates(text: str, *batches: VideoBatch) -> str:
    """A node's text output with a last line naming each input's frame rate and its source, when one is known."""
    notes = [b.rate_note for b in batches if b.rate_note]
    return text + ("\nframe rate: " + "; ".join(notes) if notes else "")


def sample_clip(
    frames: torch.Tensor, num_frames: int = 0, fps: float = 0.0, frame_rate: float | None = None, name: str = "video"
) -> tuple[torch.Tensor, list[int]]:
    """The frames the judge sees of one video ``[T, H, W, C]``: ``([T', 3, H, W], their indices)``. ``fps`` > 0:
    that many per second, which needs ``frame_rate``; else ``num_frames`` spaced uniformly, first and last included
    (every frame when 0 or when the video is shorter)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 0:
        raise NodeInputError(f"num_frames must be 0 (every frame) or a positive number, got {num_frames!r}")
    if not isinstance(fps, (int, float)) or fps < 0:
        raise NodeInputError(f"fps must be 0 (use num_frames) or a positive number, got {fps!r}")
    T = frames.shape[0]
    try:
        if fps > 0:
            if not frame_rate:
                raise NodeInputError(
                    f"fps: sampling {fps:g} frames per second needs the frame rate of {name}, which an IMAGE batch "
                    "does not carry; set frame_rate, give a VIDEO (Create Video) or use num_frames"
                )
            idx = sample_indices(T, fps=float(fps), source_fps=frame_rate, name=name)
        else:
            idx = sample_indices(T, min(num_frames, T) if num_frames else None, name=name)
    except VideoError as err:
        raise NodeInputError(str(err)) from err
    return to_bchw(frames[idx], name), idx


def _frames_note(idx: list[int], total: int, rate: float | None) -> str:
    """Which frames were judged, for the tables: ``8 of 33 (0-32)``, with their times when the rate is known."""
    note = f"{len(idx)} of {total} ({idx[0]}-{idx[-1]})"
    return note + (f" {idx[0] / rate:.2f}-{idx[-1] / rate:.2f} s" if rate else "")


def video_context(context: dict | None, node: str) -> RewardContext | None:
    """The context for judging videos (None: the library's default for videos, task video_alignment). A reference
    image and reasoning-first chains of thought are refused; judgment-first keeps its verdict, without the reason."""
    if context is None:
        return None
    ctx, ref = _ctx(context)
    if ref is not None:
        raise NodeInputError(
            f"context: {node} judges videos and cannot compare them with a reference image; "
            "compare two videos with Compare Videos"
        )
    if ctx.cot == "reasoning_first":
        raise NodeInputError(
            "context: cot = reasoning_first decodes a reason before the verdict, which videos do not support yet; "
            "use judgment_first or none"
        )
    if not ctx.for_video:
        log.warning("%s: task %r asks about images; the video_* tasks ask about videos", node, ctx.task)
    return dataclasses.replace(ctx, decode_reasons=False) if ctx.decode_reasons else ctx


def sample_videos(batch: VideoBatch, num_frames: int, fps: float, name: str):
    """Each video of ``batch`` sampled by :func:`sample_clip`: ``(clips, notes for the tables)``; a clip is a
    :class:`~rewarddance.video.Clip` recording its indices and the frame rate when that is known, else its frames."""
    clips, notes = [], []
    for i, v in enumerate(batch.frames):
        label = name if len(batch.frames) == 1 else f"{name} {i}"
        clip, idx = sample_clip(v, num_frames, fps, batch.frame_rate, label)
        if batch.frame_rate:
            clip = Clip(clip, FrameSample(label, tuple(idx), v.shape[0], batch.frame_rate))
        clips.append(clip)
        notes.append(_frames_note(idx, v.shape[0], batch.frame_rate))
    return clips, notes


def score_videos(
    rm,
    video,
    prompt: str,
    context: dict | None = None,
    frames_per_video: int = 0,
    num_frames: int = JUDGE_FRAMES,
    fps: float = 0.0,
    frame_rate: float = 0.0,
):
    """Scores of the videos of one input (an IMAGE batch of frames, at ``frame_rate`` when not 0, or a VIDEO, see
    :func:`video_input`), each judged on the frames :func:`sample_clip` picks: ``(scores list, IMAGE of every
    video's frames sorted best first, table text)``."""
    batch = video_input(video, frames_per_video, frame_rate=frame_rate)
    ctx = video_context(context, "Score Videos")
    clips, notes = sample_videos(batch, num_frames, fps, "video")
    out = rm.score(videos=clips, prompts=prompt, context=ctx)
    scores = out.p_yes.tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    lines = ["rank  video  p_yes    margin  frames"]
    for rank, i in enumerate(order, 1):
        lines.append(f"{rank:>4}  {i:>5}  {scores[i]:.4f}  {float(out.margin[i]):+.3f}  {notes[i]}")
    return scores, torch.cat([batch.frames[i] for i in order]), _with_rates("\n".join(lines), batch)


def compare_videos(
    rm,
    video_a,
    video_b,
    prompt: str,
    context: dict | None = None,
    frames_per_video: int = 0,
    num_frames: int = JUDGE_FRAMES,
    fps: float = 0.0,
    frame_rate: float = 0.0,
):
    """P(video b better than video a) per pair, asked as :func:`rewarddance.comfy.compare_images` asks (a pointwise
    judge: Bradley-Terry on the two scores), one video on a side paired with every video of the other: ``(p list,
    IMAGE of the winners' frames one video after another, details text)``; ``frame_rate``: an IMAGE input's."""
    a = video_input(video_a, frames_per_video, "video_a", frame_rate)
    b = video_input(video_b, frames_per_video, "video_b", frame_rate)
    na, nb = len(a.frames), len(b.frames)
    if na != nb and 1 not in (na, nb):
        raise NodeInputError(f"video_a has {na} videos and video_b {nb}: give equal numbers or one video on a side")
    ctx = video_context(context, "Compare Videos")
    ca, notes_a = sample_videos(a, num_frames, fps, "video_a")
    cb, notes_b = sample_videos(b, num_frames, fps, "video_b")
    n = max(na, nb)
    fa, fb = (a.frames * n if na == 1 else a.frames), (b.frames * n if nb == 1 else b.frames)
    ca, cb = (ca * n if na == 1 else ca), (cb * n if nb == 1 else cb)
    notes_a, notes_b = (notes_a * n if na == 1 else notes_a), (notes_b * n if nb == 1 else notes_b)
    if context is not None:
        for line in mismatches(getattr(rm, "trained_for", None), _judge_name(rm), cot=ctx.cot):
            log.warning("Compare Videos: %s", line)
    pref = rm.prefer(videos=(ca, cb), prompts=prompt, context=ctx)
    p = pref.p_b_better.tolist()
    winners = [fb[i] if p[i] > 0.5 else fa[i] for i in range(n)]
    if len({tuple(w.shape[1:]) for w in winners}) > 1:
        raise NodeInputError("the winners have different sizes; ComfyUI batches need one size")
    notes = [f"{x} | {y}" for x, y in zip(notes_a, notes_b)]
    return p, torch.cat(winners), _with_rates(_preference_table(pref, "video", notes), a, b)


def score_decoded_videos(
    rm, decoded: list[torch.Tensor], prompt: str, context: dict | None = None, judge_frames: int = JUDGE_FRAMES
) -> list[float]:
    """P(yes) of the first video of each video VAE output ``[B, T, H, W, C]``, judged on ``judge_frames`` frames
    spaced evenly (fewer when the videos are shorter), as the Reward-Guided Sampler's candidates."""
    ctx = video_context(context, "Reward-Guided Sampler")
    clips = [to_bchw(frames_of(d), "decoded video") for d in decoded]
    return rm.score(
        videos=clips, prompts=prompt, context=ctx, num_frames=judge_sampling(clips, judge_frames)
    ).p_yes.tolist()
