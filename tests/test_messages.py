"""A newcomer's mistakes get one clear line: a model folder that is not there, an offline or unreachable hub, a GPU
that is not there, an over-long prompt in a batch job, a huge image; ``rewarddance --help`` starts without torch."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from rewarddance import RewardModel
from rewarddance.batch import BatchItem, score_files
from rewarddance.cli import main
from rewarddance.images import ImageError, load_image
from rewarddance.model import ModelLoadError, PromptTooLongError, RewardOutput

ROOT = Path(__file__).resolve().parents[1]
CIRCLE = str(ROOT / "examples" / "images" / "red_circle.png")


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rewarddance: error: ") and "Traceback" not in err, err
    return lines[0]


def test_missing_model_folder(capsys):
    with pytest.raises(ModelLoadError, match=r"^/no/such/folder: no such folder$"):
        RewardModel.from_pretrained("/no/such/folder", device="cpu")
    assert main(["score", "--model", "./models/judge", CIRCLE, "--prompt", "x"]) == 2
    assert _one_error_line(capsys.readouterr().err).endswith("./models/judge: no such folder")


def test_hub_id_offline_or_unreachable_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"someone/judge: no such folder, and not in the Hugging Face cache while"):
        RewardModel.from_pretrained("someone/judge", device="cpu")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"someone/judge: .*hub \(http://127.0.0.1:9\) cannot be reached"):
        RewardModel.from_pretrained("someone/judge", device="cpu")
    assert time.perf_counter() - start < 10  # one request, not the hub client's retries


def test_cuda_device_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["score", "--model", "shapes-s", CIRCLE, "--prompt", "x", "--device", "cuda"]) == 2
    assert "CUDA is not available" in _one_error_line(capsys.readouterr().err)
    assert main(["score", "--model", "shapes-s", CIRCLE, "--prompt", "x", "--device", "gpu:0"]) == 2
    assert "'gpu:0' is not a device name" in _one_error_line(capsys.readouterr().err)
    assert main(["score", "--model", "shapes-s", CIRCLE, "--prompt", "x", "--dtype", "float33"]) == 2
    assert "unknown 'float33'" in _one_error_line(capsys.readouterr().err)


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no image data (opening reads the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_huge_image_cites_our_limit_and_max_pixels_moves_it(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 20_000, 20_000)  # 400 Mpx: past PIL's own limit of 178,956,970 too
    with pytest.raises(
        ImageError, match=r"bomb.png: 20000x20000 = 400,000,000 pixels exceeds the limit of 100,000,000"
    ):
        load_image(bomb)
    with pytest.raises(ImageError, match="unreadable or truncated"):  # allowed in size: then it is just empty
        load_image(bomb, max_pixels=500_000_000)
    assert main(["score", "--model", "shapes-s", CIRCLE, "--prompt", "a red circle", "--max-pixels", "1000"]) == 2
    assert "exceeds the limit of 1,000" in _one_error_line(capsys.readouterr().err)


class _ScriptedJudge:
    """Stands in for a RewardModel in batch jobs: P(yes) 0.5 for every item, or ``fail`` raised on call ``fail_at``."""

    def __init__(self, fail_at: int | None = None, fail: BaseException | None = None):
        self.calls, self.fail_at, self.fail = 0, fail_at, fail

    def score(self, images, prompts, context=None, batch_size=None, references=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.fail
        return RewardOutput(p_yes=torch.full((len(images),), 0.5), margin=torch.zeros(len(images)))


def test_bad_items_reach_the_errors_file_as_they_are_found(tmp_path, capsys):
    from rewarddance.batch import read_items

    (tmp_path / "manifest.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "image": CIRCLE, "prompt": "p1"}),
                "{not json",
                json.dumps({"id": "b", "image": "missing.png", "prompt": "p1"}),
                json.dumps({"id": "c", "image": CIRCLE, "prompt": "p2"}),
            ]
        )
        + "\n"
    )
    items, bad_lines = read_items(tmp_path, skip_bad=True)
    out, errors = tmp_path / "res.jsonl", tmp_path / "res.jsonl.errors.jsonl"
    judge = _ScriptedJudge(fail_at=2, fail=KeyboardInterrupt())  # killed while scoring the second chunk
    with pytest.raises(KeyboardInterrupt):
        score_files(judge, items, out, batch_size=2, skip_bad=True, bad_lines=bad_lines, progress=True)
    assert capsys.readouterr().err.endswith("\n")  # the progress bar was closed before the error went up
    found = [json.loads(x) for x in errors.read_text().splitlines()]
    assert [f.get("id") for f in found] == [None, "b"]  # the malformed line 2, then the missing image
    assert "manifest.jsonl:2: not valid JSON" in found[0]["error"]
    report = score_files(_ScriptedJudge(), items, out, batch_size=2, skip_bad=True, bad_lines=bad_lines)
    assert report.written == 1 and report.already_done == 1 and len(report.bad) == 2
    assert len(errors.read_text().splitlines()) == 2  # a rerun starts the errors file afresh


def test_over_long_prompt_in_a_batch_names_its_item(tiny_vlm, tmp_path):
    rm = RewardModel.from_pretrained(tiny_vlm("llava"), device="cpu")
    short = rm.prepare([CIRCLE], "a red circle")["input_ids"].shape[1]
    rm.max_length = short + 20
    items = [
        BatchItem("first", CIRCLE, "a red circle"),
        BatchItem("second", CIRCLE, "a red circle " + "and a blue square " * 20),
        BatchItem("third", CIRCLE, "a red circle"),
    ]
    with pytest.raises(PromptTooLongError, match=r"^second \(.*red_circle.png\): the rendered prompt is \d+ tokens"):
        score_files(rm, items, tmp_path / "res.jsonl", batch_size=8, progress=False)


def test_one_image_is_singular(tiny_vlm, tmp_path, capsys):
    argv = ["score", "--model", tiny_vlm("llava"), "--input", str(tmp_path / "in.jsonl"), "--no-progress"]
    (tmp_path / "in.jsonl").write_text(json.dumps({"image": CIRCLE, "prompt": "a red circle"}) + "\n")
    assert main([*argv, "--output", str(tmp_path / "res.jsonl")]) == 0
    assert "scored 1 image into" in capsys.readouterr().err


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_import_and_help_do_not_load_torch(tmp_path):
    done = _run("import rewarddance, sys; print('torch' in sys.modules)")
    assert done.stdout.strip() == "False", done.stderr
    code = (
        "import sys\n"
        "from rewarddance.cli import main\n"
        "for argv in (['--help'], ['score', '--help'], ['eval-rm', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "main(['shapes', 'make', '--n', '2', '--out', sys.argv[1], '--no-progress'])\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    done = _run(code, str(tmp_path / "sw"))
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "False", done.stderr
    done = _run("from rewarddance import RewardModel, RewardContext; print(RewardModel.__name__)")
    assert done.stdout.strip() == "RewardModel", done.stderr


def test_cli_output_has_no_library_chatter(tiny_vlm):
    code = (
        "from rewarddance.cli import main\n"
        f"raise SystemExit(main(['score', '--model', {tiny_vlm('llava')!r}, {CIRCLE!r}, '--prompt', 'x']))\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "kernels" not in done.stderr, done.stderr
