"""The logic behind the ComfyUI nodes, testable without ComfyUI: conversions, model lookup and caching, scoring,
comparison, selection and the reward-guided sampler's loop. ``nodes/`` only declares schemas and calls these.

ComfyUI's IMAGE is ``[B, H, W, C]`` float in [0, 1]; the library takes ``[B, 3, H, W]``. :func:`to_bchw` and
:func:`to_bhwc` are the one place the two meet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .context import RewardContext
from .judge_info import mismatches
from .search import tournament

log = logging.getLogger(__name__)

MODELS_FOLDER = "rewarddance"  # ComfyUI's models/rewarddance
QUANTIZATION = ("none", "8bit", "4bit")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class NodeInputError(ValueError):
    """Bad input to a node; ComfyUI shows the message on the node."""


# ---------------------------------------------------------------------------------------------------- images
def to_bchw(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` (C = 3, or 4 with alpha dropped) -> ``[B, 3, H, W]`` float32 in [0, 1]."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise NodeInputError(f"{name}: expected an IMAGE batch [B, H, W, 3], got {shape}")
    if image.shape[0] == 0:
        raise NodeInputError(f"{name}: the batch is empty")
    if not torch.isfinite(image).all():
        raise NodeInputError(f"{name}: contains NaN or inf values")
    return image[..., :3].permute(0, 3, 1, 2).float().clamp(0, 1)


def to_bhwc(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ComfyUI IMAGE ``[B, H, W, 3]`` on the CPU."""
    return pixels.detach().permute(0, 2, 3, 1).float().cpu().contiguous()


# ---------------------------------------------------------------------------------------------------- models
def list_models(roots: list[str]) -> list[str]:
    """Model folders (holding ``config.json`` or ``adapter_config.json``) under the given roots, as relative names."""
    names = set()
    for root in roots:
        base = Path(root)
        if not base.is_dir():
            continue
        for cfg in list(base.glob("*/config.json")) + list(base.glob("*/*/config.json")):
            names.add(cfg.parent.relative_to(base).as_posix())
        for cfg in list(base.glob("*/adapter_config.json")):
            names.add(cfg.parent.relative_to(base).as_posix())
    return sorted(names)


def resolve_model(name: str, roots: list[str]) -> str:
    """A model name from the list, or a Hugging Face id (``owner/name``), -> what ``from_pretrained`` takes.

    A name that points outside every models root (``..``, an absolute path) is refused."""
    name = (name or "").strip()
    if not name:
        raise NodeInputError("model: empty name")
    for root in roots:
        base = Path(root).resolve()
        path = (base / name).resolve()
        if path.is_dir():
            if base not in path.parents:
                raise NodeInputError(f"model: {name!r} is outside the models folder {base}")
            return str(path)
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise NodeInputError(f"model: {name!r} is outside the models folder")
    if name.count("/") == 1 and not name.startswith("."):
        return name  # a Hugging Face hub id
    where = ", ".join(roots) or "(no models folder)"
    raise NodeInputError(f"model: {name!r} not found in {where}, and it is not a Hugging Face id (owner/name)")


@dataclass(frozen=True)
class ModelKey:
    path: str
    dtype: str
    quantization: str
    device: str


class ModelCache:
    """Loaded reward models, kept between runs, keyed by (path, dtype, quantisation, device)."""

    def __init__(self):
        self._models: dict[ModelKey, object] = {}

    def get(self, path: str, dtype: str = "auto", quantization: str = "none", device: str = "auto"):
        from .model import RewardModel

        if dtype not in DTYPES:
            raise NodeInputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if quantization not in QUANTIZATION:
            raise NodeInputError(f"quantization must be one of {QUANTIZATION}, got {quantization!r}")
        key = ModelKey(path, dtype, quantization, device)
        if key not in self._models:
            self._models[key] = RewardModel.from_pretrained(
                path,
                dtype=None if dtype == "auto" else dtype,
                device=None if device == "auto" else device,
                quantization=None if quantization == "none" else quantization,
            )
        return self._models[key]

    def offload(self) -> None:
        """Move every cached unquantised model to the CPU (quantised ones stay where bitsandbytes put them)."""
        for model in self._models.values():
            if not getattr(model.model, "is_quantized", False):
                model.model.to("cpu")

    def clear(self) -> None:
        self._models.clear()


CACHE = ModelCache()


def make_context(task="alignment", criteria="", cot="none", reference=None) -> dict:
    """The REWARD_CONTEXT value nodes pass around: settings plus an optional reference image ``[3, H, W]``."""
    ctx = RewardContext(task=task, criteria=criteria or None, cot=cot, decode_reasons=cot != "none")
    ref = None
    if reference is not None:
        ref = to_bchw(reference, "reference")[0]
    return {"context": ctx, "reference": ref}


def _ctx(context: dict | None):
    if context is None:
        return RewardContext(), None
    return context["context"], context.get("reference")


# ---------------------------------------------------------------------------------------------------- nodes' logic
def score_images(rm, image: torch.Tensor, prompt: str, context: dict | None = None, batch_size: int | None = None):
    """Scores of an IMAGE batch: ``(scores list, IMAGE sorted best first, table text, reasons text)``; with a
    reference image in the context the scores are pairwise (is each image better than the reference?)."""
    pixels = to_bchw(image)
    ctx, ref = _ctx(context)
    if ref is not None:
        out = rm.compare(pixels, [ref] * len(pixels), prompt, context=ctx, batch_size=batch_size)
    else:
        out = rm.score(pixels, prompt, context=ctx, batch_size=batch_size)
    scores = out.p_yes.tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    lines = ["rank  index  p_yes    margin"]
    for rank, i in enumerate(order, 1):
        lines.append(f"{rank:>4}  {i:>5}  {scores[i]:.4f}  {float(out.margin[i]):+.3f}")
    reasons = "\n".join(f"[{i}] {r}" for i, r in enumerate(out.reasons)) if out.reasons else ""
    return scores, image[order], "\n".join(lines), reasons


def _judge_name(rm) -> str:
    return getattr(getattr(getattr(rm, "model", None), "config", None), "_name_or_path", "") or "the reward model"


def compare_images(rm, a: torch.Tensor, b: torch.Tensor, prompt: str, context: dict | None = None):
    """P(b better than a) per pair (a batch of one is paired with every image of the other), the winners, and a
    text table that names how the judge was asked.

    A judge trained pointwise (``rm.trained_for``, from its ``rewarddance.json``) scores each image on its own and
    the pair is compared by Bradley-Terry on the margins, sigmoid(margin_b - margin_a), as ``rewarddance compare``
    does; any other judge is asked "is image 2 (b) better than image 1 (a)?". A context asking for a chain-of-thought
    mode the judge was not trained with is logged as a warning."""
    pa, pb = to_bchw(a, "image_a"), to_bchw(b, "image_b")
    if len(pa) != len(pb):
        if len(pa) == 1:
            pa = pa.expand(len(pb), -1, -1, -1)
        elif len(pb) == 1:
            pb = pb.expand(len(pa), -1, -1, -1)
        else:
            raise NodeInputError(f"image_a has {len(pa)} images and image_b {len(pb)}: give equal batches or one image")
    ctx, _ = _ctx(context)
    info = getattr(rm, "trained_for", None)
    if context is not None:
        for line in mismatches(info, _judge_name(rm), cot=ctx.cot):
            log.warning("Compare Images: %s", line)
    n = len(pa)
    if info is not None and info.objective == "pointwise":
        out = rm.score(list(pa) + list(pb), prompt, context=ctx)
        p = torch.sigmoid(out.margin[n:] - out.margin[:n]).tolist()
        how = "pointwise judge: p_b_better = sigmoid(margin_b - margin_a) (Bradley-Terry)"
        rows = [f"{i:>4}  {p[i]:.4f}  {float(out.p_yes[i]):.4f}  {float(out.p_yes[n + i]):.4f}" for i in range(n)]
        header = "pair  p_b_better  p_yes_a  p_yes_b"
    else:
        out = rm.compare(list(pb), list(pa), prompt, context=ctx)
        p = out.p_yes.tolist()
        how = "pairwise: p_b_better = P(yes) to 'is image 2 (b) better than image 1 (a)?'"
        rows = [f"{i:>4}  {p[i]:.4f}  {float(out.margin[i]):+.3f}" for i in range(n)]
        header = "pair  p_b_better  margin"
    winners = torch.stack([pb[i] if p[i] > 0.5 else pa[i] for i in range(len(p))])
    if winners.shape[0] and len({tuple(x.shape) for x in winners}) > 1:
        raise NodeInputError("the winners have different sizes; ComfyUI batches need one size")
    return p, to_bhwc(winners), "\n".join([how, header, *rows])


@dataclass
class Selection:
    images: torch.Tensor  # IMAGE [k, H, W, C]
    indices: list[int]
    scores: list[float]  # scores of the whole batch, in input order
    passed: bool


def select_best(
    rm,
    image: torch.Tensor,
    prompt: str,
    top_k: int = 1,
    threshold: float = 0.0,
    mode: str = "pointwise",
    context: dict | None = None,
) -> Selection:
    """The ``top_k`` images of a batch by reward (``pointwise`` scores or a pairwise ``tournament``); ``passed`` is
    False when none reaches ``threshold`` (pointwise P(yes)), so the node can stop its branch."""
    pixels = to_bchw(image)
    B = len(pixels)
    if not 1 <= top_k <= B:
        raise NodeInputError(f"top_k = {top_k} but the batch holds {B} images")
    ctx, ref = _ctx(context)
    if mode == "pointwise":
        if ref is not None:
            scores = rm.compare(pixels, [ref] * B, prompt, context=ctx).p_yes.tolist()
        else:
            scores = rm.score(pixels, prompt, context=ctx).p_yes.tolist()
        order = sorted(range(B), key=lambda i: (-scores[i], i))
    elif mode == "tournament":
        if B < 2:
            scores, order = [1.0], [0]
        else:
            result = tournament(list(pixels), rm, prompt, top_k=top_k, context=ctx)
            scores = (result.wins / max(1, B - 1)).tolist()  # win rate
            order = result.ranking
    else:
        raise NodeInputError(f"mode must be 'pointwise' or 'tournament', got {mode!r}")
    keep = order[:top_k]
    passed = any(scores[i] >= threshold for i in keep)
    return Selection(images=image[keep], indices=keep, scores=scores, passed=passed)


def slice_latent(latent: dict | None, indices: list[int], batch: int):
    """The LATENT rows matching selected images (when its batch matches the image batch); else unchanged."""
    if latent is None:
        return None
    samples = latent["samples"]
    if samples.shape[0] != batch:
        raise NodeInputError(f"latent batch {samples.shape[0]} does not match the image batch {batch}")
    out = dict(latent)
    out["samples"] = samples[indices]
    if isinstance(latent.get("noise_mask"), torch.Tensor) and latent["noise_mask"].shape[0] == batch:
        out["noise_mask"] = latent["noise_mask"][indices]
    out.pop("batch_index", None)
    return out


def slice_mask(mask: torch.Tensor | None, indices: list[int], batch: int):
    if mask is None:
        return None
    if mask.ndim == 2 or mask.shape[0] == 1:
        return mask
    if mask.shape[0] != batch:
        raise NodeInputError(f"mask batch {mask.shape[0]} does not match the image batch {batch}")
    return mask[indices]


# ---------------------------------------------------------------------------------------------------- guided sampling
@dataclass
class GuidedResult:
    latent: torch.Tensor  # the chosen latents [1, ...]
    image: torch.Tensor  # IMAGE [1, H, W, C]
    scores: list[float]  # every candidate scored, in order
    seeds: list[int]
    evaluations: int  # sampler steps run (per sample)


def best_of_n_seeds(
    sample: Callable[[int], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    rm,
    prompt: str,
    seed: int,
    n: int,
    steps: int,
    context: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> GuidedResult:
    """Run ``sample(seed)`` (a full sampling, latents out) for ``n`` seeds, decode each to an IMAGE, score it and
    keep the best. ``progress(done, total)`` and ``check_interrupt()`` come from ComfyUI in the node."""
    if n < 1:
        raise NodeInputError(f"budget must allow at least one sample, got {n}")
    ctx, ref = _ctx(context)
    best, scores, seeds = None, [], []
    for i in range(n):
        if check_interrupt:
            check_interrupt()
        s = seed + i
        latent = sample(s)
        image = decode(latent)
        pixels = to_bchw(image)
        if ref is not None:
            p = float(rm.compare(pixels[:1], [ref], prompt, context=ctx).p_yes[0])
        else:
            p = float(rm.score(pixels[:1], prompt, context=ctx).p_yes[0])
        scores.append(p)
        seeds.append(s)
        if best is None or p > best[0]:
            best = (p, latent[:1], image[:1])
        if progress:
            progress(i + 1, n)
    return GuidedResult(latent=best[1], image=best[2], scores=scores, seeds=seeds, evaluations=n * steps)


def search_paths(
    denoise: Callable[[torch.Tensor, int, int, int], torch.Tensor],
    renoise: Callable[[torch.Tensor, int, int, int], torch.Tensor],
    x0_of: Callable[[torch.Tensor, int], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    init: Callable[[int], torch.Tensor],
    rm,
    prompt: str,
    seed: int,
    steps: int,
    n: int = 2,
    m: int = 2,
    start: int | None = None,
    forward: int = 2,
    backward: int = 4,
    budget: int | None = None,
    context: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> GuidedResult:
    """Search over paths driven by a host sampler (ComfyUI's) through callbacks:

    ``init(seed)`` latents at step 0; ``denoise(x, lo, hi, seed)`` runs steps ``lo..hi``; ``renoise(x, lo, hi, seed)``
    moves latents at step ``lo`` up to the noisier step ``hi < lo``; ``x0_of(x, k)`` is the clean estimate of
    latents at step ``k`` (the latents themselves at the last step, else one model evaluation); ``decode`` makes an
    IMAGE. The plan and the budget rule are :func:`rewarddance.search.plan_within_budget`'s, counting that extra
    evaluation per child, so ``budget`` caps every evaluation (``evaluations`` in the result; per sample).
    """
    from .search import plan_within_budget

    start, rounds = plan_within_budget(steps, n, m, start, forward, backward, budget, x0_evals=1)
    ctx, _ = _ctx(context)
    paths = [denoise(init(seed + i), 0, start, seed + i) for i in range(n)]
    spent, k, all_scores = n * start, start, []
    for r, (level, lo, hi) in enumerate(rounds):
        kids = []
        for j, x in enumerate(paths):
            for c in range(m):
                if check_interrupt:
                    check_interrupt()
                s = seed + 1000 * (r + 1) + j * m + c
                kids.append(denoise(renoise(x, level, lo, s), lo, hi, s))
        spent += len(kids) * (hi - lo + (1 if hi < steps else 0))  # x0 costs one more evaluation before the end
        pixels = torch.cat([to_bchw(decode(x0_of(x, hi))) for x in kids])
        scores = rm.score(pixels, prompt, context=ctx).p_yes.tolist()
        all_scores += scores
        keep = sorted(range(len(kids)), key=lambda i: (-scores[i], i))[:n]
        paths = [kids[i] for i in keep]
        k = hi
        if progress:
            progress(k, steps)
    paths = [denoise(x, k, steps, seed) if k < steps else x for x in paths]
    spent += n * (steps - k)
    images = [decode(x) for x in paths]
    final = rm.score(torch.cat([to_bchw(im) for im in images]), prompt, context=ctx).p_yes.tolist()
    best = max(range(n), key=lambda i: final[i])
    return GuidedResult(
        latent=paths[best], image=images[best][:1], scores=all_scores + final, seeds=[seed], evaluations=spent
    )
