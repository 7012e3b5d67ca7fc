"""ReFL: LoRA fine-tuning of a diffusion model against a frozen generative reward model (reads top to bottom).

One step, for each prompt of the batch (as in ImageReward's ReFL and the RewardDance paper):

1. sample a stop level ``k`` uniformly in ``stop_range`` (indices into the ``num_inference_steps`` schedule);
2. denoise from fresh noise to level ``k`` without gradients;
3. one denoiser call with gradients predicts ``x0`` (the LoRA weights are the only trainable parameters);
4. decode ``x0`` with the VAE (gradients flow; checkpointed when asked) into pixels in [0, 1];
5. reward ``r = rm.reward(pixels, prompt)``, pointwise, or pairwise against a cached best-of-N reference of the
   prompt (``build_references``; the paper's default; with several cached per prompt, one is drawn per rollout);
6. loss ``relu(hinge_margin - r)`` (``loss="hinge"``) or ``-log r`` (``loss="log"``), times ``reward_scale``,
   plus ``pretrain_weight`` x the plain diffusion loss on an image-caption folder (ImageReward's regulariser).

Steps 2-5 run the ``batch_size`` prompts of a micro-batch together (:func:`rollout_rewards`): each row has its own
prompt (text conditioning, and its own negative under classifier-free guidance), noise seed, stop level and
reference. Rows may stop at different levels. Level ``j`` is denoised without gradients in one denoiser call over
the rows whose stop lies beyond ``j``; then one call with gradients per distinct stop level predicts ``x0`` for the
rows stopping there (a single call when all rows share one, as under FSDP); the ``x0`` go back into row order for
one VAE decode and one reward call over the batch. Every row thus gets exactly the arithmetic of a rollout of its
own (up to float rounding of batched kernels), the denoiser calls stay few (``max(stop)`` plus the distinct stops,
at most ``stop_range`` wide), and each call still has one timestep, as every pipeline's denoiser expects.

Everything that makes a run reproducible and resumable is keyed on ``(seed, step)``: the prompts, the noise and
the stop level of step ``s`` do not depend on what ran before, so a resumed run equals an uninterrupted one.

The engine is ``accelerate``'s (phase 1 of :mod:`.diffusion_loop`): a step is ``gradient_accumulation_steps``
micro-batches (``accelerator.accumulate``) of ``batch_size`` rows on each process, under ``accelerator.autocast()``;
over several processes DDP averages the gradients in the backward pass. The rows of all processes are drawn from one
stream and each process takes its slice, so a step trains on the same global batch however many processes share it
(two processes of ``batch_size: 1`` equal one of ``batch_size: 2``); only the pretraining items are drawn per process.
Supported pipelines are those of :mod:`rewarddance.pipelines` (SD 1.5 / 2.x, SDXL, SD3 / 3.5, Flux), the
text-to-video pipelines (Wan 2.1; Wan 2.2, a LoRA per trained expert: :mod:`.experts`; CogVideoX, LTX-Video) and the
image-to-video ones (Wan, LTX-Video; each prompt with its image, from a ``.jsonl`` file: :mod:`.video_checks`). On a
video pipeline step 4 decodes the whole clip (the VAEs are causal in time, see :mod:`rewarddance.video_pipelines`)
and step 5 shows the judge ``reward_frames`` of its frames, a random subset drawn per rollout from a generator keyed
on ``(seed, step)`` (:func:`draw_frames`): the judge's activations, kept for the backward pass, grow with the frames
it sees, and over the steps every frame is judged. The reward is pointwise there (the cached references are
images); image-to-video clips are judged with their conditioning image as the first frame (``first_frame_context``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path

import torch
import torch.nn.functional as F

from ..context import RewardContext
from ..distributed import any_process
from ..images import ImageError, load_image, to_tensor
from ..manifest import read_jsonl
from ..pipelines import VIDEO_FAMILIES, Sampler, compose, decode
from ..video_pipelines import VideoSampler, decode_clips
from .checkpoint import StopFlag
from .diffusion_loop import (
    add_lora,
    finish,
    finished,
    judge_visits,
    load_models,
    load_pipeline,
    lora_checksum,
    make_evaluator,
    open_trackers,
    pipe_denoiser,
    read_prompts,
    reward_prompts,
    runtime,
    sampler_config,
    setup_trainable,
    step_generator,
)
from .ema import lora_ema
from .experts import check_expert_levels
from .metrics import append_csv
from .refl_config import ReFLConfig
from .video_checks import check_judge_media, judge_context, judge_frames

__all__ = ["ReFLConfig", "add_lora", "load_pipeline", "pipe_denoiser", "read_prompts", "rollout_rewards", "train_refl"]


# ---------------------------------------------------------------------------------------------------- loading
def read_pretrain_folder(folder) -> list[tuple[torch.Tensor, str]]:
    """``(pixels [3, H, W], caption)`` of every item of an image-caption folder (``manifest.jsonl`` with ``image``
    and ``prompt``, as ShapesWorld writes); any unreadable image is an error naming it, raised before training."""
    from ..shapes.dataset import resolve_manifest

    manifest = resolve_manifest(folder)
    items = []
    for lineno, rec in read_jsonl(manifest):  # numbered as in the file, blank lines included
        if "image" not in rec or "prompt" not in rec:
            raise ValueError(f"{manifest}:{lineno}: needs 'image' and 'prompt'")
        try:
            items.append((to_tensor(load_image(manifest.parent / rec["image"])), rec["prompt"]))
        except ImageError as err:
            raise ValueError(f"{manifest}:{lineno}: {err}") from err
    if not items:
        raise ValueError(f"{manifest}: no items")
    return items


# ---------------------------------------------------------------------------------------------------- one step
_step_generator = step_generator  # (the name the tests and benchmarks know)


def draw_rows(n: int, prompts, stop_range, reference_images: dict, gen, ref_gen) -> list[tuple]:
    """``n`` rollout rows ``(prompt, stop level, noise seed, reference or None)``, drawn row by row from ``gen``
    (and, for a prompt with cached references, which one from ``ref_gen``)."""
    rows = []
    for _ in range(n):
        prompt = prompts[int(torch.randint(0, len(prompts), (1,), generator=gen))]
        stop = int(torch.randint(stop_range[0], stop_range[1] + 1, (1,), generator=gen))
        noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        reference = None
        if prompt in reference_images:
            choices = reference_images[prompt]
            reference = choices[int(torch.randint(0, len(choices), (1,), generator=ref_gen))]
        rows.append((prompt, stop, noise_seed, reference))
    return rows


def draw_frames(n: int, clip_frames: int, k: int, gen: torch.Generator) -> list[list[int]]:
    """For each of ``n`` rollout rows, ``k`` distinct frame indices of a ``clip_frames``-frame clip, at random
    from ``gen``, in increasing order (the frames the judge sees, in time order)."""
    return [sorted(int(i) for i in torch.randperm(clip_frames, generator=gen)[:k]) for _ in range(n)]


def rollout_rewards(
    pipe, rm, prompts, sampler_cfg, stops, noise_seeds, references, context, frames=None
) -> torch.Tensor:
    """Steps 2-5 of the module docstring for a micro-batch, all rows together: the rewards ``[B]`` with gradients
    to the LoRA. Row ``i`` is ``prompts[i]`` from the noise of ``noise_seeds[i]`` stopped at level ``stops[i]``;
    ``references`` is None (pointwise) or one reference image per row (pairwise). On a video pipeline the judge
    sees frames ``frames[i]`` of row ``i``'s clip (None: all of them)."""
    B = len(prompts)
    if not (len(stops) == len(noise_seeds) == B and (references is None or len(references) == B)):
        n_refs = "no" if references is None else len(references)
        raise ValueError(f"rollout: {B} prompts, {len(stops)} stops, {len(noise_seeds)} seeds, {n_refs} references")
    sampler = Sampler(pipe, list(prompts), sampler_cfg)
    x = sampler.initial_latents(list(noise_seeds))
    stop_of = torch.tensor(stops)
    with torch.no_grad():
        for k in range(max(stops)):
            going = (stop_of > k).nonzero().flatten()  # the rows still denoising past level k
            if len(going) == B:
                x, _ = sampler.step(x, k)
            else:
                x = x.clone()
                x[going.to(x.device)] = sampler.step(x[going.to(x.device)], k, rows=going)[0]
    parts, order = [], []
    for level in sorted(set(stops)):  # one call with gradients per distinct stop level
        rows = [i for i in range(B) if stops[i] == level]
        x0, _ = sampler.predict(x[torch.tensor(rows, device=x.device)], level, rows=rows)
        parts.append(x0)
        order += rows
    x0 = torch.cat(parts)
    if order != list(range(B)):
        x0 = x0[torch.argsort(torch.tensor(order)).to(x0.device)]  # back into row order
    if isinstance(sampler, VideoSampler):  # clips [B, T, 3, H, W], judged pointwise
        if references is not None:
            raise ValueError("references: ReFL on a video pipeline is pointwise (the cached references are images)")
        clips = decode_clips(pipe, x0, sampler.height, sampler.width, sampler.num_frames)
        if frames is not None:
            clips = torch.stack([clips[i, list(f)] for i, f in enumerate(frames)])
        return rm.reward(videos=clips, prompts=list(prompts), context=context)
    pixels = decode(pipe, x0, sampler.height, sampler.width)
    refs = None if references is None else list(references)
    return rm.reward(pixels, list(prompts), references=refs, context=context)


def pretrain_loss(pipe, item, sampler_cfg, gen: torch.Generator) -> torch.Tensor:
    """The plain diffusion loss on one image-caption item at a random level: noise MSE (VP) or velocity MSE (flow)."""
    pixels, caption = item
    sampler = Sampler(pipe, caption, sampler_cfg)
    vae = pipe.vae
    with torch.no_grad():
        size = (sampler.height, sampler.width)
        img = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False) * 2 - 1
        lat = vae.encode(img.to(vae.device, vae.dtype)).latent_dist.sample(generator=gen)
        shift = getattr(vae.config, "shift_factor", None) if sampler.family != "unet" else None
        lat = (lat - (shift or 0.0)) * vae.config.scaling_factor
        if sampler.family == "flux":
            lat = pipe._pack_latents(lat, 1, lat.shape[1], lat.shape[2], lat.shape[3])
    k = int(torch.randint(0, len(sampler.levels) - 1, (1,), generator=gen))
    noise = torch.randn(lat.shape, generator=gen).to(lat.device, lat.dtype)
    x = compose(lat, noise, sampler.levels[k])
    x0_pred, e_pred = sampler.predict(x, k)
    if sampler.scheduler_name == "FlowMatchEulerDiscreteScheduler":
        return F.mse_loss((e_pred - x0_pred).float(), (noise - lat).float())
    return F.mse_loss(e_pred.float(), noise.float())


# ---------------------------------------------------------------------------------------------------- training
def train_refl(cfg: ReFLConfig, progress: bool = True, stop_at: int | None = None, pipe=None, rm=None) -> dict:
    """Run or resume ReFL. ``pipe`` / ``rm`` may be passed already loaded (tests, notebooks); ``stop_at`` stops
    after that step as an interruption would (a checkpoint is saved). Returns rewards before/after and the log."""
    from tqdm.auto import tqdm

    from ..remote import refuse_remote
    from ..search import load_references

    # --- 0. everything that can be wrong with the config fails here, before any training
    out = Path(cfg.output_dir)
    prompts = read_prompts(cfg.prompts)
    eval_prompts, reward_on = reward_prompts(cfg, prompts)
    refs = None
    if cfg.mode == "pairwise":
        ref_dir = Path(cfg.references)
        if not (ref_dir / "manifest.jsonl").is_file():
            raise ValueError(f"references: {ref_dir} has no manifest.jsonl; run build_references first")
        refs = load_references(ref_dir)
        missing = [p for p in prompts if p not in refs]
        if missing:
            raise ValueError(f"references: {len(missing)} prompts have no cached reference (first: {missing[0]!r})")
    pretrain = read_pretrain_folder(cfg.pretrain_data) if cfg.pretrain_data and cfg.pretrain_weight > 0 else None
    refuse_remote(rm, "train-refl: rm (ReFL back-propagates the reward into the generator)")

    # --- 1. the accelerator (processes, device, mixed precision, accumulation), the dtype; 2. the pipeline, the judge
    rt = runtime(cfg)
    accelerator, state, rank, main, device, fsdp = rt.accelerator, rt.state, rt.rank, rt.main, rt.device, rt.fsdp
    pipe, rm, family = load_models(cfg, rt, pipe, rm)
    rm_on_device = judge_visits(rm, cfg, device)
    context = RewardContext(task=cfg.task, cot=cfg.cot)
    clip_frames = None  # a video pipeline's frames per clip, of which the judge sees a random reward_frames
    if family in VIDEO_FAMILIES:
        probe = Sampler(pipe, prompts[0], sampler_config(cfg, pipe, family))
        clip_frames = probe.num_frames
        stops = range(cfg.stop_range[0], cfg.stop_range[1] + 1)  # Wan 2.2: they must reach a trained expert
        check_expert_levels(cfg, pipe, probe.timesteps, stops, f"stop_range {cfg.stop_range}")
        if cfg.mode == "pairwise":
            raise ValueError(f"mode pairwise: the cached references are images; ReFL on {family} clips is pointwise")
        if pretrain is not None:
            raise ValueError(f"pretrain_data: the pretraining loss takes images; {family} makes clips")
        reward_on = reward_on.removesuffix("; ShapesWorld verifier on")
    check_judge_media(cfg, pipe, rm, context, clip_frames)
    # every cached reference of a prompt (build_references keeps top_k); one is drawn per rollout
    reference_images = {p: [to_tensor(load_image(f)) for f in v] for p, v in refs.items()} if refs else {}

    # --- 3. the trainable part: LoRA, optimiser, resume, both prepared by the accelerator
    tr = setup_trainable(cfg, pipe, rt, out)
    params, optimizer, scheduler, step = tr.params, tr.optimizer, tr.scheduler, tr.step
    ema = lora_ema(cfg, tr)  # (ema_decay: the average is what is evaluated and exported)

    def checkpoint() -> None:  # a resumed run reports the reward and evaluations its first part measured
        extra = {"reward_before": reward_before, **evaluator.state(), **ema.state()}
        tr.checkpoint(step, extra, {**(evaluator.tensors() or {}), **ema.tensors()})

    # --- 4. sampling settings (the denoiser called through the prepared model), trackers, the reward before training
    sampler_cfg = sampler_config(cfg, pipe, family, tr)
    trackers = open_trackers(cfg, out) if main else []
    evaluator = make_evaluator(cfg, pipe, rm, context, sampler_cfg, eval_prompts, out, rt, rm_on_device, trackers, tr)

    def evaluate(tag: str) -> float | None:
        with ema.applied():
            return evaluator(tag, step)

    reward_before = evaluate("") if step == 0 else tr.resumed.get("reward_before")
    window: deque = deque(maxlen=cfg.window)
    history, nan_run, nan_total = [], 0, 0
    metrics = out / "metrics.csv"
    bar = tqdm(total=cfg.max_steps, initial=step, desc="refl", disable=not progress)
    B, world, micro_batches = cfg.batch_size, accelerator.num_processes, accelerator.gradient_accumulation_steps
    lo, hi = cfg.stop_range
    # --- 5. the training steps: micro-batches of B rows per process, gradients accumulated, then one optimiser step
    with StopFlag() as flag, finished(trackers, tr):
        while not evaluator.ended(step):  # (early stopping ends it before max_steps)
            started = time.perf_counter()
            gen = _step_generator(cfg.seed, step)  # the rows of all processes: prompts, stop levels, noise seeds
            ref_gen = _step_generator(cfg.seed, step, salt=-2)  # which cached reference of each row
            shared = _step_generator(cfg.seed, step, salt=-1)  # FSDP's stop levels
            pre_gen = _step_generator(cfg.seed, step, salt=2 * rank + 1)  # this process's pretraining items
            frame_gen = _step_generator(cfg.seed, step, salt=-3)  # the frames the judge sees of each clip (video)
            optimizer.zero_grad(set_to_none=True)
            rewards, total = [], 0.0
            with rm_on_device():
                for _micro in range(micro_batches):
                    # the micro-batch of every process, drawn row by row as one rollout per prompt drew them, so a
                    # step is the same global batch on any number of processes; this process rolls out its slice
                    rows = draw_rows(world * B, prompts, cfg.stop_range, reference_images, gen, ref_gen)
                    batch, stops, noise_seeds, references = (list(c) for c in zip(*rows[rank * B : (rank + 1) * B]))
                    if fsdp:  # sharded, all processes must call the denoiser equally often: the same stop levels
                        # (drawn besides the ones above, so prompts and noise stay those of a DDP run)
                        stops = [int(torch.randint(lo, hi + 1, (1,), generator=shared)) for _ in range(B)]
                    refs_or_none = references if reference_images else None
                    seen = None  # (video) the frames of each row's clip the judge sees, drawn for every process
                    if clip_frames is not None:
                        k = judge_frames(cfg, clip_frames)
                        seen = draw_frames(world * B, clip_frames, k, frame_gen)[rank * B : (rank + 1) * B]
                    with accelerator.accumulate(tr.model):  # (the last micro-batch's backward averages over DDP)
                        with accelerator.autocast():
                            shown = judge_context(cfg, context, batch)  # (image-to-video: each row's first frame)
                            args = (pipe, rm, batch, sampler_cfg, stops, noise_seeds, refs_or_none, shown)
                            r = rollout_rewards(*args) if seen is None else rollout_rewards(*args, frames=seen)
                            if cfg.loss == "hinge":
                                per_row = F.relu(cfg.hinge_margin - r)
                            else:
                                per_row = -torch.log(r.clamp_min(1e-12))
                            loss = cfg.reward_scale * per_row.mean()
                        # every process runs every backward (DDP reduces inside them), a NaN one too: its step is
                        # skipped below; accelerate divides each by the number of micro-batches. (Rows that all
                        # stop on an untrained Wan 2.2 expert reach no LoRA: no gradient, nothing to propagate.)
                        if loss.requires_grad:
                            accelerator.backward(loss)
                        total += float(loss.detach()) / micro_batches
                        rewards.extend(float(v) for v in r.detach().float())
                        for _b in range(B if pretrain is not None else 0):  # one image-caption item a row
                            item = pretrain[int(torch.randint(0, len(pretrain), (1,), generator=pre_gen))]
                            with accelerator.autocast():
                                extra = cfg.pretrain_weight * pretrain_loss(pipe, item, sampler_cfg, pre_gen) / B
                            accelerator.backward(extra)  # each on its own, so no two graphs are held at once
                            total += float(extra.detach()) / micro_batches
            grad_norm = float("nan")
            if any_process(not math.isfinite(total), state):
                nan_run += 1
                nan_total += 1
                optimizer.zero_grad(set_to_none=True)
                if nan_run >= cfg.max_nan_steps:
                    checkpoint()
                    raise RuntimeError(
                        f"ReFL stopped at step {step}: {nan_run} consecutive NaN/inf losses (lower lr or reward_scale; "
                        "the last good state is checkpointed)"
                    )
            else:
                nan_run = 0
                grad_norm = float(accelerator.clip_grad_norm_(params, cfg.max_grad_norm))  # (before clipping)
                optimizer.step()
                scheduler.step()
                ema.update()
            step += 1
            window.extend(rewards)
            row = {
                "step": step,
                "loss": total,
                "reward_mean": sum(rewards) / len(rewards),
                "reward_std": float(torch.tensor(rewards).std()) if len(rewards) > 1 else 0.0,
                "window_mean": sum(window) / len(window),
                "window_std": float(torch.tensor(list(window)).std()) if len(window) > 1 else 0.0,
                "nan_skipped": nan_total,
                "seconds": time.perf_counter() - started,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
            }
            history.append(row)
            if main:
                append_csv(metrics, [row])
                for tracker in trackers:
                    tracker.log({k: v for k, v in row.items() if k != "step"}, step=step)
            bar.update(1)
            bar.set_postfix(reward=f"{row['window_mean']:.4f}")
            if evaluator.due(step):  # every eval_every steps and after the last (before its checkpoint)
                evaluate(evaluator.tag(step))
            stopping = any_process(flag.stop or (stop_at is not None and step >= stop_at), state)
            if stopping or evaluator.ended(step) or (cfg.save_every and step % cfg.save_every == 0):
                checkpoint()
                accelerator.wait_for_everyone()
            if stopping and not evaluator.ended(step):
                bar.close()
                return {"stopped_at": step, "history": history}
        bar.close()
        with ema.applied():
            reward_after = evaluator.after(step)
    # --- 6. the LoRA (the last or its average, or keep_best's) for diffusers and ComfyUI, the reward curve
    with ema.applied():
        lora_dir = finish(pipe, tr, out, history, evaluator)
    return {
        "processes": world,
        "lora_checksum": lora_checksum(params),
        "step": step,
        "reward_before": reward_before,
        "reward_after": reward_after,
        "reward_on": reward_on,
        **evaluator.summary(step),
        "history": history,
        "lora": str(lora_dir),
        "nan_skipped": nan_total,
    }
