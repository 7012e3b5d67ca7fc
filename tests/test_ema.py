"""The moving average of the LoRA (``ema_decay``): its arithmetic and its settings. That the trainers evaluate and
export it, train as without it and resume it exactly: ``tests/test_grpo.py`` and ``tests/test_refl.py``."""

from __future__ import annotations

import pytest
import torch

from rewarddance.training.ema import LoraEMA
from rewarddance.training.grpo_config import GRPOConfig
from rewarddance.training.refl_config import ReFLConfig


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


@pytest.mark.parametrize("config", [GRPOConfig, ReFLConfig])
@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_zero_to_one_fails_when_the_config_is_built(tmp_path, config, decay):
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        config(pretrained="x", reward_model="y", prompts=["a red circle"], output_dir=str(tmp_path), ema_decay=decay)
