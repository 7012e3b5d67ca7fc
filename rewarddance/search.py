"""Inference-time scaling with a reward model: best-of-N, pairwise tournaments and search over paths (Ma et al.,
2025, "Inference-time scaling for diffusion models beyond scaling denoising steps").

The loops are callback-driven cores (:func:`run_best_of_n`, :func:`run_path_search`, seeds from :func:`path_seed`)
that the diffusers functions here and the ComfyUI node (:mod:`rewarddance.comfy`) adapt. Every function takes a
fixed ``seed``: the same arguments give the same images, scores and choices. Images go to the reward model as
``[B, 3, H, W]`` float tensors in [0, 1]; results carry the seeds that made each image so a user can regenerate the
winner at full size. The cached reference sets of pairwise ReFL live in :mod:`rewarddance.reference_sets`.

Videos take the same paths: clips (a video pipeline's ``frames``, ``[B, T, 3, H, W]``, ``[T, 3, H, W]`` each) are
judged with ``videos=`` on ``judge_frames`` frames sampled uniformly from each; search over paths drives Wan, CogVideoX
and LTX-Video text-to-video pipelines (:mod:`rewarddance.video_pipelines`).
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .images import as_image_list, load_image, to_tensor
from .pipelines import Sampler, SamplerConfig, compose, renoise
from .video_pipelines import JUDGE_FRAMES, generated_clips, i2v_context, is_video_batch, judge_sampling, per_seed_kwargs


class BudgetError(ValueError):
    """The compute budget is too small for the smallest run asked for."""


def generated_pixels(images) -> torch.Tensor:
    """Anything a generator returns (a ``[B, 3, H, W]`` tensor, PIL images, arrays) -> ``[B, 3, H, W]`` float32."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return images.detach().float().cpu().clamp(0, 1)
    items = [to_tensor(load_image(x, name=f"generated image {i}")) for i, x in enumerate(as_image_list(images))]
    if len({tuple(t.shape) for t in items}) > 1:
        return items  # different sizes: keep a list, the reward model takes lists
    return torch.stack(items)


def as_generate(generator, pipe_kwargs: dict, name: str = "generator") -> Callable:
    """``(prompt, seeds) -> images``: a diffusers pipeline is called with one CPU ``torch.Generator`` per seed,
    ``output_type="pt"`` and ``pipe_kwargs``; any other callable is returned as it is. ``name`` is the argument's
    name in the error raised for anything else. A video pipeline gives clips (``output.frames``,
    ``[B, T, 3, H, W]``); LTX-Video's image-to-video pipeline gets its one ``image`` once per seed, as it needs."""
    if hasattr(generator, "components") and hasattr(generator, "scheduler") and callable(generator):

        def generate(prompt: str, seeds: list[int]):
            gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
            kwargs = per_seed_kwargs(generator, pipe_kwargs, len(seeds))
            out = generator(prompt=[prompt] * len(seeds), generator=gens, output_type="pt", **kwargs)
            return out.frames if hasattr(out, "frames") else out.images  # a video pipeline's clips are its frames

        return generate
    if not callable(generator):
        raise TypeError(f"{name} must be a diffusers pipeline or a callable, got {type(generator).__name__}")
    return generator


# ------------------------------------------------------------------------------------------------------ best-of-N
@dataclass
class BestOfN:
    """Result of :func:`best_of_n`: all candidates in generation order, their scores, and the chosen ones."""

    images: list  # [3, H, W] float tensors in [0, 1]; clips [T, 3, H, W] from a video generator
    scores: torch.Tensor  # [N] float32 p_yes (or margin)
    seeds: list[int]
    order: list[int]  # indices sorted best first
    top_k: list[int]
    rm_calls: int = 0

    @property
    def best(self) -> torch.Tensor:
        return self.images[self.order[0]]

    @property
    def best_seed(self) -> int:
        return self.seeds[self.order[0]]

    @property
    def top_images(self) -> list:
        return [self.images[i] for i in self.top_k]


def path_seed(seed: int, stage: int, index: int) -> int:
    """The one seed formula of every search here: candidate or path ``index`` of ``stage`` draws its noise from
    ``seed + 1_000_003 * stage + index`` (modulo 2**64, the range of a torch seed). Stage 0 is the starting noises
    (so best-of-N candidate ``i`` and search path ``i`` start from the same noise, ``seed + i``); stage ``r + 1``
    re-noises the children of search round ``r``, child ``j * m + c`` being the ``c``-th of kept path ``j``."""
    return (int(seed) + 1_000_003 * int(stage) + int(index)) % 2**64


@dataclass
class BestOfRun:
    """What :func:`run_best_of_n` returns: the candidates as ``make`` gave them, their scores and seeds (in
    generation order), ``order`` best first (ties: the earlier candidate first) and the reward-model calls."""

    items: list
    scores: list[float]
    seeds: list[int]
    order: list[int]
    rm_calls: int


def run_best_of_n(
    make: Callable[[list[int]], Sequence],
    score: Callable[[Sequence], Sequence[float]],
    seed: int,
    n: int,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> BestOfRun:
    """The best-of-N loop behind :func:`best_of_n` and :func:`rewarddance.comfy.best_of_n_seeds`.

    For ``batch_size`` seeds at a time (``path_seed(seed, 0, i)`` = ``seed + i``): ``check_interrupt()``,
    ``make(seeds)`` -> one candidate per seed, ``score(candidates)`` -> one float each (one reward-model call),
    then ``progress(done, n)``."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    seeds = [path_seed(seed, 0, i) for i in range(n)]
    items, scores, calls = [], [], 0
    for start in range(0, n, batch_size):
        if check_interrupt:
            check_interrupt()
        chunk = seeds[start : start + batch_size]
        made = make(chunk)
        if len(made) != len(chunk):
            raise ValueError(f"the generator returned {len(made)} images for {len(chunk)} seeds")
        got = [float(x) for x in score(made)]
        calls += 1
        if len(got) != len(chunk):
            raise ValueError(f"the scorer returned {len(got)} scores for {len(chunk)} candidates")
        items += list(made)
        scores += got
        if progress:
            progress(len(scores), n)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    return BestOfRun(items=items, scores=scores, seeds=seeds, order=order, rm_calls=calls)


def best_of_n(
    generator,
    rm,
    prompt: str,
    n: int = 4,
    top_k: int = 1,
    seed: int = 0,
    batch_size: int = 4,
    context=None,
    references=None,
    score: str = "p_yes",
    progress: bool = False,
    judge_frames: int | None = JUDGE_FRAMES,
    **pipe_kwargs,
) -> BestOfN:
    """Generate ``n`` candidates with seeds ``seed .. seed + n - 1`` and keep the ``top_k`` by reward.

    ``generator`` is a diffusers pipeline (called with ``output_type="pt"``, one ``torch.Generator`` per image, and
    ``pipe_kwargs``) or any callable ``(prompt, seeds) -> images``. Candidates are generated and scored
    ``batch_size`` at a time (:func:`run_best_of_n`); with ``references`` the score is pairwise (is the candidate
    better than the reference?).

    Videos: a video pipeline (``pipe_kwargs`` such as ``num_frames`` go to it) or a callable returning
    ``[B, T, 3, H, W]`` gives clips, scored with ``videos=`` on ``judge_frames`` frames sampled uniformly from each
    (None: all); the result keeps the whole clips. An image-to-video call (``image=`` in ``pipe_kwargs``) without a
    ``context`` is judged with that image as the first frame (``RewardContext(task="video_alignment",
    first_frame=image)``).
    """
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 1 <= top_k <= n:
        raise ValueError(f"top_k must be between 1 and n = {n}, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if score not in ("p_yes", "margin"):
        raise ValueError(f"score must be 'p_yes' or 'margin', got {score!r}")
    generate = as_generate(generator, pipe_kwargs)
    video_context = context if context is not None else i2v_context(pipe_kwargs.get("image"))

    def rate(pix):
        if isinstance(pix, list) and pix and pix[0].ndim == 4:  # clips
            frames = judge_sampling(pix, judge_frames)
            out = rm.score(videos=pix, prompts=prompt, context=video_context, references=references, num_frames=frames)
        else:
            out = rm.score(pix, prompt, context=context, references=references)
        return getattr(out, score).float().cpu()

    def make(seeds):
        made = generate(prompt, seeds)
        return generated_clips(made) if is_video_batch(made) else generated_pixels(made)

    with tqdm(total=n, desc="best-of-N", disable=not progress) as bar:
        run = run_best_of_n(
            make,
            rate,
            seed,
            n,
            batch_size,
            progress=lambda done, _: bar.update(done - bar.n),
        )
    return BestOfN(
        images=run.items,
        scores=torch.tensor(run.scores, dtype=torch.float32),
        seeds=run.seeds,
        order=run.order,
        top_k=run.order[:top_k],
        rm_calls=run.rm_calls,
    )


# ------------------------------------------------------------------------------------------------------ tournament
@dataclass
class Tournament:
    """Result of :func:`tournament`: ``ranking`` best first; ``wins[i]`` win count of image ``i`` (a draw is
    half a win); ``strength[i]`` the sum of its order-averaged win probabilities (the tie-breaker);
    ``matches`` (i, j, P(j beats i)) with both orders averaged."""

    ranking: list[int]
    wins: torch.Tensor
    strength: torch.Tensor
    matches: list[tuple[int, int, float]] = field(default_factory=list)
    top_k: list[int] = field(default_factory=list)
    rm_calls: int = 0


def _round_robin(n: int) -> list[list[tuple[int, int]]]:
    return [[(i, j) for i in range(n) for j in range(i + 1, n)]]


def _swiss_round(n: int, wins: list[float], strength: list[float], played: set, rng: random.Random):
    """Pair players with similar scores who have not met yet; one may sit out when ``n`` is odd."""
    order = sorted(range(n), key=lambda i: (-wins[i], -strength[i], rng.random()))
    pairs, free = [], order[:]
    while len(free) > 1:
        i = free.pop(0)
        j = next((x for x in free if (min(i, x), max(i, x)) not in played), free[0])
        free.remove(j)
        pairs.append((i, j))
    return pairs


def tournament(
    images,
    rm,
    prompt: str,
    top_k: int = 2,
    context=None,
    schedule: str = "auto",
    rounds: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    judge_frames: int | None = JUDGE_FRAMES,
) -> Tournament:
    """Rank images by pairwise wins under the reward model, each pair judged in both orders to cancel position bias.

    ``schedule``: ``round_robin`` (every pair; the default up to 8 images), ``swiss`` (``rounds`` rounds, default
    ``ceil(log2 n) + 2``, pairing images with similar records; the default above 8), or ``auto``.

    Videos (a ``[B, T, 3, H, W]`` tensor or a list of ``[T, 3, H, W]`` clips) are compared with ``videos=`` on
    ``judge_frames`` frames sampled uniformly from each (None: all).
    """
    video = is_video_batch(images)
    if video:
        imgs = generated_clips(images)
        frames = judge_sampling(imgs, judge_frames)
    else:
        imgs = list(generated_pixels(images)) if not isinstance(images, list) else images
    n = len(imgs)
    if n < 2:
        raise ValueError(f"a tournament needs at least 2 images, got {n}")
    if not 1 <= top_k <= n:
        raise ValueError(f"top_k must be between 1 and the number of images ({n}), got {top_k}")
    if schedule == "auto":
        schedule = "round_robin" if n <= 8 else "swiss"
    if schedule not in ("round_robin", "swiss"):
        raise ValueError(f"schedule must be 'auto', 'round_robin' or 'swiss', got {schedule!r}")
    rng = random.Random(seed)
    wins, strength = [0.0] * n, [0.0] * n
    played: set = set()
    matches, calls = [], 0
    n_rounds = 1 if schedule == "round_robin" else (rounds or math.ceil(math.log2(n)) + 2)
    for _ in range(n_rounds):
        pairs = _round_robin(n)[0] if schedule == "round_robin" else _swiss_round(n, wins, strength, played, rng)
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            refs = [imgs[i] for i, _ in chunk] + [imgs[j] for _, j in chunk]
            cands = [imgs[j] for _, j in chunk] + [imgs[i] for i, _ in chunk]
            if video:
                out = rm.compare(videos=cands, references=refs, prompts=prompt, context=context, num_frames=frames)
            else:
                out = rm.compare(cands, refs, prompt, context=context)
            p = out.p_yes.float().cpu()
            calls += 1
            m = len(chunk)
            for (i, j), p_ij, p_ji in zip(chunk, p[:m].tolist(), p[m:].tolist()):
                p_j = (p_ij + 1.0 - p_ji) / 2  # P(j beats i), averaged over both orders
                matches.append((i, j, p_j))
                played.add((min(i, j), max(i, j)))
                strength[j] += p_j
                strength[i] += 1.0 - p_j
                if p_j > 0.5:
                    wins[j] += 1
                elif p_j < 0.5:
                    wins[i] += 1
                else:
                    wins[i] += 0.5
                    wins[j] += 0.5
    ranking = sorted(range(n), key=lambda i: (-wins[i], -strength[i], i))
    return Tournament(
        ranking=ranking,
        wins=torch.tensor(wins),
        strength=torch.tensor(strength),
        matches=matches,
        top_k=ranking[:top_k],
        rm_calls=calls,
    )


# ------------------------------------------------------------------------------------------------ search over paths
@dataclass
class SearchResult:
    """Result of :func:`search_over_paths`: the final images of the kept paths (best first), their scores, the
    seed, and the compute spent (denoiser evaluations per sample, reward-model calls and images scored)."""

    images: torch.Tensor  # [N, 3, H, W]; clips [N, T, 3, H, W] from a video pipeline
    scores: torch.Tensor  # [N]
    seed: int
    evaluations: int
    rm_calls: int
    rm_images: int
    budget: int | None
    history: list[dict] = field(default_factory=list)

    @property
    def best(self) -> torch.Tensor:
        return self.images[0]


def plan_search(steps: int, start: int, forward: int, backward: int) -> list[tuple[int, int, int]]:
    """The search rounds as ``(level, renoised to, denoised to)``: each re-noises the kept paths from ``level`` up
    to ``max(0, level - forward)`` and denoises them ``backward`` levels (not past the last). The rounds do not
    depend on how many paths are kept or re-noised; :func:`search_cost` counts what they cost."""
    rounds, k = [], start
    while k < steps:
        lo = max(0, k - forward)
        hi = min(steps, lo + backward)
        rounds.append((k, lo, hi))
        k = hi
    return rounds


def search_cost(steps: int, n: int, m: int, start: int, rounds, x0_evals: int = 0) -> int:
    """Denoiser evaluations (per sample) of a search: ``n`` paths to ``start``, ``n * m`` children per round, and
    plain denoising of the ``n`` kept paths after the last round.

    ``x0_evals``: the extra evaluations a child needs for its ``x0`` estimate when its round ends before the last
    level. :func:`search_over_paths` gets ``x0`` from the round's last step (0); a host sampler that can only run
    whole steps asks the model once more (1, :func:`rewarddance.comfy.search_paths`)."""
    cost, k = n * start, start
    for _, lo, hi in rounds:
        cost += n * m * (hi - lo + (x0_evals if hi < steps else 0))
        k = hi
    return cost + n * (steps - k)


def plan_within_budget(
    steps: int,
    n: int,
    m: int,
    start: int | None,
    forward: int,
    backward: int,
    budget: int | None,
    x0_evals: int = 0,
) -> tuple[int, list[tuple[int, int, int]]]:
    """``(start, rounds)`` of a search that fits ``budget`` denoiser evaluations (per sample; ``None``: no cap).

    Checks the settings, plans the rounds with :func:`plan_search` and drops the last ones while
    :func:`search_cost` exceeds the budget (their levels are then denoised plainly). ``start`` defaults to
    ``steps // 4``. A budget below plain denoising of ``n`` paths is a :class:`BudgetError`."""
    if n < 1 or m < 1:
        raise ValueError(f"n and m must be at least 1, got n={n}, m={m}")
    if not 0 < backward or forward < 0 or backward <= forward:
        raise ValueError(f"need backward > forward >= 0, got forward={forward}, backward={backward}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    start = steps // 4 if start is None else start
    if not 0 <= start < steps:
        raise ValueError(f"start must be in [0, {steps}), got {start}")
    floor = n * steps
    if budget is not None and budget < floor:
        raise BudgetError(f"budget {budget} is below plain denoising of n={n} paths ({floor} evaluations)")
    rounds = plan_search(steps, start, forward, backward)
    while budget is not None and rounds and search_cost(steps, n, m, start, rounds, x0_evals) > budget:
        rounds = rounds[:-1]  # drop the last round: its levels are then denoised plainly
    return start, rounds


@dataclass
class PathSearchRun:
    """What :func:`run_path_search` returns. ``paths``, ``images``, ``scores`` and ``seeds`` are the kept paths in
    the order the last round kept them (the seed is that of each path's latest noise); ``order`` sorts them best
    first (ties: the earlier first). ``evaluations`` counts denoiser evaluations per sample as
    :func:`search_cost` does; ``history`` has one entry per round."""

    paths: list
    images: list
    scores: list[float]
    seeds: list[int]
    order: list[int]
    evaluations: int
    rm_calls: int
    rm_images: int
    history: list[dict] = field(default_factory=list)


def run_path_search(
    init: Callable[[list[int]], list],
    denoise: Callable[[list, int, int, list[int]], list],
    denoise_with_x0: Callable[[list, int, int, list[int]], tuple[list, list]],
    renoise: Callable[[list, int, int, list[int]], list],
    decode: Callable[[list], Sequence],
    score: Callable[[Sequence], Sequence[float]],
    seed: int,
    steps: int,
    n: int,
    m: int,
    start: int,
    rounds: list[tuple[int, int, int]],
    x0_evals: int = 0,
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> PathSearchRun:
    """The search-over-paths loop behind :func:`search_over_paths` and :func:`rewarddance.comfy.search_paths`,
    driven by callbacks on lists of paths (one latent per path; ``seeds[i]`` is path ``i``'s seed):

    - ``init(seeds)``: the level-0 latents of the ``n`` paths, seeds ``path_seed(seed, 0, i)``;
    - ``denoise(paths, lo, hi, seeds)``: run levels ``lo .. hi``; never called with ``lo == hi``;
    - ``denoise_with_x0(paths, lo, hi, seeds)``: the same, plus each path's clean estimate at ``hi``;
    - ``renoise(paths, level, lo, seeds)``: fresh noise from each seed, from ``level`` up to the noisier ``lo``;
    - ``decode(latents)``: images, one per latent; ``score(images)``: one float each (one reward-model call).

    The plan (``start``, ``rounds``) is :func:`plan_within_budget`'s. Each round re-noises every kept path ``m``
    ways (child ``j * m + c`` with seed ``path_seed(seed, r + 1, j * m + c)``), denoises the children, scores their
    ``x0`` and keeps the best ``n`` (ties: the lower child index). After the rounds the kept paths are denoised
    to the last level, decoded and scored. ``check_interrupt()`` runs before each stage and ``progress(level,
    steps)`` after it. ``x0_evals``: the evaluations an ``x0`` costs before the last level (see
    :func:`search_cost`)."""

    def tick(k):
        if progress:
            progress(k, steps)

    def check():
        if check_interrupt:
            check_interrupt()

    check()
    seeds = [path_seed(seed, 0, i) for i in range(n)]
    paths = list(init(seeds))
    if start > 0:
        paths = list(denoise(paths, 0, start, seeds))
    evaluations, rm_calls, rm_images, history = n * start, 0, 0, []
    k = start
    tick(k)
    for r, (level, lo, hi) in enumerate(rounds):
        check()
        kids = [x for x in paths for _ in range(m)]
        kid_seeds = [path_seed(seed, r + 1, i) for i in range(len(kids))]
        kids = list(renoise(kids, level, lo, kid_seeds))
        kids, x0 = denoise_with_x0(kids, lo, hi, kid_seeds)
        evaluations += len(kids) * (hi - lo + (x0_evals if hi < steps else 0))
        scores = [float(v) for v in score(decode(list(x0)))]
        rm_calls += 1
        rm_images += len(scores)
        keep = sorted(range(len(kids)), key=lambda i: (-scores[i], i))[:n]
        paths, seeds = [kids[i] for i in keep], [kid_seeds[i] for i in keep]
        history.append({"round": r, "level": hi, "seeds": kid_seeds, "scores": scores, "kept": keep})
        k = hi
        tick(k)
    if k < steps:
        check()
        paths = list(denoise(paths, k, steps, seeds))
        evaluations += len(paths) * (steps - k)
        tick(steps)
    images = decode(paths)
    final = [float(v) for v in score(images)]
    rm_calls += 1
    rm_images += len(final)
    return PathSearchRun(
        paths=paths,
        images=list(images),
        scores=final,
        seeds=seeds,
        order=sorted(range(len(final)), key=lambda i: (-final[i], i)),
        evaluations=evaluations,
        rm_calls=rm_calls,
        rm_images=rm_images,
        history=history,
    )


@torch.no_grad()
def search_over_paths(
    pipe,
    rm,
    prompt: str,
    n: int = 4,
    m: int = 2,
    num_inference_steps: int = 30,
    start: int | None = None,
    forward: int = 2,
    backward: int = 4,
    budget: int | None = None,
    seed: int = 0,
    context=None,
    config: SamplerConfig | None = None,
    progress: bool = False,
    judge_frames: int | None = JUDGE_FRAMES,
    image=None,
) -> SearchResult:
    """Search over paths: start ``n`` noises and denoise them to level ``start``; then, until the last level,
    re-noise each kept path ``m`` ways ``forward`` levels back up, denoise ``backward`` levels, score the ``x0``
    predictions with the reward model and keep the best ``n``; finally decode and score the ``n`` images. The loop
    and the seeds are :func:`run_path_search`'s (path ``i`` starts from seed ``seed + i``, as in :func:`best_of_n`).

    ``budget`` caps the denoiser evaluations (per sample; a guided call counts once). When the planned search
    would exceed it, fewer search rounds run (the remaining levels are plain denoising of the kept paths); a budget
    below plain denoising of ``n`` paths is an error. Scores are ``p_yes``.

    Video pipelines (Wan 2.1 / 2.2, CogVideoX, LTX-Video; clip length ``config.num_frames``) are searched the same
    way: each ``x0`` is decoded to a clip (whole: their VAEs are causal in time) and judged with ``videos=`` on
    ``judge_frames`` frames sampled uniformly from it (None: all). Image-to-video pipelines (Wan, LTX-Video) take the
    conditioning ``image`` (or ``config.image``); without a ``context`` the judge is shown it as the first frame, and
    re-noised paths keep a conditioning frame the pipeline holds fixed.
    """
    from tqdm.auto import tqdm

    steps = num_inference_steps
    start, rounds = plan_within_budget(steps, n, m, start, forward, backward, budget)
    cfg = config or SamplerConfig()
    cfg = SamplerConfig(
        **{**cfg.__dict__, "num_inference_steps": steps, "image": cfg.image if image is None else image}
    )
    sampler = Sampler(pipe, prompt, cfg)
    context = context if context is not None else i2v_context(cfg.image)

    def run_to(x, k_from, k_to):
        for kk in range(k_from, k_to):
            x, _ = sampler.step(x, kk)
        return x

    def denoise(paths, lo, hi, seeds):
        return list(run_to(torch.stack(paths), lo, hi))

    def denoise_with_x0(paths, lo, hi, seeds):
        x = run_to(torch.stack(paths), lo, hi - 1)
        x0, e = sampler.predict(x, hi - 1)  # the x0 of the round's last step: no extra evaluation
        return list(sampler.pin(compose(x0, e, sampler.levels[hi]), x)), list(x0)  # (a held image stays)

    def renoise_each(paths, level, lo, seeds):
        lv_from, lv_to = sampler.levels[level], sampler.levels[lo]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return [sampler.pin(renoise(x[None], lv_from, lv_to, g), x[None])[0] for x, g in zip(paths, gens)]

    def rate(images):
        if images.ndim == 5:  # clips [B, T, 3, H, W]
            clips = list(images)
            frames = judge_sampling(clips, judge_frames)
            return rm.score(videos=clips, prompts=prompt, context=context, num_frames=frames).p_yes.float().cpu()
        return rm.score(images, prompt, context=context).p_yes.float().cpu()

    with tqdm(total=steps, desc="search over paths", disable=not progress) as bar:
        run = run_path_search(
            init=lambda seeds: list(sampler.initial_latents(seeds)),
            denoise=denoise,
            denoise_with_x0=denoise_with_x0,
            renoise=renoise_each,
            decode=lambda latents: sampler.decode(torch.stack(latents)),
            score=rate,
            seed=seed,
            steps=steps,
            n=n,
            m=m,
            start=start,
            rounds=rounds,
            progress=lambda k, _: bar.update(k - bar.n),
        )
    order = run.order
    return SearchResult(
        images=torch.stack([run.images[i] for i in order]).cpu(),
        scores=torch.tensor([run.scores[i] for i in order], dtype=torch.float32),
        seed=seed,
        evaluations=sampler.evaluations,
        rm_calls=run.rm_calls,
        rm_images=run.rm_images,
        budget=budget,
        history=run.history,
    )


_MOVED = {"build_references": "rewarddance.reference_sets", "load_references": "rewarddance.reference_sets"}


def __getattr__(name: str):
    """The reference-set functions moved to :mod:`rewarddance.reference_sets`; ``from rewarddance.search import
    build_references`` keeps working (looked up on first use, since that module imports this one)."""
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
