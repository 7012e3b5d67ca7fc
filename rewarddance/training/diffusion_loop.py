"""The skeleton the diffusion trainers stand on (ReFL in :mod:`.refl`, GRPO in :mod:`.grpo`).

Each trainer reads top to bottom in numbered phases and calls these for the phases they share:

1. :func:`runtime` (from :mod:`.engine`): the run's ``accelerate.Accelerator`` (the processes and their engine, as
   ``accelerate launch`` / ``accelerate config`` set them up; mixed precision; gradient accumulation), the device
   and the dtype;
2. :func:`load_models`: the pipeline (diffusers folder, hub id or single file) and the frozen judge, and
   :func:`judge_visits`, the context in which an offloaded judge comes to the device to score (video: :mod:`.video_checks`);
3. :func:`setup_trainable`: the LoRA on the denoiser, the optimiser, resume from the newest checkpoint, both
   through ``accelerator.prepare`` (DistributedDataParallel averages the gradients over the processes), and the
   :class:`Trainable` whose ``checkpoint`` saves the run atomically;
4. :func:`sampler_config`, :func:`make_evaluator` (the :class:`Evaluator` of fixed-seed samples of the eval
   prompts before, during and after training: the judge's reward and, on ShapesWorld prompts, the verifier's
   alignment, each row in ``eval.csv``; the reward-hacking flag, early stopping and the best LoRA kept) and
   :func:`open_trackers`;
5. :func:`finish`: the LoRA (the last, or with ``keep_best`` the best evaluation's) exported for diffusers and
   ComfyUI, and the reward curve with the evaluations beside it.

Every random draw of a step comes from :func:`step_generator` keyed on ``(seed, step)``, so a resumed run equals
an uninterrupted one. The steps themselves (phase 5 of each trainer) run each micro-batch in
``accelerator.accumulate``, under ``accelerator.autocast()``, back-propagate with ``accelerator.backward`` and clip
with ``accelerator.clip_grad_norm_``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from ..distributed import any_process
from ..pipelines import VIDEO_FAMILIES, SamplerConfig, check_scheduler, pipeline_family
from ..remote import is_remote, load_judge
from ..video import sample_indices
from .checkpoint import gather_full_state, list_checkpoints, load_checkpoint, load_trainable, save_checkpoint
from .engine import Runtime, full_tensor, shard_denoiser, torch_optimizer
from .engine import runtime as runtime  # phase 1, where the trainers find the others
from .eval_pairwise import eval_judge, sample_eval_images
from .experts import experts_of, own_forwards, prepare, sampler_callers, trained_experts
from .export import save_lora
from .metrics import drop_rows_after, say
from .plots import plot_reward_curve, save_sample_grid
from .refl_config import DiffusionTrainConfig
from .video_checks import check_pipeline_media, judge_context, judge_frames, read_prompt_lines, video_text_length


# ---------------------------------------------------------------------------------------------------- helpers
def load_pipeline(cfg: DiffusionTrainConfig, dtype: torch.dtype):
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
    """A list of prompts, or a .txt (one per line) or .jsonl file of them (``prompt``, and ``image`` for image-to-video:
    :func:`~.video_checks.read_prompt_lines`)."""
    if isinstance(source, (list, tuple)):
        prompts = [str(p) for p in source]
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"prompts: no such file {path}")
        if path.suffix == ".jsonl":
            prompts = read_prompt_lines(path)
        else:
            prompts = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("prompts: need at least one prompt, and no empty ones")
    return prompts


def reward_prompts(cfg: DiffusionTrainConfig, prompts: list[str]) -> tuple[list[str], str]:
    """The prompts scored before and after training (``cfg.eval_images`` images each, fixed seeds) and a line
    saying what they are: ``eval_prompts`` when given, else ``eval_train_prompts`` training prompts spread over the
    list (not held out, so the gain on them is an upper bound), else none and why."""
    if cfg.eval_prompts:
        chosen = read_prompts(cfg.eval_prompts)
        line = f"{len(chosen)} eval_prompts x {cfg.eval_images} images"
    else:
        n = min(cfg.eval_train_prompts, len(prompts))
        if n <= 0:
            for name, value in (("early_stopping_patience", cfg.early_stopping_patience), ("keep_best", cfg.keep_best)):
                if value:
                    raise ValueError(f"{name} needs evaluations: give eval_prompts (or eval_train_prompts > 0)")
            return [], "no reward measured: eval_prompts is empty and eval_train_prompts is 0"
        chosen = [prompts[i * len(prompts) // n] for i in range(n)]
        line = f"{n} training prompts x {cfg.eval_images} images (no eval_prompts given; not held out)"
    return chosen, line + ("; ShapesWorld verifier on" if use_verifier(cfg, chosen) else "")


def use_verifier(cfg: DiffusionTrainConfig, eval_prompts: list[str]) -> bool:
    """Whether evaluations run the ShapesWorld verifier: ``verifier: auto`` when every eval prompt parses as a
    ShapesWorld prompt, ``shapes`` always (a prompt that does not parse is an error naming it), ``none`` never."""
    from ..shapes import parse_prompt
    from ..shapes.scene import ShapesError

    if cfg.verifier == "none" or not eval_prompts:
        return False
    for prompt in eval_prompts:
        try:
            parse_prompt(prompt)
        except ShapesError as err:
            if cfg.verifier == "shapes":
                raise ValueError(
                    f"verifier shapes: eval prompt {prompt!r} is not a ShapesWorld prompt ({err})"
                ) from None
            return False
    return True


def add_lora(denoiser, cfg: DiffusionTrainConfig) -> list[torch.nn.Parameter]:
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
def finished(trackers: list, tr: Trainable | None = None):
    """When the training block is left, however it is left: finish every tracker, and give the denoiser of ``tr``
    back its own forward (accelerate's mixed precision wraps it in autocast while it trains)."""
    try:
        yield
    finally:
        for tracker in trackers:
            tracker.finish()
        if tr is not None:
            own_forwards(tr.denoiser)


def open_trackers(cfg: DiffusionTrainConfig, out: Path, name: str = "refl") -> list:
    """accelerate's trackers named in ``cfg.trackers``, started as project ``name``, with the config stored (as
    scalars and strings, which every tracker takes). A tracker whose package is missing fails here, before
    training."""
    trackers = []
    for tracker_name in cfg.trackers:
        cls = LOGGER_TYPE_TO_CLASS[tracker_name]
        try:
            tracker = cls(name, out / "logs") if cls.requires_logging_directory else cls(name)
            tracker.start()
        except (ImportError, ModuleNotFoundError) as err:
            raise ValueError(
                f"trackers: {tracker_name!r} needs its package ({err}); pip install it or drop it"
            ) from err
        values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(cfg).items()}
        tracker.store_init_configuration(values)
        trackers.append(tracker)
    return trackers


def pipe_denoiser(pipe):
    return pipe.unet if pipeline_family(pipe) == "unet" else pipe.transformer


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """The generator of one kind of draw (``salt``) of training step ``step``: a function of its arguments only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + salt) % (2**63))


# ---------------------------------------------------------------------------------------------------- phases
def load_models(cfg: DiffusionTrainConfig, rt: Runtime, pipe=None, rm=None, scheduler_check=check_scheduler):
    """Phase 2: ``(pipe, rm, family)``; ``pipe`` / ``rm`` given already loaded are used as they are. The judge is
    frozen; the denoiser reaches the device only as shards under FSDP. ``scheduler_check(scheduler)`` raises for a
    scheduler the trainer cannot drive, before the judge loads."""
    from ..model import RewardModel

    if pipe is None:
        pipe = load_pipeline(cfg, rt.dtype)
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module) and not (rt.fsdp and module is pipe_denoiser(pipe)):
                module.to(rt.device)
    family = pipeline_family(pipe)
    scheduler_check(pipe.scheduler)
    check_pipeline_media(cfg, pipe, family)
    pipe.set_progress_bar_config(disable=True)
    if rm is None and is_remote(cfg.reward_model):  # a served judge (http://..., openai:...): scores only
        rm = load_judge(cfg.reward_model)
    if rm is None:
        rm = RewardModel.from_pretrained(cfg.reward_model, device=rt.device, quantization=cfg.quantization)
    if not is_remote(rm):
        rm.model.requires_grad_(False)
    return pipe, rm, family


def judge_visits(rm, cfg: DiffusionTrainConfig, device: torch.device):
    """A context factory: with ``offload_reward_model`` (and an accelerator) the judge is moved to the CPU now and
    visits the device only inside the context; otherwise the context does nothing."""
    offload = cfg.offload_reward_model and device.type != "cpu" and not is_remote(rm)

    @contextlib.contextmanager
    def on_device():
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
    return on_device


@dataclass
class Trainable:
    """Phase 3: the LoRA'd denoiser, its parameters and optimiser, where the run stands (``step``, and the
    ``resumed`` state of the checkpoint it continued from, empty for a fresh run). ``model`` is what the training
    steps call (the denoiser as ``accelerator.prepare`` returned it: its DDP wrapper over several processes);
    ``denoiser`` is the pipeline's own module, for everything else."""

    cfg: DiffusionTrainConfig
    rt: Runtime
    denoiser: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    ckpt_dir: Path
    step: int = 0
    resumed: dict = field(default_factory=dict)
    resumed_from: Path | None = None
    model: torch.nn.Module | None = None

    def checkpoint(self, step: int, extra: dict, tensors: dict | None = None) -> None:
        """Save the state after ``step`` (every process calls it: under FSDP they gather the state together);
        ``tensors`` (name -> a dict of tensors) become ``name.safetensors`` files in the checkpoint."""
        optimizer = torch_optimizer(self.optimizer)
        full = gather_full_state(self.denoiser, optimizer) if self.rt.fsdp else None
        if self.rt.main:
            save_checkpoint(
                self.ckpt_dir,
                step,
                self.denoiser,
                optimizer,
                self.scheduler,
                extra=extra,
                keep=self.cfg.keep_checkpoints,
                full_state=full,
                tensors=tensors,
                scaler=self.rt.accelerator.scaler,
            )


def setup_trainable(cfg: DiffusionTrainConfig, pipe, rt: Runtime, out: Path) -> Trainable:
    """Freeze the pipeline, add the LoRA (the same random init on every process and run), the optimiser and a
    constant LR schedule; write ``config.json``; continue from the newest checkpoint when ``cfg.resume``; drop the
    metrics rows of steps after it (they run again)."""
    denoiser = trained_experts(cfg, pipe, rt) or pipe_denoiser(pipe)  # (Wan 2.2: the experts that get a LoRA each)
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "image_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    params = [p for module in experts_of(denoiser) for p in add_lora(module, cfg)]
    if cfg.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
        if hasattr(pipe.vae, "enable_gradient_checkpointing"):
            pipe.vae.enable_gradient_checkpointing()
    ckpt_dir = out / "checkpoints"
    resume_from = list_checkpoints(ckpt_dir)[-1] if cfg.resume and list_checkpoints(ckpt_dir) else None
    if rt.fsdp:
        if resume_from is not None:
            load_trainable(resume_from, denoiser)  # full weights, before they are split
        shard_denoiser(denoiser, rt.device, rt.dtype)
        params = [p for p in denoiser.parameters() if p.requires_grad]  # the sharded ones now
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=cfg.lr)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    out.mkdir(parents=True, exist_ok=True)
    if rt.main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str), encoding="utf-8")
    tr = Trainable(cfg, rt, denoiser, params, optimizer, scheduler, ckpt_dir)
    if resume_from is not None:
        scaler = rt.accelerator.scaler
        tr.resumed = load_checkpoint(resume_from, denoiser, optimizer, scheduler, sharded=rt.fsdp, scaler=scaler)
        tr.step, tr.resumed_from = tr.resumed["step"], resume_from
        if rt.main:
            say(f"resuming from step {tr.step} ({resume_from})")
    # through accelerate: over several processes DDP wraps the denoiser (its backward averages the gradients), mixed
    # precision wraps its forward in autocast; a sharded denoiser (FSDP) keeps its own wrapping
    if rt.fsdp:
        tr.model, tr.optimizer = denoiser, rt.accelerator.prepare(optimizer)
    else:
        tr.model, tr.optimizer = prepare(rt.accelerator, denoiser, optimizer)  # (each trained expert on its own)
    if rt.main:  # rows of steps after the checkpoint were written by the run that stopped: they run again
        drop_rows_after(out / "metrics.csv", tr.step)
        drop_rows_after(out / EVAL_FILE, tr.step)
    return tr


def sampler_config(cfg: DiffusionTrainConfig, pipe, family: str, tr: Trainable | None = None) -> SamplerConfig:
    """The sampling settings of training and evaluation: the schedule, guidance and square resolution of ``cfg``;
    with ``tr``, the denoiser (each trained expert) is called as the accelerator prepared it (the DDP wrapper that
    averages the gradients; the :class:`Evaluator` calls the pipeline's own)."""
    size = cfg.resolution
    sampler_cfg = SamplerConfig(
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        height=size,
        width=size,
        **sampler_callers(tr),
        num_frames=cfg.num_frames,
        use_dynamic_cfg=cfg.use_dynamic_cfg,
    )
    if cfg.max_sequence_length is not None:
        sampler_cfg.max_sequence_length = cfg.max_sequence_length
    elif family in VIDEO_FAMILIES:
        sampler_cfg.max_sequence_length = video_text_length(pipe, family)
    if family == "flux":
        sampler_cfg.max_sequence_length = min(sampler_cfg.max_sequence_length, pipe.tokenizer_2.model_max_length)
    return sampler_cfg


EVAL_FILE = "eval.csv"  # one row per evaluation: step, reward, reward_se, alignment, alignment_se, n
BEST_LORA = "best_lora"  # the checkpoint's file of the best evaluation's LoRA weights (keep_best)


def proportion_se(p: float, n: int) -> float:
    """The standard error of a share ``p`` of ``n`` independent yes/no outcomes."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def reward_hacking(first: dict | None, last: dict | None) -> bool | None:
    """Whether a run hacked its judge, from its first and last evaluation rows (``reward``, ``alignment``,
    ``alignment_se``): the judge's held-out reward rose while the verifier's alignment fell by more than two standard
    errors of the difference. None when either row has no alignment (no verifier)."""
    if not first or not last or first.get("alignment") is None or last.get("alignment") is None:
        return None
    fall = first["alignment"] - last["alignment"]
    return bool(last["reward"] > first["reward"] and fall > 2 * math.hypot(first["alignment_se"], last["alignment_se"]))


def hacking_warning(result: dict) -> str | None:
    """The one-line warning for a run summary whose ``reward_hacking`` is true (else None)."""
    if not result.get("reward_hacking"):
        return None
    return (
        f"warning: reward hacking: the held-out judge reward rose {result['reward_before']:.4f} -> "
        f"{result['reward_after']:.4f} while verified alignment fell {result['alignment_before']:.3f} "
        f"+- {result['alignment_before_se']:.3f} -> {result['alignment_after']:.3f} +- "
        f"{result['alignment_after_se']:.3f} (n = {result['alignment_n']}), more than 2 standard errors"
    )


def read_eval_rows(path: Path) -> list[dict]:
    """The rows of an ``eval.csv`` as numbers (alignment and its SE None where no verifier ran)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    numbers = [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in rows]
    return [{**r, "step": int(r["step"]), "n": int(r["n"])} for r in numbers]


class Evaluator:
    """Evaluations of fixed-seed samples of the eval prompts (``cfg.eval_images`` each, the pipeline's
    deterministic schedule): ``evaluator(tag, step)`` measures the judge's mean reward with its standard error (P(yes);
    with a judge that compares, the win rate over the base model's images: :mod:`.eval_pairwise`) and,
    when :func:`use_verifier`, the share of images the strict ShapesWorld verifier passes with ``sqrt(p(1-p)/n)``;
    appends the row to ``eval.csv``, logs ``eval_reward`` / ``eval_alignment`` to the trackers and returns the mean
    reward (None when there is nothing to score on this process). With a ``tag`` and ``sample_every`` the samples
    are saved as grids ``samples/{tag}-{i}.png``.

    It also keeps, across exact resume (:meth:`state` into the checkpoint, restored from it): the first and last
    rows, the count of evaluations since the best judge reward (``early_stopping_patience``: :meth:`ended` once it
    runs out) and the best row, by alignment when the verifier is on, else by reward, with that evaluation's LoRA
    weights when ``keep_best`` (:meth:`tensors`, a file in the checkpoint)."""

    def __init__(self, cfg, pipe, rm, context, sampler_cfg, eval_prompts, out, rt: Runtime, visits, trackers, tr=None):
        if cfg.keep_best and tr is None:
            raise ValueError("keep_best needs the Trainable whose LoRA it keeps")
        self.cfg, self.pipe, self.rm, self.context = cfg, pipe, rm, context
        # the pipeline's own denoiser: only the main process evaluates under DDP, whose wrapper waits for all
        self.sampler_cfg = replace(sampler_cfg, denoiser=None, denoiser_2=None)
        self.eval_prompts, self.out, self.rt, self.visits = eval_prompts, Path(out), rt, visits
        self.trackers, self.tr = trackers, tr
        # (the ShapesWorld verifier checks images; clips of a video pipeline are judged only)
        self.verifier = pipeline_family(pipe) not in VIDEO_FAMILIES and use_verifier(cfg, eval_prompts)
        self.judge = eval_judge(cfg, rm, pipe, self.sampler_cfg, tr.denoiser if tr else None, context)
        self.first: dict | None = None
        self.last: dict | None = None
        self.best: dict | None = None  # the row keep_best exports
        self.best_reward: float | None = None  # the best judge reward (early stopping)
        self.since_best = 0
        self.stopped_early = False
        self.best_weights: dict | None = None
        if tr is not None and tr.resumed:
            self.restore(tr)

    # -------------------------------------------------------------------- measuring
    def measure(self, tag: str, step: int) -> dict:
        """One evaluation row (every process under FSDP, else the first): the samples, the judge, the verifier."""
        from ..images import load_image
        from ..shapes import verify

        cfg = self.cfg
        scores, passed = [], []
        with torch.no_grad(), self.visits():
            for i, prompt in enumerate(self.eval_prompts):
                images = sample_eval_images(
                    self.pipe, self.sampler_cfg, prompt, i, cfg.eval_images, cfg.num_inference_steps
                )
                if images.ndim == 5:  # clips [n, T, 3, H, W]
                    scores.append(self.score_clips(images, prompt, tag, i))
                    continue
                scores.append(self.judge(images, prompt, i))
                if self.verifier:
                    for img in images.detach().float().cpu().nan_to_num(0.0).clamp(0, 1):
                        passed.append(bool(verify(load_image(img), prompt).passed))
                if tag and cfg.sample_every:
                    save_sample_grid(images, self.out / "samples" / f"{tag}-{i:03d}.png")
        values = torch.cat(scores).double()
        n = len(values)
        row = {
            "step": step,
            "reward": float(values.mean()),
            "reward_se": float(values.std() / math.sqrt(n)) if n > 1 else 0.0,
            "alignment": None,
            "alignment_se": None,
            "n": n,
        }
        if self.verifier:
            share = sum(passed) / len(passed)
            row.update(alignment=share, alignment_se=proportion_se(share, len(passed)))
        return row

    def score_clips(self, clips: torch.Tensor, prompt: str, tag: str, i: int) -> torch.Tensor:
        """The judge's reward (:func:`eval_judge`) of clips ``[n, T, 3, H, W]`` on :func:`judge_frames` frames of
        each, sampled uniformly; with a ``tag`` and ``sample_every`` those frames are saved, clip after clip."""
        frames, context = judge_frames(self.cfg, clips.shape[1]), judge_context(self.cfg, self.context, prompt)
        if tag and self.cfg.sample_every:
            seen = clips[:, sample_indices(clips.shape[1], frames)].flatten(0, 1)
            save_sample_grid(seen, self.out / "samples" / f"{tag}-{i:03d}.png")
        return self.judge(clips, prompt, i, context=context, num_frames=frames)

    def __call__(self, tag: str, step: int) -> float | None:
        row = None
        if self.eval_prompts and (self.rt.main or self.rt.fsdp):  # (sharded: every process runs the denoiser)
            row = self.measure(tag, step)
            self.record(row)
        if self.cfg.early_stopping_patience:  # every process learns the first process's decision
            self.stopped_early = any_process(self.stopped_early, self.rt.state)
        return None if row is None else row["reward"]

    def record(self, row: dict) -> None:
        """Write ``row``, log it, and update the first / last / best rows and the patience count."""
        if self.rt.main:
            from .metrics import append_csv

            append_csv(self.out / EVAL_FILE, [row])
            logged = {"eval_reward": row["reward"]}
            if row["alignment"] is not None:
                logged["eval_alignment"] = row["alignment"]
            for tracker in self.trackers:
                tracker.log(logged, step=row["step"])
        self.first = self.first or row
        self.last = row
        if self.best_reward is None or row["reward"] > self.best_reward:
            self.best_reward, self.since_best = row["reward"], 0
        else:
            self.since_best += 1
        patience = self.cfg.early_stopping_patience
        if patience and self.since_best >= patience and row["step"] < self.cfg.max_steps:
            self.stopped_early = True
            say(
                f"early stopping at step {row['step']}: {self.since_best} evaluations without a held-out judge reward "
                f"above {self.best_reward:.4f}"
            )
        key = "alignment" if self.verifier else "reward"
        better = self.best is None or row[key] > self.best[key]
        if self.rt.fsdp:
            better = any_process(better, self.rt.state)
        if better:
            self.best = row
            if self.cfg.keep_best:
                self.best_weights = self.snapshot()

    def snapshot(self) -> dict:
        """A copy of the LoRA weights now, keyed by parameter name (gathered on the first process under FSDP)."""
        if self.rt.fsdp:
            return gather_full_state(self.tr.denoiser)[0]
        named = self.tr.denoiser.named_parameters()
        return {n: p.detach().to("cpu", copy=True) for n, p in named if p.requires_grad}

    # -------------------------------------------------------------------- the loop's questions
    def due(self, step: int) -> bool:
        """Whether an evaluation runs after ``step``: every ``eval_every`` steps and after the last one."""
        return step >= self.cfg.max_steps or bool(self.cfg.eval_every and step % self.cfg.eval_every == 0)

    def tag(self, step: int) -> str:
        """The sample-grid name of the evaluation after ``step`` ("" for none)."""
        every = self.cfg.sample_every
        if not every:
            return ""
        return "final" if step >= self.cfg.max_steps else (f"step-{step:06d}" if step % every == 0 else "")

    def ended(self, step: int) -> bool:
        """The run is over: all steps done, or early stopping."""
        return step >= self.cfg.max_steps or self.stopped_early

    def after(self, step: int) -> float | None:
        """The reward after training: the last evaluation's (measured now if the checkpoint a finished run resumed
        from predates the evaluation records)."""
        if self.eval_prompts and (self.rt.main or self.rt.fsdp) and (self.last is None or self.last["step"] != step):
            self.record(self.measure(self.tag(step), step))
        return None if self.last is None else self.last["reward"]

    # -------------------------------------------------------------------- checkpoint and summary
    def state(self) -> dict:
        """What a checkpoint keeps of the evaluations (JSON)."""
        keys = ("first", "last", "best", "best_reward", "since_best", "stopped_early")
        return {"evaluations": {k: getattr(self, k) for k in keys}}

    def tensors(self) -> dict | None:
        """The best evaluation's LoRA weights for the checkpoint (keep_best), else None."""
        return {BEST_LORA: self.best_weights} if self.cfg.keep_best and self.best_weights else None

    def restore(self, tr: Trainable) -> None:
        saved = tr.resumed.get("evaluations")
        if not saved:
            return
        for key, value in saved.items():
            setattr(self, key, value)
        if self.cfg.keep_best and self.best is not None:
            path = Path(tr.resumed_from) / f"{BEST_LORA}.safetensors"
            if path.is_file():
                from safetensors.torch import load_file

                self.best_weights = load_file(path) if self.rt.main else {}
            else:  # a checkpoint of a run without keep_best: the best is chosen from here on
                self.best = None
                if self.rt.main:
                    say(f"keep_best: {tr.resumed_from} holds no best LoRA; the best is chosen from the next evaluation")

    def exported_weights(self) -> dict | None:
        """The weights :func:`finish` exports instead of the live LoRA (keep_best), else None."""
        return self.best_weights if self.cfg.keep_best and self.best_weights is not None else None

    def summary(self, step: int) -> dict:
        """The run summary's evaluation fields."""
        first, last = self.first or {}, self.last or {}
        return {
            "reward_before_se": first.get("reward_se"),
            "reward_after_se": last.get("reward_se"),
            "verifier": "shapes" if self.verifier else "none",
            "alignment_before": first.get("alignment"),
            "alignment_before_se": first.get("alignment_se"),
            "alignment_after": last.get("alignment"),
            "alignment_after_se": last.get("alignment_se"),
            "alignment_n": last.get("n") if self.verifier else None,
            "reward_hacking": reward_hacking(self.first, self.last),
            "early_stopped_at": step if self.stopped_early else None,
            "exported_step": self.best["step"] if self.exported_weights() is not None else step,
        }


def make_evaluator(
    cfg, pipe, rm, context, sampler_cfg, eval_prompts, out: Path, rt: Runtime, visits, trackers, tr=None
) -> Evaluator:
    """The :class:`Evaluator` of a run (``tr``: the :class:`Trainable`, whose LoRA ``keep_best`` keeps and whose
    resumed checkpoint holds the evaluations so far)."""
    return Evaluator(cfg, pipe, rm, context, sampler_cfg, eval_prompts, out, rt, visits, trackers, tr)


def finish(pipe, tr: Trainable, out: Path, history: list[dict], evaluator: Evaluator | None = None) -> Path:
    """Phase 5: export the LoRA to ``out/lora`` (diffusers and ComfyUI files; with ``keep_best`` the best
    evaluation's) and plot the reward curve with the evaluations of ``eval.csv``."""
    lora_dir = out / "lora"
    best = evaluator.exported_weights() if evaluator is not None else None
    full = gather_full_state(tr.denoiser)[0] if tr.rt.fsdp and best is None else None
    if tr.rt.main:
        save_lora(pipe, tr.denoiser, lora_dir, tr.cfg.lora_alpha, state_dict=best if best is not None else full)
        if history:  # (empty when a finished run is resumed)
            plot_reward_curve(history, out / "reward_curve.png", evaluations=read_eval_rows(out / EVAL_FILE))
    tr.rt.accelerator.wait_for_everyone()
    return lora_dir


def lora_checksum(params) -> float:
    return float(sum(full_tensor(p).detach().double().abs().sum() for p in params))
