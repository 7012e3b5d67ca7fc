"""The command line scores the same numbers as the Python API and reports user errors in one line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from rewarddance import RewardModel
from rewarddance.cli import main
from rewarddance.training.data import DataError, PreferencePair, load_pair_images

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
IMAGES = [str(EXAMPLES / "red_circle.png"), str(EXAMPLES / "blue_square.png")]


def test_score_json_equals_api(tiny_vlm, capsys):
    path = tiny_vlm("llava")
    assert main(["score", "--model", path, *IMAGES, "--prompt", "a red circle", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = RewardModel.from_pretrained(path, device="cpu").score(IMAGES, "a red circle")
    assert [r["image"] for r in rows] == IMAGES
    assert [r["p_yes"] for r in rows] == pytest.approx(expected.p_yes.tolist(), abs=1e-6)


def _compare(argv, capsys) -> dict:
    assert main(["compare", *argv, "--prompt", "a red circle", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_values_equal_the_api(tiny_vlm, capsys):
    """compare prints the API's numbers: pairwise P(yes) to "is B better than A?" for a judge without
    rewarddance.json; with --objective pointwise, sigmoid(margin B - margin A) of the API's scores, and the swapped
    command gives the complement."""
    path = tiny_vlm("llava")
    rm = RewardModel.from_pretrained(path, device="cpu")
    a, b = IMAGES
    row = _compare(["--model", path, a, b], capsys)
    want = rm.compare([b], [a], "a red circle")
    assert row["objective"] == "pairwise"
    assert row["p_b_better"] == pytest.approx(float(want.p_yes[0]), rel=1e-5)
    assert row["margin"] == pytest.approx(float(want.margin[0]), rel=1e-5)
    assert row["winner"] == (b if row["p_b_better"] > 0.5 else a)
    scores = rm.score([a, b], "a red circle")
    bt = 1 / (1 + math.exp(-float(scores.margin[1] - scores.margin[0])))
    assert abs(bt - 0.5) > 1e-3 and abs(bt - float(want.p_yes[0])) > 1e-3  # the two objectives differ here
    ab = _compare(["--model", path, a, b, "--objective", "pointwise"], capsys)
    ba = _compare(["--model", path, b, a, "--objective", "pointwise"], capsys)
    assert ab["objective"] == "pointwise" and ab["p_b_better"] == pytest.approx(bt, rel=1e-5)
    assert ab["p_yes_a"] == pytest.approx(float(scores.p_yes[0]), rel=1e-5)
    assert ab["p_yes_b"] == pytest.approx(float(scores.p_yes[1]), rel=1e-5)
    assert ab["p_b_better"] + ba["p_b_better"] == pytest.approx(1.0, abs=1e-6)
    assert ab["winner"] == ba["winner"] == (b if bt > 0.5 else a)
    assert main(["compare", "--model", path, a, b, "--prompt", "a red circle", "--objective", "pointwise"]) == 0
    assert f"P({b} better than {a}) = {bt:.4f}" in capsys.readouterr().out
    assert main(["score", "--model", path, IMAGES[0], "--prompt", "a red circle"]) == 0
    assert "p_yes" in capsys.readouterr().out


def test_eval_rm_max_pixels(tiny_vlm, tmp_path, capsys):
    """eval-rm --max-pixels refuses bigger images (paths and Parquet-style bytes) in one line naming the pair."""
    data = tmp_path / "pairs"
    data.mkdir()
    shutil.copy(EXAMPLES / "red_circle.png", data / "c.png")  # 128 x 128
    shutil.copy(EXAMPLES / "blue_square.png", data / "r.png")
    row = {"id": "p0", "prompt": "a red circle", "chosen": "c.png", "rejected": "r.png"}
    (data / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    argv = ["eval-rm", "--model", tiny_vlm("llava"), "--data", str(data), "--objective", "pointwise"]
    assert main([*argv, "--max-pixels", "16383"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pair p0" in err and "16,384 pixels exceeds the limit of 16,383" in err
    assert main([*argv, "--max-pixels", "16384"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 1
    png = (data / "c.png").read_bytes()
    pair = PreferencePair(id="b0", prompt="x", chosen=png, rejected=png)
    with pytest.raises(DataError, match="pair b0: pair b0 chosen: 128x128 exceeds the limit of 100 pixels"):
        load_pair_images(pair, max_pixels=100)
    assert load_pair_images(pair, max_pixels=16384)[0].size == (128, 128)


def test_bad_image_is_one_clear_line(tiny_vlm, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_text("nope")
    assert main(["score", "--model", tiny_vlm("llava"), str(bad), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err


def test_shapes_commands_through_main(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["shapes", "make", "--n", "6", "--out", str(out), "--no-progress"]) == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6
    capsys.readouterr()
    assert main(["shapes", "eval", str(out), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == 1.0
    assert main(["shapes", "eval", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "missing" in capsys.readouterr().err
