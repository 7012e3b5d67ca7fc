"""The skeleton the diffusion trainers stand on (ReFL in :mod:`.refl`, GRPO in :mod:`.grpo`).

Each trainer reads top to bottom in numbered phases and calls these for the phases they share:

1. :func:`runtime`: the processes, the device and the dtype;
2. :func:`load_models`: the pipeline (diffusers folder, hub id or single file) and the frozen judge, and
   :func:`judge_visits`, the context in which an offloaded judge comes to the device to score;
3. :func:`setup_trainable`: the LoRA on the denoiser, the optimiser, resume from the newest checkpoint, and the
   :class:`Trainable` whose ``checkpoint`` saves the run atomically;
4. :func:`sampler_config`, :func:`make_evaluator` (the reward of fixed-seed samples of the eval prompts before,
   during and after training, with sample grids) and :func:`open_trackers`;
5. :func:`finish`: the LoRA exported for diffusers and ComfyUI, and the reward curve.

Every random draw of a step comes from :func:`step_generator` keyed on ``(seed, step)``, so a resumed run equals
an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from ..distributed import process_state
from ..manifest import ManifestError, read_jsonl
from ..pipelines import Sampler, SamplerConfig, check_scheduler, pipeline_family
from .checkpoint import gather_full_state, list_checkpoints, load_checkpoint, load_trainable, save_checkpoint
from .export import save_lora
from .metrics import drop_rows_after, say
from .plots import plot_reward_curve, save_sample_grid
from .refl_config import DiffusionTrainConfig


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


def reward_prompts(cfg: DiffusionTrainConfig, prompts: list[str]) -> tuple[list[str], str]:
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
def finished(trackers: list):
    """Finish every tracker when the training block is left, however it is left."""
    try:
        yield
    finally:
        for tracker in trackers:
            tracker.finish()


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


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """The generator of one kind of draw (``salt``) of training step ``step``: a function of its arguments only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + salt) % (2**63))


def autocast_for(cfg: DiffusionTrainConfig, device: torch.device):
    """The autocast context of ``cfg.mixed_precision`` (a no-op for ``no``)."""
    if cfg.mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16)


# ---------------------------------------------------------------------------------------------------- phases
@dataclass
class Runtime:
    """Phase 1: ``state`` is accelerate's process state under ``accelerate launch`` (else None)."""

    state: object
    rank: int
    main: bool
    device: torch.device
    dtype: torch.dtype
    fsdp: bool


def runtime(cfg: DiffusionTrainConfig) -> Runtime:
    state = process_state()  # several processes under accelerate launch: data parallel, gradients averaged
    rank = state.process_index if state else 0
    device = torch.device(cfg.device or (state.device if state else ("cuda" if torch.cuda.is_available() else "cpu")))
    dtype = getattr(torch, cfg.dtype) if cfg.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return Runtime(state, rank, rank == 0, device, dtype, cfg.distributed == "fsdp" and state is not None)


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
    pipe.set_progress_bar_config(disable=True)
    if rm is None:
        rm = RewardModel.from_pretrained(cfg.reward_model, device=rt.device, quantization=cfg.quantization)
    rm.model.requires_grad_(False)
    return pipe, rm, family


def judge_visits(rm, cfg: DiffusionTrainConfig, device: torch.device):
    """A context factory: with ``offload_reward_model`` (and an accelerator) the judge is moved to the CPU now and
    visits the device only inside the context; otherwise the context does nothing."""
    offload = cfg.offload_reward_model and device.type != "cpu"

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
    ``resumed`` state of the checkpoint it continued from, empty for a fresh run)."""

    cfg: DiffusionTrainConfig
    rt: Runtime
    denoiser: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    ckpt_dir: Path
    step: int = 0
    resumed: dict = field(default_factory=dict)

    def checkpoint(self, step: int, extra: dict) -> None:
        """Save the state after ``step`` (every process calls it: under FSDP they gather the state together)."""
        full = gather_full_state(self.denoiser, self.optimizer) if self.rt.fsdp else None
        if self.rt.main:
            save_checkpoint(
                self.ckpt_dir,
                step,
                self.denoiser,
                self.optimizer,
                self.scheduler,
                extra=extra,
                keep=self.cfg.keep_checkpoints,
                full_state=full,
            )


def setup_trainable(cfg: DiffusionTrainConfig, pipe, rt: Runtime, out: Path) -> Trainable:
    """Freeze the pipeline, add the LoRA (the same random init on every process and run), the optimiser and a
    constant LR schedule; write ``config.json``; continue from the newest checkpoint when ``cfg.resume``; drop the
    metrics rows of steps after it (they run again)."""
    denoiser = pipe_denoiser(pipe)
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    params = add_lora(denoiser, cfg)
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
        tr.resumed = load_checkpoint(resume_from, denoiser, optimizer, scheduler, sharded=rt.fsdp)
        tr.step = tr.resumed["step"]
        if rt.main:
            say(f"resuming from step {tr.step} ({resume_from})")
    if rt.main:  # rows of steps after the checkpoint were written by the run that stopped: they run again
        drop_rows_after(out / "metrics.csv", tr.step)
    return tr


def sampler_config(cfg: DiffusionTrainConfig, pipe, family: str) -> SamplerConfig:
    """The sampling settings of training and evaluation: the schedule, guidance and square resolution of ``cfg``."""
    size = cfg.resolution
    sampler_cfg = SamplerConfig(
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale, height=size, width=size
    )
    if family == "flux":
        sampler_cfg.max_sequence_length = min(sampler_cfg.max_sequence_length, pipe.tokenizer_2.model_max_length)
    return sampler_cfg


def make_evaluator(cfg, pipe, rm, context, sampler_cfg, eval_prompts, out: Path, rt: Runtime, visits, trackers):
    """``evaluate(tag, step)``: the judge's mean P(yes) over ``cfg.eval_images`` fixed-seed samples (the pipeline's
    deterministic schedule) of each eval prompt, logged to the trackers; with a ``tag`` and ``sample_every`` the
    samples are saved as grids ``samples/{tag}-{i}.png``. None when there is nothing to score on this process."""

    def evaluate(tag: str, step: int) -> float | None:
        if not eval_prompts or not (rt.main or rt.fsdp):  # (sharded: every process runs the denoiser together)
            return None
        scores = []
        with torch.no_grad(), visits():
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

    return evaluate


def finish(pipe, tr: Trainable, out: Path, history: list[dict]) -> Path:
    """Phase 5: export the LoRA to ``out/lora`` (diffusers and ComfyUI files) and plot the reward curve."""
    lora_dir = out / "lora"
    full = gather_full_state(tr.denoiser)[0] if tr.rt.fsdp else None
    if tr.rt.main:
        save_lora(pipe, tr.denoiser, lora_dir, tr.cfg.lora_alpha, state_dict=full)
        if history:  # (empty when a finished run is resumed)
            plot_reward_curve(history, out / "reward_curve.png")
    if tr.rt.state:
        tr.rt.state.wait_for_everyone()
    return lora_dir


def lora_checksum(params) -> float:
    return float(sum(full_tensor(p).detach().double().abs().sum() for p in params))
