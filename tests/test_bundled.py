"""The bundled ShapesWorld models (``rewarddance.bundled``) and ``rewarddance demo``: offline, on the CPU.

The judges' accuracy is measured again here on the held-out pairs their cards name (same seeds, same 300 rendered
pairs) and must match the card to within one percentage point (floating-point differences between machines may
flip a pair or two); on pairs of the generator's samples, which a verdict flipped by such differences can change,
within three. The generator's first sample of each card prompt must match the card's first-sample alignment to
within three points; every figure of its card (all samples of every prompt) is checked again in a slow test.
"""

from __future__ import annotations

import json
import math
import shutil
import zipfile

import pytest

from rewarddance import RewardModel
from rewarddance.bundled import (
    DEFAULT_RM,
    GENERATOR,
    REWARD_MODELS,
    BundledModelError,
    available,
    bundled_path,
    card,
    load_generator,
)
from rewarddance.recipes.cards import render_card
from rewarddance.recipes.shapes import add_verifier_reasons, eval_data, measure_generator, measure_rm
from rewarddance.shapes import CATEGORIES, verify

BUNDLED_RMS = [name for name in REWARD_MODELS if name in available()]


def test_the_default_models_are_bundled_and_small():
    assert DEFAULT_RM in available() and GENERATOR in available()
    total = sum(f.stat().st_size for name in available() for f in bundled_path(name).rglob("*") if f.is_file())
    assert total <= 40 * 2**20, f"bundled models take {total / 2**20:.1f} MB"
    for name in available():
        folder = bundled_path(name)
        assert (folder / "README.md").read_text(encoding="utf-8") == render_card(card(name))  # card matches its facts
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt")), "safetensors only"


def test_unknown_bundled_name_lists_what_is_there():
    with pytest.raises(BundledModelError, match="shapes-m"):
        bundled_path("shapes-xl")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    return eval_data(tmp_path_factory.mktemp("bundled-eval"), generated=False)


def _matches_card(name: str, folders: dict, splits: list[tuple[str, float]]) -> None:
    facts = card(name)
    measured = measure_rm(name, folders)  # loads by name through RewardModel.from_pretrained
    print(name, "card", facts["measured"], "now", measured)
    for split, margin in splits:
        assert abs(measured[split]["pairs"] - facts["measured"][split]["pairs"]) <= 0.03 * measured[split]["pairs"]
        assert abs(measured[split]["accuracy"] - facts["measured"][split]["accuracy"]) <= margin


# the largest judge takes ~27 s to score its 730 pairs: run by .ci/run after the README command
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "shapes-l" else n for n in BUNDLED_RMS]
)
def test_bundled_judge_accuracy_matches_its_card(name, held_out):
    """Rendered in-domain and out-of-domain pairs and a clean scene against garbage, remade by the recipe's script:
    each judge's accuracy is its card's (the generator's samples: the slow test below)."""
    splits = [("id", 0.01), ("ood", 0.01)] + [("garbage", 0.01)] * ("garbage" in card(name)["measured"])
    _matches_card(name, held_out, splits)
    assert card(name)["measured"]["id"]["accuracy"] >= 0.7  # a judge, not chance


@pytest.mark.slow
def test_bundled_judges_on_the_generators_samples_match_their_cards(tmp_path):
    """The two held-out sets of pairs of the bundled generator's own samples (150 and 450 prompts x 8 samples drawn
    again, about 13 minutes on 2 cores) give each judge its card's accuracy on both."""
    folders = eval_data(tmp_path, generated=True)
    sets = ["generated", "generated-large"]
    for name in BUNDLED_RMS:
        _matches_card(name, {k: folders[k] for k in sets}, [(k, 0.03) for k in sets])


def test_a_local_folder_named_like_a_bundled_model_wins(tmp_path, monkeypatch, tiny_vlm):
    import shutil

    shutil.copytree(tiny_vlm("llava"), tmp_path / DEFAULT_RM)
    monkeypatch.chdir(tmp_path)
    rm = RewardModel.from_pretrained(DEFAULT_RM, device="cpu")
    assert rm.model.config.text_config.hidden_size != card(DEFAULT_RM)["shape"]["hidden"]


@pytest.fixture(scope="module")
def generator():
    return load_generator()


@pytest.mark.slow  # 240 samples (~30 s); the slow test below checks the whole card
def test_bundled_generator_first_samples_match_its_card(generator):
    """One sample per card prompt (the seeds of the card's first samples): the card's first-sample alignment."""
    facts = card(GENERATOR)["measured"]
    measured = measure_generator(generator, facts["prompts"], facts["seed"])
    print("card", facts, "now", measured)
    assert measured["samples"] == 1
    assert measured["alignment"] == pytest.approx(facts["first_sample_alignment"], abs=0.03)
    assert measured["alignment_se"] == pytest.approx(
        math.sqrt(measured["alignment"] * (1 - measured["alignment"]) / measured["prompts"]), abs=1e-4
    )
    # imperfect on purpose, but it draws: room for a judge to help, and something to choose from
    assert 0.1 <= measured["alignment"] <= 0.8


@pytest.mark.slow
def test_bundled_generator_alignment_matches_its_card(generator):
    """Every figure of the card (all samples of every prompt; about 45 s here)."""
    facts = card(GENERATOR)["measured"]
    measured = measure_generator(generator, facts["prompts"], facts["seed"], samples=facts["samples"])
    print("card", facts, "now", measured)
    for key in ("alignment", "not_clean", "first_sample_alignment"):
        assert measured[key] == pytest.approx(facts[key], abs=0.01), key
    assert measured["alignment_se"] == pytest.approx(facts["alignment_se"], abs=0.005)
    assert measured["by_category"] == pytest.approx(facts["by_category"], abs=0.02)


def test_demo_table_is_what_the_verdicts_say(tmp_path):
    """The demo end to end (two prompts per category, four candidates): every verdict, reason and cleanliness flag is
    the strict verifier's on the image shown, the judge's pick is the argmax of its scores, and every figure of the
    table (alignment with binomial SE and n, the unclean share, the paired difference) is recomputed here from those
    verdicts. The demo makes no claim that best-of-N wins: under the strict verifier the bundled generator passes
    about one sample in ten, and README.md gives the measured difference with its SE."""
    import math

    from PIL import Image

    from rewarddance.demo import _to_pil, format_table, run_demo, short_reason

    res = run_demo(n=4, per_category=2, grid=tmp_path / "grid.png", log=print)
    text = format_table(res.table, res.n)
    print(text, f"{res.seconds:.0f} s")
    assert len(res.rows) == 12 and {r.category for r in res.rows} == set(CATEGORIES)
    twice = [(a, b) for i, a in enumerate(res.rows) for b in res.rows[i + 1 :] if a.prompt == b.prompt]
    assert twice  # single_object has three prompts; these draw "a photo of a square" twice
    for a, b in twice:  # a repeated prompt is a new trial: its own seeds, other candidates
        assert not any((x - y).abs().max() == 0 for x, y in zip(a.images, b.images))
    for r in res.rows:
        verdicts = [verify(_to_pil(img), r.prompt) for img in r.images]
        assert r.passed == [v.passed for v in verdicts] and r.clean == [v.clean for v in verdicts]
        assert r.reasons == [short_reason(v, r.prompt) for v in verdicts]
        assert all((reason == "ok") == ok for reason, ok in zip(r.reasons, r.passed))
        assert r.best == max(range(len(r.scores)), key=r.scores.__getitem__)  # best-of-N takes the judge's argmax
        assert r.search_passed == verify(_to_pil(r.search_image), r.prompt).passed

    def check(row, values):
        n, k = len(values), sum(values)
        p = k / n
        assert (row["k"], row["n"]) == (k, n) and row["p"] == pytest.approx(p)
        assert row["se"] == pytest.approx(math.sqrt(p * (1 - p) / n))
        return f"{100 * p:5.1f}% +- {100 * math.sqrt(p * (1 - p) / n):4.1f}{n:>5}"

    picks = {
        "first sample": lambda r: r.passed[0],
        "best-of-N": lambda r: r.passed[r.best],
        "search over paths": lambda r: r.search_passed,
        "any candidate (oracle)": lambda r: any(r.passed),
    }
    for name, pick in picks.items():
        assert check(res.table[name]["all"], [pick(r) for r in res.rows]) in text  # printed with its SE and n
        for c in CATEGORIES:
            check(res.table[name][c], [pick(r) for r in res.rows if r.category == c])
    unclean = [not ok for r in res.rows for ok in r.clean]
    check(res.table["not a clean scene"]["all"], unclean)
    assert f"of all {len(unclean)} candidates ({sum(unclean)})" in text
    diffs = [int(r.passed[r.best]) - int(r.passed[0]) for r in res.rows]
    mean = sum(diffs) / 12
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 11 / 12)
    diff = res.table["best-of-N - first"]["all"]
    assert diff["p"] == pytest.approx(mean) and diff["se"] == pytest.approx(se)
    assert f"best-of-4 - first sample: {100 * mean:+.1f} points +- {100 * se:.1f}" in text
    with Image.open(res.grid) as im:  # legend, then per prompt: its line, the 4 + 1 images, two lines under each
        assert im.width >= 5 * 128 and im.height >= 12 * (128 + 3 * 22)


def test_short_reasons_name_why(tmp_path):
    """The grid's short reasons, on rendered scenes and garbage the strict verifier sees through."""
    from rewarddance.demo import short_reason
    from rewarddance.shapes import render
    from rewarddance.shapes.corrupt import garbage
    from rewarddance.shapes.scene import Background, Scene, ShapeObject

    red = ShapeObject("circle", "red", 0.3, 0.5, 0.25)
    blue = ShapeObject("square", "blue", 0.7, 0.5, 0.25)
    image = render(Scene((red, blue), Background()), 64)
    cases = {
        "a photo of a red circle and a blue square": "ok",
        "a photo of two red circles": "x count 1!=2",
        "a photo of a red circle and a green triangle": "x no green triangle",
        "a photo of a red circle right of a blue square": "x not right of",
        "a photo of a red circle left of a blue square": "ok",
    }
    for prompt, short in cases.items():
        assert short_reason(verify(image, prompt), prompt) == short, prompt
    one_square = render(Scene((blue,), Background()), 64)
    prompt = "a photo of a blue square and a blue square"
    assert short_reason(verify(one_square, prompt), prompt) == "x one for two"
    garbage_kinds = {"uniform-noise": "noise", "scene-speckle": "speckle", "fill": "fill", "heavy-blur": "smear"}
    for kind, short in {**garbage_kinds, "polygons": "no shape"}.items():
        verdict = verify(garbage(kind, 64, seed=1), "a photo of a blue square")
        assert short_reason(verdict, "a photo of a blue square") == f"x unclean: {short}", verdict.reason


def test_demo_command_prints_the_table(tmp_path, capsys):
    from rewarddance.cli import main

    out = tmp_path / "demo.png"
    assert main(["demo", "--n", "2", "--per-category", "1", "--no-search", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "best-of-2" in text and "first sample" in text and out.exists()
    assert "all (+- SE)" in text and "not a clean scene (verifier)" in text and "of all 12 candidates" in text


def test_score_without_model_uses_the_bundled_judge(tmp_path, capsys):
    from rewarddance.cli import main
    from rewarddance.shapes import render, sample_examples

    ex = sample_examples(1, seed=3)[0]
    render(ex.scene, 56).save(tmp_path / "a.png")
    assert main(["score", str(tmp_path / "a.png"), "--prompt", ex.prompt, "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = RewardModel.from_pretrained(bundled_path(DEFAULT_RM), device="cpu").score(
        [str(tmp_path / "a.png")], ex.prompt
    )
    assert row["p_yes"] == pytest.approx(float(expected.p_yes[0]), abs=1e-6)


def test_the_wheel_carries_the_bundled_weights(tmp_path):
    """`pip install .` (not editable) must install the models: build the wheel and look inside."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("rewarddance-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in available():
        for f in bundled_path(name).rglob("*"):
            if f.is_file():
                assert f"rewarddance/bundled/{name}/{f.relative_to(bundled_path(name)).as_posix()}" in names


@pytest.mark.slow  # a ReFL run of the bundled models (~17 s): run by .ci/run after the README command
def test_demo_refl_reports_before_and_after_once_with_progress(tmp_path, capsys, monkeypatch):
    """`rewarddance demo --refl` with a few steps of the shipped ReFL recipe (bundled generator, bundled judge): the
    LoRA is trained by the recipe's settings, loaded and measured on the same held-out prompts and seeds, and the
    paired differences come with their standard errors (a full run's figures: benchmarks/RESULTS.md). The result is
    printed once; stage lines and the training's progress bar go to stderr."""

    import yaml

    import rewarddance.demo as demo
    from rewarddance.cli import main

    real, results = demo.run_refl_demo, []

    def recording(*args, **kw):
        results.append(real(*args, **kw))
        return results[-1]

    monkeypatch.setattr(demo, "run_refl_demo", recording)
    args = ["demo", "--n", "2", "--per-category", "1", "--no-search", "--out", str(tmp_path / "grid.png"), "--refl"]
    assert main([*args, "--refl-steps", "3", "--refl-prompts", "6", "--refl-dir", str(tmp_path / "refl")]) == 0
    out, err = capsys.readouterr()
    print(out)
    (res,) = results
    assert res["before"]["images"] == res["after"]["images"] == 12
    assert res["before"]["p_yes"] != res["after"]["p_yes"]  # the trained LoRA changed the samples
    assert (tmp_path / "refl" / "lora").is_dir() and (tmp_path / "refl" / "metrics.csv").exists()
    recipe = yaml.safe_load(demo.REFL_RECIPE.read_text())
    used = json.loads((tmp_path / "refl" / "config.json").read_text())
    for key in ("loss", "lr", "lora_rank", "batch_size", "stop_range", "num_inference_steps", "guidance_scale"):
        assert used[key] == recipe[key], key
    assert used["max_steps"] == 3 and recipe["max_steps"] >= 100
    d = [a - b for a, b in zip(res["after"]["p_yes_each"], res["before"]["p_yes_each"])]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    assert res["gain"]["p_yes"] == pytest.approx((mean, se)) and se > 0
    assert [line for line in out.splitlines() if "ReFL" in line] == [demo.format_refl(res)]
    assert "ReFL (3 steps, 6 held-out prompts x 2 images = 12): verifier alignment" in out and "paired SE" in out
    assert "ReFL: sampling 6 held-out prompts x 2 images before training" in err
    assert "refl: 100%" in err and "3/3" in err  # the training's progress bar
    assert "search over paths" not in out  # --no-search: no row of NaN


def test_demo_grid_is_crisp_and_says_what_its_marks_mean(tmp_path):
    """Each 32 px candidate is shown as an exact 4x nearest-neighbour upscale (128 px of square pixels); above the
    prompt's line a legend line explains ok / x, the box and the number; both lines are drawn at least 13 px tall
    (Pillow's default 10 px font was hard to read)."""
    import numpy as np
    import torch
    from PIL import Image

    from rewarddance.demo import PromptResult, save_grid

    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 32, 32, generator=gen) for _ in range(3)]
    row = PromptResult("colors", "a photo of a red square", images, [0.91, 0.2, 0.5], [True, False, False], best=0)
    row.reasons = ["ok", "x unclean: speckle", "x no orange triangle"]  # the longest is wider than a cell
    with Image.open(save_grid([row], tmp_path / "grid.png")) as im:
        canvas = np.asarray(im.convert("RGB"))
    tops = []
    for img in images:
        big = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().repeat(4, 0).repeat(4, 1)
        ys, xs = np.nonzero((canvas == big[0, 0]).all(-1))
        found = [y for y, x in zip(ys, xs) if np.array_equal(canvas[y : y + 128, x : x + 128], big)]
        assert len(found) == 1
        tops += found
    inked = (canvas[: min(tops)] < 150).all(-1).any(1)  # rows above the images holding dark text pixels
    bands, start = [], None
    for y, dark in enumerate([*inked, False]):
        if dark and start is None:
            start = y
        elif not dark and start is not None:
            bands.append(y - start)
            start = None
    assert len(bands) == 2 and min(bands) >= 13, bands  # the legend line and the prompt line


@pytest.mark.slow  # 192 samples of the generator (~30 s): run by .ci/run after the README command
def test_generated_pairs_carry_the_verifiers_reasons(generator, tmp_path):
    """Pairs of the generator's own samples (the recipe's writer, 24 of its held-out prompts x 8 samples): each
    rejected image carries the verifier's reason, and a folder written without reasons gets the same ones back."""
    from rewarddance.recipes.shapes import write_generated_pairs

    folder = tmp_path / "generated"
    write_generated_pairs(generator, folder, prompts=24, samples=8, pairs_per_prompt=2, seed=42)
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 10  # about a fifth of the samples pass the strict verifier; prompts with both give pairs
    for row in rows[:30]:
        assert verify(folder / row["chosen"], row["prompt"]).passed
        verdict = verify(folder / row["rejected"], row["prompt"])
        assert not verdict.passed and row["reason"] == verdict.reason[0].upper() + verdict.reason[1:] + "."
    # a folder written before the reasons were recorded gets them from its saved images
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    stripped = [{k: v for k, v in row.items() if k != "reason"} for row in rows]
    (old / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in stripped), encoding="utf-8")
    add_verifier_reasons(old)
    assert [json.loads(line) for line in (old / "pairs.jsonl").read_text(encoding="utf-8").splitlines()] == rows


def test_garbage_pairs_set_a_clean_scene_against_every_kind_of_garbage(held_out):
    from rewarddance.shapes.corrupt import GARBAGE

    folder = held_out["garbage"]
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 130 and {r["garbage"] for r in rows} == set(GARBAGE)
    for row in rows:
        assert verify(folder / row["chosen"], row["prompt"]).passed
        assert not verify(folder / row["rejected"], row["prompt"]).passed


def _toy_recipe(monkeypatch):
    """The judges' recipe at a toy scale (a few images, two steps a stage); returns the recipe module."""
    from rewarddance.recipes import shapes as train

    for name, n in (("scenes", 24), ("train", 12), ("id", 6), ("ood", 6)):
        monkeypatch.setitem(train.DATA, name, (n, *train.DATA[name][1:]))
    monkeypatch.setitem(
        train.GENERATED, "generated-train", dict(prompts=6, samples=4, pairs_per_prompt=1, seed=41, garbage=2)
    )
    monkeypatch.setattr(train, "GARBAGE_EVAL", {**train.GARBAGE_EVAL, "pairs": 13})
    monkeypatch.setitem(train.GENERATED, "generated-eval", dict(prompts=3, samples=4, pairs_per_prompt=1, seed=42))
    monkeypatch.setitem(
        train.GENERATED, "generated-eval-large", dict(prompts=3, samples=4, pairs_per_prompt=1, seed=44)
    )
    monkeypatch.setattr(train, "MIX_RENDERED", 4)
    monkeypatch.setattr(train, "CAPTION", {**train.CAPTION, "max_steps": 2, "batch_size": 4})
    for stage in ("POINTWISE", "ONPOLICY"):
        monkeypatch.setattr(train, stage, {**getattr(train, stage), "max_steps": 2, "batch_size": 2, "warmup_steps": 0})
    return train


@pytest.mark.slow  # the recipe end to end at toy scale (~10 s): run by .ci/run after the README command
def test_ablation_judges_change_one_setting_of_the_recipe(tmp_path, monkeypatch):
    """``train_variant`` end to end at a toy scale: the pairwise and chain-of-thought judges start from the same
    caption-pretrained base (trained once) and differ from the bundled recipe in their one setting only."""
    train = _toy_recipe(monkeypatch)
    judges, base_written = {}, set()
    for variant in train.VARIANTS:
        judges[variant] = train.train_variant("s", variant, tmp_path)
        base_written.add((tmp_path / "s-captions" / "final" / "model.safetensors").stat().st_mtime_ns)
    assert len(base_written) == 1  # the caption stage ran once; the second variant reused it
    for variant, judge in judges.items():
        for stage, base in (("pointwise", tmp_path / "s-captions" / "final"), ("onpolicy", None)):
            cfg = json.loads((tmp_path / f"s-{variant}-{stage}" / "config.json").read_text())
            changed = {k: cfg[k] for k in ("objective", "cot")}
            assert changed == {"objective": "pointwise", "cot": "none", **train.VARIANTS[variant]}
            if base is not None:
                assert cfg["model"] == str(base)
        RewardModel.from_pretrained(judge, device="cpu")  # a saved, loadable judge
    rows = (tmp_path / "mixed-train" / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    assert rows and all(json.loads(row)["reason"] for row in rows)  # chain-of-thought targets for every pair
    # the garbage negatives: beside a passing sample of the same prompt, two kinds per prompt, each with its reason
    generated = [json.loads(r) for r in (tmp_path / "generated-train" / "pairs.jsonl").read_text().splitlines()]
    junk = [r for r in generated if "garbage" in r]
    info = json.loads((tmp_path / "generated-train" / "info.json").read_text())
    per_prompt = [sum(r["prompt"] == p for r in junk) for p in {r["prompt"] for r in junk}]
    assert info["garbage_pairs"] == len(junk) > 0 and max(per_prompt) <= 2 and "garbage_that_passed" in info
    for row in junk:
        folder = tmp_path / "generated-train"
        assert verify(folder / row["chosen"], row["prompt"]).passed
        verdict = verify(folder / row["rejected"], row["prompt"])
        assert not verdict.passed and row["reason"] == verdict.reason[0].upper() + verdict.reason[1:] + "."


@pytest.mark.slow  # the recipe end to end at toy scale (~10 s): run by .ci/run after the README command
def test_a_judge_with_another_vision_patch_has_its_own_folders_and_card(tmp_path, monkeypatch):
    """``rm --patch 7``: the recipe unchanged but for the vision patch (64 image tokens instead of 16), in work
    folders of its own so the bundled size's stages are never reused for it; a patch that does not divide the image
    size is refused before anything is trained."""
    train = _toy_recipe(monkeypatch)
    with pytest.raises(ValueError, match="patch 5 must be a positive divisor of the judges' image size 56"):
        train.train_rm_size("s", tmp_path, tmp_path / "out5", patch=5)
    assert not (tmp_path / "scenes").exists()
    facts = train.train_rm_size("s", tmp_path, tmp_path / "out", patch=7)
    assert facts["name"] == "shapes-s-p7" and facts["shape"] == {**train.RM_SIZES["s"], "patch_size": 7}
    assert not list(tmp_path.glob("s-captions")) and (tmp_path / "s-p7-onpolicy" / "final").is_dir()
    vision = json.loads((tmp_path / "out" / "config.json").read_text())["vision_config"]
    assert (vision["patch_size"], vision["image_size"]) == (7, train.IMAGE_SIZE)
    assert json.loads((tmp_path / "out" / "card.json").read_text())["name"] == "shapes-s-p7"
    from PIL import Image

    rm = RewardModel.from_pretrained(tmp_path / "out", device="cpu")
    assert rm.score([Image.new("RGB", (32, 32), "grey")], ["a photo of a circle"]).p_yes.shape == (1,)


@pytest.mark.slow  # the recipe end to end at toy scale (~13 s): run by .ci/run after the README command
def test_a_size_named_in_scaled_gets_its_factors_and_the_blob_pairs(tmp_path, monkeypatch):
    """``rm --size l`` at a toy scale with the recipe's :data:`SCALED`: its factors reach L's stages (every learning
    rate halved, 1.5x the rendered-pair steps, 3x the last stage's), its last stage learns from the recipe's mix
    followed by the rendered blob negatives, which its card reports, and S's settings stay the recipe's own."""
    train = _toy_recipe(monkeypatch)
    monkeypatch.setattr(train, "BLOB_PAIRS", dict(scenes=12, seed=3))
    facts = train.train_rm_size("l", tmp_path, tmp_path / "out")
    config = {
        stage: json.loads((tmp_path / f"l-{stage}" / "config.json").read_text())
        for stage in ("captions", "pointwise", "onpolicy")
    }
    assert config["captions"]["lr"] == train.CAPTION["lr"] / 2
    assert (config["pointwise"]["lr"], config["onpolicy"]["lr"]) == (
        train.POINTWISE["lr"] / 2,
        train.ONPOLICY["lr"] / 2,
    )
    assert (config["pointwise"]["max_steps"], config["onpolicy"]["max_steps"]) == (3, 6)
    assert config["onpolicy"]["data"] == str(tmp_path / "mixed-train-blobs")
    assert [train.stage_settings("s", stage) for stage in ("caption", "pointwise", "onpolicy")] == [
        train.CAPTION,
        train.POINTWISE,
        train.ONPOLICY,
    ]
    mixed, blobs = (
        (tmp_path / name / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
        for name in ("mixed-train-blobs", "blob-pairs")
    )
    recipe_mix = (tmp_path / "mixed-train" / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    assert blobs and [json.loads(row)["id"] for row in mixed] == [json.loads(row)["id"] for row in recipe_mix + blobs]
    assert facts["blob_pairs"]["pairs"] == len(blobs) and facts["onpolicy_training"]["max_steps"] == 6
    assert f"{len(blobs)} rendered blob negatives" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_each_bundled_judges_card_holds_the_recipes_settings_for_its_size(size):
    """The bundled judges were trained by what the recipe now says for their size (:data:`SCALED` included), so
    ``rm --size SIZE`` rebuilds the judge its card describes."""
    from rewarddance.recipes.shapes import BLOB_PAIRS, SCALED, stage_settings

    facts = card(f"shapes-{size}")
    caption = {k: v for k, v in facts["caption_pretraining"].items() if k != "final_token_accuracy"}
    assert caption == stage_settings(size, "caption")
    assert facts["judge_training"] == stage_settings(size, "pointwise")
    assert facts["onpolicy_training"] == stage_settings(size, "onpolicy")
    blobs = facts.get("blob_pairs")
    assert bool(blobs) == bool(SCALED.get(size, {}).get("blob_pairs"))
    assert not blobs or {k: blobs[k] for k in BLOB_PAIRS} == BLOB_PAIRS


def test_a_stopped_recipe_stage_ends_the_recipe_and_records_nothing(tmp_path):
    """A stage stopped midway (SIGINT / SIGTERM: the trainer returns ``stopped_at``) ends the recipe with one line
    instead of going on to the next stage from a model that was never finished; no stage record is written, so the
    next run resumes the stage from its checkpoints."""
    from rewarddance.recipes.shapes import RecipeStopped, _stage

    folder = tmp_path / "s-captions"
    folder.mkdir()
    with pytest.raises(RecipeStopped, match="s-captions: stopped at step 7; run the same command again to resume"):
        _stage(folder, lambda: {"stopped_at": 7, "history": []}, print)
    assert not (folder / "stage.json").exists()
    done = _stage(folder, lambda: {"history": [{"step": 9, "loss": 0.5}]}, print)
    assert done["last"] == {"step": 9, "loss": 0.5} and (folder / "stage.json").exists()


class _ScriptedPipe:
    """A stand-in generator: a clean render of the prompt when its noise seed is in ``good``, else
    RGB noise (not a clean scene). Records every seed it was asked for."""

    def __init__(self, good):
        self.good, self.seeds = set(good), []

    def __call__(self, prompts, generator, **kw):
        import types

        import numpy as np
        from PIL import Image

        from rewarddance.shapes import parse_prompt
        from rewarddance.shapes.render import render
        from rewarddance.shapes.sample import example_rng, scene_for

        images = []
        for text, gen in zip(prompts, generator):
            seed = gen.initial_seed()
            self.seeds.append(seed)
            if seed in self.good:
                images.append(render(scene_for(parse_prompt(text), example_rng(seed, "id", 0)), 32))
            else:
                noise = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
                images.append(Image.fromarray(noise))
        return types.SimpleNamespace(images=images)


def test_measure_generator_counts_over_prompts_and_samples():
    """Prompt i passes for samples j < k_i (seed 7 * 100000 + j * 12 + i); the overall share, its SE over prompts,
    the unclean share, the first-sample share and the categories are recomputed here from that script."""
    n, samples = 12, 4
    passes = [i % 5 for i in range(n)]  # 0..4 passing samples per prompt
    pipe = _ScriptedPipe(7 * 100000 + j * n + i for i in range(n) for j in range(min(passes[i], samples)))
    got = measure_generator(pipe, n, 7, defaults={"num_inference_steps": 1}, samples=samples)
    assert sorted(pipe.seeds) == [7 * 100000 + k for k in range(n * samples)]  # every draw once, no shared noise
    shares = [min(p, samples) / samples for p in passes]
    mean = sum(shares) / n
    assert got["alignment"] == pytest.approx(mean, abs=1e-4)
    assert got["alignment_se"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in shares) / n / n), abs=1e-4)
    assert got["not_clean"] == pytest.approx(1 - mean, abs=1e-4)  # every failure here is noise
    assert got["first_sample_alignment"] == pytest.approx(sum(p > 0 for p in passes) / n, abs=1e-4)
    assert set(got["by_category"]) == set(CATEGORIES)
    assert (got["prompts"], got["samples"]) == (n, samples) and "per_prompt" not in got
    paired = measure_generator(pipe, n, 7, defaults={"num_inference_steps": 1}, samples=samples, per_prompt=True)
    assert paired["per_prompt"] == {"alignment": shares, "clean": shares}  # (every failure is noise)
