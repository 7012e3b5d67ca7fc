"""A judge says what it was trained to answer (``rewarddance.json``), and the command line asks it that by default:
eval-rm's objective, compare's method, the cot mode; asking otherwise warns in one line. Also: the bundled judges
run in 4-bit on the CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rewarddance import RewardModel
from rewarddance.bundled import REWARD_MODELS, bundled_path
from rewarddance.cli import main
from rewarddance.judge_info import JudgeInfoError, TrainedFor, read_trained_for
from rewarddance.shapes import write_dataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
CIRCLE, SQUARE = str(EXAMPLES / "red_circle.png"), str(EXAMPLES / "blue_square.png")
POINTWISE = TrainedFor(objective="pointwise", cot="none", task="alignment")


@pytest.fixture(scope="module")
def shapes_s():
    return RewardModel.from_pretrained("shapes-s", device="cpu")


def test_bundled_judges_record_what_they_answer(shapes_s, tiny_vlm):
    for name in REWARD_MODELS:
        assert read_trained_for(bundled_path(name)) == POINTWISE, name
    assert shapes_s.trained_for == POINTWISE
    assert RewardModel.from_pretrained(tiny_vlm("llava"), device="cpu").trained_for is None  # a general VLM


def test_a_bad_record_is_a_one_line_error(tmp_path):
    (tmp_path / "rewarddance.json").write_text('{"objective": "listwise"}')
    with pytest.raises(JudgeInfoError, match=r"rewarddance.json: not a judge description.*listwise"):
        read_trained_for(tmp_path)


def test_train_rm_saves_what_the_judge_was_trained_for(tiny_vlm, tmp_path):
    from rewarddance.training.rm import RMTrainConfig, train_rm

    data = tmp_path / "pairs"
    write_dataset(data, n=4, size=32, pairs=True, seed=1)
    cfg = RMTrainConfig(
        model=tiny_vlm("llava"),
        data=str(data),
        output_dir=str(tmp_path / "run"),
        objective="pairwise",
        cot="judgment_first",
        batch_size=2,
        max_steps=1,
        warmup_steps=0,
        save_every=0,
        eval_every=0,
        lora_rank=4,
    )
    train_rm(cfg, progress=False)
    final = tmp_path / "run" / "final"
    expected = TrainedFor(objective="pairwise", cot="judgment_first", task="alignment")
    assert read_trained_for(final) == expected
    assert json.loads((final / "rewarddance.json").read_text())["answer"] == "yes or no, then a reason"
    assert RewardModel.from_pretrained(final, device="cpu").trained_for == expected


def test_compare_with_a_pointwise_judge_uses_its_own_scores(shapes_s, capsys):
    argv = ["compare", "--model", "shapes-s", "--prompt", "a red circle", "--json"]
    assert main([*argv, SQUARE, CIRCLE]) == 0
    forward = json.loads(capsys.readouterr().out)
    assert main([*argv, CIRCLE, SQUARE]) == 0
    captured = capsys.readouterr()
    backward = json.loads(captured.out)
    assert captured.err == ""  # asked what it was trained for: no warning
    out = shapes_s.score([SQUARE, CIRCLE], "a red circle")
    bt = 1 / (1 + math.exp(-float(out.margin[1] - out.margin[0])))  # P(circle better than square)
    assert forward["objective"] == "pointwise"
    assert forward["p_b_better"] == pytest.approx(bt, abs=1e-5)
    assert forward["p_b_better"] + backward["p_b_better"] == pytest.approx(1.0, abs=1e-5)  # the order is irrelevant
    assert forward["winner"] == backward["winner"] == CIRCLE
    assert main([*argv, "--objective", "pairwise", SQUARE, CIRCLE]) == 0
    err = capsys.readouterr().err
    assert "shapes-s was trained as a pointwise judge" in err and len(err.strip().splitlines()) == 1


def test_cot_mode_the_judge_was_not_trained_with_warns(capsys):
    assert main(["score", "--model", "shapes-s", CIRCLE, "--prompt", "a red circle", "--json"]) == 0
    assert capsys.readouterr().err == ""
    argv = ["score", "--model", "shapes-s", CIRCLE, "--prompt", "a red circle", "--json", "--cot", "judgment_first"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("rewarddance: warning: shapes-s was trained with cot=none") and err.count("\n") == 1


def test_eval_rm_asks_the_bundled_judge_pointwise_by_default(tmp_path, capsys):
    data = tmp_path / "pairs"
    write_dataset(data, n=40, size=56, pairs=True, seed=12)
    assert main(["eval-rm", "--model", "shapes-m", "--data", str(data)]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    # shapes-m's card: 84.7 % in-domain, pointwise; asked pairwise it was measured at 44 % with 92 % position bias
    # on 100 such pairs. These 40 pairs measured 0.90 pointwise.
    assert res["objective"] == "pointwise" and "position_bias_rate" not in res
    assert res["accuracy"] >= 0.75, res
    assert captured.err == ""


def test_bundled_judge_in_4bit_on_the_cpu(caplog):
    bnb = pytest.importorskip("bitsandbytes")
    prompt = "a red circle"
    fp32 = RewardModel.from_pretrained("shapes-m", device="cpu").score([CIRCLE, SQUARE], prompt)
    with caplog.at_level("WARNING", logger="rewarddance.model"):
        q4 = RewardModel.from_pretrained("shapes-m", device="cpu", quantization="4bit")
    assert "keeps 25 of 49 Linear layers in float32" in caplog.text
    linear4 = [m for m in q4.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 23  # the Linear layers of shapes-m whose shapes bitsandbytes' CPU kernels take
    out = q4.score([CIRCLE, SQUARE], prompt)
    # measured with the shapes-m of session 8: margins 0.72 / -7.69 in 4-bit against 0.85 / -7.71 in fp32
    # (p_yes 0.67 / 0.0005 against 0.70 / 0.0004); this 128 px grey-backed circle is not a ShapesWorld render
    assert (out.margin - fp32.margin).abs().max() < 0.3
    assert out.p_yes[0] > 0.5 > 0.01 > out.p_yes[1]
