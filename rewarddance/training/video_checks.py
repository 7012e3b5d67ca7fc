"""The diffusion trainers' checks and settings for video pipelines (phase 2 of :mod:`.diffusion_loop`): what a
video pipeline, its judge and its context must satisfy before training, how many frames the judge sees and how
many text tokens a video pipeline takes."""

from __future__ import annotations

import inspect

from ..pipelines import VIDEO_FAMILIES, PipelineError
from .refl_config import DiffusionTrainConfig


def check_pipeline_media(cfg: DiffusionTrainConfig, pipe, family: str) -> None:
    """Phase 2, before the judge loads: the settings for clips given to an image pipeline are errors, and of the
    video pipelines the trainers take the text-to-video ones with one denoiser (Wan 2.1, CogVideoX, LTX-Video)."""
    name = type(pipe).__name__
    if family not in VIDEO_FAMILIES:
        for field_name in ("num_frames", "reward_frames"):
            if getattr(cfg, field_name) is not None:
                raise ValueError(f"{field_name}: {name} makes images; {field_name} is a setting of video pipelines")
        return
    from ..video_pipelines import TEXT_TO_VIDEO, takes_image

    if takes_image(pipe) or not any(cls.__name__ in TEXT_TO_VIDEO for cls in type(pipe).__mro__):
        raise PipelineError(
            f"pretrained: {name} is not a text-to-video pipeline; the trainers drive {', '.join(TEXT_TO_VIDEO)} "
            "(image-to-video is not trained yet)"
        )
    if getattr(pipe, "transformer_2", None) is not None or getattr(pipe, "transformer", None) is None:
        raise PipelineError(
            f"pretrained: {name} has two experts (Wan 2.2); the LoRA trains one denoiser, so the trainers take "
            "one-expert pipelines (Wan 2.1, CogVideoX, LTX-Video) for now"
        )


def check_judge_media(cfg: DiffusionTrainConfig, pipe, rm, context, clip_frames: int | None) -> None:
    """Before training: the judge and its context can take what the pipeline makes. ``clip_frames``: the frames of
    one clip of a video pipeline (None for images). A clear one-line error names the setting that does not fit."""
    from ..context import VIDEO_TASK_NAMES

    name = type(pipe).__name__
    if clip_frames is None:
        if context.for_video:
            raise ValueError(f"task {cfg.task!r} judges videos, but {name} makes images; choose an image task")
        return
    if not context.for_video and context.task != "vqascore":
        raise ValueError(
            f"task {cfg.task!r} judges images; the clips of {name} need a video task ({', '.join(VIDEO_TASK_NAMES)})"
        )
    if context.wants_reasons:
        raise ValueError(
            f"cot {cfg.cot!r}: the judge decodes reasons for images only so far; use none or judgment_first"
        )
    params = inspect.signature(rm.score).parameters.values()
    if not any(p.name == "videos" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        judge = getattr(rm, "url", None) or cfg.reward_model
        raise ValueError(
            f"reward_model {judge}: this judge takes no videos (a served judge scores images only so far); "
            f"{name} makes clips, so load the judge locally"
        )
    if cfg.reward_frames is not None and cfg.reward_frames > clip_frames:
        raise ValueError(
            f"reward_frames {cfg.reward_frames} is more than the {clip_frames} frames of a clip of {name} "
            f"(num_frames {cfg.num_frames if cfg.num_frames is not None else 'default'})"
        )
    if cfg.verifier == "shapes":
        raise ValueError(f"verifier shapes checks images; {name} makes clips (use verifier auto or none)")


def judge_frames(cfg: DiffusionTrainConfig, clip_frames: int) -> int:
    """How many frames of a ``clip_frames``-frame clip the judge sees: ``reward_frames``, else 8 or the whole clip."""
    from ..video_pipelines import JUDGE_FRAMES

    return cfg.reward_frames if cfg.reward_frames is not None else min(JUDGE_FRAMES, clip_frames)


def video_text_length(pipe, family: str) -> int:
    """A video pipeline's own default number of text tokens, within its tokenizer's length (and CogVideoX's text
    positions)."""
    from ..video_pipelines import call_default

    n = call_default(pipe, "max_sequence_length") or 256
    limit = getattr(getattr(pipe, "tokenizer", None), "model_max_length", None)
    if isinstance(limit, int) and limit > 0:
        n = min(n, limit)
    if family == "cogvideox":
        n = min(n, pipe.transformer.config.max_text_seq_length)
    return n
