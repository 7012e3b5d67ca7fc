"""ShapesWorld: renderer/verifier round trip, robustness floors, pair labels, splits, determinism, bad input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from rewarddance.shapes import (
    CATEGORIES,
    HELD_OUT_BACKGROUND,
    HELD_OUT_COMBOS,
    NEGATIVES,
    Background,
    Scene,
    ShapeObject,
    ShapesError,
    check,
    corrupt,
    detect,
    evaluate,
    parse_prompt,
    render,
    render_array,
    sample_examples,
    sample_pairs,
    scene_in_split,
    verify,
    write_dataset,
)
from rewarddance.shapes.cli import add_shapes_commands
from rewarddance.shapes.render import render_background
from rewarddance.shapes.sample import scene_for
from rewarddance.shapes.scene import BACKGROUND_RANGE, BACKGROUND_STYLES
from rewarddance.shapes.verify import label_components

# Robustness floors: verifier accuracy on 60 in-domain scenes (10 per category) under each corruption. Blur sigma
# is in px of a 64 px image (scaled with size), JPEG is the quality, noise the std in 0-255 units. The benchmark
# (benchmarks/RESULTS.md) has the full curves on 600 scenes.
ROBUSTNESS_FLOORS = {
    # (kind, level, size): floor  (measured on this sample: 1.00, 0.98, 0.95, 0.98, 0.92, 0.80, 1.00, 1.00 ...)
    ("blur", 1.0, 64): 0.98,
    ("blur", 1.5, 128): 0.95,
    ("blur", 2.0, 64): 0.90,
    ("jpeg", 75, 64): 0.95,
    ("jpeg", 50, 64): 0.88,
    ("jpeg", 30, 64): 0.70,  # 0.80 before the strict checks; 0.73 now: 4:2:0 chroma smears 12-20 px objects' edges
    ("jpeg", 30, 128): 0.97,
    ("noise", 10.0, 64): 0.98,
    ("noise", 20.0, 64): 0.97,
    ("noise", 30.0, 128): 0.95,
}


def _accuracy(examples, size, kind=None, level=None) -> float:
    passed = 0
    for i, ex in enumerate(examples):
        image = render(ex.scene, size)
        if kind is not None:
            image = corrupt(image, kind, level, seed=i)
        passed += verify(image, ex.spec).passed
    return passed / len(examples)


@pytest.fixture(scope="module")
def examples_id():
    return sample_examples(120, seed=101, split="id")


@pytest.fixture(scope="module")
def examples_ood():
    return sample_examples(60, seed=202, split="ood")


# --- renderer / verifier round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128, 256])
def test_round_trip_per_category(examples_id, size):
    """Issue bar: >= 99 % at 64-256 px; each category must also be nearly perfect."""
    for category in CATEGORIES:
        subset = [ex for ex in examples_id if ex.category == category]
        assert len(subset) == 20
        acc = _accuracy(subset, size)
        assert acc >= 0.95, (category, size, acc)
    assert _accuracy(examples_id, size) >= 0.99


@pytest.mark.parametrize("size", [32, 512])
def test_round_trip_small_and_large(examples_id, size):
    examples = examples_id[:36]
    assert _accuracy(examples, size) >= (0.94 if size == 32 else 0.99)


def test_round_trip_ood(examples_ood):
    assert _accuracy(examples_ood, 64) >= 0.98
    assert _accuracy(examples_ood, 128) >= 0.98


def test_detections_match_scene():
    ex = sample_examples(1, seed=5, categories=["counting"], start=3)[0]
    dets = detect(render(ex.scene, 128))
    truth = sorted((o.colour, o.shape) for o in ex.scene.objects)
    assert sorted((d.colour, d.shape) for d in dets) == truth
    for d in dets:
        obj = min(ex.scene.objects, key=lambda o: (o.x - d.x) ** 2 + (o.y - d.y) ** 2)
        assert abs(obj.x - d.x) < 0.03 and abs(obj.y - d.y) < 0.03
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128


def test_every_colour_and_shape_is_detected():
    """Each colour x shape on each background style, at 48 px."""
    styles = [*BACKGROUND_STYLES, HELD_OUT_BACKGROUND]
    for k, (colour, shape) in enumerate(
        (c, s)
        for c in ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
        for s in ("circle", "square", "triangle")
    ):
        bg = Background(style=styles[k % 4], level=120 + k, contrast=12, frequency=3, seed=k)
        scene = Scene((ShapeObject(shape, colour, 0.45, 0.55, 0.26, rotation=7.0 * k),), bg)
        dets = detect(render(scene, 48))
        assert [(d.colour, d.shape) for d in dets] == [(colour, shape)], (colour, shape, bg.style)


def test_render_sizes_and_background_range():
    ex = sample_examples(1, seed=9, categories=["color_attr"])[0]
    for size in (16, 32, 100, 512):
        arr = render_array(ex.scene, size)
        assert arr.shape == (size, size, 3) and arr.dtype == np.uint8
    for style in (*BACKGROUND_STYLES, HELD_OUT_BACKGROUND):
        bg = render_background(Background(style=style, level=160, contrast=40, tint=(5, -5, 5), seed=1), 64)
        assert bg.min() >= BACKGROUND_RANGE[0] and bg.max() <= BACKGROUND_RANGE[1]


def test_label_components():
    classes = np.zeros((8, 9), dtype=np.uint8)
    classes[1:3, 1:3] = 1  # a blob
    classes[3, 3] = 1  # touches it diagonally: same component
    classes[5:7, 5:8] = 2  # another colour
    classes[6, 8] = 1  # touches it, but another class
    labels, n = label_components(classes)
    assert n == 3
    assert labels[1, 1] == labels[3, 3] != labels[5, 5]
    assert labels[6, 8] not in (labels[5, 5], labels[1, 1])
    assert (labels == 0).sum() == (classes == 0).sum()


# --- robustness ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "level", "size"), list(ROBUSTNESS_FLOORS))
def test_robustness_floor(examples_id, kind, level, size):
    examples = examples_id[::2]  # 60 scenes, 10 per category
    acc = _accuracy(examples, size, kind, level)
    assert acc >= ROBUSTNESS_FLOORS[(kind, level, size)], (kind, level, size, acc)


def test_degrades_gracefully(examples_id):
    """Accuracy falls step by step with blur strength, without a cliff up to a 2 px blur at 64 px."""
    examples = examples_id[1::2]
    accs = [_accuracy(examples, 64, "blur", level) for level in (0.5, 1.0, 1.5, 2.0)]
    assert all(a >= b - 0.04 for a, b in zip(accs, accs[1:])), accs
    assert accs[0] >= 0.98 and accs[-1] >= 0.85, accs


# --- prompts ------------------------------------------------------------------------------------------------------


def test_prompt_round_trip(examples_id, examples_ood):
    for ex in [*examples_id, *examples_ood]:
        assert parse_prompt(ex.prompt) == ex.spec
        assert parse_prompt(ex.prompt.upper() + ".") == ex.spec


def test_prompt_forms():
    assert parse_prompt("A photo of an orange square.").objects[0].colour == "orange"
    assert parse_prompt("a photo of three circles").category == "counting"
    assert parse_prompt("a photo of one circle").category == "counting"
    assert parse_prompt("a circle").category == "single_object"
    spec = parse_prompt("a photo of a red circle and a blue square")
    assert spec.category == "color_attr" and spec.text == "a photo of a red circle and a blue square"
    spec = parse_prompt("a photo of a triangle below a square")
    assert spec.category == "position" and spec.relation == "below"


def test_check_rules():
    def obj(shape, colour, x, y):
        return ShapeObject(shape, colour, x, y, 0.2)

    two = [obj("circle", "red", 0.2, 0.5), obj("square", "blue", 0.8, 0.5)]
    assert check(parse_prompt("a photo of a circle left of a square"), two)[0]
    passed, reason = check(parse_prompt("a photo of a circle right of a square"), two)
    assert not passed and "left of" in reason
    assert check(parse_prompt("a photo of a red circle and a blue square"), two)[0]
    passed, reason = check(parse_prompt("a photo of a blue circle and a red square"), two)
    assert not passed and "blue circle" in reason
    assert check(parse_prompt("a photo of one circle"), two)[0]
    passed, reason = check(parse_prompt("a photo of two circles"), two)
    assert not passed and "one circle instead of two" in reason
    # one object cannot satisfy two phrases
    assert not check(parse_prompt("a photo of a circle and a red circle"), two[:1])[0]


# --- preference pairs ---------------------------------------------------------------------------------------------


def _differences(chosen: Scene, rejected: Scene) -> set[str]:
    """Which attributes differ between two scenes with objects in the same order (or a count change)."""
    if len(chosen.objects) != len(rejected.objects):
        return {"count"}
    out = set()
    for a, b in zip(chosen.objects, rejected.objects):
        if a.shape != b.shape:
            out.add("shape")
        if a.colour != b.colour:
            out.add("colour")
        if (a.x, a.y) != (b.x, b.y):
            out.add("position")
        if a.size != b.size:
            out.add("size")
    return out


@pytest.mark.parametrize("split", ["id", "ood"])
def test_pair_labels(split):
    pairs = sample_pairs(90, seed=303, split=split)
    kinds = {p.negative for p in pairs}
    assert kinds == set(NEGATIVES), kinds
    for p in pairs:
        assert verify(render(p.chosen.scene, 64), p.chosen.spec).passed, (p.prompt, "chosen")
        verdict = verify(render(p.rejected, 64), p.chosen.spec)
        assert not verdict.passed, (p.prompt, p.negative, p.reason)
        assert p.reason.endswith(".") and len(p.reason) > 20
        if p.negative == "easy":
            continue
        assert p.rejected.background == p.chosen.scene.background
        diff = _differences(p.chosen.scene, p.rejected)
        expected = {"hard-count": {"count"}, "hard-colour": {"colour"}, "hard-shape": {"shape"}}
        if p.negative == "hard-relation":
            assert diff == {"position"}
            assert p.chosen.spec.relation in p.reason
        else:
            assert diff == expected[p.negative], (p.negative, diff)


def test_pair_reasons_name_the_mismatch():
    pairs = sample_pairs(120, seed=404)
    for p in pairs:
        if p.negative == "hard-colour":
            changed = {o.colour for o in p.rejected.objects} - {o.colour for o in p.chosen.scene.objects}
            swapped = "swapped" in p.reason
            assert swapped or any(c in p.reason for c in changed), p.reason
        if p.negative == "hard-shape":
            new_shapes = {o.shape for o in p.rejected.objects} - {o.shape for o in p.chosen.scene.objects}
            assert any(s in p.reason for s in new_shapes) or "instead of" in p.reason, p.reason
        if p.negative == "hard-count" and p.chosen.category == "counting":
            assert "but the prompt asks for" in p.reason


# --- splits -------------------------------------------------------------------------------------------------------


def test_splits_disjoint():
    id_pairs = sample_pairs(120, seed=7, split="id")
    ood_pairs = sample_pairs(120, seed=7, split="ood")
    for p in id_pairs:
        for scene in (p.chosen.scene, p.rejected):
            assert scene_in_split(scene, "id")
            assert scene.background.style != HELD_OUT_BACKGROUND
            assert not any(o.combo in HELD_OUT_COMBOS for o in scene.objects)
    for p in ood_pairs:
        assert scene_in_split(p.chosen.scene, "ood")
        assert p.rejected.background.style == HELD_OUT_BACKGROUND
    # prompts that name a colour and a shape never name a held-out combination in-domain, always out-of-domain
    id_prompts = {p.prompt for p in id_pairs if p.chosen.category in ("colors", "color_attr")}
    ood_prompts = {p.prompt for p in ood_pairs if p.chosen.category in ("colors", "color_attr")}
    assert id_prompts and ood_prompts and not id_prompts & ood_prompts
    for p in ood_pairs:
        if p.chosen.category in ("colors", "color_attr"):
            assert any((r.colour, r.shape) in HELD_OUT_COMBOS for r in p.chosen.spec.objects)


def test_balanced_categories():
    examples = sample_examples(61, seed=1)
    counts = {c: sum(ex.category == c for ex in examples) for c in CATEGORIES}
    assert max(counts.values()) - min(counts.values()) <= 1


# --- determinism --------------------------------------------------------------------------------------------------


def test_determinism(tmp_path):
    a = sample_examples(24, seed=11)
    b = sample_examples(24, seed=11)
    assert a == b
    assert sample_examples(6, seed=11, start=10) == a[10:16]  # item i depends only on (seed, split, i)
    assert sample_examples(24, seed=12) != a
    assert [p.reason for p in sample_pairs(12, seed=5)] == [p.reason for p in sample_pairs(12, seed=5)]
    assert np.array_equal(render_array(a[3].scene, 96), render_array(a[3].scene, 96))
    write_dataset(tmp_path / "one", n=12, size=48, pairs=True, seed=3)
    write_dataset(tmp_path / "two", n=12, size=48, pairs=True, seed=3)
    for name in ("manifest.jsonl", "pairs.jsonl", "images/id-000004.png", "images/id-000004-rejected.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


# --- disk format and CLI ------------------------------------------------------------------------------------------


def _cli(argv):
    parser = argparse.ArgumentParser(prog="rewarddance")
    add_shapes_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_make_and_eval(tmp_path, capsys):
    out = tmp_path / "ds"
    assert _cli(["shapes", "make", "--n", "18", "--out", str(out), "--pairs", "--size", "64", "--no-progress"]) == 0
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(manifest) == len(pairs) == 18
    for rec in manifest:
        assert {"id", "prompt", "category", "image", "split", "scene"} <= set(rec)
        assert Image.open(out / rec["image"]).size == (64, 64)
        assert Scene.from_dict(rec["scene"]).objects
    for rec in pairs:
        assert rec["negative"] in NEGATIVES and rec["reason"]
        assert (out / rec["chosen"]).is_file() and (out / rec["rejected"]).is_file()
    info = json.loads((out / "info.json").read_text())
    assert info["format"] == "shapesworld" and info["n"] == 18
    capsys.readouterr()

    assert _cli(["shapes", "eval", str(out), "--no-progress", "--out", str(tmp_path / "rows.jsonl")]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "100.00%" in table and "color_attr" in table
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 18

    # the rejected images, scored against their prompts: a JSONL in the same folder, read as a file
    rejected = tmp_path / "ds" / "rejected.jsonl"
    rejected.write_text("".join(json.dumps({"image": r["rejected"], "prompt": r["prompt"]}) + "\n" for r in pairs))
    assert _cli(["shapes", "eval", str(rejected), "--json", "--no-progress", "--min-accuracy", "0.5"]) == 1
    scores = json.loads(capsys.readouterr().out)
    assert scores["overall"] == 0.0 and scores["n"] == 18

    with pytest.raises(ShapesError, match="overwrite"):
        _cli(["shapes", "make", "--n", "2", "--out", str(out), "--no-progress"])
    assert _cli(["shapes", "make", "--n", "2", "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert len(list((out / "images").glob("*.png"))) == 2 and not (out / "pairs.jsonl").exists()


def test_scene_dict_round_trip(examples_ood):
    for ex in examples_ood[:12]:
        data = json.loads(json.dumps(ex.scene.to_dict()))
        assert Scene.from_dict(data) == ex.scene


def test_eval_geneval_layout(tmp_path):
    """A folder as GenEval's generation script writes it: NNNNN/metadata.jsonl + NNNNN/samples/*.png."""
    for k, ex in enumerate(sample_examples(4, seed=21)):
        sub = tmp_path / f"{k:05d}"
        (sub / "samples").mkdir(parents=True)
        (sub / "metadata.jsonl").write_text(json.dumps({"prompt": ex.prompt, "tag": ex.category}) + "\n")
        for j in range(2):
            render(ex.scene, 64).save(sub / "samples" / f"{j:04d}.png")
    result = evaluate(tmp_path)
    assert result.scoreboard.n == 8 and result.scoreboard.overall == 1.0


def test_cli_ood_split(tmp_path):
    out = tmp_path / "ood"
    assert _cli(["shapes", "make", "--n", "6", "--out", str(out), "--split", "ood", "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(r["split"] == "ood" and r["id"].startswith("ood-") for r in records)
    assert all(r["scene"]["background"]["style"] == HELD_OUT_BACKGROUND for r in records)


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "word"),
    [
        ("a photo of a pink circle", "pink"),
        ("a photo of a red hexagon", "hexagon"),
        ("a photo of a circle and a grey square", "grey"),
        ("a photo of a dog left of a circle", "dog"),
        ("", "empty"),
        ("a photo of circles", "number"),
    ],
)
def test_bad_prompts(prompt, word):
    with pytest.raises(ShapesError, match=word):
        parse_prompt(prompt)


def test_bad_scene_values():
    with pytest.raises(ShapesError, match="colour 'pink'"):
        ShapeObject("circle", "pink", 0.5, 0.5, 0.2)
    with pytest.raises(ShapesError, match="shape 'star'"):
        ShapeObject("star", "red", 0.5, 0.5, 0.2)
    with pytest.raises(ShapesError, match="background style"):
        Background(style="sky")
    with pytest.raises(ShapesError, match="render size"):
        render_array(sample_examples(1)[0].scene, 8)
    with pytest.raises(ShapesError, match="split"):
        sample_examples(2, split="test")
    with pytest.raises(ShapesError, match="held-out"):
        scene_for(parse_prompt("a photo of a red triangle"), np.random.default_rng(0), "id")
    with pytest.raises(ShapesError, match="held-out"):
        scene_for(parse_prompt("a photo of a red circle"), np.random.default_rng(0), "ood")
    with pytest.raises(ShapesError, match="corruption"):
        corrupt(Image.new("RGB", (32, 32)), "rain", 1)


def test_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ShapesError, match="no manifest.jsonl"):
        evaluate(empty)
    with pytest.raises(ShapesError, match="no such file or folder"):
        evaluate(tmp_path / "nowhere")
    (empty / "manifest.jsonl").write_text("\n")
    with pytest.raises(ShapesError, match="no records"):
        evaluate(empty)

    folder = tmp_path / "ds"
    write_dataset(folder, n=3, size=48)
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    missing = json.loads(lines[1])
    missing["image"] = "images/gone.png"
    (folder / "manifest.jsonl").write_text("\n".join([lines[0], json.dumps(missing), lines[2]]) + "\n")
    with pytest.raises(ShapesError, match="gone.png"):
        evaluate(folder)
    result = evaluate(folder, skip_bad=True)
    assert result.scoreboard.n == 2 and len(result.errors) == 1 and "gone.png" in result.errors[0]["error"]

    (folder / "manifest.jsonl").write_text(lines[0] + "\nnot json\n")
    with pytest.raises(ShapesError, match="line|:2"):
        evaluate(folder)
    (folder / "manifest.jsonl").write_text(
        json.dumps({"image": "images/id-000000.png", "prompt": "a blue star"}) + "\n"
    )
    with pytest.raises(ShapesError, match="star"):
        evaluate(folder)
    (folder / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ShapesError, match="cannot read image"):
        verify(folder / "bad.png", "a photo of a circle")


def test_blob_pairs_bend_shapes_until_the_verifier_rejects_them(tmp_path):
    """``shapes.blobs`` (the recipe's blob negatives, benchmarks/blob_pairs.py): every pair sets a clean scene the
    strict verifier passes against the same scene with its shapes bent, which the verifier rejects as a shapeless
    blob; the background is left as it was. A folder already written is reused, not redrawn."""
    from rewarddance.shapes.blobs import write_blob_pairs

    counts = write_blob_pairs(tmp_path, scenes=12, seed=3)
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert counts["pairs"] == len(rows) >= 6
    for row in rows:
        chosen, rejected = Image.open(tmp_path / row["chosen"]), Image.open(tmp_path / row["rejected"])
        assert verify(chosen, row["prompt"]).passed
        verdict = verify(rejected, row["prompt"])
        assert not verdict.passed and "fits no shape" in verdict.reason and "fits no shape" in row["reason"]
        a, b = np.asarray(chosen, dtype=int), np.asarray(rejected, dtype=int)
        assert (a != b).any() and (a == b).all(axis=-1).mean() > 0.5  # shapes moved, most of the frame did not
    written = (tmp_path / "pairs.jsonl").stat().st_mtime_ns
    assert write_blob_pairs(tmp_path, scenes=12, seed=3) == counts
    assert (tmp_path / "pairs.jsonl").stat().st_mtime_ns == written
