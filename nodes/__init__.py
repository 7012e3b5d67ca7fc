"""RewardDance ComfyUI nodes (V3 schema). Schemas and argument plumbing only; the logic is ``rewarddance.comfy``."""

from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from ..rewarddance import comfy as rd
from ..rewarddance import comfy_video as rv
from ..rewarddance.context import COT_MODES, TASK_NAMES

RewardModelType = io.Custom("REWARDDANCE_MODEL")
ContextType = io.Custom("REWARDDANCE_CONTEXT")
CATEGORY = "RewardDance"

# ComfyUI's models/rewarddance: each reward model is a folder (a Hugging Face checkpoint), listed by the loader.
folder_paths.add_model_folder_path(rd.MODELS_FOLDER, os.path.join(folder_paths.models_dir, rd.MODELS_FOLDER))


def _roots() -> list[str]:
    return folder_paths.get_folder_paths(rd.MODELS_FOLDER)


def _prompt_input(tooltip="the text prompt the images were generated from"):
    return io.String.Input("prompt", multiline=True, default="", tooltip=tooltip)


def _rm_input():
    return RewardModelType.Input("reward_model", tooltip="a reward model from Load Reward Model")


def _ctx_input():
    return ContextType.Input("context", optional=True, tooltip="task, criteria, chain of thought, reference image")


def _video_input(name: str, tooltip: str):
    """One socket taking an IMAGE batch of frames or a VIDEO (ComfyUI versions without VIDEO: frames only)."""
    video, multi = getattr(io, "Video", None), getattr(io, "MultiType", None)
    if video is None or multi is None:
        return io.Image.Input(name, tooltip=tooltip)
    return multi.Input(name, types=[io.Image, video], tooltip=tooltip)


def _frames_per_video_input(optional=False, zero="the whole batch is one video"):
    return io.Int.Input(
        "frames_per_video",
        default=0,
        min=0,
        max=1_000_000,
        optional=optional,
        tooltip=f"0: {zero}; N: the batch holds videos of N frames each, one after another",
    )


def _num_frames_input(optional=False):
    return io.Int.Input(
        "num_frames",
        default=rd.JUDGE_FRAMES,
        min=0,
        max=4096,
        optional=optional,
        tooltip="frames of each video the judge sees, spaced evenly with the first and the last (0: every frame)",
    )


def _fps_input():
    return io.Float.Input(
        "fps",
        default=0.0,
        min=0.0,
        max=240.0,
        step=0.5,
        tooltip="or sample this many frames per second of video instead (a VIDEO input carries its frame rate; "
        "an IMAGE batch needs frame_rate); 0: use num_frames",
    )


def _frame_rate_input():
    return io.Float.Input(
        "frame_rate",
        default=0.0,
        min=0.0,
        max=1000.0,
        step=0.5,
        optional=True,
        tooltip="frames per second of an IMAGE batch of frames, for fps sampling and frame times (0: unknown); "
        "a VIDEO's own frame rate wins",
    )


class LoadRewardModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardDanceLoadRewardModel",
            display_name="Load Reward Model",
            category=f"{CATEGORY}/loaders",
            description="Load a vision-language model as a generative reward model (cached between runs).",
            inputs=[
                io.Combo.Input(
                    "model",
                    options=rd.list_models(_roots()) or ["(none found)"],
                    tooltip="a model folder in models/rewarddance",
                ),
                io.String.Input(
                    "hf_id", default="", tooltip="or a Hugging Face id (owner/name); when set it wins over `model`"
                ),
                io.Combo.Input("dtype", options=list(rd.DTYPES), default="auto", tooltip="weights dtype"),
                io.Combo.Input(
                    "quantization",
                    options=list(rd.QUANTIZATION),
                    default="none",
                    tooltip="bitsandbytes 8-bit / 4-bit loading, to fit beside a diffusion model",
                ),
                io.Combo.Input("device", options=["auto", "cpu", "cuda"], default="auto", tooltip="where it runs"),
                io.Boolean.Input(
                    "offload_others", default=False, tooltip="move other cached reward models to the CPU first"
                ),
                io.String.Input(
                    "server",
                    default="",
                    optional=True,
                    tooltip="or a served judge: http://HOST:PORT (rewarddance serve) or openai:BASE_URL#MODEL "
                    "(vLLM, SGLang); when set it wins over `model` and `hf_id`",
                ),
                io.String.Input("api_key", default="", optional=True, tooltip="the served judge's bearer key"),
            ],
            outputs=[RewardModelType.Output(display_name="reward_model")],
        )

    @classmethod
    def execute(cls, model, hf_id, dtype, quantization, device, offload_others, server="", api_key="") -> io.NodeOutput:
        if (server or "").strip():
            return io.NodeOutput(rd.CACHE.remote(server, api_key or ""))
        name = hf_id.strip() or model
        if offload_others:
            rd.CACHE.offload()
        return io.NodeOutput(rd.CACHE.get(rd.resolve_model(name, _roots()), dtype, quantization, device))


class RewardContextNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardDanceContext",
            display_name="Reward Context",
            category=CATEGORY,
            description="What the judge is asked: task preset, criteria, chain of thought, optional reference.",
            inputs=[
                io.Combo.Input("task", options=list(TASK_NAMES), default="alignment", tooltip="task preset"),
                io.String.Input("criteria", multiline=True, default="", tooltip="extra criteria for the judge"),
                io.Combo.Input("cot", options=list(COT_MODES), default="none", tooltip="chain-of-thought mode"),
                io.Image.Input("reference", optional=True, tooltip="score pairwise against this image"),
            ],
            outputs=[ContextType.Output(display_name="context")],
        )

    @classmethod
    def execute(cls, task, criteria, cot, reference=None) -> io.NodeOutput:
        return io.NodeOutput(rd.make_context(task, criteria, cot, reference))


class ScoreImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardDanceScoreImages",
            display_name="Score Images",
            category=CATEGORY,
            description="P(yes) of each image for the prompt; the batch sorted best first.",
            inputs=[_rm_input(), io.Image.Input("image", tooltip="images to score"), _prompt_input(), _ctx_input()],
            outputs=[
                io.Float.Output(display_name="scores", is_output_list=True),
                io.Image.Output(display_name="sorted"),
                io.String.Output(display_name="table"),
                io.String.Output(display_name="reasons"),
            ],
        )

    @classmethod
    def execute(cls, reward_model, image, prompt, context=None) -> io.NodeOutput:
        scores, ordered, table, reasons = rd.score_images(reward_model, image, prompt, context)
        return io.NodeOutput(scores, ordered, table, reasons)


class CompareImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardDanceCompareImages",
            display_name="Compare Images",
            category=CATEGORY,
            description="P(image b is better than image a) for the prompt (Bradley-Terry on the two scores for a "
            "judge trained pointwise), the winner of each pair, and a table naming how the judge was asked.",
            inputs=[
                _rm_input(),
                io.Image.Input("image_a", tooltip="image 1 (the reference)"),
                io.Image.Input("image_b", tooltip="image 2 (the candidate)"),
                _prompt_input(),
                _ctx_input(),
            ],
            outputs=[
                io.Float.Output(display_name="p_b_better", is_output_list=True),
                io.Image.Output(display_name="winner"),
                io.String.Output(display_name="details"),
            ],
        )

    @classmethod
    def execute(cls, reward_model, image_a, image_b, prompt, context=None) -> io.NodeOutput:
        p, winners, details = rd.compare_images(reward_model, image_a, image_b, prompt, context)
        return io.NodeOutput(p, winners, details)


class ScoreVideos(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardDanceScoreVideos",
            display_name="Score Videos",
            category=CATEGORY,
            description="P(yes) of each video for the prompt, judged on evenly spaced frames; the videos sorted best "
            "first. A video is an IMAGE batch of its frames or a VIDEO.",
            inputs=[
                _rm_input(),
                _video_input("video", "the frames of one or more videos (IMAGE), or a VIDEO"),
                _prompt_input("the text prompt the videos were generated from"),
                _frames_per_video_input(),
                _num_frames_input(),
                _fps_input(),
                _frame_rate_input(),
                _ctx_input(),
            ],
            outputs=[
                io.Float.Output(display_name="scores", is_output_list=True),
                io.Image.Output(display_name="sorted"),
                io.String.Output(display_name="table"),
            ],
        )

    @classmethod
    def execute(
        cls, reward_model, video, prompt, frames_per_video, num_frames, fps, context=None, frame_rate=0.0
    ) -> io.NodeOutput:
        scores, ordered, table = rv.score_videos(
            reward_model, video, prompt, context, frames_per_video, num_frames, fps, frame_rate
        )
        return io.NodeOutput(scores, ordered, table)


class CompareVideos(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardDanceCompareVideos",
            display_name="Compare Videos",
            category=CATEGORY,
            description="P(video b is better than video a) for the prompt (Bradley-Terry on the two scores for a "
            "judge trained pointwise), the winner of each pair, and a table naming how the judge was asked.",
            inputs=[
                _rm_input(),
                _video_input("video_a", "video 1 (the reference): frames (IMAGE) or a VIDEO"),
                _video_input("video_b", "video 2 (the candidate): frames (IMAGE) or a VIDEO"),
                _prompt_input("the text prompt the videos were generated from"),
                _frames_per_video_input(zero="each input is one video"),
                _num_frames_input(),
                _fps_input(),
                _frame_rate_input(),
                _ctx_input(),
            ],
            outputs=[
                io.Float.Output(display_name="p_b_better", is_output_list=True),
                io.Image.Output(display_name="winner"),
                io.String.Output(display_name="details"),
            ],
        )

    @classmethod
    def execute(
        cls, reward_model, video_a, video_b, prompt, frames_per_video, num_frames, fps, context=None, frame_rate=0.0
    ) -> io.NodeOutput:
        p, winners, details = rv.compare_videos(
            reward_model, video_a, video_b, prompt, context, frames_per_video, num_frames, fps, frame_rate
        )
        return io.NodeOutput(p, winners, details)


class BestOfNSelect(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RewardDanceBestOfN",
            display_name="Best-of-N Select",
            category=CATEGORY,
            description="Keep the top-k images of a batch by reward; latent and mask rows follow the images. With "
            "frames_per_video the candidates are videos (their frames one after another) and the best come back whole.",
            inputs=[
                _rm_input(),
                io.Image.Input("image", tooltip="the candidates"),
                _prompt_input(),
                io.Int.Input("top_k", default=1, min=1, max=4096, tooltip="how many to keep"),
                io.Float.Input(
                    "threshold",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="stop this branch when no kept image reaches this score (0: never)",
                ),
                io.Combo.Input(
                    "mode",
                    options=["pointwise", "tournament"],
                    default="pointwise",
                    tooltip="pointwise P(yes), or a pairwise tournament (both orders)",
                ),
                io.Latent.Input("latent", optional=True, tooltip="latents of the batch, passed through for the kept"),
                io.Mask.Input("mask", optional=True, tooltip="masks of the batch, passed through for the kept"),
                _ctx_input(),
                _frames_per_video_input(optional=True, zero="the candidates are images"),
                _num_frames_input(optional=True),
            ],
            outputs=[
                io.Image.Output(display_name="best"),
                io.Latent.Output(display_name="latent"),
                io.Mask.Output(display_name="mask"),
                io.Float.Output(display_name="scores", is_output_list=True),
            ],
        )

    @classmethod
    def execute(
        cls,
        reward_model,
        image,
        prompt,
        top_k,
        threshold,
        mode,
        latent=None,
        mask=None,
        context=None,
        frames_per_video=0,
        num_frames=rd.JUDGE_FRAMES,
    ):
        sel = rd.select_best(reward_model, image, prompt, top_k, threshold, mode, context, frames_per_video, num_frames)
        if not sel.passed:
            best = max(sel.scores[i] for i in sel.indices)
            noun = "video" if frames_per_video else "image"
            return io.NodeOutput(block_execution=f"no {noun} reached the threshold {threshold} (best {best:.4f})")
        B = len(sel.scores)  # candidates: images, or videos
        lat = rd.slice_latent(latent, sel.indices, B, frames_per_video)
        msk = rd.slice_mask(mask, sel.indices, B, frames_per_video)
        empty_latent, empty_mask = rd.placeholder_outputs(sel.images.shape[0], image.shape[1], image.shape[2])
        lat = empty_latent if lat is None else lat
        msk = empty_mask if msk is None else msk
        return io.NodeOutput(sel.images, lat, msk, sel.scores)


class RewardGuidedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return io.Schema(
            node_id="RewardDanceGuidedSampler",
            display_name="Reward-Guided Sampler",
            category=CATEGORY,
            description="Sample with ComfyUI's samplers and let the reward model choose: best-of-N over seeds, or "
            "search over paths. A video model's latents (Wan: [B, C, T, H, W]) are decoded and judged as videos.",
            inputs=[
                io.Model.Input("model", tooltip="the diffusion model"),
                io.Conditioning.Input("positive", tooltip="positive conditioning"),
                io.Conditioning.Input("negative", tooltip="negative conditioning"),
                io.Latent.Input("latent_image", tooltip="the starting latent (one image, or one video)"),
                io.Vae.Input("vae", tooltip="decodes candidates for the reward model"),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="first seed; candidates use seed, seed+1, ...",
                ),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="sampling steps"),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, tooltip="classifier-free guidance"),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, tooltip="sampler"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, tooltip="noise schedule"),
                _rm_input(),
                _prompt_input("the prompt for the reward model (the text of the positive conditioning)"),
                io.Combo.Input(
                    "strategy",
                    options=list(rd.STRATEGIES),
                    default="best_of_n",
                    tooltip="best-of-N over seeds, or search over paths (re-noise and denoise the best paths)",
                ),
                io.Int.Input(
                    "budget",
                    default=4,
                    min=1,
                    max=1024,
                    tooltip="best_of_n: samples; search_over_paths: compute in full samplings (budget x steps)",
                ),
                _ctx_input(),
                io.Int.Input(
                    "judge_frames",
                    default=rd.JUDGE_FRAMES,
                    min=1,
                    max=4096,
                    optional=True,
                    tooltip="video models: frames of each candidate video the judge sees, spaced evenly (all when "
                    "the video is shorter); images ignore it",
                ),
            ],
            outputs=[
                io.Latent.Output(display_name="latent"),
                io.Image.Output(display_name="image"),
                io.Float.Output(display_name="scores", is_output_list=True),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        latent_image,
        vae,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        reward_model,
        prompt,
        strategy,
        budget,
        context=None,
        judge_frames=rd.JUDGE_FRAMES,
    ) -> io.NodeOutput:
        import comfy.model_management
        import comfy.model_sampling
        import comfy.sample
        import comfy.samplers
        import comfy.utils

        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"][:1])
        pbar = comfy.utils.ProgressBar(rd.progress_total(strategy, budget, steps))

        def run(x, noise_seed, lo, hi, add_noise):
            noise = comfy.sample.prepare_noise(x, noise_seed) if add_noise else torch.zeros_like(x)
            return comfy.sample.sample(
                model,
                noise,
                steps,
                cfg,
                sampler_name,
                scheduler,
                positive,
                negative,
                x,
                disable_noise=not add_noise,
                start_step=lo,
                last_step=hi,
                force_full_denoise=hi >= steps,
                disable_pbar=True,
                seed=noise_seed,
            )

        def euler_step(x, sigmas):
            euler = comfy.samplers.sampler_object("euler")
            return comfy.sample.sample_custom(
                model, torch.zeros_like(x), cfg, euler, sigmas, positive, negative, x, disable_pbar=True, seed=seed
            )

        sigmas, const = None, False
        if strategy == "search_over_paths":
            sampling = model.get_model_object("model_sampling")
            sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).cpu()
            const = isinstance(sampling, comfy.model_sampling.CONST)
        res = rd.guided_sample(
            strategy,
            run,
            euler_step,
            vae.decode,
            latent,
            reward_model,
            prompt,
            seed,
            steps,
            budget,
            sigmas=sigmas,
            const=const,
            context=context,
            progress=lambda d, t: pbar.update_absolute(d, t),
            check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
            judge_frames=judge_frames,
        )
        return io.NodeOutput({"samples": res.latent}, res.image, res.scores)


class RewardDanceExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            LoadRewardModel,
            RewardContextNode,
            ScoreImages,
            CompareImages,
            ScoreVideos,
            CompareVideos,
            BestOfNSelect,
            RewardGuidedSampler,
        ]


async def comfy_entrypoint() -> RewardDanceExtension:
    return RewardDanceExtension()
