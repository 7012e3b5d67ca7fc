"""GRPO on tiny SD- and SD3-shaped pipelines with a tiny judge: the sampler's density, the objective, the KL term,
advantages, win rates, exact resume, the exported LoRA, each bad input, and the evaluation of a run whose judge compares
(the win rate over the base model's images)."""

from __future__ import annotations

import csv
import math
import statistics
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from rewarddance import RewardModel
from rewarddance.judge_info import TrainedFor
from rewarddance.pipelines import PipelineError, SamplerConfig
from rewarddance.testing.tiny_diffusion import build_tiny_pipeline, exported_lora, same_weights
from rewarddance.training.diffusion_loop import add_lora
from rewarddance.training.eval_pairwise import BaseWinRate, compares, eval_judge
from rewarddance.training.grpo import (
    group_advantages,
    sample_rollouts,
    step_loss,
    train_grpo,
    verifier_rewards,
    win_rates,
)
from rewarddance.training.grpo_config import GRPOConfig

PROMPTS = ["a red circle", "a blue square", "two green triangles"]


@pytest.fixture(scope="module")
def judge(tiny_vlm):
    return RewardModel.from_pretrained(tiny_vlm("llava", init_std=0.02), device="cpu")


def _pipe(kind="sd", scheduler="ddim"):
    pipe = build_tiny_pipeline(kind, scheduler if kind in ("sd", "sdxl") else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cfg(out, **kw) -> GRPOConfig:
    base = dict(
        pretrained="in-process",
        reward_model="in-process",
        prompts=PROMPTS,
        output_dir=str(out),
        num_inference_steps=4,
        resolution=32,
        lora_rank=4,
        lora_alpha=4,
        lr=3e-2,
        group_size=2,
        prompts_per_step=2,
        max_steps=3,
        save_every=0,
        eval_prompts=[],
        eval_train_prompts=0,
        clip_range=0.2,
        seed=0,
    )
    base.update(kw)
    return GRPOConfig(**base)


def _rollouts(pipe, eta=1.0, steps=4, seed=3):
    sampler_cfg = SamplerConfig(num_inference_steps=steps, height=32, width=32)
    rows = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    noise = torch.Generator().manual_seed(seed)
    return sample_rollouts(pipe, sampler_cfg, rows, [1, 2, 3, 4], eta, noise, set(range(steps)))


def test_each_step_is_ddim_with_eta_and_its_logp_the_gaussian_density():
    """Replayed independently: diffusers' own DDIMScheduler.step with eta and the same noise gives each sampled
    latent, and log p is the density of torch's Normal at the step's mean and DDIM's std, averaged per element."""
    from diffusers import DDIMScheduler

    pipe, eta = _pipe(), 0.7
    ro = _rollouts(pipe, eta=eta)
    ref = DDIMScheduler.from_config(pipe.scheduler.config)
    ref.set_timesteps(4)
    noise = torch.Generator().manual_seed(3)
    acp = ref.alphas_cumprod
    for k, t in enumerate(ref.timesteps):
        x = ro.latents[k]
        z = torch.randn(x.shape, generator=noise)
        _, e = ro.sampler.predict(x, k)
        prev = int(t) - ref.config.num_train_timesteps // 4
        abar, abar_prev = float(acp[int(t)]), float(acp[prev]) if prev >= 0 else float(ref.final_alpha_cumprod)
        std = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        expected = ref.step(e, t, x, eta=eta, variance_noise=z).prev_sample
        assert (ro.latents[k + 1] - expected).abs().max() < 1e-4, k
        assert ro.stds[k] == pytest.approx(std, rel=1e-5)
        mean = expected - std * z
        density = torch.distributions.Normal(mean, std).log_prob(ro.latents[k + 1]).flatten(1).mean(1)
        assert torch.allclose(ro.logp[k], density, atol=1e-4), k


def test_first_inner_step_ratio_is_one_and_the_loss_is_the_policy_gradient():
    pipe = _pipe()
    cfg = _cfg("unused", kl_weight=0.0, clip_range=1e-4)
    params = add_lora(pipe.unet, cfg)
    torch.manual_seed(0)
    for p in params:  # a LoRA that is not zero, as after some training
        p.data.normal_(0, 0.05)
    ro = _rollouts(pipe)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, stats = step_loss(ro, 1, adv, pipe.unet, cfg)
    assert stats["ratio_dev"] < 1e-5 and stats["clip_frac"] == 0.0
    clipped = torch.autograd.grad(loss, params)
    x0, e = ro.sampler.predict(ro.latents[1], 1)
    from rewarddance.pipelines import gaussian_logp, stochastic_mean

    logp = gaussian_logp(ro.latents[2], stochastic_mean(x0, e, ro.sampler.levels[2], ro.stds[1]), ro.stds[1])
    plain = torch.autograd.grad(-(adv * logp).mean(), params)
    assert max(float(g.abs().max()) for g in plain) > 1e-6  # a gradient that is there
    for a, b in zip(clipped, plain):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_optimiser_steps_on_one_batch_favour_the_positive_advantage_trajectories(tmp_path):
    """The trainer's own LoRA and optimiser, a few steps on one fixed batch of rollouts: the trajectories with a
    positive advantage gain log p against those with a negative one, and only the LoRA moves."""
    from rewarddance.pipelines import gaussian_logp, stochastic_mean
    from rewarddance.training.diffusion_loop import runtime, setup_trainable

    pipe = _pipe()
    cfg = _cfg(tmp_path, kl_weight=0.0, lr=1e-2, clip_range=1.0)
    tr = setup_trainable(cfg, pipe, runtime(cfg), tmp_path)
    frozen = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if "lora_" not in n}
    frozen.update({f"text.{n}": p.detach().clone() for n, p in pipe.text_encoder.named_parameters()})
    lora = [p.detach().clone() for p in tr.params]
    ro = _rollouts(pipe)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])  # each prompt's pair has one of each sign
    steps = sorted(ro.logp)
    for _ in range(3):
        tr.optimizer.zero_grad(set_to_none=True)
        for k in steps:
            loss, _ = step_loss(ro, k, adv, tr.denoiser, cfg)
            (loss / len(steps)).backward()
        torch.nn.utils.clip_grad_norm_(tr.params, cfg.max_grad_norm)
        tr.optimizer.step()
    gain = torch.zeros(4)
    with torch.no_grad():
        for k in steps:
            x0, e = ro.sampler.predict(ro.latents[k], k)
            mean = stochastic_mean(x0, e, ro.sampler.levels[k + 1], ro.stds[k])
            gain += gaussian_logp(ro.latents[k + 1], mean, ro.stds[k]) - ro.logp[k]
    assert float(gain[adv > 0].min()) > float(gain[adv < 0].max()), gain.tolist()
    assert any(float((p.detach() - q).abs().max()) > 0 for p, q in zip(tr.params, lora))
    unet = dict(pipe.unet.named_parameters())
    text = dict(pipe.text_encoder.named_parameters())
    for n, before in frozen.items():
        now = text[n[5:]] if n.startswith("text.") else unet[n]
        assert torch.equal(now, before), n


def test_kl_to_the_base_is_zero_with_a_zero_lora_and_positive_after_an_update():
    pipe = _pipe()
    cfg = _cfg("unused", kl_weight=1.0)
    params = add_lora(pipe.unet, cfg)  # peft's gaussian init: B = 0, so the LoRA adds nothing yet
    ro = _rollouts(pipe)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, stats = step_loss(ro, 2, adv, pipe.unet, cfg)
    assert stats["kl"] == 0.0
    loss.backward()
    torch.optim.AdamW(params, lr=1e-2).step()
    _, stats = step_loss(ro, 2, adv, pipe.unet, cfg)
    assert stats["kl"] > 0.0


def test_advantages_are_normalised_within_each_group():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 12.0])
    adv = group_advantages(r, 4, eps=1e-4)
    for g in range(2):
        group = r[4 * g : 4 * g + 4].tolist()
        mean, std = statistics.fmean(group), statistics.pstdev(group)
        expected = torch.tensor([(x - mean) / (std + 1e-4) for x in group])
        assert torch.allclose(adv[4 * g : 4 * g + 4], expected, atol=1e-5)
    assert torch.allclose(group_advantages(r + 100, 4, 1e-4), adv, atol=1e-4)  # shift-free per group
    assert not torch.allclose(group_advantages(r, 8, 1e-4), adv)  # other groups: other numbers


class _BiasedJudge:
    """compare(): P(candidate better) from the brightness difference, 0.05 too high for the image shown second (a
    position bias that asking both orders cancels)."""

    def __init__(self):
        self.calls = []

    def compare(self, images, references, prompts, context=None):
        from types import SimpleNamespace

        self.calls.append(len(prompts))
        p = torch.sigmoid((images.mean((1, 2, 3)) - references.mean((1, 2, 3))) * 10) * 0.8 + 0.15
        return SimpleNamespace(p_yes=p)

    def score(self, *a, **kw):
        raise AssertionError("a judge that compares was asked the pointwise question")


def test_win_rate_averages_both_orders_within_the_group():
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.5, 0.9, 0.2, 0.3, 0.25)])
    judge = _BiasedJudge()
    rates = win_rates(judge, images, ["p"] * 6, 3, None)
    assert judge.calls == [12]  # every ordered pair of both groups of 3, in one call
    b = images.mean((1, 2, 3))

    def p(i, j):
        return float(torch.sigmoid((b[i] - b[j]) * 10) * 0.8 + 0.15)

    for i in range(6):
        g = i // 3 * 3
        others = [j for j in range(g, g + 3) if j != i]
        expected = sum((p(i, j) + 1 - p(j, i)) / 2 for j in others) / 2
        assert float(rates[i]) == pytest.approx(expected, abs=1e-6)
    assert float(rates[2]) > float(rates[1]) > float(rates[0])


def test_a_run_changes_the_lora_resumes_exactly_and_exports_a_loadable_lora(judge, tmp_path):
    straight = train_grpo(_cfg(tmp_path / "a", max_steps=4, train_subset=2), progress=False, pipe=_pipe(), rm=judge)
    first = train_grpo(
        _cfg(tmp_path / "b", max_steps=4, train_subset=2), progress=False, pipe=_pipe(), rm=judge, stop_at=2
    )
    assert first["stopped_at"] == 2
    pipe = _pipe()
    resumed = train_grpo(_cfg(tmp_path / "b", max_steps=4, train_subset=2), progress=False, pipe=pipe, rm=judge)
    assert resumed["step"] == 4 and len(resumed["history"]) == 2
    a = load_file(f"{straight['lora']}/pytorch_lora_weights.safetensors")
    b = load_file(f"{resumed['lora']}/pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    keys = ("step", "loss", "reward_mean", "reward_std", "kl", "clip_frac")  # (the sliding window starts anew)
    assert [[h[k] for k in keys] for h in resumed["history"]] == [[h[k] for k in keys] for h in straight["history"][2:]]
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora.up" in k)  # up (B) starts at 0: it moved
    kw = dict(num_inference_steps=4, height=32, width=32, output_type="pt")
    trained = pipe(PROMPTS[0], generator=[torch.Generator().manual_seed(1)], **kw).images
    fresh = _pipe()
    base = fresh(PROMPTS[0], generator=[torch.Generator().manual_seed(1)], **kw).images
    fresh.load_lora_weights(resumed["lora"])
    loaded = fresh(PROMPTS[0], generator=[torch.Generator().manual_seed(1)], **kw).images
    assert (loaded - trained).abs().max() < 1e-4
    assert (base - trained).abs().max() > 1e-4


def test_ema_decay_exports_the_average_trains_as_before_and_resumes_exactly(judge, tmp_path):
    def run(name, stop_at=None, **kw):
        cfg = _cfg(tmp_path / name, max_steps=4, train_subset=2, **kw)
        return train_grpo(cfg, progress=False, pipe=_pipe(), rm=judge, stop_at=stop_at)

    plain, averaged = run("plain"), run("ema", ema_decay=0.5)
    keys = ("loss", "reward_mean", "kl")
    assert [[h[k] for k in keys] for h in averaged["history"]] == [[h[k] for k in keys] for h in plain["history"]]
    assert averaged["lora_checksum"] == pytest.approx(plain["lora_checksum"], rel=1e-9)  # the live LoRA: the same
    assert not same_weights(exported_lora(averaged), exported_lora(plain))  # the export is the average
    # a decay too small to hold anything back: the average is the last weights, exported under the same names
    assert same_weights(exported_lora(run("tiny", ema_decay=1e-9)), exported_lora(plain))
    # interrupted after step 2 and resumed: the average continues from the checkpoint's
    assert run("b", stop_at=2, ema_decay=0.5)["stopped_at"] == 2
    assert list((tmp_path / "b" / "checkpoints").glob("*/ema.safetensors"))
    resumed = run("b", ema_decay=0.5)
    assert resumed["step"] == 4 and same_weights(exported_lora(resumed), exported_lora(averaged))


def test_flow_matching_trains_every_step_but_the_last(judge, tmp_path):
    res = train_grpo(_cfg(tmp_path, max_steps=1, reward="margin"), progress=False, pipe=_pipe("sd3"), rm=judge)
    assert res["window"] == [0, 1, 2]  # the step to sigma 0 has no noise, hence no density
    assert res["history"][0]["reward_std"] > 0


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(group_size=1), "group_size must be 2 or more"),
        (dict(eta=0.0), "GRPO needs a stochastic sampler"),
        (dict(train_steps=[2, 4]), r"train_steps \[2, 4\] is outside the schedule of 4 steps"),
        (dict(train_steps=[1]), r"train_steps must be \[lo, hi\]"),
    ],
)
def test_bad_settings_fail_when_the_config_is_built(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        _cfg(tmp_path, **kw)


def test_bad_inputs_fail_before_training(judge, tmp_path):
    from diffusers import DPMSolverMultistepScheduler

    pipe = _pipe()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(PipelineError, match="GRPO needs a stochastic sampler; DPMSolverMultistepScheduler has none"):
        train_grpo(_cfg(tmp_path), progress=False, pipe=pipe, rm=judge)
    with pytest.raises(ValueError, match=r"train_steps \[2, 3\]: step 3 is deterministic here"):
        train_grpo(_cfg(tmp_path, train_steps=[2, 3]), progress=False, pipe=_pipe("sd", "euler"), rm=judge)
    with pytest.raises(ValueError, match="train_subset 5 is larger than the window of 4 steps"):
        train_grpo(_cfg(tmp_path, train_subset=5), progress=False, pipe=_pipe(), rm=judge)
    with pytest.raises(ValueError, match="task 'vqascore' is pointwise only"):
        train_grpo(_cfg(tmp_path, reward="win_rate", task="vqascore"), progress=False, pipe=_pipe(), rm=judge)
    judge.trained_for = TrainedFor("pointwise")
    try:
        with pytest.raises(ValueError, match="reward win_rate needs a judge that compares two images"):
            train_grpo(_cfg(tmp_path, reward="win_rate"), progress=False, pipe=_pipe(), rm=judge)
    finally:
        judge.trained_for = None
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "checkpoints").exists()


def test_pairwise_win_rate_runs_with_a_general_judge(judge, tmp_path):
    res = train_grpo(_cfg(tmp_path, max_steps=1, reward="win_rate"), progress=False, pipe=_pipe(), rm=judge)
    rewards_mean = res["history"][0]["reward_mean"]
    assert rewards_mean == pytest.approx(0.5, abs=1e-6)  # win rates of a group of 2 always sum to 1
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_verifier_reward_is_the_strict_verifiers_verdict(judge, tmp_path):
    """reward verifier: 1 for a rendered scene that satisfies its prompt, 0 for the same scene under another prompt
    and for noise; a prompt outside ShapesWorld fails before training; a run on noise-making weights gets 0."""
    import numpy as np

    from rewarddance.shapes import parse_prompt, render
    from rewarddance.shapes.sample import example_rng, scene_for

    spec = parse_prompt("a photo of a red circle")
    scene = scene_for(spec, example_rng(3, "id", 0), "id")
    clean = torch.from_numpy(np.asarray(render(scene, 64)).copy()).permute(2, 0, 1).float() / 255
    noise = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = torch.stack([clean, clean, noise])
    prompts = ["a photo of a red circle", "a photo of a blue square", "a photo of a red circle"]
    assert verifier_rewards(images, prompts).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"reward verifier: prompts\[1\] 'a photo of a cat' is not a ShapesWorld"):
        train_grpo(
            _cfg(tmp_path, reward="verifier", prompts=["a red circle", "a photo of a cat"]), pipe=_pipe(), rm=judge
        )
    res = train_grpo(_cfg(tmp_path / "run", reward="verifier", max_steps=1), progress=False, pipe=_pipe(), rm=judge)
    assert res["history"][0]["reward_mean"] == 0.0  # a random tiny pipeline draws no ShapesWorld scene


def test_reasoning_first_reward_is_the_verdict_read_after_the_decoded_reason(judge, tmp_path):
    """cot reasoning_first: each reward is P(yes) read after the judge has decoded its reasoning (the rollouts need
    no gradient through the judge, so the decoding costs only time); a run with it trains."""
    from rewarddance.context import RewardContext
    from rewarddance.training.grpo import judge_rewards

    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    prompts = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    ctx = RewardContext(cot="reasoning_first", max_reason_tokens=4)
    got = judge_rewards(judge, images, prompts, "p_yes", 2, ctx)
    assert torch.allclose(got, judge.score(images, prompts, context=ctx).p_yes.float(), atol=1e-6)
    plain = judge_rewards(judge, images, prompts, "p_yes", 2, RewardContext())
    assert (got - plain).abs().max() > 1e-5  # the verdict moved: it was read after the decoded tokens
    res = train_grpo(_cfg(tmp_path, cot="reasoning_first", max_steps=1), progress=False, pipe=_pipe(), rm=judge)
    assert math.isfinite(res["history"][0]["reward_mean"]) and (tmp_path / "lora").is_dir()


def test_flow_grpo_sde_is_flow_grpos_step_replayed_in_velocity_form(judge, tmp_path):
    """sde flow_grpo on a flow-matching pipeline: every sampled latent is Flow-GRPO's Euler-Maruyama step written out
    independently in velocity form (``v = e - x0``) with the same noise, log p its Gaussian density, the step to sigma
    0 deterministic; another scheduler is refused before training; a run trains."""
    pipe, eta = _pipe("sd3"), 0.7
    sampler_cfg = SamplerConfig(num_inference_steps=4, height=32, width=32)
    noise = torch.Generator().manual_seed(3)
    ro = sample_rollouts(pipe, sampler_cfg, PROMPTS[:2], [1, 2], eta, noise, {0, 1, 2}, "flow_grpo")
    sig = [s for _, s in ro.sampler.levels]
    assert sig[0] == 1.0 and sig[-1] == 0.0
    replay = torch.Generator().manual_seed(3)
    for k in range(4):
        x = ro.latents[k]
        x0, e = ro.sampler.predict(x, k)
        v = e - x0
        sigma, dt = sig[k], sig[k + 1] - sig[k]
        z = torch.randn(x.shape, generator=replay)
        if sig[k + 1] == 0:
            assert torch.allclose(ro.latents[k + 1], x + dt * v, atol=1e-5)
            continue
        std_t = eta * math.sqrt(sigma / (1 - (sig[1] if sigma == 1 else sigma)))
        mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
        std = std_t * math.sqrt(-dt)
        assert torch.allclose(ro.latents[k + 1], mean + std * z, atol=1e-5)
        logp = -((ro.latents[k + 1] - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
        assert torch.allclose(ro.logp[k], logp.flatten(1).mean(1), atol=1e-4)
    with pytest.raises(PipelineError, match="sde flow_grpo is Flow-GRPO's SDE of a flow-matching schedule"):
        train_grpo(_cfg(tmp_path / "ddim", sde="flow_grpo"), progress=False, pipe=_pipe(), rm=judge)
    assert not (tmp_path / "ddim" / "metrics.csv").exists()
    with pytest.raises(ValueError, match="sde must be one of"):
        _cfg(tmp_path, sde="euler")
    res = train_grpo(
        _cfg(tmp_path / "run", sde="flow_grpo", eta=0.7, max_steps=1), progress=False, pipe=_pipe("sd3"), rm=judge
    )
    assert res["window"] == [0, 1, 2] and res["history"][0]["reward_std"] > 0


# ------------------------------------------------- evaluation with a judge that compares (training/eval_pairwise.py)
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
    judge = _BiasedJudge()
    win = BaseWinRate(judge, None, trained, cfg, trained.unet, count=3, steps=3)
    with torch.no_grad():
        images = _sample(trained, PROMPTS[1], 1, 3, cfg)
        base = _sample(fresh, PROMPTS[1], 1, 3, cfg)
    assert (images - base).abs().max() > 1e-3  # the LoRA does change the images
    got = win(images, PROMPTS[1], 1)
    assert torch.allclose(win.base[1], base, atol=1e-5)  # the LoRA was off for the base images

    def p(a, b):
        return torch.sigmoid((a.mean((1, 2, 3)) - b.mean((1, 2, 3))) * 10) * 0.8 + 0.15

    assert torch.allclose(got, (p(images, base) + 1 - p(base, images)) / 2, atol=1e-5)
    assert not torch.allclose(got, p(images, base), atol=1e-3)  # not one order alone
    assert torch.allclose(win(base, PROMPTS[1], 1), torch.full((3,), 0.5))  # the base against itself
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
    judge = _BiasedJudge()
    ask = eval_judge(SimpleNamespace(reward="p_yes"), judge, None, None, None, None)
    with pytest.raises(AssertionError, match="pointwise question"):
        ask(torch.zeros(1, 3, 4, 4), "p", 0)


def test_a_win_rate_run_evaluates_against_the_base_from_exactly_one_half(tiny_vlm, tmp_path):
    """GRPO with reward win_rate (a real tiny judge whose compare is the brightness judge's): the first evaluation
    (LoRA B = 0) reads 0.5 to the digit, the last one the trained model's win rate, not 0.5; the judge's pointwise
    score is never called."""
    judge = RewardModel.from_pretrained(tiny_vlm("llava", init_std=0.02), device="cpu")
    fake = _BiasedJudge()  # (a judge this small and random hardly tells 2 steps' images apart)
    judge.compare, judge.score = fake.compare, fake.score
    cfg = _cfg(tmp_path, max_steps=2, eval_prompts=[PROMPTS[0]], eval_images=2, eval_every=1, reward="win_rate")
    pipe = _pipe()
    res = train_grpo(cfg, progress=False, pipe=pipe, rm=judge)
    with open(tmp_path / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert float(rows[0]["reward"]) == pytest.approx(0.5, abs=1e-6)
    assert res["reward_before"] == pytest.approx(0.5, abs=1e-6)
    assert abs(float(rows[-1]["reward"]) - 0.5) > 1e-4  # the trained LoRA's images differ from the base's
