"""Caption pretraining: teach a VLM to describe images before it is trained to judge them.

A reward model is normally fine-tuned from a VLM that already sees: its vision tower, projector and language model
were aligned on image-text data first. A VLM built from scratch (the tiny models of ``rewarddance.testing.tiny``, the
bundled ShapesWorld judges) has not been, and a yes/no verdict is one bit of supervision per image: measured on
ShapesWorld pairs with a tiny LLaVA, reward training from random weights sat at the Bradley-Terry loss of chance
for 2,000 steps. A caption is a dozen supervised tokens per image, each of which (a colour, a shape, a count, a
relation) can only be predicted by looking. This trainer is that first stage: next-token cross-entropy on the
caption after a fixed question, computed with :func:`rewarddance.kernels.selected_logprobs` (no full logits).

Data: JSON Lines with ``image`` (a path relative to the file's folder) and ``caption``; a folder stands for its
``manifest.jsonl``, so a ShapesWorld folder (``rewarddance shapes make``) is read as it is. Checkpoints, resume,
SIGINT handling and data-parallel processes work as in the reward-model trainer. The final model is saved with
``save_pretrained`` beside its processor, ready to be the ``model`` of ``rewarddance train-rm``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..images import ImageError, load_image
from ..model import RewardModel
from . import loop
from .config import coerce_settings, config_from_yaml
from .data import DataError, check_image_file, jsonl_lines
from .loop import LM_TARGETS
from .rm import encode_answers, save_reward_model

MANIFEST = "manifest.jsonl"
QUESTION = "Describe the image."


@dataclass
class CaptionTrainConfig:
    """Settings of a caption-pretraining run; ``from_yaml`` reads them."""

    model: str = field(metadata={"help": "the VLM to train: a Hugging Face id or a local folder"})
    data: str = field(metadata={"help": "JSONL of {image, caption}, or a folder holding manifest.jsonl"})
    output_dir: str = field(metadata={"help": "checkpoints, metrics.csv and the final model go here"})
    eval_data: str | None = field(default=None, metadata={"help": "held-out captions: mean token loss and accuracy"})
    question: str = field(default=QUESTION, metadata={"help": "the user turn the caption answers"})
    train: str = field(default="all", metadata={"help": "all, lm, projector or lora"})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank (train: lora)"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha"})
    lora_targets: str = field(
        default=LM_TARGETS,
        metadata={"help": "regex of the module names LoRA adapts"},
    )
    quantization: str | None = field(default=None, metadata={"help": "None, 8bit or 4bit base (with train: lora)"})
    dtype: str | None = field(default=None, metadata={"help": "model dtype; default bf16 on CUDA, fp32 on CPU"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ..."})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps, then cosine decay"})
    batch_size: int = field(default=32, metadata={"help": "images per optimiser step (per process)"})
    max_steps: int = field(default=2000, metadata={"help": "optimiser steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    seed: int = field(default=0, metadata={"help": "data order seed"})
    save_every: int = field(default=500, metadata={"help": "checkpoint every N steps; 0: only at the end"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many checkpoints to keep"})
    resume: bool = field(default=True, metadata={"help": "continue from the newest checkpoint in output_dir"})
    skip_bad: bool = field(default=False, metadata={"help": "skip unreadable rows (reported) instead of failing"})
    log_every: int = field(default=50, metadata={"help": "write metrics.csv every N steps"})

    def __post_init__(self):
        coerce_settings(self)  # YAML's "1e-3" is a string: each value as its field's type
        if self.train not in ("all", "lm", "projector", "lora"):
            raise ValueError(f"CaptionTrainConfig: train must be all, lm, projector or lora, got {self.train!r}")
        if self.batch_size < 1 or self.max_steps < 1:
            raise ValueError("CaptionTrainConfig: batch_size and max_steps must be at least 1")
        if self.lr <= 0:
            raise ValueError(f"CaptionTrainConfig: lr must be positive, got {self.lr}")

    @classmethod
    def from_yaml(cls, path, overrides: dict | None = None) -> CaptionTrainConfig:
        return config_from_yaml(cls, path, overrides)


@dataclass(frozen=True)
class Captioned:
    """One training example: an image file and what it shows."""

    id: str
    image: str
    caption: str


def read_captions(path: str | os.PathLike, skip_bad: bool = False) -> tuple[list[Captioned], list[str]]:
    """The rows of a captions JSONL (or a folder's ``manifest.jsonl``) and the problems skipped with ``skip_bad``.

    A malformed line, a missing or empty field, or a missing or unreadable image raises :class:`DataError` naming
    the file and line (or, with ``skip_bad``, is reported in the second value).
    """
    file = Path(path)
    if file.is_dir():
        file = file / MANIFEST
    if not file.is_file():
        raise DataError(f"{path}: no such captions file (a JSONL file, or a folder holding {MANIFEST})")
    rows, problems = [], []
    for where, row in jsonl_lines(file):
        try:
            if isinstance(row, DataError):
                raise row
            empty = [k for k in ("image", "caption") if not row.get(k)]
            if empty:
                raise DataError(f"{where}: missing or empty field(s) {', '.join(empty)}")
            image = file.parent / row["image"]
            check_image_file(image, where)
            rows.append(Captioned(str(row.get("id", where.rsplit(":", 1)[1])), str(image), str(row["caption"])))
        except DataError as err:
            if not skip_bad:
                raise
            problems.append(str(err))
    if not rows:
        raise DataError(f"{file}: no usable rows" + (f" ({len(problems)} skipped as bad)" if problems else ""))
    return rows, problems


def _prompt(rm: RewardModel, question: str) -> tuple[str, str]:
    """The chat-template prompt and what goes before the caption: a space after "ASSISTANT:", nothing after a
    newline (a byte-level tokenizer keeps a leading space with the word that follows it)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = rm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text, "" if text.endswith((" ", "\n")) else " "


def caption_batch(rm: RewardModel, rows: list[Captioned], question: str = QUESTION):
    """Model inputs for ``rows`` and ``[B, T]`` next-token targets: each caption and an end-of-text token."""
    images = []
    for r in rows:
        try:
            images.append([load_image(r.image)])
        except ImageError as err:
            raise DataError(f"row {r.id}: {err}") from err
    eos = rm.tokenizer.eos_token or ""
    prompt, lead = _prompt(rm, question)
    inputs, starts = encode_answers(rm, [prompt] * len(rows), [lead + r.caption + eos for r in rows], images)
    ids = inputs["input_ids"]
    targets = torch.full_like(ids, -100)
    for i, s in enumerate(starts.tolist()):
        targets[i, s - 1 : -1] = ids[i, s:]  # position t predicts token t + 1
    return inputs, targets


def caption_loss(rm: RewardModel, rows: list[Captioned], question: str = QUESTION):
    """``(mean cross-entropy, token accuracy, caption tokens)`` of the captions of ``rows``; differentiable in the
    first."""
    inputs, targets = caption_batch(rm, rows, question)
    hidden = rm.hidden_states(inputs)  # [B, T, H]
    keep = (targets != -100).to(hidden.device)
    sel, tgt = hidden[keep], targets.to(hidden.device)[keep]
    logp = rm.token_log_probs(sel, tgt)
    weight, bias = rm.head()
    right = 0
    with torch.no_grad():  # greedy predictions, a block of rows at a time (no [T, V] logits for the whole batch)
        for k in range(0, len(tgt), 256):
            logits = sel[k : k + 256] @ weight.T + (bias if bias is not None else 0)
            right += int((logits.argmax(-1) == tgt[k : k + 256]).sum())
    return -logp.mean(), right / max(1, len(tgt)), len(tgt)


@torch.no_grad()
def evaluate_captions(rm: RewardModel, rows: list[Captioned], question: str = QUESTION, batch_size: int = 32) -> dict:
    """Mean caption cross-entropy per token and the share of caption tokens predicted exactly (greedy), both over
    all caption tokens of ``rows`` (batches weighted by their token counts)."""
    was = rm.model.training
    rm.model.eval()
    loss_sum, right, tokens = 0.0, 0.0, 0
    for start in range(0, len(rows), batch_size):
        loss, acc, n = caption_loss(rm, rows[start : start + batch_size], question)
        loss_sum, right, tokens = loss_sum + float(loss) * n, right + acc * n, tokens + n
    rm.model.train(was)
    return {"rows": len(rows), "loss": loss_sum / max(1, tokens), "token_accuracy": right / max(1, tokens)}


def train_captions(cfg: CaptionTrainConfig, progress: bool = True) -> dict:
    """Run (or resume) caption pretraining; returns the held-out evaluation, the history and the final folder."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str), encoding="utf-8")
    rows, skipped = read_captions(cfg.data, skip_bad=cfg.skip_bad)
    held_out = read_captions(cfg.eval_data, skip_bad=cfg.skip_bad)[0] if cfg.eval_data else []
    run = loop.start(cfg, out)

    def loss_fn(step: int) -> dict:
        batch = loop.batch_of(rows, step, cfg.batch_size * run.world, cfg.seed)
        loss, acc, _ = caption_loss(
            run.rm, batch[run.rank * cfg.batch_size : (run.rank + 1) * cfg.batch_size], cfg.question
        )
        return {"loss": loss, "token_accuracy": acc}

    history, stopped = loop.run(run, cfg, out, loss_fn, "train-captions", progress)
    if stopped:
        return {"stopped_at": run.step, "history": history}
    result = evaluate_captions(run.rm, held_out, cfg.question) if held_out and run.rank == 0 else {}
    final = out / "final"
    if run.rank == 0:
        save_reward_model(run.rm, final, merge=True)
        if result:
            (out / "eval.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    if run.state:
        run.state.wait_for_everyone()
    return {
        "eval": result,
        "history": history,
        "skipped": skipped,
        "step": run.step,
        "final": str(final),
        "processes": run.world,
        "checksum": loop.checksum(run),
    }
