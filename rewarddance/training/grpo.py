"""GRPO: LoRA fine-tuning of a diffusion model from group-relative rewards of a frozen judge (reads top to bottom).

One step (Flow-GRPO / DanceGRPO's recipe, on the pipelines of :mod:`rewarddance.pipelines`):

1. draw ``prompts_per_step`` prompts and sample each ``group_size`` times with the stochastic sampler: every step
   from level ``k`` to ``k + 1`` is ``x' = mean + std_k * z`` with ``mean`` from the denoiser's ``(x0, e)`` and
   ``std_k`` of the generalised DDIM with ``eta > 0`` (:func:`~rewarddance.pipelines.stochastic_std`; it keeps the
   marginals of the deterministic sampler, for DDIM, Euler and flow-matching schedules alike) or, with ``sde:
   flow_grpo`` on a flow-matching schedule, Flow-GRPO's Euler-Maruyama step of the flow SDE with noise level ``eta``
   (:func:`~rewarddance.pipelines.flow_sde_stds`, :func:`~rewarddance.pipelines.flow_sde_mean`), keeping every latent
   and, for the steps trained on, ``log p_old(x' | x)`` (a Gaussian, averaged over the latent's free elements);
2. decode the final latents and score them with the judge, without gradients (``score``: any judge, quantised or
   not, any :class:`~rewarddance.context.RewardContext`): P(yes), the yes/no margin, or the win rate of each sample
   against the others of its group (Pref-GRPO: ``compare`` in both orders, the order-averaged probability of
   being the better one, averaged over the group; a soft count of wins);
3. advantages ``(r - mean_group) / (std_group + adv_eps)`` (population std), clipped to ``+-adv_clip``;
4. for each of ``inner_epochs`` optimiser steps, over the trained steps (``train_steps``, a window of the schedule,
   optionally ``train_subset`` of them drawn per step: the "fast" variants), recompute ``log p`` under the current
   LoRA, ``ratio = exp(log p - log p_old)`` and the clipped objective ``max(-A * ratio, -A * clip(ratio, 1 - c,
   1 + c))``, plus ``kl_weight`` x the KL divergence of the step's Gaussian to the base model's (the LoRA off; both
   share ``std_k``, so it is ``|mean - mean_base|^2 / (2 std_k^2)``, averaged like ``log p``). With
   ``gradient_accumulation_steps`` the groups are split into that many micro-batches for this loss
   (``accelerator.accumulate``; the rollouts are sampled together in 1.), their gradients summed to the whole batch's
   before each optimiser step.

On a video pipeline (Wan 2.1, Wan 2.2 with a LoRA per trained expert, each step recomputed by the expert that sampled
it (:mod:`.experts`), CogVideoX, LTX-Video, and the Wan, CogVideoX and LTX-Video image-to-video ones, each prompt
with its image from a ``.jsonl`` file) the same steps run on the clips' latents (5-D, or LTX-Video's tokens; a
conditioning frame or CogVideoX's image channels, which the pipeline holds fixed, stay fixed, the step's mean and
sample both taken from them, and ``log p`` and the KL term are averaged over the free elements only, so the held ones
neither add to the ratio nor dilute it), and step 2 scores whole decoded clips, the judge shown ``reward_frames``
frames of each sampled uniformly (``score(videos=..., num_frames=...)``) and, for image-to-video, the conditioning
image first (``first_frame_context``).

Every draw of step ``s`` (prompts, initial noise, the sampler's noise, the subset of steps) comes from generators
keyed on ``(seed, s)``, so a resumed run equals an uninterrupted one. Loading, LoRA, checkpoints, evaluation,
trackers and export are the shared phases of :mod:`.diffusion_loop`, and the engine is its ``accelerate.Accelerator``
(mixed precision, accumulation, backward, clipping). One process only for now.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..context import RewardContext
from ..images import load_image
from ..pipelines import (
    SCHEDULERS,
    VIDEO_FAMILIES,
    PipelineError,
    Sampler,
    flow_sde_mean,
    flow_sde_stds,
    free_mean,
    gaussian_logp,
    stochastic_mean,
    stochastic_std,
)
from .checkpoint import StopFlag
from .diffusion_loop import (
    finish,
    finished,
    judge_visits,
    load_models,
    lora_checksum,
    make_evaluator,
    open_trackers,
    read_prompts,
    reward_prompts,
    runtime,
    sampler_config,
    setup_trainable,
    step_generator,
)
from .ema import lora_ema
from .eval_pairwise import compare_samples, lora_off, score_samples
from .experts import check_expert_levels, trained_steps
from .grpo_config import GRPOConfig
from .metrics import append_csv
from .video_checks import check_judge_media, judge_context, judge_frames

STOCHASTIC = SCHEDULERS  # each has the generalised-DDIM stochastic form of stochastic_std


def check_stochastic(scheduler) -> str:
    """The scheduler's name, or a clear error for one without a stochastic form here."""
    name = type(scheduler).__name__
    if name not in STOCHASTIC:
        raise PipelineError(
            f"GRPO needs a stochastic sampler; {name} has none here yet (use one of {', '.join(STOCHASTIC)})"
        )
    return name


# ---------------------------------------------------------------------------------------------------- pieces
def group_advantages(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """``(r - mean) / (std + eps)`` within each group of ``group_size`` consecutive rewards (population std)."""
    r = rewards.float().reshape(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=False, keepdim=True) + eps)
    return adv.reshape(-1)


def win_rates(
    rm, images: torch.Tensor, prompts: list[str], group_size: int, context, num_frames: int | None = None
) -> torch.Tensor:
    """Each image's mean probability of beating the other images of its group (groups of ``group_size``
    consecutive rows sharing a prompt): ``compare`` asked for every ordered pair, the two orders averaged. Clips
    ``[N, T, 3, H, W]`` are compared on ``num_frames`` frames of each."""
    n = images.shape[0]
    cand, ref = [], []
    for start in range(0, n, group_size):
        for i in range(start, start + group_size):
            for j in range(start, start + group_size):
                if i != j:
                    cand.append(i)
                    ref.append(j)
    asked = [prompts[i] for i in cand]
    if isinstance(
        getattr(context, "first_frame", None), list
    ):  # image-to-video: each clip's own image, one per comparison
        context = replace(context, first_frame=[context.first_frame[i] for i in cand])
    p = compare_samples(rm, images[cand], images[ref], asked, context, num_frames).p_yes.float().cpu()
    beats = torch.zeros(n, n)
    beats[cand, ref] = p  # P(cand better than ref), asked with ref as image 1
    prefer = (beats + 1.0 - beats.T) / 2  # both orders: [i, j] = P(i better than j)
    wins = torch.zeros(n)
    for i, j in zip(cand, ref):
        wins[i] += prefer[i, j]
    return wins / (group_size - 1)


def judge_rewards(
    rm, images: torch.Tensor, prompts: list[str], kind: str, group_size: int, context, num_frames: int | None = None
) -> torch.Tensor:
    """The rewards ``[N]`` (float32, CPU) of ``kind`` (see :class:`GRPOConfig`'s ``reward``), without gradients.
    ``images`` may be clips ``[N, T, 3, H, W]``, judged whole on ``num_frames`` frames sampled uniformly."""
    with torch.no_grad():
        if kind == "verifier":
            return verifier_rewards(images, prompts)
        if kind == "win_rate":
            return win_rates(rm, images, prompts, group_size, context, num_frames)
        out = score_samples(rm, images, prompts, context, num_frames)
        return (out.p_yes if kind == "p_yes" else out.margin).float().cpu()


def verifier_rewards(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """1 for each image ``[N, 3, H, W]`` in [0, 1] that the strict ShapesWorld verifier passes for its prompt (a clean
    scene that satisfies it), else 0."""
    from ..shapes import verify

    imgs = images.detach().float().cpu().nan_to_num(0.0).clamp(0, 1)
    return torch.tensor([float(verify(load_image(img), prompt).passed) for img, prompt in zip(imgs, prompts)])


def check_verifier_prompts(prompts: list[str]) -> None:
    """``reward: verifier`` needs ShapesWorld prompts: the first that does not parse is named."""
    from ..shapes import parse_prompt
    from ..shapes.scene import ShapesError

    for i, prompt in enumerate(prompts):
        try:
            parse_prompt(prompt)
        except ShapesError as err:
            raise ValueError(f"reward verifier: prompts[{i}] {prompt!r} is not a ShapesWorld prompt ({err})") from err


@dataclass
class Rollouts:
    """The sampled trajectories of one step: ``latents[k]`` at level ``k`` (``k = 0 .. n``), the sampler's noise
    scale ``stds[k]`` of each step, ``logp[k]`` (``[N]``) for the steps to be trained on, the decoded images (clips
    ``[N, T, 3, H, W]`` of a video pipeline)."""

    sampler: Sampler
    latents: list[torch.Tensor]
    stds: list[float]
    logp: dict[int, torch.Tensor]
    images: torch.Tensor
    sde: str = "ddim"


def step_stds(levels, eta: float, sde: str = "ddim") -> list[float]:
    """Each step's noise scale: the generalised DDIM's (``sde: ddim``) or Flow-GRPO's (``flow_grpo``, ``eta`` its
    noise level)."""
    if sde == "flow_grpo":
        return flow_sde_stds(levels, eta)
    return [stochastic_std(levels[k], levels[k + 1], eta) for k in range(len(levels) - 1)]


def step_mean(x0: torch.Tensor, e: torch.Tensor, levels, k: int, std: float, sde: str = "ddim") -> torch.Tensor:
    """The mean of stochastic step ``k`` (to level ``k + 1``) in the ``sde``'s form."""
    if sde == "flow_grpo":
        return flow_sde_mean(x0, e, levels[k], levels[k + 1], std)
    return stochastic_mean(x0, e, levels[k + 1], std)


def check_sde(sde: str, scheduler) -> None:
    """``sde: flow_grpo`` is the SDE of a flow-matching schedule: a clear error for any other scheduler."""
    name = type(scheduler).__name__
    if sde == "flow_grpo" and name != "FlowMatchEulerDiscreteScheduler":
        raise PipelineError(
            f"sde flow_grpo is Flow-GRPO's SDE of a flow-matching schedule (SD3, Flux, Wan); {name} is not one: use "
            "sde ddim"
        )


@torch.no_grad()
def sample_rollouts(
    pipe,
    sampler_cfg,
    rows: list[str],
    noise_seeds: list[int],
    eta: float,
    noise: torch.Generator,
    logp_steps,
    sde: str = "ddim",
) -> Rollouts:
    """Step 1 of the module docstring: every row (its own prompt and seed) through the stochastic sampler (in the
    ``sde``'s form); the sampler's noise is drawn from ``noise`` (on the CPU, float32) level by level."""
    sampler = Sampler(pipe, rows, sampler_cfg)
    x = sampler.initial_latents(noise_seeds)
    latents, stds, logp = [x], step_stds(sampler.levels, eta, sde), {}
    for k in range(len(stds)):
        x0, e = sampler.predict(x, k)
        mean = sampler.pin(step_mean(x0, e, sampler.levels, k, stds[k], sde), x)  # (a held frame stays)
        z = torch.randn(x.shape, generator=noise, dtype=torch.float32).to(x.device, x.dtype)
        x = sampler.pin(mean + stds[k] * z, x) if stds[k] > 0 else mean
        if k in logp_steps:
            logp[k] = gaussian_logp(x, mean, stds[k], sampler.pinned)  # (over the free elements)
        latents.append(x)
    images = sampler.decode(x)  # images, or whole clips of a video pipeline
    return Rollouts(sampler, latents, stds, logp, images, sde)


def step_loss(ro: Rollouts, k: int, adv: torch.Tensor, denoiser, cfg: GRPOConfig, rows: list[int] | None = None):
    """Step 4 for sampled step ``k``: ``(clipped objective + kl_weight * KL, stats)`` with gradients to the LoRA,
    over the rollouts' ``rows`` (a micro-batch; default all of them), each term a mean over those rows."""
    sampler, std = ro.sampler, ro.stds[k]
    x, x_next, logp_old = ro.latents[k], ro.latents[k + 1], ro.logp[k]
    if rows is not None:
        index = torch.tensor(rows, device=x.device)
        x, x_next, logp_old, adv = x[index], x_next[index], logp_old[index.to(logp_old.device)], adv[torch.tensor(rows)]
    x0, e = sampler.predict(x, k, rows=rows)
    mean = sampler.pin(step_mean(x0, e, sampler.levels, k, std, ro.sde), x)
    logp = gaussian_logp(x_next, mean, std, sampler.pinned)
    ratio = torch.exp(logp - logp_old.to(logp.device))
    a = adv.to(logp.device)
    clipped = ratio.clamp(1.0 - cfg.clip_range, 1.0 + cfg.clip_range)
    policy = torch.maximum(-a * ratio, -a * clipped).mean()
    kl = torch.zeros((), device=logp.device)
    if cfg.kl_weight > 0:
        with torch.no_grad(), lora_off(denoiser):  # (the frozen base)
            x0_base, e_base = sampler.predict(x, k, rows=rows)
            mean_base = sampler.pin(step_mean(x0_base, e_base, sampler.levels, k, std, ro.sde), x)
        kl = free_mean((mean.float() - mean_base.float()) ** 2, sampler.pinned).mean() / (2 * std * std)
    stats = {
        "kl": float(kl.detach()),
        "clip_frac": float(((ratio - 1).abs() > cfg.clip_range).float().mean()),
        "ratio_dev": float((ratio.detach() - 1).abs().max()),
    }
    return policy + cfg.kl_weight * kl, stats


def training_window(cfg: GRPOConfig, stds: list[float]) -> list[int]:
    """The sampled steps trained on: ``train_steps`` (inclusive) or every stochastic step; each must be stochastic
    (a deterministic step has no density), and ``train_subset`` no larger than the window."""
    stochastic = [k for k, s in enumerate(stds) if s > 0]
    if not stochastic:
        raise ValueError(f"GRPO: no step of the {len(stds)}-step schedule is stochastic with eta {cfg.eta}")
    if cfg.train_steps:
        lo, hi = cfg.train_steps
        window = list(range(lo, hi + 1))
        flat = [k for k in window if stds[k] <= 0]
        if flat:
            raise ValueError(
                f"train_steps {cfg.train_steps}: step {flat[0]} is deterministic here (it reaches a clean level); "
                f"the stochastic steps are {stochastic[0]}..{stochastic[-1]}"
            )
    else:
        window = stochastic
    if cfg.train_subset > len(window):
        raise ValueError(f"train_subset {cfg.train_subset} is larger than the window of {len(window)} steps")
    return window


# ---------------------------------------------------------------------------------------------------- training
def train_grpo(cfg: GRPOConfig, progress: bool = True, stop_at: int | None = None, pipe=None, rm=None) -> dict:
    """Run or resume GRPO. ``pipe`` / ``rm`` may be passed already loaded (tests, notebooks); ``stop_at`` stops
    after that step as an interruption would (a checkpoint is saved). Returns rewards before/after and the log."""
    from tqdm.auto import tqdm

    # --- 0. everything that can be wrong with the config fails here, before any training
    out = Path(cfg.output_dir)
    prompts = read_prompts(cfg.prompts)
    eval_prompts, reward_on = reward_prompts(cfg, prompts)
    context = RewardContext(task=cfg.task, cot=cfg.cot)
    if cfg.reward == "verifier":
        check_verifier_prompts(prompts)
    if cfg.reward == "win_rate" and context.task == "vqascore":
        raise ValueError("reward win_rate compares images, but task 'vqascore' is pointwise only; choose another task")

    # --- 1. the accelerator (one process), device, dtype; 2. the pipeline (with a stochastic sampler), the judge
    rt = runtime(cfg)
    accelerator = rt.accelerator
    if accelerator.num_processes > 1:
        raise ValueError("train-grpo runs in one process for now; launch it without several processes")
    micro_batches = accelerator.gradient_accumulation_steps  # (a launcher's --gradient_accumulation_steps wins)
    if cfg.prompts_per_step % micro_batches:
        raise ValueError(
            f"prompts_per_step {cfg.prompts_per_step} must be a multiple of the {micro_batches} gradient accumulation "
            "steps (each micro-batch takes whole groups)"
        )
    pipe, rm, family = load_models(cfg, rt, pipe, rm, scheduler_check=check_stochastic)
    trained_for = getattr(rm, "trained_for", None)
    if cfg.reward == "win_rate" and trained_for is not None and trained_for.objective != "pairwise":
        raise ValueError(
            f"reward win_rate needs a judge that compares two images; {cfg.reward_model} was trained "
            f"{trained_for.objective} (use reward p_yes or margin, or a pairwise judge)"
        )
    visits = judge_visits(rm, cfg, rt.device)
    sampler_cfg = sampler_config(cfg, pipe, family)
    probe = Sampler(pipe, prompts[0], sampler_cfg)
    check_sde(cfg.sde, pipe.scheduler)
    window = training_window(cfg, step_stds(probe.levels, cfg.eta, cfg.sde))
    named = f"train_steps {cfg.train_steps}" if cfg.train_steps else f"the window of stochastic steps {window}"
    check_expert_levels(cfg, pipe, probe.timesteps, window, named)  # Wan 2.2: the window must reach a trained expert
    trained = set(trained_steps(cfg, pipe, probe.timesteps, window))  # (steps of an untrained expert: no gradient)
    clip_frames = probe.num_frames if family in VIDEO_FAMILIES else None  # (video) of which the judge sees some
    check_judge_media(cfg, pipe, rm, context, clip_frames)
    seen_frames = judge_frames(cfg, clip_frames) if clip_frames is not None else None
    if clip_frames is not None:
        reward_on = reward_on.removesuffix("; ShapesWorld verifier on")

    # --- 3. the trainable part: LoRA, optimiser, resume, both prepared by the accelerator
    tr = setup_trainable(cfg, pipe, rt, out)
    step = tr.step
    ema = lora_ema(cfg, tr)  # (ema_decay: the average is what is evaluated and exported; the live LoRA samples)
    sampler_cfg = sampler_config(cfg, pipe, family, tr)  # (the denoiser called as the accelerator prepared it)

    # --- 4. trackers, the reward before training
    trackers = open_trackers(cfg, out, name="grpo") if rt.main else []
    evaluator = make_evaluator(cfg, pipe, rm, context, sampler_cfg, eval_prompts, out, rt, visits, trackers, tr)

    def evaluate(tag: str) -> float | None:
        with ema.applied():
            return evaluator(tag, step)

    def checkpoint() -> None:  # a resumed run reports the reward and evaluations its first part measured
        extra = {"reward_before": reward_before, **evaluator.state(), **ema.state()}
        tr.checkpoint(step, extra, {**(evaluator.tensors() or {}), **ema.tensors()})

    reward_before = evaluate("") if step == 0 else tr.resumed.get("reward_before")
    recent: deque = deque(maxlen=cfg.window)
    history, nan_run, nan_total = [], 0, 0
    metrics = out / "metrics.csv"
    bar = tqdm(total=cfg.max_steps, initial=step, desc="grpo", disable=not progress)
    G = cfg.group_size

    # --- 5. the training steps
    with StopFlag() as flag, finished(trackers, tr):
        while not evaluator.ended(step):  # (early stopping ends it before max_steps)
            started = time.perf_counter()
            gen = step_generator(cfg.seed, step)  # prompts, initial noise, the subset of steps
            noise = step_generator(cfg.seed, step, salt=1)  # the sampler's noise
            chosen = [
                prompts[int(torch.randint(0, len(prompts), (1,), generator=gen))] for _ in range(cfg.prompts_per_step)
            ]
            rows = [p for p in chosen for _ in range(G)]
            seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) for _ in rows]
            steps = window
            if cfg.train_subset:
                pick = torch.randperm(len(window), generator=gen)[: cfg.train_subset]
                steps = sorted(window[int(i)] for i in pick)
            # 5.1 rollouts and rewards, without gradients
            with accelerator.autocast():
                ro = sample_rollouts(pipe, sampler_cfg, rows, seeds, cfg.eta, noise, set(steps), cfg.sde)
            with visits():
                shown = judge_context(cfg, context, rows)  # (image-to-video: each clip's first frame)
                rewards = judge_rewards(rm, ro.images, rows, cfg.reward, G, shown, seen_frames)
            adv = group_advantages(rewards, G, cfg.adv_eps).clamp(-cfg.adv_clip, cfg.adv_clip)
            # 5.2 the clipped objective and the KL term: inner_epochs optimiser steps, each over the micro-batches
            total, stats, bad, grad_norm = 0.0, [], False, float("nan")
            per_micro = len(rows) // micro_batches  # rows of whole groups
            for _epoch in range(cfg.inner_epochs):
                tr.optimizer.zero_grad(set_to_none=True)
                for m in range(micro_batches):
                    part = list(range(m * per_micro, (m + 1) * per_micro)) if micro_batches > 1 else None
                    with accelerator.accumulate(tr.model):  # (entered for every micro-batch: it counts them)
                        for k in [] if bad else [k for k in steps if k in trained]:
                            with accelerator.autocast():
                                loss, st = step_loss(ro, k, adv, tr.denoiser, cfg, rows=part)
                                loss = loss / len(steps)
                            if not torch.isfinite(loss):
                                bad = True
                                break
                            # step by step, so one graph is held at a time; accelerate divides by micro_batches
                            accelerator.backward(loss)
                            total += float(loss.detach()) / (cfg.inner_epochs * micro_batches)
                            stats.append(st)
                if bad:
                    break
                grad_norm = float(accelerator.clip_grad_norm_(tr.params, cfg.max_grad_norm))  # (before clipping)
                tr.optimizer.step()
                tr.scheduler.step()
                ema.update()
            if bad:
                nan_run += 1
                nan_total += 1
                tr.optimizer.zero_grad(set_to_none=True)
                if nan_run >= cfg.max_nan_steps:
                    checkpoint()
                    raise RuntimeError(
                        f"GRPO stopped at step {step}: {nan_run} consecutive NaN/inf losses (lower lr; the last good "
                        "state is checkpointed)"
                    )
            else:
                nan_run = 0
            step += 1
            values = rewards.tolist()
            recent.extend(values)
            row = {
                "step": step,
                "loss": total,
                "reward_mean": sum(values) / len(values),
                "reward_std": float(rewards.std()),
                "window_mean": sum(recent) / len(recent),
                "window_std": float(torch.tensor(list(recent)).std()) if len(recent) > 1 else 0.0,
                "kl": sum(s["kl"] for s in stats) / max(len(stats), 1),
                "clip_frac": sum(s["clip_frac"] for s in stats) / max(len(stats), 1),
                "nan_skipped": nan_total,
                "seconds": time.perf_counter() - started,
                "lr": tr.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
            }
            history.append(row)
            if rt.main:
                append_csv(metrics, [row])
                for tracker in trackers:
                    tracker.log({k: v for k, v in row.items() if k != "step"}, step=step)
            bar.update(1)
            bar.set_postfix(reward=f"{row['window_mean']:.4f}")
            if evaluator.due(step):  # every eval_every steps and after the last (before its checkpoint)
                evaluate(evaluator.tag(step))
            stopping = flag.stop or (stop_at is not None and step >= stop_at)
            if stopping or evaluator.ended(step) or (cfg.save_every and step % cfg.save_every == 0):
                checkpoint()
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
        "processes": 1,
        "lora_checksum": lora_checksum(tr.params),
        "step": step,
        "reward_before": reward_before,
        "reward_after": reward_after,
        "reward_on": reward_on,
        **evaluator.summary(step),
        "window": window,
        "history": history,
        "lora": str(lora_dir),
        "nan_skipped": nan_total,
    }
