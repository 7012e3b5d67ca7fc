"""The logic behind the ComfyUI nodes, testable without ComfyUI: conversions, model lookup and caching, scoring,
comparison, selection and the reward-guided sampler's loop. ``nodes/`` only declares schemas and calls these.

ComfyUI's IMAGE is ``[B, H, W, C]`` float in [0, 1]; the library takes ``[B, 3, H, W]``. :func:`to_bchw` and
:func:`to_bhwc` are the one place the two meet. Videos (IMAGE batches of frames, VIDEO objects, 5-D latents) are
:mod:`rewarddance.comfy_video`'s; Best-of-N and the guided sampler hand their videos to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .context import RewardContext
from .judge_info import mismatches
from .search import plan_within_budget, run_best_of_n, run_path_search, tournament
from .video_pipelines import JUDGE_FRAMES

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

    def remote(self, server: str, api_key: str = ""):
        """A served judge (``http://HOST:PORT`` of ``rewarddance serve``, or ``openai:BASE_URL#MODEL``), kept as the
        loaded ones are; it takes the same nodes as a local model, all but those that need gradients."""
        from .remote import is_remote, load_judge

        server = server.strip()
        if not is_remote(server):
            raise NodeInputError(f"server: {server!r} is not http://HOST:PORT or openai:BASE_URL#MODEL")
        key = ModelKey(server, "remote", "none", api_key)  # (another key is another client)
        if key not in self._models:
            self._models[key] = load_judge(server, api_key=api_key.strip() or None)
        return self._models[key]

    def offload(self) -> None:
        """Move every cached unquantised model to the CPU (quantised ones stay where bitsandbytes put them)."""
        for model in self._models.values():
            if hasattr(model, "model") and not getattr(model.model, "is_quantized", False):
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


def _refs(ref: torch.Tensor | None, count: int) -> list | None:
    """The context's reference image once per candidate (``score(references=...)`` then compares), or None."""
    return None if ref is None else [ref] * count


# ---------------------------------------------------------------------------------------------------- nodes' logic
def score_images(rm, image: torch.Tensor, prompt: str, context: dict | None = None, batch_size: int | None = None):
    """Scores of an IMAGE batch: ``(scores list, IMAGE sorted best first, table text, reasons text)``; with a
    reference image in the context the scores are pairwise (is each image better than the reference?)."""
    pixels = to_bchw(image)
    ctx, ref = _ctx(context)
    out = rm.score(pixels, prompt, context=ctx, batch_size=batch_size, references=_refs(ref, len(pixels)))
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
    pref = rm.prefer(list(pa), list(pb), prompt, context=ctx)  # the objective the judge was trained for
    p = pref.p_b_better.tolist()
    winners = torch.stack([pb[i] if p[i] > 0.5 else pa[i] for i in range(len(p))])
    if winners.shape[0] and len({tuple(x.shape) for x in winners}) > 1:
        raise NodeInputError("the winners have different sizes; ComfyUI batches need one size")
    return p, to_bhwc(winners), _preference_table(pref, "image")


def _preference_table(pref, noun: str, notes: list[str] | None = None) -> str:
    """The details text of a comparison: how the judge was asked, then one row per pair (``notes[i]`` appended)."""
    p, n = pref.p_b_better.tolist(), len(pref.p_b_better)
    notes = notes or [""] * n
    if pref.objective == "pointwise":
        how = "pointwise judge: p_b_better = sigmoid(margin_b - margin_a) (Bradley-Terry)"
        rows = [f"{i:>4}  {p[i]:.4f}  {float(pref.p_yes_a[i]):.4f}  {float(pref.p_yes_b[i]):.4f}" for i in range(n)]
        header = "pair  p_b_better  p_yes_a  p_yes_b"
    else:
        how = f"pairwise: p_b_better = P(yes) to 'is {noun} 2 (b) better than {noun} 1 (a)?'"
        rows = [f"{i:>4}  {p[i]:.4f}  {float(pref.margin[i]):+.3f}" for i in range(n)]
        header = "pair  p_b_better  margin"
    if any(notes):
        header += "  frames (a | b)"
        rows = [f"{row}  {note}" for row, note in zip(rows, notes)]
    return "\n".join([how, header, *rows])


@dataclass
class Selection:
    images: torch.Tensor  # IMAGE [k, H, W, C]; videos: the kept videos' frames, one video after another
    indices: list[int]  # the kept candidates (images, or videos), best first
    scores: list[float]  # scores of every candidate, in input order
    passed: bool


def select_best(
    rm,
    image: torch.Tensor,
    prompt: str,
    top_k: int = 1,
    threshold: float = 0.0,
    mode: str = "pointwise",
    context: dict | None = None,
    frames_per_video: int = 0,
    num_frames: int = JUDGE_FRAMES,
) -> Selection:
    """The ``top_k`` images of a batch by reward (``pointwise`` scores or a pairwise ``tournament``); ``passed`` is
    False when none reaches ``threshold`` (pointwise P(yes)), so the node can stop its branch.

    ``frames_per_video`` > 0: the batch holds videos of that many frames each, judged on ``num_frames`` frames each
    (:mod:`rewarddance.comfy_video`); the candidates are the videos, and the kept ones come back whole."""
    if frames_per_video:
        from .comfy_video import VideoBatch, sample_videos, split_videos, video_context

        videos = split_videos(image, frames_per_video)
        ctx = video_context(context, "Best-of-N Select")
        clips, _ = sample_videos(VideoBatch(videos), num_frames, 0.0, "video")
        noun = "videos"
    else:
        clips = to_bchw(image)
        ctx, ref = _ctx(context)
        noun = "images"
    B = len(clips)
    if not 1 <= top_k <= B:
        raise NodeInputError(f"top_k = {top_k} but the batch holds {B} {noun}")
    if mode == "pointwise":
        if frames_per_video:
            scores = rm.score(videos=clips, prompts=prompt, context=ctx).p_yes.tolist()
        else:
            scores = rm.score(clips, prompt, context=ctx, references=_refs(ref, B)).p_yes.tolist()
        order = sorted(range(B), key=lambda i: (-scores[i], i))
    elif mode == "tournament":
        if B < 2:
            scores, order = [1.0], [0]
        else:
            result = tournament(list(clips), rm, prompt, top_k=top_k, context=ctx, judge_frames=None)
            scores = (result.wins / max(1, B - 1)).tolist()  # win rate
            order = result.ranking
    else:
        raise NodeInputError(f"mode must be 'pointwise' or 'tournament', got {mode!r}")
    keep = order[:top_k]
    passed = any(scores[i] >= threshold for i in keep)
    kept = torch.cat([videos[i] for i in keep]) if frames_per_video else image[keep]
    return Selection(images=kept, indices=keep, scores=scores, passed=passed)


def _rows(n: int, indices: list[int], batch: int, frames_per_video: int, what: str) -> list[int]:
    """Rows of a ``n``-row batch that go with the kept candidates: one row per candidate, or (videos whose frames
    are the rows, as an image model's latents of a video) one per frame."""
    if n == batch:
        return indices
    if frames_per_video and n == batch * frames_per_video:
        return [i * frames_per_video + t for i in indices for t in range(frames_per_video)]
    if frames_per_video:
        raise NodeInputError(
            f"{what} batch {n} matches neither the {batch} videos nor their {batch * frames_per_video} frames"
        )
    raise NodeInputError(f"{what} batch {n} does not match the image batch {batch}")


def slice_latent(latent: dict | None, indices: list[int], batch: int, frames_per_video: int = 0):
    """The LATENT rows of the selected candidates: its batch is the candidates' (a video model's 5-D latents: one
    row per video), or with ``frames_per_video`` their frames'."""
    if latent is None:
        return None
    samples = latent["samples"]
    rows = _rows(samples.shape[0], indices, batch, frames_per_video, "latent")
    out = dict(latent)
    out["samples"] = samples[rows]
    mask = latent.get("noise_mask")
    if isinstance(mask, torch.Tensor) and mask.shape[0] == samples.shape[0]:
        out["noise_mask"] = mask[rows]
    out.pop("batch_index", None)
    return out


def slice_mask(mask: torch.Tensor | None, indices: list[int], batch: int, frames_per_video: int = 0):
    """The MASK rows of the selected candidates (one mask for all is kept as it is); see :func:`slice_latent`."""
    if mask is None:
        return None
    if mask.ndim == 2 or mask.shape[0] == 1:
        return mask
    return mask[_rows(mask.shape[0], indices, batch, frames_per_video, "mask")]


# ---------------------------------------------------------------------------------------------------- guided sampling
@dataclass
class GuidedResult:
    latent: torch.Tensor  # the chosen latents [1, ...]
    image: torch.Tensor  # IMAGE [1, H, W, C]; a video model's: the frames [T, H, W, C]
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
    judge_frames: int = JUDGE_FRAMES,
) -> GuidedResult:
    """Run ``sample(seed)`` (a full sampling, latents out) for ``n`` seeds (``seed + i``), decode each (an IMAGE,
    or a video model's ``[1, T, H, W, C]``), score it (:func:`score_decoded`) and keep the best:
    :func:`rewarddance.search.run_best_of_n` one candidate at a time. ``progress(done, total)`` and
    ``check_interrupt()`` come from ComfyUI in the node."""
    if n < 1:
        raise NodeInputError(f"budget must allow at least one sample, got {n}")

    def make(seeds):
        latent = sample(seeds[0])
        return [(latent[:1], decode(latent)[:1])]

    def rate(candidates):
        return score_decoded(rm, [decoded for _, decoded in candidates], prompt, context, judge_frames=judge_frames)

    run = run_best_of_n(make, rate, seed, n, 1, progress=progress, check_interrupt=check_interrupt)
    latent, decoded = run.items[run.order[0]]
    image = frames_of(decoded)
    return GuidedResult(latent=latent, image=image, scores=run.scores, seeds=run.seeds, evaluations=n * steps)


def is_video(decoded: torch.Tensor) -> bool:
    """Whether a VAE's output is videos: ``[B, T, H, W, C]`` with more than one frame (a video VAE decodes an image
    model's latents to ``T = 1``)."""
    return decoded.ndim == 5 and decoded.shape[1] > 1


def frames_of(decoded: torch.Tensor) -> torch.Tensor:
    """The first candidate of a VAE's output as an IMAGE: an image's ``[1, H, W, C]``, a video's frames
    ``[T, H, W, C]``."""
    return decoded[0] if decoded.ndim == 5 else decoded[:1]


def score_decoded(
    rm,
    decoded: list[torch.Tensor],
    prompt: str,
    context: dict | None = None,
    reference: bool = True,
    judge_frames: int = JUDGE_FRAMES,
) -> list[float]:
    """P(yes) of decoded candidates, the first item of each VAE output: images, pairwise against the context's
    reference image when it has one and ``reference``; or (:func:`is_video`) videos, judged on ``judge_frames``
    frames each, uniformly spaced (images ignore it)."""
    if any(is_video(d) for d in decoded):
        from .comfy_video import score_decoded_videos

        return score_decoded_videos(rm, decoded, prompt, context, judge_frames)
    ctx, ref = _ctx(context)
    pixels = torch.cat([to_bchw(frames_of(d), "decoded image") for d in decoded])
    if not reference:
        return rm.score(pixels, prompt, context=ctx).p_yes.tolist()
    return rm.score(pixels, prompt, context=ctx, references=_refs(ref, len(pixels))).p_yes.tolist()


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
    judge_frames: int = JUDGE_FRAMES,
) -> GuidedResult:
    """Search over paths driven by a host sampler (ComfyUI's) through callbacks:

    ``init(seed)`` latents at step 0; ``denoise(x, lo, hi, seed)`` runs steps ``lo..hi``; ``renoise(x, lo, hi, seed)``
    moves latents at step ``lo`` up to the noisier step ``hi < lo``; ``x0_of(x, k)`` is the clean estimate of
    latents at step ``k`` (the latents themselves at the last step, else one model evaluation); ``decode`` makes an
    IMAGE (or a video, :func:`score_decoded`). The loop and the seeds are :func:`rewarddance.search.run_path_search`'s,
    one path at a time. The plan and the budget rule are :func:`rewarddance.search.plan_within_budget`'s, counting
    that extra evaluation per child, so ``budget`` caps every evaluation (``evaluations`` in the result; per sample).
    ``scores``: every child of every round, then the final paths.
    """
    start, rounds = plan_within_budget(steps, n, m, start, forward, backward, budget, x0_evals=1)

    def each(fn):  # a per-latent host call over a list of paths, interruptible between calls
        def run(xs, *args):
            seeds, out = args[-1], []
            for x, s in zip(xs, seeds):
                if check_interrupt:
                    check_interrupt()
                out.append(fn(x, *args[:-1], s))
            return out

        return run

    def denoise_with_x0(xs, lo, hi, seeds):
        xs = each(denoise)(xs, lo, hi, seeds)
        return xs, [x0_of(x, hi) for x in xs]

    def rate(images):
        return score_decoded(rm, images, prompt, context, reference=False, judge_frames=judge_frames)

    run = run_path_search(
        init=lambda seeds: [init(s) for s in seeds],
        denoise=each(denoise),
        denoise_with_x0=denoise_with_x0,
        renoise=each(renoise),
        decode=lambda xs: [decode(x) for x in xs],
        score=rate,
        seed=seed,
        steps=steps,
        n=n,
        m=m,
        start=start,
        rounds=rounds,
        x0_evals=1,
        progress=progress,
        check_interrupt=check_interrupt,
    )
    scores = [v for h in run.history for v in h["scores"]] + run.scores
    best = run.order[0]
    return GuidedResult(
        latent=run.paths[best],
        image=frames_of(run.images[best]),
        scores=scores,
        seeds=[seed],
        evaluations=run.evaluations,
    )


# ---------------------------------------------------------------------------------------------------- the node's parts
STRATEGIES = ("best_of_n", "search_over_paths")
SEARCH_PATHS, SEARCH_CHILDREN = 2, 2  # the node's search over paths: paths kept, children of each per round
LATENT_CHANNELS, VAE_FACTOR = 4, 8  # an SD-style latent: 4 channels at 1/8 of the image size


def placeholder_outputs(count: int, height: int, width: int) -> tuple[dict, torch.Tensor]:
    """A zero LATENT (SD-style: ``[count, 4, height / 8, width / 8]``) and a zero MASK ``[count, height, width]``
    for outputs whose input was not connected."""
    latent = torch.zeros(count, LATENT_CHANNELS, height // VAE_FACTOR, width // VAE_FACTOR)
    return {"samples": latent}, torch.zeros(count, height, width)


def noise_scale(sigma: float, const: bool) -> float:
    """The noise scale of ComfyUI's intermediate latents at ``sigma``: ``sigma`` itself, or for a flow model
    (``model_sampling`` CONST, latents ``(1 - sigma) x0 + sigma e``) the equivalent ``sigma / (1 - sigma)``."""
    sigma = float(sigma)
    return sigma / (1 - sigma) if const and sigma < 1 else sigma


def renoise_latent(x: torch.Tensor, sigma_from: float, sigma_to: float, seed: int, const: bool) -> torch.Tensor:
    """Latents at ``sigma_from`` moved up to the noisier ``sigma_to``: fresh Gaussian noise (from ``seed``, drawn
    on the CPU) of variance ``noise_scale(sigma_to)**2 - noise_scale(sigma_from)**2`` added (none if not noisier)."""
    extra = max(noise_scale(sigma_to, const) ** 2 - noise_scale(sigma_from, const) ** 2, 0.0) ** 0.5
    g = torch.Generator().manual_seed(int(seed))
    return x + extra * torch.randn(x.shape, generator=g).to(x.device, x.dtype)


def x0_sigmas(sigmas: torch.Tensor, k: int) -> torch.Tensor:
    """The two-sigma schedule ``[sigma_k, 0]``: one Euler step on it from latents at step ``k`` lands on the model's
    clean estimate ``x - sigma_k * eps``."""
    return torch.stack([sigmas[k], sigmas[k] * 0])


def progress_total(strategy: str, budget: int, steps: int) -> int:
    """What the node's progress bar counts to: samples for best-of-N, steps for the search."""
    return budget if strategy == "best_of_n" else steps


def guided_sample(
    strategy: str,
    run: Callable[[torch.Tensor, int, int, int, bool], torch.Tensor],
    euler_step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    latent: torch.Tensor,
    rm,
    prompt: str,
    seed: int,
    steps: int,
    budget: int,
    sigmas: torch.Tensor | None = None,
    const: bool = False,
    context: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
    judge_frames: int = JUDGE_FRAMES,
) -> GuidedResult:
    """The Reward-Guided Sampler node's logic on host callbacks (ComfyUI's in the node):

    ``run(x, noise_seed, lo, hi, add_noise)`` samples steps ``lo..hi`` (adding noise from ``noise_seed`` first when
    asked); ``euler_step(x, sigmas)`` runs one Euler step over a two-sigma schedule; ``decode`` makes an IMAGE, or
    for a video model's latents (``[1, C, T, H, W]``, Wan) a video ``[1, T, H, W, C]``, judged as one;
    ``sigmas`` (``steps + 1`` values) and ``const`` (a flow model) describe the schedule, needed by the search.
    ``best_of_n``: ``budget`` full samplings from ``latent`` (:func:`best_of_n_seeds`). ``search_over_paths``:
    :func:`search_paths` with ``budget * steps`` evaluations, fresh noise added only when a path starts at step 0,
    re-noising by :func:`renoise_latent` and ``x0`` by one Euler step to sigma 0. ``judge_frames``: frames of
    each decoded video the judge sees (capped at the video's length; images ignore it)."""
    if isinstance(judge_frames, bool) or not isinstance(judge_frames, int) or judge_frames < 1:
        raise NodeInputError(f"judge_frames must be a positive number of frames, got {judge_frames!r}")
    if strategy == "best_of_n":
        return best_of_n_seeds(
            lambda s: run(latent, s, 0, steps, True),
            decode,
            rm,
            prompt,
            seed,
            budget,
            steps,
            context,
            progress=progress,
            check_interrupt=check_interrupt,
            judge_frames=judge_frames,
        )
    if strategy != "search_over_paths":
        raise NodeInputError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if sigmas is None or len(sigmas) != steps + 1:
        got = "none" if sigmas is None else len(sigmas)
        raise NodeInputError(f"sigmas: the search needs steps + 1 = {steps + 1} sigmas, got {got}")

    def x0_of(x, k):
        return x if k >= steps else euler_step(x, x0_sigmas(sigmas, k))

    return search_paths(
        denoise=lambda x, lo, hi, s: run(x, s, lo, hi, lo == 0),
        renoise=lambda x, level, lo, s: renoise_latent(x, sigmas[level], sigmas[lo], s, const),
        x0_of=x0_of,
        decode=decode,
        init=lambda s: latent,
        rm=rm,
        prompt=prompt,
        seed=seed,
        steps=steps,
        n=SEARCH_PATHS,
        m=SEARCH_CHILDREN,
        budget=budget * steps,
        context=context,
        progress=progress,
        check_interrupt=check_interrupt,
        judge_frames=judge_frames,
    )
