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
Supported pipelines are those of :mod:`rewarddance.pipelines` (SD 1.5 / 2.x, SDXL, SD3 / 3.5, Flux).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from ..context import RewardContext
from ..distributed import any_process, average_gradients, process_state
from ..images import ImageError, load_image, to_tensor
from ..manifest import ManifestError, read_jsonl
from ..pipelines import Sampler, SamplerConfig, check_scheduler, compose, decode, pipeline_family
from .checkpoint import (
    StopFlag,
    gather_full_state,
    list_checkpoints,
    load_checkpoint,
    load_trainable,
    save_checkpoint,
)
from .export import save_lora
from .metrics import append_csv, drop_rows_after, say
from .plots import plot_reward_curve, save_sample_grid
from .refl_config import ReFLConfig


# ---------------------------------------------------------------------------------------------------- loading
def load_pipeline(cfg: ReFLConfig, dtype: torch.dtype):
    """The diffusers pipeline of ``cfg.pretrained``: a folder / hub id, or a single-file checkpoint."""
    import diffusers

    classes = {
        "sd": diffusers.StableDiffusionPipeline,
        "sdxl": diffusers.StableDiffusionXLPipeline,
        "sd3": diffusers.StableDiffusion3Pipeline,
        "flux": diffusers.FluxPipeline,
    }
    from ..bundled import resolve

    source = str(resolve(cfg.pretrained))
    path = Path(source)
    if path.is_file():
        if cfg.model_type == "auto":
            raise ValueError(f"{path}: a single-file checkpoint needs model_type (one of sd, sdxl, sd3, flux)")
        kw = {"config": cfg.single_file_config} if cfg.single_file_config else {}
        return classes[cfg.model_type].from_single_file(str(path), torch_dtype=dtype, **kw)
    cls = diffusers.DiffusionPipeline if cfg.model_type == "auto" else classes[cfg.model_type]
    return cls.from_pretrained(source, torch_dtype=dtype)


def read_prompts(source) -> list[str]:
    """A list of prompts, or a .txt (one per line) or .jsonl (``prompt`` field) file of them."""
    if isinstance(source, (list, tuple)):
        prompts = [str(p) for p in source]
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"prompts: no such file {path}")
        if path.suffix == ".jsonl":
            prompts = []
            for line_no, row in read_jsonl(path):
                if not isinstance(row.get("prompt"), str):
                    raise ManifestError(f"{path}:{line_no}: needs a 'prompt' string")
                prompts.append(row["prompt"])
        else:
            prompts = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("prompts: need at least one prompt, and no empty ones")
    return prompts


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


def reward_prompts(cfg: ReFLConfig, prompts: list[str]) -> tuple[list[str], str]:
    """The prompts scored before and after training (``cfg.eval_images`` images each, fixed seeds) and a line
    saying what they are: ``eval_prompts`` when given, else ``eval_train_prompts`` training prompts spread over the
    list (not held out, so the gain on them is an upper bound), else none and why."""
    if cfg.eval_prompts:
        chosen = read_prompts(cfg.eval_prompts)
        return chosen, f"{len(chosen)} eval_prompts x {cfg.eval_images} images"
    n = min(cfg.eval_train_prompts, len(prompts))
    if n <= 0:
        return [], "no reward measured: eval_prompts is empty and eval_train_prompts is 0"
    chosen = [prompts[i * len(prompts) // n] for i in range(n)]
    return chosen, f"{n} training prompts x {cfg.eval_images} images (no eval_prompts given; not held out)"


def add_lora(denoiser, cfg: ReFLConfig) -> list[torch.nn.Parameter]:
    """Freeze the denoiser, add a LoRA adapter on its attention, keep the LoRA parameters in fp32."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    denoiser.add_adapter(
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(cfg.lora_targets),
        )
    )
    params = [p for p in denoiser.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"lora_targets {cfg.lora_targets} matched no module of the denoiser")
    for p in params:
        p.data = p.data.float()
    return params


@contextlib.contextmanager
def _finished(trackers: list):
    try:
        yield
    finally:
        for tracker in trackers:
            tracker.finish()


def open_trackers(cfg: ReFLConfig, out: Path) -> list:
    """accelerate's trackers named in ``cfg.trackers``, started, with the config stored (as scalars and strings,
    which every tracker takes). A tracker whose package is missing fails here, before training."""
    trackers = []
    for name in cfg.trackers:
        cls = LOGGER_TYPE_TO_CLASS[name]
        try:
            tracker = cls("refl", out / "logs") if cls.requires_logging_directory else cls("refl")
            tracker.start()
        except (ImportError, ModuleNotFoundError) as err:
            raise ValueError(f"trackers: {name!r} needs its package ({err}); pip install it or drop it") from err
        values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(cfg).items()}
        tracker.store_init_configuration(values)
        trackers.append(tracker)
    return trackers


def pipe_denoiser(pipe):
    return pipe.unet if pipeline_family(pipe) == "unet" else pipe.transformer


def shard_denoiser(denoiser, device: torch.device, dtype: torch.dtype) -> None:
    """FSDP (``fully_shard``) over the processes: each block of the denoiser, then the rest of it. The frozen
    weights and the fp32 LoRA are all-gathered in the model's ``dtype`` for compute; gradients reduce in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for name, child in denoiser.named_children():
        blocks = child if isinstance(child, torch.nn.ModuleList) and name.endswith("blocks") else []
        for block in list(blocks) + ([child] if name == "mid_block" and child is not None else []):
            fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(denoiser, mesh=mesh, mp_policy=policy)


def _full(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if hasattr(p, "full_tensor") else p


# ---------------------------------------------------------------------------------------------------- one step
def _step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + salt) % (2**63))


def rollout_rewards(pipe, rm, prompts, sampler_cfg, stops, noise_seeds, references, context) -> torch.Tensor:
    """Steps 2-5 of the module docstring for a micro-batch, all rows together: the rewards ``[B]`` with gradients
    to the LoRA. Row ``i`` is ``prompts[i]`` from the noise of ``noise_seeds[i]`` stopped at level ``stops[i]``;
    ``references`` is None (pointwise) or one reference image per row (pairwise)."""
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

    from ..model import RewardModel
    from ..search import load_references

    # --- everything that can be wrong with the config fails here, before any training
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
    state = process_state()  # several processes under accelerate launch: data parallel, gradients averaged
    rank = state.process_index if state else 0
    main = rank == 0
    device = torch.device(cfg.device or (state.device if state else ("cuda" if torch.cuda.is_available() else "cpu")))
    dtype = getattr(torch, cfg.dtype) if cfg.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    fsdp = cfg.distributed == "fsdp" and state is not None
    if pipe is None:
        pipe = load_pipeline(cfg, dtype)
        for module in pipe.components.values():  # under FSDP the denoiser reaches the device only as shards
            if isinstance(module, torch.nn.Module) and not (fsdp and module is pipe_denoiser(pipe)):
                module.to(device)
    family = pipeline_family(pipe)
    check_scheduler(pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    if rm is None:
        rm = RewardModel.from_pretrained(cfg.reward_model, device=device, quantization=cfg.quantization)
    rm.model.requires_grad_(False)
    offload = cfg.offload_reward_model and device.type != "cpu"

    @contextlib.contextmanager
    def rm_on_device():  # with offload_reward_model the judge visits the device only while it scores
        if offload:
            rm.model.to(device)
        try:
            yield
        finally:
            if offload:
                rm.model.to("cpu")
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    if offload:
        rm.model.to("cpu")
    context = RewardContext(task=cfg.task, cot=cfg.cot)
    # every cached reference of a prompt (build_references keeps top_k); one is drawn per rollout
    reference_images = {p: [to_tensor(load_image(f)) for f in v] for p, v in refs.items()} if refs else {}

    # --- the trainable part
    denoiser = pipe_denoiser(pipe)
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the LoRA's random init: the same on every process and every run
    params = add_lora(denoiser, cfg)
    if cfg.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
        if hasattr(pipe.vae, "enable_gradient_checkpointing"):
            pipe.vae.enable_gradient_checkpointing()
    ckpt_dir = out / "checkpoints"
    resume_from = list_checkpoints(ckpt_dir)[-1] if cfg.resume and list_checkpoints(ckpt_dir) else None
    if fsdp:
        if resume_from is not None:
            load_trainable(resume_from, denoiser)  # full weights, before they are split
        shard_denoiser(denoiser, device, dtype)
        params = [p for p in denoiser.parameters() if p.requires_grad]  # the sharded ones now
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=cfg.lr)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str), encoding="utf-8")
    step, resumed = 0, {}
    if resume_from is not None:
        resumed = load_checkpoint(resume_from, denoiser, optimizer, scheduler, sharded=fsdp)
        step = resumed["step"]
        if main:
            say(f"resuming from step {step} ({resume_from})")
    if main:  # rows of steps after the checkpoint were written by the run that stopped: they run again
        drop_rows_after(out / "metrics.csv", step)

    def checkpoint() -> None:  # every process calls it: under FSDP they gather the state together
        full = gather_full_state(denoiser, optimizer) if fsdp else None
        if main:
            extra = {"reward_before": reward_before}  # a resumed run reports the reward its first part measured
            save_checkpoint(
                ckpt_dir, step, denoiser, optimizer, scheduler, extra=extra, keep=cfg.keep_checkpoints, full_state=full
            )

    size = cfg.resolution
    sampler_cfg = SamplerConfig(
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale, height=size, width=size
    )
    if family == "flux":
        sampler_cfg.max_sequence_length = min(sampler_cfg.max_sequence_length, pipe.tokenizer_2.model_max_length)

    def evaluate(tag: str) -> float | None:
        if not eval_prompts or not (main or fsdp):  # (sharded: every process runs the denoiser together)
            return None
        scores = []
        with torch.no_grad(), rm_on_device():
            for i, prompt in enumerate(eval_prompts):
                sampler = Sampler(pipe, prompt, sampler_cfg)
                x = sampler.initial_latents([10_000 + i * 100 + j for j in range(cfg.eval_images)])
                for k in range(cfg.num_inference_steps):
                    x, _ = sampler.step(x, k)
                images = sampler.decode(x)
                scores.append(rm.score(images, prompt, context=context).p_yes)
                if tag and cfg.sample_every:
                    save_sample_grid(images, out / "samples" / f"{tag}-{i:03d}.png")
        value = float(torch.cat(scores).mean())
        for tracker in trackers:
            tracker.log({"eval_reward": value}, step=step)
        return value

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16)
        if cfg.mixed_precision != "no"
        else contextlib.nullcontext()
    )
    trackers = open_trackers(cfg, out) if main else []
    reward_before = evaluate("") if step == 0 else resumed.get("reward_before")
    window: deque = deque(maxlen=cfg.window)
    history, nan_run, nan_total = [], 0, 0
    metrics = out / "metrics.csv"
    bar = tqdm(total=cfg.max_steps, initial=step, desc="refl", disable=not progress)
    with StopFlag() as flag, _finished(trackers):
        while step < cfg.max_steps:
            started = time.perf_counter()
            gen = _step_generator(cfg.seed, step, salt=2 * rank)  # each process draws its own prompts and noise
            pre_gen = _step_generator(cfg.seed, step, salt=2 * rank + 1)  # its own stream: the reward path is unchanged
            shared = _step_generator(cfg.seed, step, salt=-1)
            ref_gen = _step_generator(cfg.seed, step, salt=-2 - rank)  # which cached reference: its own stream
            optimizer.zero_grad(set_to_none=True)
            rewards, total = [], 0.0
            share = 1.0 / (cfg.batch_size * cfg.grad_accum)  # each row's part of the step's loss
            with rm_on_device():
                for _micro in range(cfg.grad_accum):
                    # the rows' draws, row by row in the order (and from the generators) of one rollout per prompt
                    batch, stops, noise_seeds, references = [], [], [], []
                    for _b in range(cfg.batch_size):
                        prompt = prompts[int(torch.randint(0, len(prompts), (1,), generator=gen))]
                        stop = int(torch.randint(cfg.stop_range[0], cfg.stop_range[1] + 1, (1,), generator=gen))
                        if fsdp:  # sharded, all processes must call the denoiser equally often: one stop level
                            # (drawn besides the one above, so prompts and noise stay those of a DDP run)
                            stop = int(torch.randint(cfg.stop_range[0], cfg.stop_range[1] + 1, (1,), generator=shared))
                        noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
                        reference = None
                        if prompt in reference_images:
                            choices = reference_images[prompt]
                            reference = choices[int(torch.randint(0, len(choices), (1,), generator=ref_gen))]
                        batch.append(prompt)
                        stops.append(stop)
                        noise_seeds.append(noise_seed)
                        references.append(reference)
                    refs_or_none = references if reference_images else None
                    with autocast:
                        r = rollout_rewards(pipe, rm, batch, sampler_cfg, stops, noise_seeds, refs_or_none, context)
                        if cfg.loss == "hinge":
                            per_row = F.relu(cfg.hinge_margin - r)
                        else:
                            per_row = -torch.log(r.clamp_min(1e-12))
                        loss = cfg.reward_scale * per_row.sum() * share
                    if torch.isfinite(loss):
                        loss.backward()
                    total += float(loss.detach())
                    rewards.extend(float(v) for v in r.detach().float())
                    for _b in range(cfg.batch_size if pretrain is not None else 0):  # one image-caption item a row
                        item = pretrain[int(torch.randint(0, len(pretrain), (1,), generator=pre_gen))]
                        with autocast:
                            extra = cfg.pretrain_weight * pretrain_loss(pipe, item, sampler_cfg, pre_gen) * share
                        if torch.isfinite(extra):
                            extra.backward()  # each on its own, so no two graphs are held at once
                        total += float(extra.detach())
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
                if not fsdp:  # (FSDP averages the gradients itself)
                    average_gradients(params, state)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
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
            }
            history.append(row)
            if main:
                append_csv(metrics, [row])
                for tracker in trackers:
                    tracker.log({k: v for k, v in row.items() if k != "step"}, step=step)
            bar.update(1)
            bar.set_postfix(reward=f"{row['window_mean']:.4f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                evaluate(f"step-{step:06d}" if cfg.sample_every and step % cfg.sample_every == 0 else "")
            stopping = any_process(flag.stop or (stop_at is not None and step >= stop_at), state)
            if stopping or step == cfg.max_steps or (cfg.save_every and step % cfg.save_every == 0):
                checkpoint()
                if state:
                    state.wait_for_everyone()
            if stopping and step < cfg.max_steps:
                bar.close()
                return {"stopped_at": step, "history": history}
        bar.close()
        reward_after = evaluate("final" if cfg.sample_every else "")
    lora_dir = out / "lora"
    full = gather_full_state(denoiser)[0] if fsdp else None
    if main:
        save_lora(pipe, denoiser, lora_dir, cfg.lora_alpha, state_dict=full)
        if history:  # (empty when a finished run is resumed)
            plot_reward_curve(history, out / "reward_curve.png")
    if state:
        state.wait_for_everyone()
    return {
        "processes": state.num_processes if state else 1,
        "lora_checksum": float(sum(_full(p).detach().double().abs().sum() for p in params)),
        "step": step,
        "reward_before": reward_before,
        "reward_after": reward_after,
        "reward_on": reward_on,
        "history": history,
        "lora": str(lora_dir),
        "nan_skipped": nan_total,
    }
