"""The moving average of the LoRA (``ema_decay``): its arithmetic, that it is what the trainers evaluate and export,
that it leaves training untouched, and that it survives an interrupted run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rewarddance import RewardModel
from rewarddance.testing.tiny_diffusion import build_tiny_pipeline
from rewarddance.training.ema import LoraEMA
from rewarddance.training.grpo import train_grpo
from rewarddance.training.grpo_config import GRPOConfig
from rewarddance.training.refl import train_refl
from rewarddance.training.refl_config import ReFLConfig

PROMPTS = ["a red circle", "a blue square", "two green triangles"]
LORA_FILE = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def judge(tiny_vlm):
    return RewardModel.from_pretrained(tiny_vlm("llava", init_std=0.02), device="cpu")


def _pipe():
    pipe = build_tiny_pipeline("sd", "ddim")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _grpo(out, **kw) -> GRPOConfig:
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
        max_steps=4,
        train_subset=2,
        save_every=0,
        eval_prompts=[],
        eval_train_prompts=0,
        clip_range=0.2,
        seed=0,
    )
    return GRPOConfig(**{**base, **kw})


def _lora(result) -> dict:
    return load_file(f"{result['lora']}/{LORA_FILE}")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_the_average_follows_the_documented_decay_and_is_swapped_in_only_inside_applied():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2, 2))]
    ema = LoraEMA(params, decay=0.8)
    expected = [p.detach().clone() for p in params]
    for n in range(1, 8):
        with torch.no_grad():
            for p in params:
                p.add_(float(n))
        ema.update()
        d = min(0.8, n / (9 + n)) if n > 1 else 0.0  # diffusers' warm-up (1 + s) / (10 + s), s = n - 1
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, params)]
    live = [p.detach().clone() for p in params]
    with ema.applied():
        for p, e in zip(params, expected):
            assert torch.allclose(p.detach(), e, atol=1e-6)
        assert not torch.allclose(params[0].detach(), live[0])  # the average lags the live weights
    for p, v in zip(params, live):
        assert torch.equal(p.detach(), v)  # the live weights are back
    with pytest.raises(RuntimeError), ema.applied():
        raise RuntimeError("an evaluation that fails")
    for p, v in zip(params, live):
        assert torch.equal(p.detach(), v)  # back after an exception too
    assert ema.state() == {"ema_steps": 7} and len(ema.tensors()["ema"]) == 2


def test_decay_zero_is_off():
    params = [torch.nn.Parameter(torch.zeros(3))]
    ema = LoraEMA(params, decay=0.0)
    ema.update()
    with ema.applied():
        with torch.no_grad():
            params[0].add_(1.0)
    assert float(params[0].detach()[0]) == 1.0 and ema.state() == {} and ema.tensors() == {}


def test_grpo_exports_the_average_trains_as_before_and_resumes_exactly(judge, tmp_path):
    plain = train_grpo(_grpo(tmp_path / "plain"), progress=False, pipe=_pipe(), rm=judge)
    averaged = train_grpo(_grpo(tmp_path / "ema", ema_decay=0.5), progress=False, pipe=_pipe(), rm=judge)
    keys = ("loss", "reward_mean", "kl")
    assert [[h[k] for k in keys] for h in averaged["history"]] == [[h[k] for k in keys] for h in plain["history"]]
    assert averaged["lora_checksum"] == pytest.approx(plain["lora_checksum"], rel=1e-9)  # the live LoRA: the same
    assert not _same(_lora(averaged), _lora(plain))  # the export is the average
    # a decay too small to hold anything back: the average is the last weights, exported under the same names
    tiny = train_grpo(_grpo(tmp_path / "tiny", ema_decay=1e-9), progress=False, pipe=_pipe(), rm=judge)
    assert _same(_lora(tiny), _lora(plain))
    # interrupted after step 2 and resumed: the average continues from the checkpoint's
    first = train_grpo(_grpo(tmp_path / "b", ema_decay=0.5), progress=False, pipe=_pipe(), rm=judge, stop_at=2)
    assert first["stopped_at"] == 2
    assert list((tmp_path / "b" / "checkpoints").glob("*/ema.safetensors"))
    resumed = train_grpo(_grpo(tmp_path / "b", ema_decay=0.5), progress=False, pipe=_pipe(), rm=judge)
    assert resumed["step"] == 4 and _same(_lora(resumed), _lora(averaged))


def test_refl_evaluates_and_exports_the_average_and_resumes_exactly(judge, tmp_path):
    kw = dict(
        pretrained="in-process",
        reward_model="in-process",
        prompts=PROMPTS,
        eval_prompts=["a green circle"],
        num_inference_steps=6,
        stop_range=[4, 5],
        resolution=32,
        lora_rank=4,
        lora_alpha=4,
        lr=3e-2,
        batch_size=2,
        max_steps=4,
        save_every=0,
        eval_images=2,
        loss="log",
        seed=0,
        verifier="none",
    )
    plain = train_refl(ReFLConfig(output_dir=str(tmp_path / "plain"), **kw), progress=False, pipe=_pipe(), rm=judge)
    cfg = ReFLConfig(output_dir=str(tmp_path / "ema"), ema_decay=0.6, **kw)
    averaged = train_refl(cfg, progress=False, pipe=_pipe(), rm=judge)
    assert averaged["reward_before"] == pytest.approx(plain["reward_before"], abs=1e-9)  # nothing averaged yet
    assert averaged["reward_after"] != pytest.approx(plain["reward_after"], abs=1e-7)  # measured on the average
    assert not _same(_lora(averaged), _lora(plain))
    cfg = ReFLConfig(output_dir=str(tmp_path / "b"), ema_decay=0.6, **kw)
    assert train_refl(cfg, progress=False, pipe=_pipe(), rm=judge, stop_at=2)["stopped_at"] == 2
    resumed = train_refl(cfg, progress=False, pipe=_pipe(), rm=judge)
    assert _same(_lora(resumed), _lora(averaged))
    assert resumed["reward_after"] == pytest.approx(averaged["reward_after"], abs=1e-6)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_zero_to_one_fails_when_the_config_is_built(tmp_path, decay):
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        _grpo(tmp_path, ema_decay=decay)
