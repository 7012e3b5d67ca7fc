"""Batch scoring jobs: same numbers as the API, resume after an interruption, bad items skipped and reported,
and data parallel under ``accelerate launch`` with two CPU processes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from rewarddance.batch import BatchInputError, read_items, score_files
from rewarddance.cli import main
from rewarddance.shapes import write_dataset

FAMILY = "llava"
# P(yes) of this random judge is 0.007 to 0.023, where an absolute tolerance of 1e-5 lets a score off by 0.1 % through;
# the margin and log P(yes) (-3.5 to -5) are compared relatively instead. Measured, batched (padded) against one item
# per call: margins agree to 1.8e-5 relative, log P(yes) to 4.5e-6.
REL_MARGIN, REL_LOG_P = 1e-4, 3e-5


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sw") / "ds"
    write_dataset(out, n=10, size=48, seed=4)
    return out


@pytest.fixture(scope="module")
def expected(shapes_dir, rm_cache) -> dict[str, tuple[float, float]]:
    """(margin, log P(yes)) of every manifest item, computed one call per item through the public API."""
    rm = rm_cache(FAMILY)
    items, _ = read_items(shapes_dir)
    out = {}
    for it in items:
        res = rm.score([it.image], it.prompt)
        out[it.id] = (float(res.margin[0]), math.log(float(res.p_yes[0])))
    return out


def _check(row: dict, want: tuple[float, float]) -> None:
    """A result row holds the API's margin and P(yes) for its item, to a relative tolerance."""
    margin, log_p = want
    assert row["margin"] == pytest.approx(margin, rel=REL_MARGIN), row["id"]
    assert math.log(row["p_yes"]) == pytest.approx(log_p, rel=REL_LOG_P), row["id"]


def test_batch_equals_api_and_reruns_are_no_ops(shapes_dir, expected, tiny_vlm, tmp_path, capsys):
    out = tmp_path / "res.jsonl"
    argv = ["score", "--model", tiny_vlm(FAMILY), "--input", str(shapes_dir), "--output", str(out), "--no-progress"]
    assert main([*argv, "--batch-size", "4"]) == 0
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for r in rows:
        _check(r, expected[r["id"]])
        assert r["category"] and r["prompt"]
    assert "scored 10 images" in capsys.readouterr().err
    assert main(argv) == 0  # a second run scores nothing new
    assert _rows(out) == rows
    err = capsys.readouterr().err
    assert "scored 0 images" in err and "10 were already there" in err


def test_interrupted_job_resumes_without_loss(shapes_dir, expected, rm_cache, tmp_path):
    """A bad file stops the job (no --skip-bad) after the batches before it were written; a torn last line, as a
    killed process leaves, is cut off; the rerun completes the job with every id exactly once."""
    work = tmp_path / "ds"
    shutil.copytree(shapes_dir, work)
    items, _ = read_items(work)
    order = sorted(items, key=lambda it: it.prompt)
    victim = Path(order[6].image)
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])  # truncated PNG
    out = tmp_path / "res.jsonl"
    rm = rm_cache(FAMILY)
    with pytest.raises(ValueError, match=victim.name):
        score_files(rm, items, out, batch_size=3, progress=False)
    first = _rows(out)
    assert len(first) == 6  # two full batches landed before the bad one
    with open(out, "a") as f:
        f.write('{"id": "half-writ')  # the process died mid-line
    victim.write_bytes(good)
    report = score_files(rm, items, out, batch_size=3, progress=False)
    assert report.already_done == 6 and report.written == 4 and not report.bad
    rows = _rows(out)
    assert rows[:6] == first
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for r in rows:
        _check(r, expected[r["id"]])


def test_skip_bad_reports_and_keeps_the_rest(shapes_dir, expected, tiny_vlm, tmp_path, capsys):
    work = tmp_path / "ds"
    shutil.copytree(shapes_dir, work)
    lines = (work / "manifest.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    (work / recs[1]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (work / recs[2]["image"]).unlink()
    recs[3]["prompt"] = "a red circle " * 5000  # longer than the tiny model's context
    body = [json.dumps(r) for r in recs] + ["{not json"]
    (work / "manifest.jsonl").write_text("\n".join(body) + "\n")
    out = tmp_path / "res.jsonl"
    argv = ["score", "--model", tiny_vlm(FAMILY), "--input", str(work), "--output", str(out), "--no-progress"]
    assert main(argv) == 2  # without --skip-bad the malformed line is an error naming it
    assert "manifest.jsonl:11" in capsys.readouterr().err
    assert main([*argv, "--skip-bad", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "skipped 4 bad items" in err
    bad_ids = {recs[i]["id"] for i in (1, 2, 3)}
    logged = _rows(Path(str(out) + ".errors.jsonl"))
    assert {b["id"] for b in logged if "id" in b} == bad_ids
    assert [b["line"] for b in logged if "id" not in b] == [11]  # the malformed manifest line is logged too
    assert any("context" in b["error"] and b["error"].startswith(recs[3]["id"]) for b in logged)
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted(set(expected) - bad_ids)
    for r in rows:
        _check(r, expected[r["id"]])


def test_folder_of_images_and_references(rm_cache, tmp_path):
    rm = rm_cache(FAMILY)
    examples = Path(__file__).resolve().parents[1] / "examples" / "images"
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(examples / "red_circle.png", folder / "a.png")
    shutil.copy(examples / "blue_square.png", folder / "sub" / "b.png")
    (folder / "notes.txt").write_text("not an image")
    items, _ = read_items(folder, prompt="a red circle", reference=str(examples / "blue_square.png"))
    assert [it.id for it in items] == ["a.png", "sub/b.png"]
    report = score_files(rm, items, tmp_path / "r.jsonl", progress=False)
    assert report.written == 2
    rows = {r["id"]: r for r in _rows(tmp_path / "r.jsonl")}
    ref = examples / "blue_square.png"
    want = rm.compare([folder / "a.png", folder / "sub" / "b.png"], [ref, ref], "a red circle")
    for i, name in enumerate(["a.png", "sub/b.png"]):
        _check(rows[name], (float(want.margin[i]), math.log(float(want.p_yes[i]))))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchInputError, match="no manifest.jsonl and no image files"):
        read_items(tmp_path / "empty")
    with pytest.raises(BatchInputError, match="no such file"):
        read_items(tmp_path / "missing")


def test_accelerate_two_cpu_processes(shapes_dir, expected, tiny_vlm, tmp_path, launch_two):
    """``accelerate launch`` with 2 CPU processes: each scores half, the main process merges, every id once."""
    out = tmp_path / "res.jsonl"
    args = ["score", "--model", tiny_vlm(FAMILY), "--input", str(shapes_dir), "--output", str(out), "--no-progress"]
    proc = launch_two(args, port=29517)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scored 10 images" in proc.stderr and "with 2 processes" in proc.stderr
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for r in rows:
        _check(r, expected[r["id"]])
    assert not list(tmp_path.glob("res.jsonl.part*"))
