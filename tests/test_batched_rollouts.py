"""Batched ReFL rollouts: a Sampler over per-row prompts, and a micro-batch rolled out together, give each row what
a rollout of its own prompt gives (rewards and LoRA gradients), on the tiny pipelines of every family."""

from __future__ import annotations

import pytest
import torch

from rewarddance import RewardModel
from rewarddance.context import RewardContext
from rewarddance.pipelines import Sampler, SamplerConfig, decode
from rewarddance.testing.tiny_diffusion import build_tiny_pipeline
from rewarddance.training.refl import add_lora, pipe_denoiser, rollout_rewards
from rewarddance.training.refl_config import ReFLConfig

PROMPTS = ["a red circle", "two green triangles on a blue square", "a yellow star"]


def _pipe(kind):
    pipe = build_tiny_pipeline(kind, "ddim" if kind in ("sd", "sdxl") else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sampler_cfg(kind, **kw) -> SamplerConfig:
    cfg = SamplerConfig(num_inference_steps=6, height=32, width=32, **kw)
    if kind == "flux":
        cfg.max_sequence_length = 32  # the tiny T5 tokenizer's length
    return cfg


NEGATIVES = ["blurry noise", "a dark empty square", "text"]


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3", "flux"])
@pytest.mark.parametrize("negative", ["one", "per row"])
def test_sampler_conditions_each_row_on_its_own_prompt(kind, negative):
    """Rows of one call over three prompts (guided, with one negative prompt or one per row, where the family
    guides) equal three calls of one prompt each; ``rows=`` picks a subset; the prompts do change the prediction."""
    pipe = _pipe(kind)
    cfg = _sampler_cfg(kind, guidance_scale=3.0, negative_prompt=NEGATIVES if negative == "per row" else NEGATIVES[0])
    batched = Sampler(pipe, PROMPTS, cfg)
    x = batched.initial_latents([11, 12, 13])

    def alone_cfg(i):
        return _sampler_cfg(kind, guidance_scale=3.0, negative_prompt=NEGATIVES[i if negative == "per row" else 0])

    with torch.no_grad():
        x0, e = batched.predict(x, 2)
        alone = [Sampler(pipe, p, alone_cfg(i)).predict(x[i : i + 1], 2) for i, p in enumerate(PROMPTS)]
        sub_x0, _ = batched.predict(x[[2, 0]], 2, rows=[2, 0])
        swapped, _ = batched.predict(x[[0]], 2, rows=[1])  # row 0's latents under prompt 1
    for i, (a0, ae) in enumerate(alone):
        torch.testing.assert_close(x0[i : i + 1], a0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(e[i : i + 1], ae, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sub_x0, torch.cat([alone[2][0], alone[0][0]]), rtol=1e-5, atol=1e-5)
    assert (swapped - alone[0][0]).abs().max() > 1e-4  # the conditioning matters, so the checks above bite
    assert batched.evaluations == 3 + 2 + 1
    with pytest.raises(ValueError, match="x: 2 latent rows for 3 prompts"):
        batched.predict(x[:2], 2)
    with pytest.raises(ValueError, match=r"rows: expected 1 indices into 3 prompts, got \[3\]"):
        batched.predict(x[:1], 2, rows=[3])
    with pytest.raises(ValueError, match="prompt: expected a string or a non-empty list"):
        Sampler(pipe, [], cfg)
    with pytest.raises(ValueError, match=r"negative_prompt: a list needs one string per prompt \(2\)"):
        Sampler(pipe, PROMPTS[:2], _sampler_cfg(kind, guidance_scale=3.0, negative_prompt=NEGATIVES))


def _per_prompt_reward(pipe, rm, prompt, sampler_cfg, stop, noise_seed, reference, context):
    """The rollout of one prompt as ReFL ran it before batching: the reference the batched path must match."""
    sampler = Sampler(pipe, prompt, sampler_cfg)
    x = sampler.initial_latents([noise_seed])
    with torch.no_grad():
        for k in range(stop):
            x, _ = sampler.step(x, k)
    x0, _ = sampler.predict(x, stop)
    pixels = decode(pipe, x0, sampler.height, sampler.width)
    refs = None if reference is None else [reference]
    return rm.reward(pixels, [prompt], references=refs, context=context)


@pytest.fixture(scope="module")
def judge(tiny_vlm):
    return RewardModel.from_pretrained(tiny_vlm("llava"), device="cpu")


def _lora_pipe(kind, tmp_path):
    pipe = _pipe(kind)
    cfg = ReFLConfig(pretrained="in-process", reward_model="in-process", prompts=PROMPTS, output_dir=str(tmp_path))
    torch.manual_seed(0)
    params = add_lora(pipe_denoiser(pipe), cfg)
    with torch.no_grad():  # B starts at zero; give it weight so that A gets gradient too
        for name, p in pipe_denoiser(pipe).named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.normal_(0.0, 0.05)
    return pipe, params


@pytest.mark.parametrize(
    ("kind", "mode", "stops"),
    [
        ("sd", "pointwise", [4]),
        ("sd", "pointwise", [5, 3, 5]),  # mixed stop levels, not in sorted order
        ("sd", "pairwise", [5, 3, 5]),
        ("flux", "pointwise", [2, 4, 3]),
    ],
)
def test_batched_rollout_matches_one_rollout_per_prompt(judge, tmp_path, kind, mode, stops):
    """Per-row rewards and the LoRA gradient of a batched rollout equal those of one rollout per prompt."""
    pipe, params = _lora_pipe(kind, tmp_path)
    n = len(stops)
    prompts, seeds = PROMPTS[:n], [101 + 7 * i for i in range(n)]
    refs = None
    if mode == "pairwise":
        refs = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(50 + i)) for i in range(n)]
    context = RewardContext()
    cfg = _sampler_cfg(kind)

    r = rollout_rewards(pipe, judge, prompts, cfg, stops, seeds, refs, context)
    (-torch.log(r)).sum().backward()
    batched = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    alone = []
    for i in range(n):
        ref = None if refs is None else refs[i]
        ri = _per_prompt_reward(pipe, judge, prompts[i], cfg, stops[i], seeds[i], ref, context)
        (-torch.log(ri)).sum().backward()
        alone.append(ri.detach())
    single = [p.grad.clone() for p in params]

    assert r.shape == (n,)
    torch.testing.assert_close(r.detach(), torch.cat(alone), rtol=1e-5, atol=1e-7)
    if n > 1:
        assert (r.max() - r.min()).item() > 1e-5  # the rows differ, so a mix-up of rows would show
    scale = max(g.abs().max().item() for g in single)
    worst = max((a - b).abs().max().item() for a, b in zip(batched, single))
    print(f"{kind} {mode} stops {stops}: largest gradient difference {worst:.2e} of {scale:.2e}")
    assert scale > 0 and worst <= 1e-4 * scale


def test_rollout_rejects_rows_of_different_lengths(judge, tmp_path):
    pipe = _pipe("sd")
    with pytest.raises(ValueError, match="rollout: 2 prompts, 1 stops, 2 seeds, no references"):
        rollout_rewards(pipe, judge, PROMPTS[:2], _sampler_cfg("sd"), [3], [1, 2], None, RewardContext())
