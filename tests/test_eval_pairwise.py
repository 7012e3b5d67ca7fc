"""The evaluation of a run whose judge compares two images: the win rate of the trained model's fixed-seed images over
the base model's (LoRA off), both orders averaged; exactly 0.5 before training; the pointwise question never asked."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from rewarddance import RewardModel
from rewarddance.judge_info import TrainedFor
from rewarddance.pipelines import SamplerConfig
from rewarddance.testing.tiny_diffusion import build_tiny_pipeline
from rewarddance.training.diffusion_loop import add_lora
from rewarddance.training.eval_pairwise import BaseWinRate, compares, eval_judge
from rewarddance.training.grpo import train_grpo
from rewarddance.training.grpo_config import GRPOConfig

PROMPTS = ["a red circle", "a blue square"]


class _BrightnessJudge:
    """Compares by mean brightness, asymmetric in the order so that averaging the two orders matters."""

    def __init__(self):
        self.calls = []

    def compare(self, images, references, prompts, context=None):
        self.calls.append(len(prompts))
        p = torch.sigmoid((images.mean((1, 2, 3)) - references.mean((1, 2, 3))) * 20) * 0.7 + 0.25
        return SimpleNamespace(p_yes=p)

    def score(self, *a, **kw):
        raise AssertionError("a judge that compares was asked the pointwise question")


def _sample(pipe, prompt, index, count, cfg):
    from rewarddance.pipelines import Sampler

    sampler = Sampler(pipe, prompt, cfg)
    x = sampler.initial_latents([10_000 + index * 100 + j for j in range(count)])
    for k in range(cfg.num_inference_steps):
        x, _ = sampler.step(x, k)
    return sampler.decode(x)


def test_win_rate_over_the_base_models_images_of_the_same_seeds():
    """Against an independent replay: a pipeline that never had a LoRA gives the base images, the LoRA pipeline (B
    perturbed so the LoRA changes the images) the trained ones; the figure is the two orders' average."""
    cfg = SamplerConfig(num_inference_steps=3, height=32, width=32)
    trained, fresh = build_tiny_pipeline("sd", "ddim"), build_tiny_pipeline("sd", "ddim")
    params = add_lora(trained.unet, SimpleNamespace(lora_rank=4, lora_alpha=4, lora_targets=("to_q", "to_v")))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.5)
    judge = _BrightnessJudge()
    win = BaseWinRate(trained, cfg, trained.unet, count=3, steps=3)
    with torch.no_grad():
        images = _sample(trained, PROMPTS[1], 1, 3, cfg)
        base = _sample(fresh, PROMPTS[1], 1, 3, cfg)
    assert (images - base).abs().max() > 1e-3  # the LoRA does change the images
    got = win(judge, images, PROMPTS[1], 1, None)
    assert torch.allclose(win.base[1], base, atol=1e-5)  # the LoRA was off for the base, and is on again

    def p(a, b):
        return torch.sigmoid((a.mean((1, 2, 3)) - b.mean((1, 2, 3))) * 20) * 0.7 + 0.25

    assert torch.allclose(got, (p(images, base) + 1 - p(base, images)) / 2, atol=1e-5)
    assert not torch.allclose(got, p(images, base), atol=1e-3)  # not one order alone
    assert torch.allclose(win(judge, base, PROMPTS[1], 1, None), torch.full((3,), 0.5))  # the base against itself
    assert judge.calls == [3, 3, 3, 3]  # the base images were sampled once, then kept
    with torch.no_grad():
        again = _sample(trained, PROMPTS[1], 1, 3, cfg)
    assert torch.allclose(again, images)  # the LoRA is switched on again after the base images


def test_which_runs_compare():
    pointwise, pairwise = (
        SimpleNamespace(trained_for=TrainedFor("pointwise")),
        SimpleNamespace(trained_for=TrainedFor("pairwise")),
    )
    assert compares(SimpleNamespace(reward="win_rate"), pointwise)
    assert compares(SimpleNamespace(mode="pairwise"), SimpleNamespace())
    assert compares(SimpleNamespace(reward="p_yes"), pairwise)
    assert not compares(SimpleNamespace(reward="p_yes"), pointwise)
    assert not compares(SimpleNamespace(mode="pointwise"), SimpleNamespace())
    judge = _BrightnessJudge()
    ask = eval_judge(SimpleNamespace(reward="p_yes"), judge, None, None, None, None)
    with pytest.raises(AssertionError, match="pointwise question"):
        ask(torch.zeros(1, 3, 4, 4), "p", 0)


def test_a_win_rate_run_evaluates_against_the_base_from_exactly_one_half(tiny_vlm, tmp_path):
    """GRPO with reward win_rate (a real tiny judge whose compare is the brightness judge's): the first evaluation
    (LoRA B = 0) reads 0.5 to the digit, the last one the trained model's win rate, not 0.5; the judge's pointwise
    score is never called."""
    judge = RewardModel.from_pretrained(tiny_vlm("llava", init_std=0.02), device="cpu")
    fake = _BrightnessJudge()  # (a real judge this small hardly tells the images of 2 steps apart)
    judge.compare, judge.score = fake.compare, fake.score
    pipe = build_tiny_pipeline("sd", "ddim")
    pipe.set_progress_bar_config(disable=True)
    cfg = GRPOConfig(
        pretrained="in-process",
        reward_model="in-process",
        prompts=PROMPTS,
        output_dir=str(tmp_path),
        num_inference_steps=4,
        resolution=32,
        lora_rank=4,
        lora_alpha=4,
        lr=3e-2,
        group_size=2,
        prompts_per_step=2,
        max_steps=2,
        save_every=0,
        eval_prompts=[PROMPTS[0]],
        eval_images=2,
        eval_every=1,
        clip_range=0.2,
        seed=0,
        reward="win_rate",
    )
    res = train_grpo(cfg, progress=False, pipe=pipe, rm=judge)
    with open(tmp_path / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert float(rows[0]["reward"]) == pytest.approx(0.5, abs=1e-6)
    assert res["reward_before"] == pytest.approx(0.5, abs=1e-6)
    assert abs(float(rows[-1]["reward"]) - 0.5) > 1e-4  # the trained LoRA's images differ from the base's
