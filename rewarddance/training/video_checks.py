"""The diffusion trainers' checks and settings for video pipelines (phase 2 of :mod:`.diffusion_loop`): what a
video pipeline, its prompts (and, image-to-video, their images), its judge and its context must satisfy before
training, how many frames the judge sees and how many text tokens a video pipeline takes.

Image-to-video pipelines (``WanImageToVideoPipeline``, ``LTXImageToVideoPipeline``) train from a ``.jsonl`` prompts
file whose every line gives the conditioning image beside the prompt, ``{"prompt": "...", "image": "img/0.png"}``
(a path relative to the file's folder): :func:`read_prompt_lines` reads each line as an
:class:`~rewarddance.video_pipelines.ImagePrompt`, a prompt that carries its image through the trainers to the
sampler, and (``first_frame_context``) to the judge as the clip's first frame (:func:`judge_context`)."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

from ..pipelines import VIDEO_FAMILIES, PipelineError
from .refl_config import DiffusionTrainConfig


def read_prompt_lines(path: Path) -> list:
    """The prompts of a ``.jsonl`` file, one :class:`~rewarddance.video_pipelines.ImagePrompt` per line: its
    ``prompt`` string and its ``image`` path (relative to the file's folder; None when the line has none), each named
    ``file:line`` in errors. An image path must be a file."""
    from ..manifest import ManifestError, read_jsonl
    from ..video_pipelines import ImagePrompt

    path = Path(path)
    prompts = []
    for line_no, row in read_jsonl(path):
        where = f"{path}:{line_no}"
        if not isinstance(row.get("prompt"), str):
            raise ManifestError(f"{where}: needs a 'prompt' string")
        image = row.get("image")
        if image is not None:
            if not isinstance(image, str) or not image.strip():
                raise ManifestError(f"{where}: 'image' must be the path of an image file, got {image!r}")
            image = path.parent / image
            if not image.is_file():
                raise ManifestError(f"{where}: image {image} is not a file")
            image = str(image)
        prompts.append(ImagePrompt(row["prompt"], image, where))
    return prompts


def check_prompt_images(cfg: DiffusionTrainConfig, pipe) -> None:
    """An image-to-video pipeline needs an image on every line of ``prompts`` and ``eval_prompts`` (``.jsonl`` files);
    any other pipeline takes none. The error names the file and line (or the setting)."""
    from ..video_pipelines import pipeline_task

    name, i2v = type(pipe).__name__, pipeline_task(pipe) == "i2v"
    for field_name in ("prompts", "eval_prompts"):
        source = getattr(cfg, field_name)
        if not source:
            continue
        if not (isinstance(source, str) and source.endswith(".jsonl")):
            if i2v:
                raise ValueError(
                    f"{field_name}: {name} is an image-to-video pipeline; give a .jsonl file whose every line has a "
                    '"prompt" and an "image" (a path relative to the file)'
                )
            continue
        for prompt in read_prompt_lines(Path(source)):
            if i2v and prompt.image is None:
                raise ValueError(f"{prompt.where}: no 'image', but {name} is image-to-video (every line needs one)")
            if not i2v and prompt.image is not None:
                raise ValueError(f"{prompt.where}: has an 'image', but {name} is not an image-to-video pipeline")


def check_pipeline_media(cfg: DiffusionTrainConfig, pipe, family: str) -> None:
    """Phase 2, before the judge loads: the settings for clips given to an image pipeline are errors; of the video
    pipelines the trainers take those that the sampler drives (Wan 2.1 and Wan image-to-video, Wan 2.2's two experts:
    ``experts``, :func:`~.experts.check_experts`; CogVideoX, LTX-Video and its image-to-video); prompt images must match
    the pipeline (:func:`check_prompt_images`); ``use_dynamic_cfg`` needs CogVideoX."""
    from .experts import check_experts

    name = type(pipe).__name__
    if cfg.use_dynamic_cfg and family != "cogvideox":
        raise ValueError(f"use_dynamic_cfg: {name} has no dynamic guidance (CogVideoX pipelines only); set it false")
    check_experts(cfg, pipe)
    check_prompt_images(cfg, pipe)
    if family not in VIDEO_FAMILIES:
        for field_name in ("num_frames", "reward_frames"):
            if getattr(cfg, field_name) is not None:
                raise ValueError(f"{field_name}: {name} makes images; {field_name} is a setting of video pipelines")
        return
    from ..video_pipelines import IMAGE_TO_VIDEO, TEXT_TO_VIDEO, pipeline_task

    if pipeline_task(pipe) is None:
        raise PipelineError(
            f"pretrained: {name} is not a pipeline the trainers drive ({', '.join(TEXT_TO_VIDEO + IMAGE_TO_VIDEO)})"
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
    from ..video_pipelines import pipeline_task

    if cfg.first_frame_context and pipeline_task(pipe) == "i2v" and not context.for_video:
        raise ValueError(
            f"first_frame_context: task {cfg.task!r} cannot show the judge the conditioning image (a video task "
            "can); choose one, or set first_frame_context false"
        )
    params = inspect.signature(rm.score).parameters.values()
    if not any(p.name == "videos" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        judge = getattr(rm, "url", None) or cfg.reward_model
        raise ValueError(
            f"reward_model {judge}: this judge takes no videos (its score() has no videos=); {name} makes clips, "
            "so give a judge that scores videos (a RewardModel, or a served one)"
        )
    if cfg.reward_frames is not None and cfg.reward_frames > clip_frames:
        raise ValueError(
            f"reward_frames {cfg.reward_frames} is more than the {clip_frames} frames of a clip of {name} "
            f"(num_frames {cfg.num_frames if cfg.num_frames is not None else 'default'})"
        )
    if cfg.verifier == "shapes":
        raise ValueError(f"verifier shapes checks images; {name} makes clips (use verifier auto or none)")


def judge_context(cfg: DiffusionTrainConfig, context, prompts):
    """The judge's context for the clips of ``prompts`` (one prompt for every clip, or one per clip): with
    ``first_frame_context`` and prompts that carry images (image-to-video), ``context`` with each clip's conditioning
    image as its first frame; else ``context`` itself."""
    many = isinstance(prompts, (list, tuple))
    images = [getattr(p, "image", None) for p in (prompts if many else [prompts])]
    if not cfg.first_frame_context or not images or any(x is None for x in images):
        return context
    return replace(context, first_frame=images if many else images[0])


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
