"""Evaluations of the diffusion trainers: the judge's held-out reward beside the ShapesWorld verifier's alignment
(``eval.csv``, the summary, the plot), the reward-hacking flag, early stopping and keep_best, across resume."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from rewarddance import RewardModel
from rewarddance.testing.tiny_diffusion import build_tiny_pipeline
from rewarddance.training.diffusion_loop import (
    hacking_warning,
    read_eval_rows,
    reward_hacking,
    reward_prompts,
    use_verifier,
)
from rewarddance.training.grpo import train_grpo
from rewarddance.training.grpo_config import GRPOConfig
from rewarddance.training.refl import train_refl
from rewarddance.training.refl_config import ReFLConfig

SHAPES_HELD_OUT = ["a photo of a red square", "a photo of two circles", "a photo of a circle above a square"]
LORA_FILE = "pytorch_lora_weights.safetensors"


def _row(step, reward, alignment, se, n=100):
    return {"step": step, "reward": reward, "reward_se": 0.01, "alignment": alignment, "alignment_se": se, "n": n}


# ---------------------------------------------------------------------------------------------------- pure parts
def test_reward_hacking_needs_a_rising_reward_and_a_fall_beyond_two_standard_errors():
    se = 0.03  # the SE of the difference is 0.03 * sqrt(2) = 0.0424; two of them 0.0849
    assert reward_hacking(_row(0, 0.40, 0.50, se), _row(9, 0.45, 0.40, se)) is True  # fell 0.10
    assert reward_hacking(_row(0, 0.40, 0.50, se), _row(9, 0.45, 0.42, se)) is False  # fell 0.08: within noise
    assert reward_hacking(_row(0, 0.40, 0.50, se), _row(9, 0.39, 0.20, se)) is False  # the judge fell too
    assert reward_hacking(_row(0, 0.40, 0.50, se), _row(9, 0.45, 0.60, se)) is False  # alignment rose
    assert reward_hacking(_row(0, 0.40, 0.50, 0.0), _row(9, 0.41, 0.50 - 1e-3, 0.0)) is True  # no noise: any fall
    no_verifier = {"step": 0, "reward": 0.4, "reward_se": 0.01, "alignment": None, "alignment_se": None, "n": 4}
    assert reward_hacking(no_verifier, {**no_verifier, "reward": 0.9}) is None
    assert reward_hacking(None, None) is None
    summary = {
        "reward_hacking": True,
        "reward_before": 0.4,
        "reward_after": 0.45,
        "alignment_before": 0.5,
        "alignment_before_se": se,
        "alignment_after": 0.4,
        "alignment_after_se": se,
        "alignment_n": 100,
    }
    line = hacking_warning(summary)
    assert "reward hacking" in line and "0.4000 -> 0.4500" in line and "0.500" in line and "\n" not in line
    assert hacking_warning({**summary, "reward_hacking": False}) is None


def test_the_cli_warns_on_one_line_of_a_run_flagged_for_reward_hacking(capsys):
    from rewarddance.cli import _DIFFUSION_KEYS, _diffusion_summary

    result = dict.fromkeys(_DIFFUSION_KEYS, 1)
    result.update(reward_before=0.4, reward_after=0.5, alignment_before=0.5, alignment_before_se=0.02)
    result.update(alignment_after=0.3, alignment_after_se=0.02, alignment_n=192, reward_hacking=True)
    assert _diffusion_summary(None, result)["reward_hacking"] is True
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "reward hacking" in err[0] and "0.500 +- 0.020 -> 0.300 +- 0.020 (n = 192)" in err[0]
    _diffusion_summary(None, {**result, "reward_hacking": False})
    _diffusion_summary(None, {**result, "reward_hacking": None})
    assert capsys.readouterr().err == ""


def test_the_verifier_is_on_for_shapesworld_prompts_only(tmp_path):
    def cfg(**kw):
        base = dict(pretrained="x", reward_model="x", prompts=["a cat"], output_dir=str(tmp_path), eval_images=2)
        return ReFLConfig(**{**base, **kw})

    assert use_verifier(cfg(), SHAPES_HELD_OUT) is True
    assert use_verifier(cfg(), ["a cat"]) is False
    assert use_verifier(cfg(), SHAPES_HELD_OUT + ["a cat"]) is False  # auto: every prompt must parse
    assert use_verifier(cfg(verifier="none"), SHAPES_HELD_OUT) is False
    assert use_verifier(cfg(verifier="shapes"), SHAPES_HELD_OUT) is True
    with pytest.raises(ValueError, match="eval prompt 'a cat' is not a ShapesWorld prompt"):
        use_verifier(cfg(verifier="shapes"), SHAPES_HELD_OUT + ["a cat"])
    # reward_prompts (phase 0, before anything loads) says so, and a forced verifier fails there already
    assert reward_prompts(cfg(eval_prompts=SHAPES_HELD_OUT), [])[1].endswith("ShapesWorld verifier on")
    assert "verifier" not in reward_prompts(cfg(eval_prompts=["a cat"]), [])[1]
    with pytest.raises(ValueError, match="'a cat'"):
        reward_prompts(cfg(eval_prompts=["a cat"], verifier="shapes"), [])
    with pytest.raises(ValueError, match="verifier must be auto, shapes or none"):
        cfg(verifier="geneval")
    with pytest.raises(ValueError, match="early_stopping_patience needs eval_every > 0"):
        cfg(early_stopping_patience=2)
    with pytest.raises(ValueError, match="early_stopping_patience must be 1 or more"):
        cfg(early_stopping_patience=0, eval_every=1)
    with pytest.raises(ValueError, match="keep_best needs evaluations"):
        reward_prompts(cfg(keep_best=True, eval_train_prompts=0), ["a cat"])


def test_the_plot_shows_the_evaluations_beside_the_training_reward(tmp_path):
    from rewarddance.training.plots import plot_reward_curve

    history = [{"step": s, "reward_mean": 0.1 * s, "window_mean": 0.1 * s, "window_std": 0.01} for s in range(1, 5)]
    evals = [_row(s, 0.3 + 0.01 * s, 0.5 - 0.05 * s, 0.04) for s in (0, 2, 4)]
    fig = plot_reward_curve(history, tmp_path / "curve.png", evaluations=evals)
    assert (tmp_path / "curve.png").is_file()
    train_ax, eval_ax, align_ax = fig.axes  # the training reward, the judge's evaluations, the alignment (twin)
    assert "training" in train_ax.get_title() and eval_ax.get_xlabel() == "step"
    (judge,) = [c for c in eval_ax.containers if c.get_label() == "held-out judge reward"]
    (aligned,) = [c for c in align_ax.containers if c.get_label() == "verifier alignment"]
    assert list(judge.lines[0].get_ydata()) == pytest.approx([0.3, 0.32, 0.34])
    assert list(aligned.lines[0].get_xdata()) == [0, 2, 4]
    assert list(aligned.lines[0].get_ydata()) == pytest.approx([0.5, 0.4, 0.3])
    assert aligned.has_yerr and judge.has_yerr
    # without a verifier there is no alignment axis
    fig = plot_reward_curve(history, tmp_path / "c2.png", evaluations=[{**e, "alignment": None} for e in evals])
    assert len(fig.axes) == 2


# ---------------------------------------------------------------------------------------------------- tiny runs
class ScriptedJudge:
    """The given reward model for training; its held-out evaluations (``score``, one eval prompt, so one call an
    evaluation) read the next P(yes) of ``script`` instead, so the best evaluation is known in advance."""

    def __init__(self, rm, script, start=0):
        self.rm, self.script, self.calls = rm, list(script), start

    def __getattr__(self, name):
        return getattr(self.rm, name)

    def score(self, images, prompt, context=None):
        real = self.rm.score(images, prompt, context=context)
        value = self.script[self.calls]
        self.calls += 1
        real.p_yes = torch.full_like(real.p_yes, value)
        return real


@pytest.fixture(scope="module")
def smooth_rm(tiny_vlm):
    return RewardModel.from_pretrained(tiny_vlm("llava", init_std=0.02), device="cpu")


def _tiny(out, **kw) -> ReFLConfig:
    base = dict(
        pretrained="in-process",
        reward_model="in-process",
        prompts=["a red circle", "a blue square"],
        eval_prompts=["a cat on a mat"],  # not ShapesWorld: no verifier, the best is by judge reward
        output_dir=str(out),
        num_inference_steps=4,
        stop_range=[2, 3],
        resolution=32,
        lora_rank=4,
        lora_alpha=4,
        lr=3e-2,
        batch_size=1,
        max_steps=4,
        save_every=0,
        eval_every=1,
        eval_images=1,
        loss="log",
        seed=0,
    )
    return ReFLConfig(**{**base, **kw})


def _pipe():
    pipe = build_tiny_pipeline("sd", "ddim")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _same_lora(a: str, b: str) -> bool:
    x, y = load_file(f"{a}/{LORA_FILE}"), load_file(f"{b}/{LORA_FILE}")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_early_stopping_stops_after_patience_evaluations_without_a_better_judge_reward(smooth_rm, tmp_path):
    # evaluations after steps 0..: the best is step 1's 0.6; steps 2 and 3 are no better, so patience 2 stops at 3
    judge = ScriptedJudge(smooth_rm, [0.5, 0.6, 0.55, 0.6, 0.9, 0.9, 0.9])
    res = train_refl(_tiny(tmp_path, max_steps=6, early_stopping_patience=2), progress=False, pipe=_pipe(), rm=judge)
    assert res["step"] == 3 and res["early_stopped_at"] == 3 and len(res["history"]) == 3
    rows = read_eval_rows(tmp_path / "eval.csv")
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and judge.calls == 4
    assert [r["reward"] for r in rows] == pytest.approx([0.5, 0.6, 0.55, 0.6])
    assert res["reward_after"] == pytest.approx(0.6) and res["exported_step"] == 3  # the last: keep_best is off
    assert res["verifier"] == "none" and res["reward_hacking"] is None and res["alignment_before"] is None
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 4  # header + 3 steps
    # resumed, an early-stopped run stays stopped (no more steps, no more evaluations)
    again = train_refl(_tiny(tmp_path, max_steps=6, early_stopping_patience=2), progress=False, pipe=_pipe(), rm=judge)
    assert again["step"] == 3 and again["early_stopped_at"] == 3 and again["history"] == [] and judge.calls == 4


def test_keep_best_exports_the_best_evaluation_and_survives_a_resume(smooth_rm, tmp_path):
    script = [0.5, 0.7, 0.6, 0.65, 0.62]  # evaluations after steps 0-4: the best is step 1
    kept = train_refl(
        _tiny(tmp_path / "kept", keep_best=True), progress=False, pipe=_pipe(), rm=ScriptedJudge(smooth_rm, script)
    )
    assert kept["exported_step"] == 1 and kept["step"] == 4
    one = train_refl(_tiny(tmp_path / "one", max_steps=1), progress=False, pipe=_pipe(), rm=smooth_rm)
    last = train_refl(_tiny(tmp_path / "last"), progress=False, pipe=_pipe(), rm=smooth_rm)
    assert _same_lora(kept["lora"], one["lora"])  # the LoRA after step 1, to the bit
    assert not _same_lora(kept["lora"], last["lora"])  # not the last one
    # stopped after step 2 (the best, step 1, only in the checkpoint), then resumed: the same export
    judge = ScriptedJudge(smooth_rm, script)
    first = train_refl(_tiny(tmp_path / "r", keep_best=True), progress=False, pipe=_pipe(), rm=judge, stop_at=2)
    assert first["stopped_at"] == 2 and judge.calls == 3
    resumed = train_refl(
        _tiny(tmp_path / "r", keep_best=True), progress=False, pipe=_pipe(), rm=ScriptedJudge(smooth_rm, script, 3)
    )
    assert resumed["exported_step"] == 1 and _same_lora(resumed["lora"], one["lora"])
    assert read_eval_rows(tmp_path / "r" / "eval.csv") == read_eval_rows(tmp_path / "kept" / "eval.csv")


# ---------------------------------------------------------------------------------------------------- bundled
def _bundled_cfg(cls, out, **kw):
    base = dict(
        pretrained="shapes-gen",
        reward_model="shapes-s",
        prompts=["a photo of a blue triangle", "a photo of a square"],
        eval_prompts=SHAPES_HELD_OUT,
        output_dir=str(out),
        num_inference_steps=20,
        guidance_scale=4.0,
        resolution=32,
        lr=1e-3,
        max_steps=2,
        save_every=0,
        eval_every=1,
        eval_images=2,
        seed=0,
    )
    if cls is ReFLConfig:
        base.update(stop_range=[10, 19], batch_size=1)
    else:
        base.update(group_size=2, prompts_per_step=1, num_inference_steps=4, train_steps=[0, 3], train_subset=1)
    return cls(**{**base, **kw})


@pytest.fixture(scope="module")
def shapes_judge():
    return RewardModel.from_pretrained("shapes-s", device="cpu")


def _verified_share(cfg, prompts) -> float:
    """The verifier's pass rate on the evaluation's images of the untrained generator, computed here."""
    from rewarddance.images import load_image
    from rewarddance.pipelines import Sampler, pipeline_family
    from rewarddance.shapes import verify
    from rewarddance.training.diffusion_loop import load_pipeline, sampler_config

    pipe = load_pipeline(cfg, torch.float32)
    pipe.set_progress_bar_config(disable=True)
    passed = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            sampler = Sampler(pipe, prompt, sampler_config(cfg, pipe, pipeline_family(pipe)))
            x = sampler.initial_latents([10_000 + i * 100 + j for j in range(cfg.eval_images)])
            for k in range(cfg.num_inference_steps):
                x, _ = sampler.step(x, k)
            passed += [verify(load_image(img.clamp(0, 1)), prompt).passed for img in sampler.decode(x)]
    return sum(passed) / len(passed)


def test_refl_on_shapesworld_records_judge_and_verifier_and_resumes_them(shapes_judge, tmp_path):
    cfg = _bundled_cfg(ReFLConfig, tmp_path / "a")
    res = train_refl(cfg, progress=False, rm=shapes_judge)
    rows = read_eval_rows(tmp_path / "a" / "eval.csv")
    header = (tmp_path / "a" / "eval.csv").read_text().splitlines()[0]
    assert header == "step,reward,reward_se,alignment,alignment_se,n"
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["n"] == 6 for r in rows)
    for r in rows:
        assert r["alignment"] * 6 == pytest.approx(round(r["alignment"] * 6))  # a share of 6 images
        assert r["alignment_se"] == pytest.approx(math.sqrt(r["alignment"] * (1 - r["alignment"]) / 6))
        assert 0 < r["reward"] < 1 and r["reward_se"] > 0
    print("evaluations:", [(r["step"], round(r["reward"], 4), r["alignment"]) for r in rows])
    assert rows[0]["alignment"] == pytest.approx(_verified_share(cfg, SHAPES_HELD_OUT))
    assert res["verifier"] == "shapes" and res["alignment_n"] == 6
    assert (res["alignment_before"], res["alignment_after"]) == (rows[0]["alignment"], rows[-1]["alignment"])
    assert (res["reward_before"], res["reward_after"]) == pytest.approx((rows[0]["reward"], rows[-1]["reward"]))
    assert res["reward_hacking"] == reward_hacking(rows[0], rows[-1]) and isinstance(res["reward_hacking"], bool)
    assert res["exported_step"] == 2 and res["early_stopped_at"] is None
    from PIL import Image

    with Image.open(tmp_path / "a" / "reward_curve.png") as img:
        assert img.size == (800, 700)  # two panels: the evaluations under the training reward
    # stopped after step 1 and resumed: the same evaluations, alignment_before kept from the first part
    first = train_refl(_bundled_cfg(ReFLConfig, tmp_path / "b"), progress=False, rm=shapes_judge, stop_at=1)
    assert first["stopped_at"] == 1
    resumed = train_refl(_bundled_cfg(ReFLConfig, tmp_path / "b"), progress=False, rm=shapes_judge)
    assert resumed["alignment_before"] == res["alignment_before"]
    assert resumed["alignment_before_se"] == res["alignment_before_se"]
    assert resumed["reward_before_se"] == res["reward_before_se"]  # (the first evaluation's, not the resumed part's)
    again = read_eval_rows(tmp_path / "b" / "eval.csv")
    assert len(again) == len(rows)
    for a, b in zip(again, rows):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)


def test_grpo_on_shapesworld_records_the_verifier_too(shapes_judge, tmp_path):
    res = train_grpo(_bundled_cfg(GRPOConfig, tmp_path, max_steps=1), progress=False, rm=shapes_judge)
    rows = read_eval_rows(tmp_path / "eval.csv")
    assert [r["step"] for r in rows] == [0, 1] and all(r["alignment"] is not None for r in rows)
    assert res["alignment_before"] == rows[0]["alignment"] and res["alignment_n"] == 6
    assert res["reward_hacking"] == reward_hacking(rows[0], rows[1])
