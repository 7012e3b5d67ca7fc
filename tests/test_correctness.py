"""Defects of the correctness sweep, each pinned by a test: the quantised models' device map, the differentiable
reward's context settings, and checkpoints that resume without unpickling code."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from rewarddance import RewardModel
from rewarddance.context import RewardContext
from rewarddance.model import device_map_for
from rewarddance.training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint

PROMPT = "a red circle"


# ------------------------------------------------------------------------------------------- quantised device map
class _Stop(Exception):
    """Raised by the stand-in loader once it has seen the arguments."""


@pytest.mark.parametrize(
    "device,cuda_available,want",
    [("cuda", False, 0), ("cuda", True, 3), ("cuda:1", False, 1), ("cuda:1", True, 1), ("cpu", False, "cpu")],
)
def test_device_map_names_a_real_device(monkeypatch, device, cuda_available, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert device_map_for(device) == {"": want}


@pytest.mark.parametrize("device,want", [("cuda", 3), ("cuda:1", 1)])
def test_quantised_load_puts_the_model_on_a_real_device(tiny_vlm, monkeypatch, device, want):
    """``quantization="8bit"`` hands transformers a device map with a GPU index ("cuda" = the current device),
    never ``{"": None}``. The GPU is faked: the loader stops once it has the arguments."""
    import transformers

    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", fake_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    with pytest.raises(_Stop):
        RewardModel.from_pretrained(tiny_vlm("llava"), device=device, dtype="float32", quantization="8bit")
    assert seen["device_map"] == {"": want}


# ------------------------------------------------------------------------------------------- differentiable reward
def _smooth(B: int, seed: int) -> torch.Tensor:
    low = torch.rand(B, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(low, size=(48, 48), mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def rm(rm_cache):
    return rm_cache("llava")


def test_reward_averages_both_orders_like_compare(rm):
    pixels, refs = _smooth(2, seed=1).requires_grad_(), _smooth(2, seed=2)
    both = RewardContext(average_orders=True)
    r = rm.reward(pixels, PROMPT, references=refs, context=both)
    with torch.no_grad():
        want = rm.compare(pixels.detach(), refs, PROMPT, context=both).p_yes
        one_order = rm.compare(pixels.detach(), refs, PROMPT).p_yes
    assert (want - one_order).abs().max() > 1e-2  # the setting matters for this judge
    assert (r.detach() - want).abs().max() < 2e-3  # uint8 rounding of the stock processor only
    m = rm.reward(pixels, PROMPT, references=refs, context=both, output="margin")
    with torch.no_grad():
        want_m = rm.compare(pixels.detach(), refs, PROMPT, context=both).margin
    assert (m.detach() - want_m).abs().max() < 0.05
    r.sum().backward()  # the candidate stands in both positions; gradients reach it
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


def test_reward_refuses_reasoning_first(rm):
    with pytest.raises(ValueError, match="context.cot='reasoning_first': reward\\(\\) cannot decode"):
        rm.reward(_smooth(1, seed=3), PROMPT, context=RewardContext(cot="reasoning_first"))


# ------------------------------------------------------------------------------------------- checkpoints
def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _train(model, opt, sched, steps: int):
    """Steps whose data come from the torch, numpy and Python generators, so a resume must restore all three."""
    for _ in range(steps):
        x = torch.randn(5, 4) * float(np.random.rand()) + random.random()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _seed_all(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _checkpoint_after(folder, steps: int = 3):
    model, opt, sched = _setup()
    _seed_all(7)
    _train(model, opt, sched, steps)
    return save_checkpoint(folder, steps, model, opt, sched)


def test_checkpoint_resume_equals_the_straight_run(tmp_path):
    model, opt, sched = _setup()
    _seed_all(7)
    _train(model, opt, sched, 6)
    path = _checkpoint_after(tmp_path / "ck")
    assert sorted(p.name for p in path.iterdir()) == [
        "optimizer.pt",
        "rng.json",
        "rng.safetensors",
        "state.json",
        "trainable.safetensors",
    ]
    torch.load(path / "optimizer.pt", weights_only=True)  # plain data only
    other, o_opt, o_sched = _setup(seed=1)  # different weights, and generators moved on
    _seed_all(99)
    assert load_checkpoint(path, other, o_opt, o_sched)["step"] == 3
    _train(other, o_opt, o_sched, 3)
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


class _Planted:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["optimizer.pt", "rng.pt"])
def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path, where):
    path = _checkpoint_after(tmp_path / "ck")
    marker = tmp_path / "ran"
    if where == "optimizer.pt":
        state = torch.load(path / "optimizer.pt", weights_only=True)
        state["scheduler"] = _Planted(str(marker))
        torch.save(state, path / "optimizer.pt")
        expected = "optimizer.pt: refused, it holds more than tensors and plain containers"
    else:  # a checkpoint of the earlier format: its generator states were a pickle
        torch.save({"python": random.getstate(), "torch": _Planted(str(marker))}, path / "rng.pt")
        (path / "rng.json").unlink(missing_ok=True)
        expected = "this checkpoint predates the safe format"
    model, opt, sched = _setup(seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(list_checkpoints(tmp_path / "ck")[-1], model, opt, sched)
    assert not marker.exists()  # the planted code never ran
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # and nothing was restored


def test_checkpoint_rng_files_are_data(tmp_path):
    path = _checkpoint_after(tmp_path / "ck")
    plain = json.loads((path / "rng.json").read_text())
    assert len(plain["python"]["state"]) == 625 and len(plain["numpy"]["keys"]) == 624
