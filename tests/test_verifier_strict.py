"""The strict ShapesWorld verifier: an image passes only if it is a clean scene and satisfies the prompt.

Garbage of every kind in ``corrupt.GARBAGE`` must fail every prompt, clean renders must pass and be called clean,
and a failure must say why. The broader calibration (300 scenes per size and split, 30 images per garbage kind and
size) is ``python benchmarks/bench_shapes.py --modes strict`` (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from rewarddance.shapes import VerifierConfig, corrupt, render, render_array, sample_examples, verify
from rewarddance.shapes.cli import add_shapes_commands
from rewarddance.shapes.corrupt import GARBAGE, garbage
from rewarddance.shapes.verify import NOT_CLEAN, _fit, _solidity, inspect_scene

REVIEW_PROMPTS = ("a photo of a square", "a photo of an orange square", "a photo of a circle")


@pytest.mark.parametrize("size", [32, 64])
def test_rgb_noise_fails_the_review_prompts(size):
    """The outside review's cases: pure RGB noise passed these three prompts at 32 and 64 px."""
    rng = np.random.default_rng(size)
    for _ in range(3):
        noise = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        for prompt in REVIEW_PROMPTS:
            verdict = verify(noise, prompt)
            assert not verdict.passed and not verdict.clean, (prompt, verdict.reason)
            assert verdict.reason.startswith(NOT_CLEAN) and "noise" in verdict.reason, verdict.reason


@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_never_passes(kind):
    """Every garbage kind at 32 and 64 px, against the review's prompts and the prompt of the scene it was made
    from (for the scene-based kinds the right prompt); fills are tried in every palette colour and a grey."""
    seeds = range(9) if kind == "fill" else range(3)
    for size in (32, 64):
        for seed in seeds:
            ex = sample_examples(1, seed=seed)[0]
            image = garbage(kind, size, seed, ex.scene)
            dets, issue = inspect_scene(image)
            # not a clean scene, or (a grey fill, a shape blurred away) nothing in it to satisfy a prompt
            assert issue is not None or not dets, (kind, size, seed, [(d.colour, d.shape) for d in dets])
            for prompt in (*REVIEW_PROMPTS, ex.prompt):
                verdict = verify(image, prompt)
                assert not verdict.passed, (kind, size, seed, prompt, verdict.reason)


def test_unclean_reasons_say_why():
    ex = sample_examples(1, seed=4)[0]
    cases = {
        "fill": (garbage("fill", 64, 0), "a red region fills 100 % of the frame"),
        "speckle": (garbage("scene-speckle", 64, 0, ex.scene), "of the frame is speckle"),
        "noise": (garbage("uniform-noise", 64, 0), "the frame is noise (pixel noise std"),
        "blur": (garbage("heavy-blur", 64, 1), "is smeared (edge blur"),
    }
    # a textured patch (a 4 px checker of dark and light greys, outside the backgrounds' band) beside the object
    arr = render_array(ex.scene, 64).copy()
    yy, xx = np.mgrid[0:20, 0:20]
    arr[:20, :20] = np.where(((yy // 4 + xx // 4) % 2 == 0)[:, :, None], 60, 195).astype(np.uint8)
    cases["texture"] = (Image.fromarray(arr), "of the frame is unexplained texture")
    for name, (image, words) in cases.items():
        verdict = verify(image, ex.prompt)
        assert not verdict.passed and not verdict.clean, name
        assert verdict.reason.startswith(NOT_CLEAN) and words in verdict.reason, (name, verdict.reason)


@pytest.mark.parametrize("split", ["id", "ood"])
def test_clean_renders_are_clean(split):
    """Clean renders pass and are called clean at 32-256 px (the round-trip tests in test_shapes.py cover more)."""
    examples = sample_examples(24, seed=606, split=split)
    for size in (32, 64, 256):
        for ex in examples:
            verdict = verify(render(ex.scene, size), ex.spec)
            assert verdict.clean and verdict.passed, (split, size, ex.prompt, verdict.reason)


def test_tolerated_corruptions_stay_clean():
    """The robustness tests' harshest tolerated levels are corruptions, not garbage: nearly all still clean."""
    examples = sample_examples(24, seed=707)
    for kind, level, size in (("blur", 2.0, 64), ("jpeg", 30, 128), ("noise", 30.0, 128), ("noise", 20.0, 64)):
        clean = sum(
            inspect_scene(corrupt(render(ex.scene, size), kind, level, seed=i))[1] is None
            for i, ex in enumerate(examples)
        )
        assert clean >= 22, (kind, level, size, clean)


def test_strict_off_is_the_prompt_rule_alone():
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    loose = VerifierConfig(strict=False)
    for prompt in REVIEW_PROMPTS:
        verdict = verify(noise, prompt, loose)
        assert verdict.clean and not verdict.reason.startswith(NOT_CLEAN)


def _mask(shape: str, size: int = 40, turn: float = 17.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    z = (xx - size / 2 + 0.3) + 1j * (yy - size / 2 - 0.2)
    w = z * np.exp(-1j * np.radians(turn))
    if shape == "circle":
        mask = np.abs(z) <= 12
    elif shape == "square":
        mask = np.maximum(np.abs(w.real), np.abs(w.imag)) <= 10
    elif shape == "triangle":
        mask = np.ones(z.shape, bool)
        for k in range(3):
            mask &= (w * np.exp(-1j * (np.pi / 3 + 2 * np.pi * k / 3))).real <= 7
    elif shape == "ellipse":
        mask = (w.real / 15) ** 2 + (w.imag / 6) ** 2 <= 1
    else:  # an L: two bars
        mask = ((np.abs(xx - 12) <= 3) & (np.abs(yy - 20) <= 14)) | ((np.abs(yy - 31) <= 3) & (np.abs(xx - 20) <= 11))
    return mask, yy.astype(int), xx.astype(int)


def test_shape_fit_and_solidity():
    for shape in ("circle", "square", "triangle"):
        mask, yy, xx = _mask(shape)
        assert _fit(mask, yy, xx, shape) >= 0.9, shape
        assert _solidity(mask) >= 0.85, shape  # pixel squares: a rasterised triangle measures 0.89
    ellipse = _mask("ellipse")
    assert max(_fit(*ellipse, s) for s in ("circle", "square", "triangle")) < 0.75
    ell = _mask("L")
    assert _solidity(ell[0]) < 0.7
    assert max(_fit(*ell, s) for s in ("circle", "square", "triangle")) < 0.75


def _cli(argv):
    parser = argparse.ArgumentParser(prog="rewarddance")
    add_shapes_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_eval_counts_unclean_images(tmp_path, capsys):
    rows = []
    for k, ex in enumerate(sample_examples(4, seed=8)):
        name = f"{k}.png"
        (garbage("uniform-noise", 64, k) if k % 2 else render(ex.scene, 64)).save(tmp_path / name)
        rows.append({"image": name, "prompt": ex.prompt})
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _cli(["shapes", "eval", str(tmp_path / "set.jsonl"), "--no-progress"]) == 0
    assert "not a clean scene: 2 of 4 images (50.0 %)" in capsys.readouterr().out
    assert _cli(["shapes", "eval", str(tmp_path / "set.jsonl"), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["not_clean"] == 2
