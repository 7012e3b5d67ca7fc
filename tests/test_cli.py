"""The command line scores the same numbers as the Python API and reports user errors in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewarddance import RewardModel
from rewarddance.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
IMAGES = [str(EXAMPLES / "red_circle.png"), str(EXAMPLES / "blue_square.png")]


def test_score_json_equals_api(tiny_vlm, capsys):
    path = tiny_vlm("llava")
    assert main(["score", "--model", path, *IMAGES, "--prompt", "a red circle", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = RewardModel.from_pretrained(path, device="cpu").score(IMAGES, "a red circle")
    assert [r["image"] for r in rows] == IMAGES
    assert [r["p_yes"] for r in rows] == pytest.approx(expected.p_yes.tolist(), abs=1e-6)


def test_compare_and_table(tiny_vlm, capsys):
    path = tiny_vlm("llava")
    assert main(["compare", "--model", path, *IMAGES, "--prompt", "a red circle"]) == 0
    assert "better than" in capsys.readouterr().out
    assert main(["score", "--model", path, IMAGES[0], "--prompt", "a red circle"]) == 0
    assert "p_yes" in capsys.readouterr().out


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
