"""Reward-model training, the RewardDance recipe, on one GPU (or a CPU): reads top to bottom.

Objectives (``RMTrainConfig.objective``):

- ``pointwise``: each pair gives two items, the preferred image labelled "yes" and the rejected one "no".
  Loss = Bradley-Terry on the pair, ``-log sigmoid(s_chosen - s_rejected)`` with ``s`` the yes/no log-margin
  (``bt_on="margin"``, default) or P(yes) (``bt_on="p_yes"``), plus ``ce_weight`` x the cross-entropy of the
  verdicts (log P(yes ids) / log P(no ids) over the whole vocabulary).
- ``pairwise``: "Is image 2 better than image 1?" asked in both orders, (rejected, chosen) -> "yes" and
  (chosen, rejected) -> "no"; loss = the verdicts' cross-entropy.
- Chain of thought (``cot``): the answer is teacher-forced. ``judgment_first``: "Yes. <reason>" and end-of-text --
  the verdict at the first answer token, the reason after it; ``reasoning_first``: "<reason>\\nFinal answer (yes or no):", then the
  verdict. Reason tokens add ``reason_weight`` x their mean cross-entropy, computed by
  :func:`rewarddance.kernels.selected_logprobs` (no full logits).

Trainable parts (``train``): ``lora`` (peft LoRA on the language model; the default), ``projector`` (the
vision-language connector only), ``lm`` (the whole language model) or ``all``. The base may be loaded in 8-bit or
4-bit for QLoRA-style training. Checkpoints are atomic and resumable (``training.checkpoint``); SIGINT/SIGTERM save
one before exiting. The final model is saved so that ``RewardModel.from_pretrained(output_dir)`` loads it: a LoRA
adapter beside the processor (``merge=False``), or merged full weights.

Video pairs (``media: video`` in the pairs file; ShapesWorld clips from :mod:`rewarddance.shapes.clips`) train the
same objectives with the questions and model inputs of ``score(videos=)`` / ``compare(videos=)``: native video for
the Qwen-VL families, the frames as consecutive images for the others (:mod:`rewarddance.video`). They need a video
task (``video_alignment`` ...) and ``cot: none``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..context import VIDEO_TASK_NAMES, RewardContext
from ..images import load_image
from ..judge_info import TrainedFor
from ..model import RewardModel
from ..video import Clip, native
from ..video import encode as encode_video
from ..video import messages as video_messages
from . import loop
from .config import coerce_settings, config_from_yaml
from .data import (
    DataError,
    PreferencePair,
    iter_pairs,
    load_pair_images,
    load_pair_videos,
    pairs_media,
    read_pairs,
    stream_pairs,
)
from .loop import LM_TARGETS
from .metrics import drop_rows_after

OBJECTIVES = ("pointwise", "pairwise")
TRAIN_PARTS = ("lora", "projector", "lm", "all")
CHOSEN_REASON = "The image matches the prompt."


@dataclass
class RMTrainConfig:
    """Settings of a reward-model training run; ``from_yaml`` reads them, every field has help text."""

    model: str = field(metadata={"help": "base VLM: a Hugging Face id or a local folder"})
    data: str = field(metadata={"help": "training pairs: a pairs.jsonl file or a folder holding one"})
    output_dir: str = field(metadata={"help": "checkpoints, metrics.csv and the final model go here"})
    eval_data: dict[str, str] = field(
        default_factory=dict, metadata={"help": "name -> pairs file/folder, e.g. {id: ..., ood: ...}"}
    )
    objective: str = field(default="pairwise", metadata={"help": "pointwise (BT + weighted CE) or pairwise"})
    cot: str = field(default="none", metadata={"help": "none, judgment_first or reasoning_first"})
    task: str = field(default="alignment", metadata={"help": "RewardContext task preset of the prompts"})
    bt_on: str = field(default="margin", metadata={"help": "pointwise BT on the yes/no 'margin' or on 'p_yes'"})
    ce_weight: float = field(default=0.1, metadata={"help": "pointwise: weight of the yes/no cross-entropy"})
    reason_weight: float = field(default=1.0, metadata={"help": "chain of thought: weight of the reason tokens' CE"})
    train: str = field(default="lora", metadata={"help": "lora, projector, lm or all"})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha"})
    lora_targets: str = field(default=LM_TARGETS, metadata={"help": "regex of the module names LoRA adapts"})
    quantization: str | None = field(default=None, metadata={"help": "None, 8bit or 4bit base (QLoRA style)"})
    dtype: str | None = field(default=None, metadata={"help": "model dtype; default bf16 on CUDA, fp32 on CPU"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ..."})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps, then cosine decay"})
    batch_size: int = field(default=8, metadata={"help": "pairs per optimiser step"})
    max_steps: int = field(default=200, metadata={"help": "optimiser steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    seed: int = field(default=0, metadata={"help": "data order and initialisation seed"})
    eval_every: int = field(
        default=50, metadata={"help": "evaluate every N steps (and at the end); 0: only at the end"}
    )
    save_every: int = field(default=50, metadata={"help": "checkpoint every N steps; 0: only at the end"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many checkpoints to keep"})
    resume: bool = field(default=True, metadata={"help": "continue from the newest checkpoint in output_dir"})
    merge: bool = field(default=True, metadata={"help": "save merged full weights (else base + LoRA adapter)"})
    skip_bad: bool = field(default=False, metadata={"help": "skip unreadable pairs (reported) instead of failing"})
    stream: bool = field(
        default=False, metadata={"help": "read the training pairs as a stream (a shuffle buffer), not all at once"}
    )
    shuffle_buffer: int = field(default=1024, metadata={"help": "stream: pairs held and drawn from at random"})
    eval_batch_size: int = field(default=16, metadata={"help": "pairs per evaluation batch"})
    log_every: int = field(default=10, metadata={"help": "write metrics.csv every N steps"})

    def __post_init__(self):
        coerce_settings(self)  # YAML's "5e-5" is a string: each value as its field's type
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective!r}"),
            (self.train in TRAIN_PARTS, f"train must be one of {TRAIN_PARTS}, got {self.train!r}"),
            (self.bt_on in ("margin", "p_yes"), f"bt_on must be 'margin' or 'p_yes', got {self.bt_on!r}"),
            (self.batch_size >= 1 and self.max_steps >= 1, "batch_size and max_steps must be at least 1"),
            (self.lora_rank >= 1, f"lora_rank must be at least 1, got {self.lora_rank}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.shuffle_buffer >= 1, f"shuffle_buffer must be at least 1, got {self.shuffle_buffer}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"RMTrainConfig: {msg}")
        RewardContext(task=self.task, cot=self.cot)  # validates task and cot

    @classmethod
    def from_yaml(cls, path, overrides: dict | None = None) -> RMTrainConfig:
        return config_from_yaml(cls, path, overrides)


# ---------------------------------------------------------------------------------------------------- batches
@dataclass
class Item:
    """One question to the judge: images (reference first when pairwise; video pairs: :class:`~rewarddance.video.Clip`
    objects), the expected verdict, the answer text."""

    prompt: str
    images: list
    yes: bool
    reason: str | None = None


def _items(pairs: list[PreferencePair], objective: str, cot: str) -> list[Item]:
    items = []
    video = pairs_media(pairs, "batch") == "video"
    for pair in pairs:
        chosen, rejected = load_pair_videos(pair) if video else load_pair_images(pair)
        why = pair.reason or "It does not match the prompt."
        if objective == "pointwise":
            items.append(Item(pair.prompt, [chosen], True, CHOSEN_REASON))
            items.append(Item(pair.prompt, [rejected], False, why))
        else:
            items.append(Item(pair.prompt, [rejected, chosen], True, f"Image 1 is worse: {why}"))
            items.append(Item(pair.prompt, [chosen, rejected], False, f"Image 2 is worse: {why}"))
    return items


def _answer_text(item: Item, cot: str) -> str:
    if cot == "judgment_first":
        return f"{'Yes' if item.yes else 'No'}. {item.reason}"
    if cot == "reasoning_first":
        return f"{item.reason}\nFinal answer (yes or no):"
    return ""


def encode_answers(rm: RewardModel, texts: list[str], answers: list[str], image_lists: list[list]):
    """Model inputs for ``text + answer`` per row and where each answer starts: ``(inputs, starts)``.

    The rows are left padded, so row ``i``'s answer is ``input_ids[i, starts[i]:]``. The answer must tokenize apart
    from its prompt (the prompt's tokens are a prefix of the full row's), else a ``ValueError`` names the row.
    """
    full = rm.encode([t + a for t, a in zip(texts, answers)], image_lists)
    prompt_only = rm.encode(texts, image_lists)
    ids, T = full["input_ids"], full["input_ids"].shape[1]
    p_len, f_len = prompt_only["attention_mask"].sum(1), full["attention_mask"].sum(1)
    starts = torch.empty(len(texts), dtype=torch.long)
    for i in range(len(texts)):
        k = int(f_len[i] - p_len[i])  # answer tokens at the end of row i
        head = ids[i, T - int(f_len[i]) : T - k]
        if k <= 0 or not torch.equal(head, prompt_only["input_ids"][i, -int(p_len[i]) :]):
            raise ValueError(f"item {i}: the answer text does not tokenize apart from the prompt")
        starts[i] = T - k
    return full, starts


def encode_items(rm: RewardModel, items: list[Item], context: RewardContext):
    """Model inputs for the items and, per row, the answer span: ``(inputs, verdict_pos, reason_targets)``.

    ``verdict_pos[i]`` is the position whose hidden state predicts the verdict; ``reason_targets`` is ``[B, T]``
    with the token id each position's hidden state should predict for the answer text (``-100`` elsewhere): for
    judgment first the verdict word as written, the reason and end-of-text; for reasoning first the reasoning.
    """
    pairwise = len(items[0].images) == 2
    texts = rm.prompt_texts([it.prompt for it in items], context, pairwise)
    ctx_imgs = [x for x in context.example_images(pairwise)]
    lists = [ctx_imgs + it.images for it in items]
    if context.cot == "none":
        full = rm.encode(texts, lists)
        B, T = full["input_ids"].shape
        return full, torch.full((B,), T - 1, dtype=torch.long), torch.full((B, T), -100, dtype=torch.long)
    # judgment first ends with end-of-text, so that a decoded reason stops where the trained one did
    end = (rm.tokenizer.eos_token or "") if context.cot == "judgment_first" else ""
    full, starts = encode_answers(rm, texts, [_answer_text(it, context.cot) + end for it in items], lists)
    ids = full["input_ids"]
    B, T = ids.shape
    targets = torch.full((B, T), -100, dtype=torch.long)
    verdict_pos = torch.full((B,), T - 1, dtype=torch.long)  # reasoning_first: after "Final answer (yes or no):"
    for i, s in enumerate(starts.tolist()):
        if context.cot == "judgment_first":
            verdict_pos[i] = s - 1  # predicts the verdict, the first answer token
            # the whole answer is teacher-forced, the verdict's own spelling too: the verdict loss only asks for the
            # yes (or no) set, and a decoder that starts with a spelling never followed by a reason in training
            # (" Yes" for "Yes") writes no reason after it
            targets[i, s - 1 : T - 1] = ids[i, s:]
        else:
            targets[i, s - 1 : T - 1] = ids[i, s:]  # the reasoning text
    return full, verdict_pos, targets


# ---------------------------------------------------------------------------------------------------- losses
def _log_p(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp_min(1e-30))


def verdict_log_probs(rm: RewardModel, hidden_rows: torch.Tensor, context: RewardContext):
    """``(log P(yes ids), log P(no ids), margin)`` for final hidden states ``[N, H]``, differentiable."""
    p, margin = rm.read(hidden_rows, context, trainable=True)
    log_yes = _log_p(p)
    return log_yes, log_yes - margin, margin, p


def video_verdict_rows(rm: RewardModel, items: list[Item], context: RewardContext) -> torch.Tensor:
    """Hidden states ``[B, H]`` where each video item's verdict is read (its prompt's last position), in item order,
    from the prompt text and model inputs that ``score(videos=)`` / ``compare(videos=)`` build. Items whose clips
    differ in shape run in separate forward passes (the stock processors stack the frames of a batch)."""
    if context.cot != "none":
        raise ValueError(f"video pairs train with cot='none', not {context.cot!r}")
    use_native = native(rm)
    pairwise = len(items[0].images) == 2
    examples = [load_image(x, name=f"examples[{k}]") for k, x in enumerate(context.example_images(pairwise))]
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(tuple(tuple(c.frames.shape) for c in it.images), []).append(i)
    rows: list = [None] * len(items)
    for idx in groups.values():
        texts = []
        for i in idx:
            counts = None if use_native else [c.frames.shape[0] for c in items[i].images]
            msgs = video_messages(context, items[i].prompt, pairwise, counts)
            texts.append(rm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
        refs = [items[i].images[0] for i in idx] if pairwise else None
        inputs = encode_video(rm, texts, [examples] * len(idx), refs, [items[i].images[-1] for i in idx], use_native)
        last = rm.hidden_states(inputs)[:, -1]  # [b, H]: left padding puts every prompt's end last
        for j, i in enumerate(idx):
            rows[i] = last[j]
    return torch.stack(rows)


def compute_loss(rm: RewardModel, items: list[Item], cfg: RMTrainConfig, context: RewardContext) -> dict:
    """The loss of one batch of items (see the module docstring) and its parts, as floats for logging."""
    if isinstance(items[0].images[-1], Clip):  # video pairs: no reason tokens (cot none), one row per item
        rows, hidden, targets = video_verdict_rows(rm, items, context), None, None
    else:
        inputs, verdict_pos, targets = encode_items(rm, items, context)
        hidden = rm.hidden_states(inputs)  # [B, T, H]
        B = hidden.shape[0]
        rows = hidden[torch.arange(B, device=hidden.device), verdict_pos.to(hidden.device)]
    log_yes, log_no, margin, p = verdict_log_probs(rm, rows, context)
    labels = torch.tensor([it.yes for it in items], device=log_yes.device)
    ce = -torch.where(labels, log_yes, log_no).mean()
    parts = {"ce": ce}
    if cfg.objective == "pointwise":
        s = margin if cfg.bt_on == "margin" else p
        bt = -F.logsigmoid(s[0::2] - s[1::2]).mean()  # items alternate chosen, rejected
        parts["bt"] = bt
        loss = bt + cfg.ce_weight * ce
    else:
        loss = ce
    if context.cot != "none":
        keep = targets != -100
        if keep.any():
            sel = hidden[keep.to(hidden.device)]
            lp = rm.token_log_probs(sel, targets[keep].to(hidden.device))
            parts["reason_ce"] = -lp.mean()
            loss = loss + cfg.reason_weight * parts["reason_ce"]
    parts["loss"] = loss
    return parts


# ---------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_pairs(
    rm: RewardModel, pairs: list[PreferencePair], objective: str, context=None, batch_size=16, max_pixels=None
) -> dict:
    """Pairwise accuracy, expected calibration error (10 bins) and position-bias rate on preference pairs.

    Pointwise: a pair is right when P(yes | chosen) > P(yes | rejected); calibration is of the Bradley-Terry
    probability sigmoid(margin_chosen - margin_rejected) over both orders of each pair. Pairwise: the order-averaged
    P(chosen better) > 0.5; calibration is of P(yes) against the right verdict for both orders; the position-bias
    rate is the share of pairs whose answers do not flip when the images swap (the same verdict both ways).
    ``max_pixels`` bounds the images' size (default :data:`rewarddance.images.MAX_IMAGE_PIXELS`).
    """
    context = context or RewardContext()
    limit = {"max_pixels": max_pixels} if max_pixels else {}
    video = pairs_media(pairs, "evaluation pairs") == "video"  # videos: paths to score(videos=) / compare(videos=)
    probs, labels, right, biased = [], [], 0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        if video:
            chosen, rejected = [p.chosen for p in chunk], [p.rejected for p in chunk]
        else:
            imgs = [load_pair_images(p, **limit) for p in chunk]
            chosen, rejected = [c for c, _ in imgs], [r for _, r in imgs]
        prompts = [p.prompt for p in chunk]
        if objective == "pointwise" and video:
            oc = rm.score(videos=chosen, prompts=prompts, context=context)
            orj = rm.score(videos=rejected, prompts=prompts, context=context)
            right += int((oc.p_yes > orj.p_yes).sum())
            pr = torch.sigmoid(oc.margin - orj.margin)
            probs += pr.tolist() + (1 - pr).tolist()
            labels += [1] * len(chunk) + [0] * len(chunk)
        elif video:
            fwd = rm.compare(videos=chosen, references=rejected, prompts=prompts, context=context).p_yes
            bwd = rm.compare(videos=rejected, references=chosen, prompts=prompts, context=context).p_yes
            right += int(((fwd + 1 - bwd) / 2 > 0.5).sum())
            biased += int(((fwd > 0.5) == (bwd > 0.5)).sum())
            probs += fwd.tolist() + bwd.tolist()
            labels += [1] * len(chunk) + [0] * len(chunk)
        elif objective == "pointwise":
            oc = rm.score(chosen, prompts, context=context)
            orj = rm.score(rejected, prompts, context=context)
            right += int((oc.p_yes > orj.p_yes).sum())
            pr = torch.sigmoid(oc.margin - orj.margin)
            probs += pr.tolist() + (1 - pr).tolist()
            labels += [1] * len(chunk) + [0] * len(chunk)
        else:
            fwd = rm.compare(chosen, rejected, prompts, context=context).p_yes  # yes is right
            bwd = rm.compare(rejected, chosen, prompts, context=context).p_yes  # no is right
            right += int(((fwd + 1 - bwd) / 2 > 0.5).sum())
            biased += int(((fwd > 0.5) == (bwd > 0.5)).sum())
            probs += fwd.tolist() + bwd.tolist()
            labels += [1] * len(chunk) + [0] * len(chunk)
    probs_t, labels_t = torch.tensor(probs), torch.tensor(labels, dtype=torch.float32)
    result = {"pairs": len(pairs), "accuracy": right / len(pairs), "ece": expected_calibration_error(probs_t, labels_t)}
    if objective == "pairwise":
        result["position_bias_rate"] = biased / len(pairs)
    return result


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """ECE of binary predictions: the mean over equal-width confidence bins of |accuracy - confidence|, weighted."""
    conf = torch.where(probs >= 0.5, probs, 1 - probs)
    correct = ((probs >= 0.5).float() == labels).float()
    edges = torch.linspace(0.5, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0.5 else (conf >= lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean().item() * abs(correct[inside].mean().item() - conf[inside].mean().item())
    return ece


# ---------------------------------------------------------------------------------------------------- the model
def save_reward_model(
    rm: RewardModel, out_dir: str | os.PathLike, merge: bool = True, trained_for: TrainedFor | None = None
) -> Path:
    """Save so that ``RewardModel.from_pretrained(out_dir)`` loads it: merged weights, or base + LoRA adapter.

    ``trained_for`` (how the judge was trained to be asked) goes to ``rewarddance.json`` beside the weights, where
    ``RewardModel.trained_for`` and the command line read it.
    """
    return rm.save(out_dir, merge=merge, trained_for=trained_for)


# ---------------------------------------------------------------------------------------------------- training
def check_media(cfg: RMTrainConfig, pairs: list[PreferencePair] | None, evals: dict[str, list]) -> str:
    """The media the run trains on ("image" or "video"); before any training, a clear error for a file that mixes
    images and videos, an evaluation set of the other media, or settings videos do not support."""
    first = pairs[0] if pairs else next(iter_pairs(cfg.data, cfg.skip_bad, check_images=False))
    media = pairs_media(pairs, str(cfg.data)) if pairs else first.media
    for name, ps in evals.items():
        if pairs_media(ps, f"eval_data {name}") != media:
            raise DataError(f"eval_data {name}: {ps[0].media} pairs, but the training pairs are {media} pairs")
    if media == "video":
        context = RewardContext(task=cfg.task, cot=cfg.cot)
        if not context.for_video:
            raise ValueError(
                f"RMTrainConfig: the pairs are videos but task {cfg.task!r} asks about images; use a video task "
                f"({', '.join(VIDEO_TASK_NAMES)})"
            )
        if cfg.cot != "none":
            raise ValueError(f"RMTrainConfig: video pairs train with cot 'none', not {cfg.cot!r}")
    return media


def train_rm(cfg: RMTrainConfig, progress: bool = True) -> dict:
    """Run (or resume) a training run; returns the final evaluation per eval set and the last logged losses."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str), encoding="utf-8")
    if cfg.stream:  # the pairs of a step come from a shuffle buffer; only the buffer is in memory
        pairs, skipped = None, []
        next(iter_pairs(cfg.data, cfg.skip_bad), None) or read_pairs(cfg.data, cfg.skip_bad)  # fail before training
    else:
        pairs, skipped = read_pairs(cfg.data, skip_bad=cfg.skip_bad)
    evals = {name: read_pairs(path, skip_bad=cfg.skip_bad)[0] for name, path in cfg.eval_data.items()}
    check_media(cfg, pairs, evals)
    run = loop.start(cfg, out)
    if run.rank == 0:  # evaluations after the checkpoint run again
        drop_rows_after(out / "eval.jsonl", run.step)
    rm, context = run.rm, RewardContext(task=cfg.task, cot=cfg.cot)
    results: dict = {}

    def evaluate(at: int) -> dict:
        if run.rank != 0:
            return {}
        rm.model.eval()
        res = {name: evaluate_pairs(rm, ps, cfg.objective, context, cfg.eval_batch_size) for name, ps in evals.items()}
        with open(out / "eval.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": at, **res}) + "\n")
        return res

    def after_step(step: int) -> None:
        nonlocal results
        if cfg.eval_every and step % cfg.eval_every == 0 and evals:
            results = evaluate(step)

    global_batch = cfg.batch_size * run.world
    if cfg.stream:
        stream = stream_pairs(cfg.data, cfg.seed, cfg.shuffle_buffer, cfg.skip_bad, skipped)
        for _ in range(run.step * global_batch):  # resumed: pass over the pairs earlier steps used
            next(stream)

    def loss_fn(step: int) -> dict:
        batch = (
            [next(stream) for _ in range(global_batch)]
            if cfg.stream
            else loop.batch_of(pairs, step, global_batch, cfg.seed)
        )
        items = _items(batch[run.rank * cfg.batch_size : (run.rank + 1) * cfg.batch_size], cfg.objective, cfg.cot)
        return compute_loss(rm, items, cfg, context)

    history, stopped = loop.run(run, cfg, out, loss_fn, "train-rm", progress, after_step)
    if stopped:
        return {"stopped_at": run.step, "history": history}
    if evals:
        results = evaluate(run.step)
    if run.rank == 0:
        trained_for = TrainedFor(objective=cfg.objective, cot=cfg.cot, task=cfg.task)
        save_reward_model(rm, out / "final", merge=cfg.merge, trained_for=trained_for)
    if run.state:
        run.state.wait_for_everyone()
    return {
        "eval": results,
        "history": history,
        "skipped": skipped,
        "step": run.step,
        "processes": run.world,
        "checksum": loop.checksum(run),
    }
