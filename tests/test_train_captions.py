"""Caption pretraining (rewarddance.training.caption): targets, learning, resume, saving, bad data, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from rewarddance import RewardModel
from rewarddance.shapes import write_dataset
from rewarddance.training.caption import (
    CaptionTrainConfig,
    caption_batch,
    evaluate_captions,
    read_captions,
    train_captions,
)
from rewarddance.training.data import DataError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("captions")
    write_dataset(out, n=8, size=48, seed=4)
    return out


def _cfg(model, data, out, **kw) -> CaptionTrainConfig:
    base = dict(model=model, data=str(data), output_dir=str(out), batch_size=4, max_steps=4, lr=3e-3, warmup_steps=1)
    base.update(save_every=2, log_every=1, seed=1)
    base.update(kw)
    return CaptionTrainConfig(**base)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_targets_are_the_caption_and_end_of_text(rm_cache, scenes, family):
    rm = rm_cache(family)
    rows, _ = read_captions(scenes)
    assert all(r.caption for r in rows)
    inputs, targets = caption_batch(rm, rows[:3])
    ids = inputs["input_ids"]
    for i, row in enumerate(rows[:3]):
        keep = targets[i] != -100
        assert rm.tokenizer.decode(targets[i][keep]).strip() == row.caption + rm.tokenizer.eos_token
        # each target is the next input token: position t predicts token t + 1
        pos = keep.nonzero().flatten()
        assert torch.equal(targets[i, pos], ids[i, pos + 1])


def test_training_fits_the_captions_and_saves_a_loadable_model(tiny_vlm, scenes, tmp_path):
    model = tiny_vlm("llava", init_std=0.02)
    rows, _ = read_captions(scenes)
    before = evaluate_captions(RewardModel.from_pretrained(model, device="cpu"), rows)
    res = train_captions(_cfg(model, scenes, tmp_path / "o", eval_data=str(scenes), max_steps=30), progress=False)
    assert res["eval"]["loss"] < 0.5 * before["loss"]  # eight captions, thirty steps: mostly memorised
    assert res["eval"]["token_accuracy"] > before["token_accuracy"] + 0.3
    loaded = RewardModel.from_pretrained(res["final"], device="cpu")
    again = evaluate_captions(loaded, rows)
    assert again["loss"] == pytest.approx(res["eval"]["loss"], rel=1e-4)
    assert (tmp_path / "o" / "metrics.csv").read_text().count("\n") == 31


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tiny_vlm, scenes, tmp_path):
    model = tiny_vlm("llava", init_std=0.02)
    a = train_captions(_cfg(model, scenes, tmp_path / "a"), progress=False)
    b_dir = tmp_path / "b"
    train_captions(_cfg(model, scenes, b_dir), progress=False)
    # as if killed after step 2: drop the later checkpoint and the final model, then run the same command again
    shutil.rmtree(b_dir / "checkpoints" / "step-0000004")
    shutil.rmtree(b_dir / "final")
    b = train_captions(_cfg(model, scenes, b_dir), progress=False)
    assert len(b["history"]) == 2 and b["history"][0]["step"] == 3
    assert b["checksum"] == pytest.approx(a["checksum"], rel=1e-9)


def _logged_steps(out: Path) -> list[int]:
    return [int(row.split(",")[0]) for row in (out / "metrics.csv").read_text().splitlines()[1:]]


def test_a_run_resumed_after_a_crash_logs_each_step_once(tiny_vlm, scenes, tmp_path, monkeypatch, capsys):
    """A crash in step 6, after rows past the newest checkpoint (step 3) were written: the rerun says where it
    resumes, runs steps 4-7 again and metrics.csv holds each step once (also when max_steps is not a multiple of
    log_every)."""
    import rewarddance.training.caption as caption

    real, calls = caption.caption_loss, []

    def crashing(*args, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("killed")
        return real(*args, **kw)

    cfg = _cfg(tiny_vlm("llava", init_std=0.02), scenes, tmp_path / "o", max_steps=7, save_every=3, log_every=2)
    monkeypatch.setattr(caption, "caption_loss", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        train_captions(cfg, progress=False)
    monkeypatch.setattr(caption, "caption_loss", real)
    assert _logged_steps(tmp_path / "o") == [1, 2, 3, 4]  # step 4 ran after the last checkpoint
    capsys.readouterr()
    res = train_captions(cfg, progress=False)
    assert "resuming from step 3" in capsys.readouterr().err
    assert [h["step"] for h in res["history"]] == [4, 5, 6, 7]
    assert _logged_steps(tmp_path / "o") == [1, 2, 3, 4, 5, 6, 7]


def test_rows_after_the_checkpoint_are_dropped_from_metrics_and_eval_files(tmp_path):
    from rewarddance.training.metrics import append_csv, drop_rows_after

    csv_path = tmp_path / "metrics.csv"
    append_csv(csv_path, [{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    assert drop_rows_after(csv_path, 3) == 2
    assert csv_path.read_text().splitlines() == ["step,loss", "1,1.0", "2,0.5", "3,0.3333333333333333"]
    evals = tmp_path / "eval.jsonl"
    evals.write_text('{"step": 2, "id": {}}\n{"step": 4, "id": {}}\n{"step": 6, "i')  # the last line torn by a kill
    assert drop_rows_after(evals, 3) == 2 and evals.read_text() == '{"step": 2, "id": {}}\n'
    assert drop_rows_after(csv_path, 0) == 3 and not csv_path.exists()  # a fresh start begins a new file
    assert drop_rows_after(tmp_path / "none.csv", 0) == 0


def test_bad_rows_are_named_or_skipped(scenes, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(scenes, bad)
    lines = (bad / "manifest.jsonl").read_text().splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "caption": ""})
    (bad / json.loads(lines[4])["image"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    lines.insert(6, "{not json")
    (bad / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"manifest.jsonl:3: missing or empty field\(s\) caption"):
        read_captions(bad)
    rows, problems = read_captions(bad, skip_bad=True)
    assert len(rows) == 6 and len(problems) == 3
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in problems] == ["3", "5", "7"]
    assert "unreadable" in problems[1] and "not valid JSON" in problems[2]
    with pytest.raises(DataError, match="no such captions file"):
        read_captions(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="train must be"):
        CaptionTrainConfig(model="m", data="d", output_dir="o", train="vision")


def test_cli_train_captions(tiny_vlm, scenes, tmp_path, capsys):
    from rewarddance.cli import main

    cfg = dict(model=tiny_vlm("llava", init_std=0.02), data=str(scenes), output_dir=str(tmp_path / "o"), max_steps=2)
    cfg.update(batch_size=2, save_every=0)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train-captions", "--config", str(tmp_path / "c.yaml"), "--no-progress", "--lr", "0.01"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 2 and Path(out["final"], "model.safetensors").is_file()
    assert json.loads((tmp_path / "o" / "config.json").read_text())["lr"] == 0.01
