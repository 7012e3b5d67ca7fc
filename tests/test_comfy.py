"""The ComfyUI nodes' logic (``rewarddance.comfy``) with ComfyUI-shaped tensors and a tiny reward model; no ComfyUI."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from rewarddance import RewardModel
from rewarddance import comfy as rd
from rewarddance.comfy import NodeInputError
from rewarddance.judge_info import TrainedFor, write_trained_for
from rewarddance.search import plan_within_budget

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def rm(rm_cache):
    return rm_cache("llava")


def _images(n, h=40, w=40, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))  # ComfyUI IMAGE [B, H, W, C]


def test_conversions_round_trip_and_reject_bad_shapes():
    img = _images(2, 8, 12)
    px = rd.to_bchw(img)
    assert px.shape == (2, 3, 8, 12) and torch.equal(rd.to_bhwc(px), img)
    assert rd.to_bchw(torch.rand(1, 8, 8, 4)).shape == (1, 3, 8, 8)  # alpha dropped
    with pytest.raises(NodeInputError, match="the batch is empty"):
        rd.to_bchw(torch.rand(0, 8, 8, 3))
    with pytest.raises(NodeInputError, match=r"image_b: expected an IMAGE batch \[B, H, W, 3\]"):
        rd.to_bchw(torch.rand(3, 8, 8), "image_b")
    bad = _images(1)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NodeInputError, match="NaN"):
        rd.to_bchw(bad)


def test_score_images_sorts_and_matches_the_api(rm):
    img = _images(3)
    scores, ordered, table, reasons = rd.score_images(rm, img, PROMPT)
    want = rm.score(rd.to_bchw(img), PROMPT).p_yes.tolist()
    assert scores == pytest.approx(want, abs=1e-6)
    order = sorted(range(3), key=lambda i: -want[i])
    assert torch.equal(ordered, img[order])
    assert table.splitlines()[1].split()[1] == str(order[0]) and reasons == ""
    ctx = rd.make_context(reference=_images(1, seed=9))
    pw, _, _, _ = rd.score_images(rm, img, PROMPT, ctx)
    ref = rd.to_bchw(_images(1, seed=9))[0]
    assert pw == pytest.approx(rm.compare(rd.to_bchw(img), [ref] * 3, PROMPT).p_yes.tolist(), abs=1e-6)


def test_compare_images_broadcasts_and_checks_batches(rm):
    a, b = _images(1, seed=1), _images(2, seed=2)
    p, winners, details = rd.compare_images(rm, a, b, PROMPT)
    want = rm.compare(list(rd.to_bchw(b)), [rd.to_bchw(a)[0]] * 2, PROMPT).p_yes.tolist()
    assert p == pytest.approx(want, abs=1e-6) and winners.shape == (2, 40, 40, 3)
    for i in range(2):
        assert torch.allclose(winners[i], (b[i] if want[i] > 0.5 else a[0]), atol=1e-6)
    assert details.splitlines()[0].startswith("pairwise:")  # a judge without rewarddance.json is asked pairwise
    assert [float(row.split()[1]) for row in details.splitlines()[2:]] == pytest.approx(want, abs=1e-4)
    with pytest.raises(NodeInputError, match="image_a has 2 images and image_b 3"):
        rd.compare_images(rm, _images(2), _images(3), PROMPT)


def test_compare_images_with_a_pointwise_judge_is_bradley_terry(tiny_vlm, tmp_path, caplog):
    """A judge whose rewarddance.json says pointwise is never asked the pairwise question: P(b better than a) is
    sigmoid(margin_b - margin_a) of its own scores; a context asking another cot mode than it was trained with warns."""
    folder = tmp_path / "judge"
    shutil.copytree(tiny_vlm("llava"), folder)
    write_trained_for(folder, TrainedFor(objective="pointwise"))
    judge = RewardModel.from_pretrained(str(folder), device="cpu")
    assert judge.trained_for.objective == "pointwise"
    a, b = _images(1, seed=1), _images(2, seed=2)
    with caplog.at_level(logging.WARNING, logger="rewarddance.comfy"):
        p, winners, details = rd.compare_images(judge, a, b, PROMPT, rd.make_context(cot="none"))
    assert not caplog.records  # asked as it was trained
    ma = judge.score(rd.to_bchw(a), PROMPT).margin
    mb = judge.score(rd.to_bchw(b), PROMPT).margin
    want = torch.sigmoid(mb - ma[0]).tolist()
    assert p == pytest.approx(want, abs=1e-5)
    pairwise = judge.compare(list(rd.to_bchw(b)), [rd.to_bchw(a)[0]] * 2, PROMPT).p_yes.tolist()
    assert max(abs(x - y) for x, y in zip(p, pairwise)) > 0.05  # not the pairwise answer under another name
    for i in range(2):
        assert torch.allclose(winners[i], (b[i] if want[i] > 0.5 else a[0]), atol=1e-6)
    assert details.splitlines()[0].startswith("pointwise judge") and "Bradley-Terry" in details
    swapped, _, _ = rd.compare_images(judge, b[:1], a, PROMPT)
    assert swapped[0] == pytest.approx(1 - p[0], abs=1e-5)  # P(a better than b) = 1 - P(b better than a)
    judge.trained_for = TrainedFor(objective="pointwise", cot="judgment_first")
    with caplog.at_level(logging.WARNING, logger="rewarddance.comfy"):
        rd.compare_images(judge, a, b, PROMPT, rd.make_context(cot="none"))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "trained with cot=judgment_first" in warned[0] and "cot=none" in warned[0]


def test_select_best_with_latent_and_mask_passthrough(rm):
    img = _images(4, seed=3)
    latent = {"samples": torch.arange(4.0).view(4, 1, 1, 1).expand(4, 4, 5, 5).clone()}
    mask = torch.arange(4.0).view(4, 1, 1).expand(4, 40, 40).clone()
    sel = rd.select_best(rm, img, PROMPT, top_k=2)
    scores = rm.score(rd.to_bchw(img), PROMPT).p_yes.tolist()
    assert sel.indices == sorted(range(4), key=lambda i: -scores[i])[:2] and sel.passed
    lat = rd.slice_latent(latent, sel.indices, 4)
    assert lat["samples"][:, 0, 0, 0].tolist() == [float(i) for i in sel.indices]
    assert rd.slice_mask(mask, sel.indices, 4)[:, 0, 0].tolist() == [float(i) for i in sel.indices]
    assert not rd.select_best(rm, img, PROMPT, top_k=1, threshold=0.99).passed  # stops the branch
    tour = rd.select_best(rm, img, PROMPT, top_k=1, mode="tournament")
    assert len(tour.scores) == 4 and tour.indices[0] in range(4)
    with pytest.raises(NodeInputError, match="top_k = 5 but the batch holds 4 images"):
        rd.select_best(rm, img, PROMPT, top_k=5)
    with pytest.raises(NodeInputError, match="latent batch 3 does not match the image batch 4"):
        rd.slice_latent({"samples": torch.zeros(3, 4, 5, 5)}, [0], 4)


def test_model_lookup_and_cache(tiny_vlm, tmp_path):
    root = tmp_path / "models" / "rewarddance"
    shutil.copytree(tiny_vlm("llava"), root / "tiny-llava")
    (root / "not-a-model").mkdir()
    roots = [str(root)]
    assert rd.list_models(roots) == ["tiny-llava"]
    path = rd.resolve_model("tiny-llava", roots)
    cache = rd.ModelCache()
    first = cache.get(path, "float32", "none", "cpu")
    assert cache.get(path, "float32", "none", "cpu") is first  # cached between runs
    assert rd.resolve_model("Qwen/Qwen2-VL-2B-Instruct", roots) == "Qwen/Qwen2-VL-2B-Instruct"
    with pytest.raises(NodeInputError, match="outside the models folder"):
        rd.resolve_model("../../etc", roots)
    with pytest.raises(NodeInputError, match="not found"):
        rd.resolve_model("missing-model", roots)
    with pytest.raises(NodeInputError, match="quantization must be one of"):
        cache.get(path, "float32", "3bit", "cpu")


def test_best_of_n_seeds_keeps_the_best(rm):
    def sample(seed):  # a "sampler": a latent whose decoded image depends on the seed
        return torch.full((1, 4, 5, 5), float(seed))

    def decode(latent):
        v = (latent[0, 0, 0, 0].item() % 5) / 5
        return torch.full((1, 40, 40, 3), v)

    calls = []
    res = rd.best_of_n_seeds(
        sample, decode, rm, PROMPT, seed=10, n=5, steps=20, progress=lambda d, t: calls.append((d, t))
    )
    assert res.seeds == [10, 11, 12, 13, 14] and calls[-1] == (5, 5) and res.evaluations == 100
    best = max(range(5), key=lambda i: res.scores[i])
    assert res.latent[0, 0, 0, 0].item() == 10 + best
    with pytest.raises(NodeInputError, match="at least one sample"):
        rd.best_of_n_seeds(sample, decode, rm, PROMPT, seed=0, n=0, steps=20)

    def interrupted():
        raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        rd.best_of_n_seeds(sample, decode, rm, PROMPT, seed=0, n=3, steps=20, check_interrupt=interrupted)


@pytest.mark.parametrize(
    "steps,budget,start,forward,backward",
    [(8, 32, 2, 1, 3), (6, 36, 1, 2, 4), (20, 80, None, 2, 4)],  # the last: the node's defaults (budget 4 x steps)
)
def test_search_paths_budget_respected(rm, steps, budget, start, forward, backward):
    """The search loop with a toy host sampler, counting every model evaluation it asks for: denoising steps and
    the x0 estimate of each child scored before the last step. The count equals the reported cost and stays
    within the budget, and the plan is the library's (``plan_within_budget`` with one evaluation per x0)."""
    from rewarddance.search import BudgetError, plan_within_budget, search_cost

    evals = []

    def denoise(x, lo, hi, seed):
        evals.append(hi - lo)
        return x + (hi - lo) * 0.01

    def x0_of(x, k):
        evals.append(1 if k < steps else 0)  # at the last step the latents are the image: no model call
        return x

    res = rd.search_paths(
        denoise=denoise,
        renoise=lambda x, level, lo, s: x + 0.001 * (s % 7),
        x0_of=x0_of,
        decode=lambda x: x.mean().clamp(0, 1).expand(1, 40, 40, 3),
        init=lambda s: torch.full((2, 3, 3), 0.1 * (s % 3)),
        rm=rm,
        prompt=PROMPT,
        seed=1,
        steps=steps,
        n=2,
        m=2,
        start=start,
        forward=forward,
        backward=backward,
        budget=budget,
    )
    first, rounds = plan_within_budget(steps, 2, 2, start, forward, backward, budget, x0_evals=1)
    assert rounds, "the budget should allow at least one search round"
    assert sum(evals) == res.evaluations == search_cost(steps, 2, 2, first, rounds, x0_evals=1)
    assert res.evaluations <= budget
    assert len(res.scores) == 2 * 2 * len(rounds) + 2  # every child of every round, then the 2 final paths
    assert res.image.shape == (1, 40, 40, 3)
    with pytest.raises(BudgetError, match=f"budget 3 is below plain denoising of n=2 paths \\({2 * steps} evaluations"):
        rd.search_paths(denoise, None, x0_of, None, None, rm, PROMPT, seed=0, steps=steps, budget=3)


def test_pack_entry_point_is_light():
    """ComfyUI imports the repository root as a package; that import must not pull in torch or the nodes."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('rewarddance_pack', {str(root / '__init__.py')!r},"
        f" submodule_search_locations=[{str(root)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['rewarddance_pack'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "import inspect\n"
        "assert inspect.iscoroutinefunction(mod.comfy_entrypoint)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'rewarddance_pack.nodes') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_renoise_latent_adds_noise_of_the_right_variance():
    """From sigma 1 to 2 the added noise has variance 2**2 - 1**2; a flow model (CONST) works on sigma / (1 - sigma):
    from 0.5 (scale 1) to 0.8 (scale 4) the variance is 16 - 1. Same seed, same noise; not noisier, no noise."""
    x = torch.zeros(200_000)
    assert rd.renoise_latent(x, 1.0, 2.0, seed=3, const=False).std().item() == pytest.approx(3**0.5, rel=0.02)
    assert rd.renoise_latent(x, 0.5, 0.8, seed=3, const=True).std().item() == pytest.approx(15**0.5, rel=0.02)
    assert rd.noise_scale(0.5, const=True) == 1.0 and rd.noise_scale(0.5, const=False) == 0.5
    assert torch.equal(rd.renoise_latent(x, 1.0, 2.0, 3, False), rd.renoise_latent(x, 1.0, 2.0, 3, False))
    assert not torch.equal(rd.renoise_latent(x, 1.0, 2.0, 3, False), rd.renoise_latent(x, 1.0, 2.0, 4, False))
    y = torch.rand(5)
    assert torch.equal(rd.renoise_latent(y, 2.0, 1.0, seed=3, const=False), y)


def _euler(eps):
    """One step of k-diffusion's Euler sampler (as ComfyUI's "euler") for a denoiser predicting noise ``eps(x)``."""

    def step(x, sigmas):
        s0, s1 = float(sigmas[0]), float(sigmas[1])
        denoised = x - s0 * eps(x)
        return x + (x - denoised) / s0 * (s1 - s0)

    return step


def test_guided_sample_drives_the_host_sampler():
    """The Reward-Guided Sampler's logic with a fake host: which samplings it asks for (seed, steps, noise), the x0
    estimate x - sigma_k * eps of a known denoiser, and the checks on its inputs."""
    steps, sigmas = 6, torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.0])
    latent = torch.zeros(1, 4, 2, 2)
    runs, outs, decoded = [], [], []

    def run(x, noise_seed, lo, hi, add_noise):
        runs.append((noise_seed, lo, hi, add_noise))
        outs.append(x + (hi - lo) * 0.01 + (1.0 if add_noise else 0.0))
        return outs[-1]

    def decode(x):
        decoded.append(x.clone())
        return x.mean().clamp(0, 1).expand(1, 8, 8, 3)

    class Judge:  # brighter is better
        def score(self, pixels, prompts, context=None, batch_size=None, references=None):
            return type("Out", (), {"p_yes": pixels.mean(dim=(1, 2, 3))})()

    eps = 0.5
    res = rd.guided_sample("best_of_n", run, _euler(lambda x: eps), decode, latent, Judge(), PROMPT, 3, steps, 2)
    assert runs == [(3, 0, steps, True), (4, 0, steps, True)] and res.seeds == [3, 4]

    runs.clear()
    outs.clear()
    decoded.clear()
    res = rd.guided_sample(
        "search_over_paths",
        run,
        _euler(lambda x: torch.full_like(x, eps)),
        decode,
        latent,
        Judge(),
        PROMPT,
        3,
        steps,
        7,
        sigmas=sigmas,
        const=False,
    )
    start, rounds = plan_within_budget(steps, 2, 2, None, 2, 4, 7 * steps, x0_evals=1)
    assert (start, rounds) == (1, [(1, 0, 4), (4, 2, 6)])
    assert [r[1:] for r in runs[:2]] == [(0, 1, True), (0, 1, True)]  # the two paths start at step 0 with noise
    assert [r[0] for r in runs[:2]] == [3, 4]
    assert all(r[1:] == (0, 4, True) for r in runs[2:6])  # round one re-enters at step 0: noise again
    assert all(r[1:] == (2, 6, False) for r in runs[6:10]) and len(runs) == 10
    for got, child in zip(decoded[:4], outs[2:6]):  # round one scores each child's x0 at step 4: x - sigma_4 * eps
        assert torch.allclose(got, child - float(sigmas[4]) * eps)
    for got, child in zip(decoded[4:8], outs[6:10]):  # round two ends at the last step: x0 is the latent itself
        assert torch.equal(got, child)
    assert len(decoded) == 10  # then the two kept paths
    assert res.evaluations == 38 and len(res.scores) == 2 * 4 + 2  # 2 + 4 * (4 + 1) + 4 * 4, as planned
    with pytest.raises(NodeInputError, match="strategy must be one of"):
        rd.guided_sample("greedy", run, None, decode, latent, Judge(), PROMPT, 0, steps, 2)
    with pytest.raises(NodeInputError, match="sigmas: the search needs steps \\+ 1 = 7 sigmas, got 3"):
        rd.guided_sample("search_over_paths", run, None, decode, latent, Judge(), PROMPT, 0, steps, 2, sigmas[:3])


def test_search_paths_uses_the_shared_seeds_and_placeholders_have_the_latent_shape():
    """The ComfyUI search is the library core: children draw noise from ``path_seed`` and the kept paths finish
    with their own seeds. A placeholder LATENT is SD-shaped, 4 channels at 1/8 of the image."""
    from rewarddance.search import path_seed

    renoised, finished = [], []

    def denoise(x, lo, hi, s):
        if hi == 8 and lo > 0:
            finished.append(s)
        return x

    rd.search_paths(
        denoise=denoise,
        renoise=lambda x, level, lo, s: renoised.append(s) or x + s % 5,
        x0_of=lambda x, k: x,
        decode=lambda x: (x.mean() / 10).clamp(0, 1).expand(1, 8, 8, 3),
        init=lambda s: torch.zeros(1, 2),
        rm=type("J", (), {"score": lambda self, px, p, context=None: type("O", (), {"p_yes": px.mean((1, 2, 3))})})(),
        prompt=PROMPT,
        seed=11,
        steps=8,
        start=2,
        forward=1,
        backward=5,
        budget=32,  # one round, (2, 1, 6), then plain denoising from step 6: 2 * 2 + 4 * (5 + 1) + 2 * 2
    )
    assert renoised == [path_seed(11, 1, i) for i in range(4)]
    kids = {s: s % 5 for s in renoised}
    assert finished == sorted(renoised, key=lambda s: -kids[s])[:2]  # best first: brighter is better
    latent, mask = rd.placeholder_outputs(3, 64, 48)
    assert latent["samples"].shape == (3, 4, 8, 6) and mask.shape == (3, 64, 48) and not latent["samples"].any()
