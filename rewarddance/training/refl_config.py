"""The settings of a ReFL run (:class:`ReFLConfig`): every field with its help text, read from YAML with
``--key value`` overrides, and checked as a whole when built, so a bad setting fails before anything loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from .config import coerce_settings, config_from_yaml

MODEL_TYPES = ("auto", "sd", "sdxl", "sd3", "flux")
LOSSES = ("hinge", "log")
ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TRACKERS = tuple(LOGGER_TYPE_TO_CLASS)
EXPERTS = ("both", "high", "low")  # which of Wan 2.2's two experts get a LoRA (rewarddance.training.experts)


@dataclass
class DiffusionTrainConfig:
    """Settings every diffusion trainer shares (ReFL, GRPO); each trainer's config adds its own fields."""

    pretrained: str = field(metadata={"help": "diffusers folder, hub id, single file (.safetensors), shapes-gen"})
    reward_model: str = field(
        metadata={
            "help": "reward model: a Hugging Face id, a local folder or shapes-s/m/l; GRPO also takes a served judge, "
            "http://HOST:PORT (rewarddance serve) or openai:BASE_URL#MODEL (key from $REWARDDANCE_API_KEY)"
        }
    )
    prompts: list[str] | str = field(
        metadata={
            "help": "training prompts: a list, or a .txt (one per line) / .jsonl file path; image-to-video pipelines: "
            'a .jsonl whose every line has the conditioning image, {"prompt": ..., "image": path relative to the file}'
        }
    )
    output_dir: str = field(metadata={"help": "checkpoints, metrics.csv, samples and the LoRA go here"})
    model_type: str = field(default="auto", metadata={"help": "auto, sd, sdxl, sd3 or flux (single files need it)"})
    single_file_config: str | None = field(default=None, metadata={"help": "diffusers folder/id for a single file"})
    eval_prompts: list[str] | str = field(
        default_factory=list,
        metadata={
            "help": "held-out prompts for the reward before / after (a list or a file; image-to-video: a .jsonl "
            "with images, as prompts)"
        },
    )
    eval_train_prompts: int = field(
        default=4,
        metadata={"help": "without eval_prompts: score this many training prompts before / after instead (0: none)"},
    )
    task: str = field(default="alignment", metadata={"help": "reward context task preset"})
    cot: str = field(
        default="none",
        metadata={
            "help": "chain of thought: none, or judgment_first for a judge trained so (verdict at the first token)"
        },
    )
    quantization: str | None = field(default=None, metadata={"help": "reward model in None, 8bit or 4bit"})
    num_inference_steps: int = field(default=30, metadata={"help": "length of the sampling schedule"})
    guidance_scale: float | None = field(default=None, metadata={"help": "CFG scale; None: the pipeline default"})
    resolution: int | None = field(default=None, metadata={"help": "image side in px; None: the pipeline default"})
    num_frames: int | None = field(
        default=None, metadata={"help": "video pipelines: frames per clip; None: the pipeline's default"}
    )
    reward_frames: int | None = field(
        default=None,
        metadata={
            "help": "video pipelines: frames of each clip the judge sees; ReFL draws them at random per rollout, GRPO "
            "and the evaluations sample them uniformly (first and last included); None: 8, or the whole clip if shorter"
        },
    )
    first_frame_context: bool = field(
        default=True,
        metadata={
            "help": "image-to-video pipelines: show the judge each clip's conditioning image as its first frame "
            "(RewardContext first_frame; a video task's image-to-video question); false: the clip alone"
        },
    )
    max_sequence_length: int | None = field(
        default=None,
        metadata={
            "help": "text tokens of the T5 encoders (SD3, Flux, video); None: 256 for images, the pipeline's own "
            "default for video (within its tokenizer's length)"
        },
    )
    use_dynamic_cfg: bool = field(
        default=False,
        metadata={
            "help": "CogVideoX only: the guidance scale follows its pipelines' cosine schedule over the steps (as "
            "their use_dynamic_cfg), in training and evaluation; other pipelines refuse it"
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=8.0, metadata={"help": "LoRA alpha"})
    lora_targets: list[str] = field(default_factory=lambda: list(ATTENTION_TARGETS), metadata={"help": "module names"})
    experts: str = field(
        default="both",
        metadata={
            "help": "Wan 2.2's two experts: both (a LoRA each), high (the high-noise transformer only) or low "
            "(the low-noise transformer_2 only); pipelines with one denoiser take both"
        },
    )
    lr: float = field(default=1e-4, metadata={"help": "learning rate"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw or adamw8bit (bitsandbytes)"})
    max_steps: int = field(default=100, metadata={"help": "optimiser steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "accelerate's autocast: no, bf16 or fp16 (fp16 on a GPU only); None: what accelerate launch / "
            "accelerate config chose, else no"
        },
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "micro-batches per optimiser step, their gradients accumulated (accelerator.accumulate); "
            "accelerate launch --gradient_accumulation_steps overrides it"
        },
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "checkpoint the denoiser and VAE decoder"})
    offload_reward_model: bool = field(default=False, metadata={"help": "keep the RM on the CPU between steps"})
    seed: int = field(default=0, metadata={"help": "seed of prompts, noise and every draw of a step"})
    save_every: int = field(default=50, metadata={"help": "checkpoint every N steps; 0: only at the end"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept"})
    resume: bool = field(default=True, metadata={"help": "continue from the newest checkpoint"})
    eval_every: int = field(default=0, metadata={"help": "score eval_prompts every N steps (0: start and end)"})
    eval_images: int = field(default=2, metadata={"help": "images per eval prompt"})
    verifier: str = field(
        default="auto",
        metadata={
            "help": "ShapesWorld verifier on the eval images: auto (on when every eval prompt is a ShapesWorld "
            "prompt), shapes (always; a prompt it cannot parse is an error) or none"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "stop after this many evaluations in a row without a new best held-out judge reward"},
    )
    keep_best: bool = field(
        default=False,
        metadata={
            "help": "export the LoRA of the best evaluation (verifier alignment, else judge reward), not the last"
        },
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "evaluate and export an exponential moving average of the LoRA with this decay (0: the last "
            "weights)"
        },
    )
    sample_every: int = field(default=0, metadata={"help": "save a sample grid of eval prompts every N steps"})
    window: int = field(default=20, metadata={"help": "sliding window of the reward mean / std"})
    trackers: list[str] = field(
        default_factory=list,
        metadata={"help": "accelerate trackers besides metrics.csv: tensorboard, wandb, mlflow ... (files: logs/)"},
    )
    max_nan_steps: int = field(default=5, metadata={"help": "consecutive NaN/inf losses before the run stops"})
    distributed: str = field(
        default="ddp",
        metadata={"help": "several processes: ddp (a denoiser copy each) or fsdp (its weights sharded over them)"},
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda ..."})
    dtype: str | None = field(default=None, metadata={"help": "model dtype; default bf16 on CUDA, fp32 on CPU"})

    @classmethod
    def from_yaml(cls, path, overrides: dict | None = None):
        return config_from_yaml(cls, path, overrides)

    def __post_init__(self):
        coerce_settings(self)  # YAML's "5e-5" is a string: each value as its field's type
        checks = [
            (self.model_type in MODEL_TYPES, f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}"),
            (self.lora_rank > 0, f"lora_rank must be positive, got {self.lora_rank}"),
            (self.max_steps >= 1, f"max_steps must be 1 or more, got {self.max_steps}"),
            (self.eval_train_prompts >= 0, f"eval_train_prompts must be 0 or more, got {self.eval_train_prompts}"),
            (self.num_frames is None or self.num_frames >= 1, f"num_frames must be 1 or more, got {self.num_frames}"),
            (
                self.reward_frames is None or self.reward_frames >= 1,
                f"reward_frames must be 1 or more (or None), got {self.reward_frames}",
            ),
            (
                self.max_sequence_length is None or self.max_sequence_length >= 1,
                f"max_sequence_length must be 1 or more (or None), got {self.max_sequence_length}",
            ),
            (self.optimizer in ("adamw", "adamw8bit"), f"optimizer must be adamw or adamw8bit, got {self.optimizer}"),
            (self.distributed in ("ddp", "fsdp"), f"distributed must be ddp or fsdp, got {self.distributed!r}"),
            (self.experts in EXPERTS, f"experts must be both, high or low, got {self.experts!r}"),
            (
                not (self.distributed == "fsdp" and self.optimizer == "adamw8bit"),
                "optimizer adamw8bit does not take FSDP's sharded parameters; use adamw with distributed fsdp",
            ),
            (
                self.mixed_precision in (None, "no", "bf16", "fp16"),
                f"mixed_precision must be no, bf16 or fp16 (or None), got {self.mixed_precision!r}",
            ),
            (
                self.gradient_accumulation_steps >= 1,
                f"gradient_accumulation_steps must be 1 or more, got {self.gradient_accumulation_steps}",
            ),
            (
                self.verifier in ("auto", "shapes", "none"),
                f"verifier must be auto, shapes or none, got {self.verifier!r}",
            ),
            (
                self.early_stopping_patience is None or self.early_stopping_patience >= 1,
                f"early_stopping_patience must be 1 or more (or None), got {self.early_stopping_patience}",
            ),
            (
                self.early_stopping_patience is None or self.eval_every > 0,
                "early_stopping_patience needs eval_every > 0 (it counts the evaluations during training)",
            ),
            (0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (not set(self.trackers) - set(TRACKERS), f"trackers must be among {sorted(TRACKERS)}, got {self.trackers}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{type(self).__name__}: {msg}")


@dataclass
class ReFLConfig(DiffusionTrainConfig):
    """Settings of a ReFL run: the shared ones of :class:`DiffusionTrainConfig` and these."""

    mode: str = field(default="pointwise", metadata={"help": "pointwise, or pairwise against cached references"})
    references: str | None = field(default=None, metadata={"help": "folder written by build_references (pairwise)"})
    loss: str = field(default="hinge", metadata={"help": "hinge: relu(hinge_margin - r); log: -log r"})
    hinge_margin: float = field(default=1.0, metadata={"help": "lambda of the hinge loss"})
    reward_scale: float = field(default=1.0, metadata={"help": "multiplies the reward loss"})
    stop_range: list[int] = field(
        default_factory=lambda: [20, 29], metadata={"help": "[lo, hi] stop levels, inclusive"}
    )
    batch_size: int = field(
        default=2, metadata={"help": "prompts per micro-batch and process (a step: x gradient_accumulation_steps)"}
    )
    grad_accum: int | None = field(default=None, metadata={"help": "the former name of gradient_accumulation_steps"})
    pretrain_data: str | None = field(default=None, metadata={"help": "image-caption folder (manifest.jsonl)"})
    pretrain_weight: float = field(default=0.0, metadata={"help": "weight of the pretraining diffusion loss"})

    def __post_init__(self):
        from ..remote import refuse_remote

        super().__post_init__()
        if self.grad_accum is not None:  # the former name: one value, kept under the shared field's name
            if self.gradient_accumulation_steps not in (1, self.grad_accum):
                raise ValueError(
                    f"ReFLConfig: grad_accum {self.grad_accum} and gradient_accumulation_steps "
                    f"{self.gradient_accumulation_steps} disagree; give gradient_accumulation_steps only"
                )
            self.gradient_accumulation_steps, self.grad_accum = self.grad_accum, None
        refuse_remote(
            self.reward_model, "ReFLConfig: reward_model (ReFL back-propagates the reward into the generator)"
        )
        checks = [
            (self.mode in ("pointwise", "pairwise"), f"mode must be pointwise or pairwise, got {self.mode!r}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (
                self.cot in ("none", "judgment_first"),
                f"cot must be none or judgment_first (a reward read before any decoding), got {self.cot!r}",
            ),
            (
                self.batch_size >= 1 and self.gradient_accumulation_steps >= 1 and self.max_steps >= 1,
                "batch sizes and steps >= 1",
            ),
            (len(self.stop_range) == 2, f"stop_range must be [lo, hi], got {self.stop_range}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"ReFLConfig: {msg}")
        lo, hi = self.stop_range
        if not 0 <= lo <= hi < self.num_inference_steps:
            raise ValueError(
                f"ReFLConfig: stop_range {self.stop_range} is outside the schedule of {self.num_inference_steps} "
                f"steps (need 0 <= lo <= hi <= {self.num_inference_steps - 1})"
            )
        if self.mode == "pairwise" and not self.references:
            raise ValueError("ReFLConfig: mode 'pairwise' needs `references` (a folder from build_references)")
