"""Inference-time scaling on tiny diffusers pipelines of each family (SD, SDXL, SD3, Flux) and a tiny reward model:
the pipeline helpers reproduce the pipelines exactly, the guidance callback recovers x0 and resamples correctly,
search over paths stays within its budget, best-of-N picks the argmax, tournaments rank a planted order, and the
reference set resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from rewarddance.guidance import RewardGuidanceCallback, check_pipeline, run_guided
from rewarddance.model import RewardOutput
from rewarddance.pipelines import PipelineError, Sampler, SamplerConfig, decompose, levels
from rewarddance.reference_sets import build_references, load_references
from rewarddance.search import (
    BudgetError,
    best_of_n,
    plan_search,
    search_cost,
    search_over_paths,
    tournament,
)
from rewarddance.testing.tiny_diffusion import build_tiny_pipeline

PROMPT = "a red circle"
SIZE = 32
CASES = [("sd", "ddim"), ("sd", "euler"), ("sdxl", "euler"), ("sd3", None), ("flux", None)]


@pytest.fixture(scope="module")
def pipes():
    built = {}

    def get(kind, scheduler=None, prediction_type="epsilon"):
        key = (kind, scheduler, prediction_type)
        if key not in built:
            pipe = build_tiny_pipeline(kind, scheduler, prediction_type=prediction_type)
            pipe.set_progress_bar_config(disable=True)
            built[key] = pipe
        return built[key]

    return get


@pytest.fixture(scope="module")
def rm(rm_cache):
    return rm_cache("llava")


def _kw(kind, steps=6):
    kw = dict(num_inference_steps=steps, height=SIZE, width=SIZE)
    if kind == "flux":
        kw["max_sequence_length"] = 32
    return kw


def _cfg(kind, steps=6):
    return SamplerConfig(**_kw(kind, steps))


@pytest.mark.parametrize(
    "kind,scheduler,prediction",
    [*[(k, s, "epsilon") for k, s in CASES], ("sd", "ddim", "v_prediction"), ("sd", "euler", "v_prediction")],
)
def test_sampler_reproduces_the_pipeline(pipes, kind, scheduler, prediction):
    """Driving the denoiser level by level gives the pipeline's own images for the same seed."""
    pipe = pipes(kind, scheduler, prediction)
    ref = pipe(PROMPT, generator=[torch.Generator().manual_seed(7)], output_type="pt", **_kw(kind, 5)).images
    sampler = Sampler(pipe, PROMPT, _cfg(kind, 5))
    x = sampler.initial_latents([7])
    for k in range(5):
        x, _ = sampler.step(x, k)
    assert (sampler.decode(x) - ref).abs().max() < 1e-4
    assert sampler.evaluations == 5


@pytest.mark.parametrize("kind,scheduler", CASES)
def test_callback_x0_equals_the_denoiser_prediction(pipes, kind, scheduler):
    """x0 recovered from two consecutive latents equals the denoiser's own x0 prediction at that step."""
    pipe = pipes(kind, scheduler)
    seen = {}

    def grab(p, i, t, kw):
        seen[i] = kw["latents"].clone()
        return {}

    pipe(
        PROMPT,
        generator=[torch.Generator().manual_seed(3)],
        output_type="latent",
        callback_on_step_end=grab,
        **_kw(kind),
    )
    lv = levels(pipe.scheduler)
    sampler = Sampler(pipe, PROMPT, _cfg(kind))
    for i in (2, 4):
        x0, _ = decompose(seen[i - 1], seen[i], lv[i], lv[i + 1])
        want, _ = sampler.predict(seen[i - 1], i)
        assert (x0 - want).abs().max() < 1e-4 * (1 + want.abs().max())


def test_callback_x0_is_exact_on_an_uneven_ddim_spacing(pipes, rm, monkeypatch):
    """3 "trailing" DDIM steps of 1000 land a timestep away from where the next step reads its latents (333 vs 332):
    the x0 the callback scores is still the denoiser's own prediction at that step."""
    from diffusers import DDIMScheduler

    pipe = build_tiny_pipeline("sd", "ddim")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    seen, scored = {}, {}
    cb = RewardGuidanceCallback(rm, PROMPT, steps=[1, 2], mode="prune", keep=1, refresh=0.0)
    real = cb._score

    def score(pipeline, x0, latents, prompts):
        scored[len(scored) + 1] = x0.clone()
        return real(pipeline, x0, latents, prompts)

    monkeypatch.setattr(cb, "_score", score)

    def both(p, i, t, kw):
        seen[i] = kw["latents"].clone()
        return cb(p, i, t, kw)

    pipe(PROMPT, generator=[torch.Generator().manual_seed(3)], output_type="latent", callback_on_step_end=both,
         callback_on_step_end_tensor_inputs=["latents"], **_kw("sd", 3))  # fmt: skip
    assert [int(t) for t in pipe.scheduler.timesteps] == [999, 666, 332]
    sampler = Sampler(pipe, PROMPT, _cfg("sd", 3))
    for i in (1, 2):
        want, _ = sampler.predict(seen[i - 1], i)
        assert (scored[i] - want).abs().max() < 1e-5 * (1 + want.abs().max())  # off by 5e-5 relative if read at 333


@pytest.mark.parametrize("kind,scheduler", CASES)
def test_prune_at_the_last_step_keeps_the_best(pipes, rm, kind, scheduler):
    pipe = pipes(kind, scheduler)
    steps = 6
    cb = RewardGuidanceCallback(rm, PROMPT, steps=[steps - 1], mode="prune", keep=1, refresh=0.0)
    gen = torch.Generator().manual_seed(0)
    out = run_guided(pipe, PROMPT, cb, num_images_per_prompt=4, generator=gen, output_type="pt", **_kw(kind, steps))
    assert out.images.shape == (4, 3, SIZE, SIZE)
    assert cb.rm_calls == 1 and cb.images_scored == 4
    scores = cb.history[0]["scores"]
    best = max(range(4), key=lambda i: scores[i])
    assert cb.history[0]["ancestors"] == [best] * 4
    final = rm.score(out.images, PROMPT).p_yes
    # the final latents are x0 for Euler and flow matching; DDIM ends at abar = alphas_cumprod[0] < 1, a hair away
    tol = 2e-3 if scheduler == "ddim" else 1e-5
    assert torch.allclose(final, torch.full((4,), scores[best]), atol=tol)


@pytest.mark.parametrize("kind,scheduler", [("sd", "ddim"), ("sd3", None), ("flux", None)])
def test_resampling_follows_the_weights(pipes, rm, kind, scheduler):
    pipe = pipes(kind, scheduler)
    cb = RewardGuidanceCallback(rm, PROMPT, every=2, mode="resample", potential="sum", lam=1e5, refresh=0.5)
    gen = torch.Generator().manual_seed(1)
    out = run_guided(pipe, PROMPT, cb, num_images_per_prompt=4, generator=gen, output_type="pt", **_kw(kind))
    assert out.images.shape == (4, 3, SIZE, SIZE) and torch.isfinite(out.images).all()
    assert [h["step"] for h in cb.history] == cb.scoring_steps(6) == [1, 3, 5]
    for h in cb.history:  # a huge lambda puts all the weight on the best particle
        best = max(range(4), key=lambda i: h["scores"][i])
        assert h["ancestors"] == [best] * 4
    assert cb.rm_calls == 3 and cb.images_scored == 12


def test_guided_run_is_reproducible_and_copies_diverge(pipes, rm):
    pipe = pipes("sd", "euler")
    runs = []
    for _ in range(2):
        cb = RewardGuidanceCallback(rm, PROMPT, steps=[2], mode="prune", keep=1, refresh=0.5, seed=4)
        gen = torch.Generator().manual_seed(2)
        runs.append(run_guided(pipe, PROMPT, cb, num_images_per_prompt=3, generator=gen, output_type="pt", **_kw("sd")))
    assert torch.equal(runs[0].images, runs[1].images)
    imgs = runs[0].images
    assert (imgs[0] - imgs[1]).abs().max() > 1e-3  # copies got fresh noise


class _ByPromptRM:
    """A stand-in judge: every image of ``PROMPT`` outscores every image of any other prompt; within a prompt the
    brighter image wins. Records the prompts it was asked about."""

    def __init__(self):
        self.asked = []

    def score(self, pixels, prompts, context=None):
        self.asked.append(list(prompts))
        base = torch.tensor([0.8 if p == PROMPT else 0.1 for p in prompts])
        return RewardOutput(p_yes=base + 0.1 * pixels.float().mean(dim=(1, 2, 3)).clamp(0, 1), margin=base)


@pytest.mark.parametrize("mode", ["prune", "resample"])
def test_guidance_resamples_within_each_prompts_rows(pipes, mode):
    """Two prompts x 2 images: a latent never moves to the other prompt's rows, though one prompt scores higher."""
    pipe = pipes("sd", "euler")
    prompts, rm = [PROMPT, "two blue squares"], _ByPromptRM()
    cb = RewardGuidanceCallback(rm, prompts, steps=[2, 4], mode=mode, keep=1, potential="sum", lam=1e3, refresh=0.0)
    gen = torch.Generator().manual_seed(0)
    out = run_guided(pipe, prompts, cb, num_images_per_prompt=2, generator=gen, output_type="pt", **_kw("sd"))
    assert rm.asked[0] == [PROMPT, PROMPT, "two blue squares", "two blue squares"]  # diffusers' prompt-major rows
    assert len(cb.history) == 2
    for h in cb.history:
        anc, s = h["ancestors"], h["scores"]
        assert set(anc[:2]) <= {0, 1} and set(anc[2:]) <= {2, 3}, anc
        if mode == "prune":  # keep=1: the best row of each prompt fills that prompt's rows
            assert anc == [max((0, 1), key=s.__getitem__)] * 2 + [max((2, 3), key=s.__getitem__)] * 2
    if mode == "prune":  # exact copies (refresh=0) under the same prompt stay equal; the prompts' images differ
        assert torch.allclose(out.images[0], out.images[1], atol=1e-5)
        assert torch.allclose(out.images[2], out.images[3], atol=1e-5)
        assert (out.images[0] - out.images[2]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="callback.prompt: one prompt for a pipeline call with 2 prompts"):
        run_guided(pipe, prompts, RewardGuidanceCallback(rm, PROMPT), num_images_per_prompt=2, **_kw("sd"))
    too_many = RewardGuidanceCallback(rm, prompts, steps=[2], mode="prune", keep=3)
    with pytest.raises(ValueError, match=r"keep must be between 1 and the rows per prompt \(2\), got 3"):
        run_guided(pipe, prompts, too_many, num_images_per_prompt=2, **_kw("sd"))


def test_callback_bad_input(pipes, rm):
    with pytest.raises(ValueError, match="mode"):
        RewardGuidanceCallback(rm, PROMPT, mode="greedy")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        RewardGuidanceCallback(rm, PROMPT, steps=[0])
    pipe = pipes("sd", "ddim")

    class OldStylePipeline(StableDiffusionPipeline):
        def __call__(self, prompt, callback=None, callback_steps=1):  # the pre-2024 callback API only
            raise AssertionError("not reached")

    old = OldStylePipeline(**pipe.components, requires_safety_checker=False)
    with pytest.raises(PipelineError, match="callback_on_step_end"):
        check_pipeline(old)
    no_vae = StableDiffusionPipeline(**{**pipe.components, "vae": None}, requires_safety_checker=False)
    with pytest.raises(PipelineError, match="no VAE"):
        check_pipeline(no_vae)
    from diffusers import DPMSolverMultistepScheduler

    other = StableDiffusionPipeline(
        **{**pipe.components, "scheduler": DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)},
        requires_safety_checker=False,
    )
    with pytest.raises(PipelineError, match="DPMSolverMultistepScheduler"):
        check_pipeline(other)


# --------------------------------------------------------------------------------------------- search over paths
@pytest.mark.parametrize("kind,scheduler", [("sd", "ddim"), ("sd3", None), ("flux", None)])
def test_search_over_paths_end_to_end_within_budget(pipes, rm, kind, scheduler):
    pipe = pipes(kind, scheduler)
    steps, n, m = 6, 2, 2
    full = plan_search(steps, start=2, forward=1, backward=2)
    assert full == [(2, 1, 3), (3, 2, 4), (4, 3, 5), (5, 4, 6)]
    budget = 30  # the full plan costs search_cost(...) = 36 > 30: the last rounds are dropped
    assert search_cost(steps, n, m, 2, full) == 36
    settings = dict(n=n, m=m, num_inference_steps=steps, start=2, forward=1, backward=2, budget=budget, seed=5)
    res = search_over_paths(pipe, rm, PROMPT, config=_cfg(kind, steps), **settings)
    assert res.images.shape == (n, 3, SIZE, SIZE)
    assert res.evaluations <= budget
    assert res.evaluations == search_cost(steps, n, m, 2, full[: len(res.history)])
    assert res.rm_calls == len(res.history) + 1 and res.rm_images == n * m * len(res.history) + n
    assert res.scores[0] >= res.scores[1]
    assert torch.allclose(rm.score(res.images, PROMPT).p_yes, res.scores, atol=1e-5)
    for h in res.history:  # each round keeps the n best of the n * m children
        top = sorted(h["scores"], reverse=True)[:n]
        assert [h["scores"][i] for i in h["kept"]] == top
    again = search_over_paths(pipe, rm, PROMPT, config=_cfg(kind, steps), **settings)
    assert torch.equal(again.images, res.images)


def test_search_budget_errors(pipes, rm):
    pipe = pipes("sd", "ddim")
    with pytest.raises(BudgetError, match="below plain denoising"):
        search_over_paths(pipe, rm, PROMPT, n=2, m=2, num_inference_steps=6, budget=11, config=_cfg("sd"))
    with pytest.raises(ValueError, match="backward > forward"):
        search_over_paths(pipe, rm, PROMPT, forward=3, backward=3, num_inference_steps=6, config=_cfg("sd"))
    res = search_over_paths(pipe, rm, PROMPT, n=2, m=2, num_inference_steps=6, start=2, budget=12, config=_cfg("sd"))
    assert res.evaluations == 12 and res.history == []  # the budget only allows plain denoising


# ------------------------------------------------------------------------------------------------- best-of-N
def test_best_of_n_with_a_pipeline_picks_the_argmax(pipes, rm):
    pipe = pipes("sd", "ddim")
    res = best_of_n(pipe, rm, PROMPT, n=5, top_k=2, seed=10, batch_size=2, **_kw("sd"))
    assert len(res.images) == 5 and res.seeds == [10, 11, 12, 13, 14] and res.rm_calls == 3
    again = rm.score(torch.stack(res.images), PROMPT).p_yes
    assert torch.allclose(again, res.scores, atol=1e-5)
    assert res.order[0] == int(torch.argmax(res.scores)) and res.top_k == res.order[:2]
    # the seed regenerates the winner
    gen = [torch.Generator().manual_seed(res.best_seed)]
    regen = pipe(PROMPT, generator=gen, output_type="pt", **_kw("sd")).images[0]
    assert (regen - res.best).abs().max() < 1e-5


def test_best_of_n_with_a_callable_and_bad_input(rm):
    def generate(prompt, seeds):  # flat colours; brightness from the seed
        return torch.stack([torch.full((3, 40, 40), (s % 7) / 7) for s in seeds])

    res = best_of_n(generate, rm, PROMPT, n=7, top_k=3)
    assert res.scores.shape == (7,)
    assert res.top_k == sorted(range(7), key=lambda i: -float(res.scores[i]))[:3]
    with pytest.raises(ValueError, match="n must be at least 1"):
        best_of_n(generate, rm, PROMPT, n=0)
    with pytest.raises(ValueError, match="top_k must be between 1 and n = 3"):
        best_of_n(generate, rm, PROMPT, n=3, top_k=4)
    with pytest.raises(TypeError, match="generator must be a diffusers pipeline or a callable, got str"):
        best_of_n("a pipeline's name", rm, PROMPT)


# ------------------------------------------------------------------------------------------------- tournament
class PlantedJudge:
    """A judge with a known order: image quality is its mean brightness; it also favours the second image
    (position bias) by a fixed amount that only averaging both orders cancels."""

    def __init__(self, bias: float = 0.35, sharpness: float = 4.0):
        self.bias, self.sharpness, self.calls = bias, sharpness, 0

    def compare(self, images, references, prompts, context=None, batch_size=None):
        self.calls += 1
        q = torch.stack([torch.as_tensor(x).float().mean() for x in images])
        r = torch.stack([torch.as_tensor(x).float().mean() for x in references])
        p = (torch.sigmoid(self.sharpness * (q - r)) + self.bias).clamp(0, 1)
        return RewardOutput(p_yes=p, margin=torch.logit(p.clamp(1e-6, 1 - 1e-6)))


@pytest.mark.parametrize("n,schedule", [(6, "round_robin"), (12, "swiss")])
def test_tournament_ranks_a_planted_order(n, schedule):
    levels_ = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
    images = [torch.full((3, 8, 8), (v + 1) / (n + 1)) for v in levels_]
    truth = sorted(range(n), key=lambda i: -levels_[i])
    judge = PlantedJudge()
    res = tournament(images, judge, PROMPT, top_k=2, schedule=schedule, seed=0)
    if schedule == "round_robin":
        assert res.ranking == truth
        assert len(res.matches) == n * (n - 1) // 2
    else:
        assert res.top_k == truth[:2]
        assert len(res.matches) == (math.ceil(math.log2(n)) + 2) * (n // 2)
    for i, j, p in res.matches:  # averaging both orders removed the bias exactly
        assert (p > 0.5) == (levels_[j] > levels_[i])


def test_tournament_with_the_reward_model_averages_both_orders(rm):
    imgs = [torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    res = tournament(imgs, rm, PROMPT, top_k=1)
    for i, j, p in res.matches:
        ij = rm.compare([imgs[j]], [imgs[i]], PROMPT).p_yes.item()
        ji = rm.compare([imgs[i]], [imgs[j]], PROMPT).p_yes.item()
        assert p == pytest.approx((ij + 1 - ji) / 2, abs=1e-5)
    assert sorted(res.ranking) == [0, 1, 2] and float(res.wins.sum()) == 3.0
    with pytest.raises(ValueError, match="at least 2 images"):
        tournament(imgs[:1], rm, PROMPT)
    with pytest.raises(ValueError, match="top_k"):
        tournament(imgs, rm, PROMPT, top_k=4)


def test_build_references_resumes_without_recomputing(pipes, tmp_path):
    pipe = pipes("sd", "ddim")
    calls = []

    def generate(prompt, seeds):
        calls.append((prompt, tuple(seeds)))
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe([prompt] * len(seeds), generator=gens, output_type="pt", **_kw("sd", 3)).images

    judge = PlantedJudge()
    out = tmp_path / "refs"
    manifest = build_references(generate, judge, ["a red circle", "a blue square"], out, n=4, top_k=2, progress=False)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red circle", "a blue square"]
    assert all(len(r["images"]) == 2 and (out / r["images"][0]).is_file() for r in rows)
    first_calls = len(calls)
    build_references(
        generate, judge, ["a red circle", "a blue square", "a green triangle"], out, n=4, top_k=2, progress=False
    )
    assert {p for p, _ in calls[first_calls:]} == {"a green triangle"}  # finished prompts were skipped
    refs = load_references(out)
    assert set(refs) == {"a red circle", "a blue square", "a green triangle"}
    assert all(len(v) == 2 and v[0].is_file() for v in refs.values())


def test_build_references_keeps_the_bottom_of_the_ranking_on_request(tmp_path):
    """``keep="bottom"`` (the paper's weak references, Table 8): the same tournament, the last ``top_k`` kept."""
    levels_ = [3, 0, 5, 1, 4, 2]  # image quality by seed: seeds 2, 4 are the best, seeds 1, 3 the worst

    def generate(prompt, seeds):
        return torch.stack([torch.full((3, 8, 8), (levels_[s] + 1) / 7) for s in seeds])

    kept = {}
    for keep in ("top", "bottom"):
        manifest = build_references(
            generate, PlantedJudge(), ["a red circle"], tmp_path / keep, n=6, top_k=2, keep=keep, progress=False
        )
        row = json.loads(manifest.read_text().splitlines()[0])
        assert all(f"-{keep}" in name and (tmp_path / keep / name).is_file() for name in row["images"])
        kept[keep] = row["seeds"]
    assert kept == {"top": [2, 4], "bottom": [1, 3]}  # bottom lists the worst first
    with pytest.raises(ValueError, match="keep must be"):
        build_references(generate, PlantedJudge(), ["a red circle"], tmp_path / "x", n=6, keep="middle")
    with pytest.raises(TypeError, match="pipe must be a diffusers pipeline or a callable, got int"):
        build_references(3, PlantedJudge(), ["a red circle"], tmp_path / "y", n=6)
    assert not (tmp_path / "y").exists()  # refused before anything was written


def test_reference_sets_live_in_their_own_module_and_stay_importable_from_search():
    """The reference-set functions moved out of search.py; the old import path still gives the same functions."""
    import rewarddance.reference_sets as reference_sets
    import rewarddance.search as search

    assert search.build_references is reference_sets.build_references
    assert search.load_references is reference_sets.load_references
    assert "def build_references" not in Path(search.__file__).read_text(encoding="utf-8")
    with pytest.raises(AttributeError, match="has no attribute 'build_reference'"):
        search.build_reference  # noqa: B018


# --------------------------------------------------------------------------------------------- the shared cores
def test_run_path_search_makes_the_planned_calls_and_keeps_the_best():
    """The core on fake callbacks: a path is the seed of its latest noise, so every call names the seeds it got.
    Checks each (call, levels, seeds) in order, the kept paths (ties: the lower child index), the counts."""
    from rewarddance.search import path_seed, run_path_search

    calls, seen = [], []
    kid_scores = {  # round 0: children 1 and 2 tie at 0.9 and are kept; round 1: children 2 and 3 tie at 0.7
        **dict(zip([path_seed(5, 1, i) for i in range(4)], [0.2, 0.9, 0.9, 0.1])),
        **dict(zip([path_seed(5, 2, i) for i in range(4)], [0.5, 0.3, 0.7, 0.7])),
    }
    final_scores = {path_seed(5, 2, 2): 0.4, path_seed(5, 2, 3): 0.8}

    def denoise(paths, lo, hi, seeds):
        calls.append(("denoise", lo, hi, list(seeds)))
        assert paths == seeds  # each path was denoised with its own seed
        return paths

    def denoise_with_x0(paths, lo, hi, seeds):
        calls.append(("denoise_with_x0", lo, hi, list(seeds)))
        return paths, paths

    def renoise(paths, level, lo, seeds):
        calls.append(("renoise", level, lo, list(seeds)))
        return list(seeds)

    def score(images):
        return [kid_scores[s] if s in kid_scores and len(images) == 4 else final_scores[s] for s in images]

    res = run_path_search(
        init=lambda seeds: calls.append(("init", list(seeds))) or list(seeds),
        denoise=denoise,
        denoise_with_x0=denoise_with_x0,
        renoise=renoise,
        decode=list,
        score=score,
        seed=5,
        steps=6,
        n=2,
        m=2,
        start=2,
        rounds=[(2, 1, 3), (3, 2, 4)],
        x0_evals=1,
        progress=lambda k, total: seen.append((k, total)),
    )
    r1 = [1_000_008, 1_000_009, 1_000_010, 1_000_011]  # 5 + 1_000_003 + child index
    r2 = [2_000_011, 2_000_012, 2_000_013, 2_000_014]
    assert calls == [
        ("init", [5, 6]),
        ("denoise", 0, 2, [5, 6]),
        ("renoise", 2, 1, r1),
        ("denoise_with_x0", 1, 3, r1),
        ("renoise", 3, 2, r2),
        ("denoise_with_x0", 2, 4, r2),
        ("denoise", 4, 6, [2_000_013, 2_000_014]),
    ]
    assert [h["kept"] for h in res.history] == [[1, 2], [2, 3]]
    assert res.paths == res.seeds == [2_000_013, 2_000_014] and res.order == [1, 0] and res.scores == [0.4, 0.8]
    assert res.evaluations == search_cost(6, 2, 2, 2, [(2, 1, 3), (3, 2, 4)], x0_evals=1) == 32
    assert (res.rm_calls, res.rm_images) == (3, 10) and seen == [(2, 6), (3, 6), (4, 6), (6, 6)]

    # no search round and start 0: nothing denoises 0..0, and each path ends with its own seed
    calls.clear()
    flat = run_path_search(
        init=lambda seeds: list(seeds),
        denoise=denoise,
        denoise_with_x0=denoise_with_x0,
        renoise=renoise,
        decode=list,
        score=lambda images: [0.5] * len(images),
        seed=5,
        steps=3,
        n=2,
        m=2,
        start=0,
        rounds=[],
    )
    assert calls == [("denoise", 0, 3, [5, 6])] and flat.order == [0, 1] and flat.evaluations == 6


def test_run_best_of_n_batches_seeds_and_breaks_ties_by_order():
    from rewarddance.search import run_best_of_n

    made, seen = [], []

    def make(seeds):
        made.append(list(seeds))
        return [f"image{s}" for s in seeds]

    table = {"image7": 0.3, "image8": 0.9, "image9": 0.9, "image10": 0.1, "image11": 0.9}
    run = run_best_of_n(make, lambda items: [table[x] for x in items], 7, 5, 2, progress=lambda d, t: seen.append(d))
    assert made == [[7, 8], [9, 10], [11]] and seen == [2, 4, 5] and run.rm_calls == 3
    assert run.seeds == [7, 8, 9, 10, 11] and run.items == [f"image{s}" for s in range(7, 12)]
    assert run.order == [1, 2, 4, 0, 3]  # the three 0.9s in generation order
    with pytest.raises(ValueError, match="the generator returned 1 images for 2 seeds"):
        run_best_of_n(lambda seeds: ["x"], lambda items: [0.0], 0, 2, 2)
