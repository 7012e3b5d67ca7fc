"""Checks with known answers for code whose other tests only bound its output: the ComfyUI node's tournament
selection and the Feynman-Kac potentials of the reward-guidance callback. Fakes stand in for the reward model and
the pipeline, so these run in milliseconds."""

from __future__ import annotations

import pytest
import torch

from rewarddance import guidance
from rewarddance.comfy import select_best
from rewarddance.guidance import RewardGuidanceCallback
from rewarddance.model import RewardOutput

PROMPT = "a red circle"


class _BrightnessJudge:
    """Pairwise judge that prefers the brighter image, with a pull towards image 1 (position bias) that averaging
    both orders must cancel."""

    def compare(self, images, references, prompts, context=None, batch_size=None):
        gap = torch.stack([img.mean() - ref.mean() for img, ref in zip(images, references)])
        p = torch.sigmoid(8.0 * gap - 0.4)
        return RewardOutput(p_yes=p, margin=p.logit())


def test_tournament_selection_picks_the_planted_best():
    levels = [0.3, 0.9, 0.1, 0.6, 0.5]
    image = torch.stack([torch.full((16, 16, 3), v) for v in levels])  # ComfyUI IMAGE [B, H, W, C]
    truth = sorted(range(5), key=lambda i: -levels[i])  # 1, 3, 4, 0, 2
    sel = select_best(_BrightnessJudge(), image, PROMPT, top_k=2, mode="tournament")
    assert sel.indices == truth[:2]
    assert torch.equal(sel.images, image[truth[:2]])
    # round robin: the k-th best wins against the 4 - k below it; the score is the win rate
    assert sel.scores == pytest.approx([(4 - truth.index(i)) / 4 for i in range(5)])
    assert sel.passed


class _PlantedScores:
    """``score`` returns the next planted row of rewards, whatever the pixels."""

    def __init__(self, rows):
        self.rows = [torch.tensor(r) for r in rows]
        self.calls = 0

    def score(self, pixels, prompts, context=None):
        r = self.rows[self.calls]
        self.calls += 1
        assert len(pixels) == len(r) == len(prompts)
        return RewardOutput(p_yes=r, margin=r.logit())


def test_potentials_on_known_state():
    """Each potential's log-weights for a given best-so-far and last score per particle."""
    r = torch.tensor([0.6, 0.1, 0.95])
    want = {"max": [0.2, 0.0, 0.1], "diff": [0.4, -0.2, 0.1], "sum": [1.2, 0.2, 1.9]}  # lam = 2
    for potential, expected in want.items():
        cb = RewardGuidanceCallback(_PlantedScores([]), PROMPT, potential=potential, lam=2.0)
        # the first scored step starts from zero: every potential is the reward itself
        torch.testing.assert_close(cb._log_weights(r), 2.0 * r)
        cb._best, cb._last = torch.tensor([0.5, 0.2, 0.9]), torch.tensor([0.4, 0.2, 0.9])
        torch.testing.assert_close(cb._log_weights(r), torch.tensor(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("potential", ["max", "diff", "sum"])
def test_potentials_follow_each_particle_through_resampling(monkeypatch, potential):
    """Three scored steps of a 3-particle batch: the log-weights at each step use the best and the last reward of
    each particle's own line of ancestors, as recorded in the history."""
    monkeypatch.setattr(guidance, "check_pipeline", lambda pipe: "sd")
    monkeypatch.setattr(guidance, "levels", lambda scheduler: [1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    monkeypatch.setattr(guidance, "model_levels", lambda scheduler: [1.0, 0.8, 0.6, 0.4, 0.2])
    monkeypatch.setattr(guidance, "decompose", lambda prev, x, a, b: (x, torch.zeros_like(x)))
    monkeypatch.setattr(guidance, "decode", lambda pipe, x0, h, w: x0[:, :3].clamp(0, 1))
    monkeypatch.setattr(guidance, "compose", lambda x0, e, level: x0 + e)
    rows = [[0.5, 0.8, 0.2], [0.4, 0.9, 0.1], [0.7, 0.3, 0.6]]  # some particles drop below their best
    cb = RewardGuidanceCallback(_PlantedScores(rows), PROMPT, steps=[1, 2, 3], potential=potential, lam=3.0)
    cb.height = cb.width = 8
    seen = []
    log_weights = cb._log_weights
    cb._log_weights = lambda r: seen.append(log_weights(r)) or seen[-1]
    latents = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pipe = type("FakePipeline", (), {"scheduler": None})()
    for i in range(5):
        latents = cb.callback_fn(pipe, i, None, {"latents": latents}).get("latents", latents)
    assert [h["step"] for h in cb.history] == [1, 2, 3] and len(seen) == 3
    best = last = torch.zeros(3)
    for h, logw in zip(cb.history, seen):
        r, anc = torch.tensor(h["scores"]), torch.tensor(h["ancestors"])
        inc = {"max": torch.maximum(best, r) - best, "diff": r - last, "sum": r}[potential]
        torch.testing.assert_close(logw, 3.0 * inc, atol=1e-6, rtol=0)
        best, last = torch.maximum(best, r)[anc], r[anc]
    if potential != "sum":  # the planted rows make the two stateful potentials differ from the reward itself
        assert not torch.allclose(seen[-1], 3.0 * torch.tensor(cb.history[-1]["scores"]))
