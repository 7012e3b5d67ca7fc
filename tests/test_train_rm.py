"""Reward-model training on ShapesWorld pairs with a tiny LLaVA: losses, teacher-forced reasons, resume after a
kill, saving and loading through the public API, bad configs. The accuracy runs are in test_rm_quality.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rewarddance import RewardModel
from rewarddance.context import RewardContext
from rewarddance.shapes import write_dataset
from rewarddance.training.data import DataError, read_pairs
from rewarddance.training.rm import (
    Item,
    RMTrainConfig,
    _items,
    compute_loss,
    encode_items,
    evaluate_pairs,
    expected_calibration_error,
    train_rm,
)

FAMILY = "llava"


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "train"
    write_dataset(out, n=16, size=48, pairs=True, seed=1)
    return out


def _settings(model, data, out, **kw) -> dict:
    """Small, fast training settings (as a config file would hold them), with ``kw`` overriding."""
    base = dict(
        model=model,
        data=str(data),
        output_dir=str(out),
        batch_size=2,
        max_steps=4,
        lr=1e-3,
        warmup_steps=1,
        save_every=2,
        eval_every=0,
        log_every=1,
        train="lora",
        lora_rank=4,
        seed=3,
    )
    base.update(kw)
    return base


def _cfg(model, data, out, **kw) -> RMTrainConfig:
    return RMTrainConfig(**_settings(model, data, out, **kw))


def test_reason_targets_are_the_answer_text(rm_cache, pairs_dir):
    rm = rm_cache(FAMILY)
    pairs, _ = read_pairs(pairs_dir)
    for cot in ("judgment_first", "reasoning_first"):
        ctx = RewardContext(cot=cot)
        items = _items(pairs[:2], "pairwise", cot)
        inputs, verdict_pos, targets = encode_items(rm, items, ctx)
        for i, it in enumerate(items):
            text = rm.tokenizer.decode(targets[i][targets[i] != -100])
            if cot == "judgment_first":  # the verdict as written, ". <reason>", end-of-text
                assert text == f"{'Yes' if it.yes else 'No'}. {it.reason}{rm.tokenizer.eos_token}"
                assert inputs["input_ids"][i, verdict_pos[i] + 1].item() in rm.yes_ids + rm.no_ids
                assert targets[i, verdict_pos[i]] == inputs["input_ids"][i, verdict_pos[i] + 1]
            else:
                assert text == f"{it.reason}\nFinal answer (yes or no):"
                assert verdict_pos[i] == inputs["input_ids"].shape[1] - 1


@pytest.mark.parametrize("objective,cot", [("pointwise", "none"), ("pairwise", "none"), ("pairwise", "judgment_first")])
def test_losses_have_gradients(tiny_vlm, pairs_dir, objective, cot):
    rm = RewardModel.from_pretrained(tiny_vlm(FAMILY), device="cpu")
    cfg = _cfg("unused", pairs_dir, "unused", objective=objective, cot=cot)
    pairs, _ = read_pairs(pairs_dir)
    parts = compute_loss(rm, _items(pairs[:2], objective, cot), cfg, RewardContext(cot=cot))
    assert torch.isfinite(parts["loss"]) and parts["loss"] > 0
    if objective == "pointwise":
        assert set(parts) >= {"bt", "ce"}
    if cot != "none":
        assert parts["reason_ce"] > 0
    parts["loss"].backward()
    grads = [p.grad for p in rm.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_ece_and_eval_metrics(rm_cache, pairs_dir):
    assert expected_calibration_error(torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0])) == pytest.approx(0.1)
    assert expected_calibration_error(torch.tensor([0.9, 0.9]), torch.tensor([0.0, 0.0])) == pytest.approx(0.9)
    pairs, _ = read_pairs(pairs_dir)
    res = evaluate_pairs(rm_cache(FAMILY), pairs[:4], "pairwise")
    assert res["pairs"] == 4 and set(res) == {"pairs", "accuracy", "ece", "position_bias_rate"}


class _PlantedJudge:
    """Answers with planted numbers per pair: ``compare`` gives ``fwd[k]`` when pair k's chosen image is image 2
    and ``bwd[k]`` when its rejected one is; ``score`` gives ``(p, margin)`` of pair k's chosen or rejected image."""

    def __init__(self, pairs, fwd=(), bwd=(), chosen=(), rejected=()):
        from rewarddance.training.data import load_pair_images

        self.table = {}
        for k, pair in enumerate(pairs):
            c, r = load_pair_images(pair)
            self.table[c.tobytes()] = (fwd[k] if fwd else None, chosen[k] if chosen else None)
            self.table[r.tobytes()] = (bwd[k] if bwd else None, rejected[k] if rejected else None)

    def compare(self, images, references, prompts, context=None):
        from rewarddance.model import RewardOutput

        p = torch.tensor([self.table[im.tobytes()][0] for im in images])
        return RewardOutput(p_yes=p, margin=p.logit())

    def score(self, images, prompts, context=None):
        from rewarddance.model import RewardOutput

        p, m = zip(*(self.table[im.tobytes()][1] for im in images))
        return RewardOutput(p_yes=torch.tensor(p), margin=torch.tensor(m))


def test_eval_metrics_of_planted_answers(pairs_dir):
    """Accuracy, ECE and position bias computed from known answers, over chunks of 3 pairs. The planted values sit
    inside the ECE's 0.05-wide bins, away from their edges, and no bin holds both right and wrong answers."""
    import math

    pairs = read_pairs(pairs_dir)[0][:5]
    # pairwise: right when (fwd + 1 - bwd) / 2 > 0.5: pairs 0, 1, 3 (fwd > 0.5 alone would also count pair 4); the
    # verdict stays put under the swap (biased) for pairs 1, 2, 4. ECE of fwd + bwd against labels 11111 00000:
    # confidences .92 .82 .73 .62 .57 | .83 .72 .63 .88 .67, right: 1 1 0 1 1 | 1 0 1 1 0 -> (.08 + .18 + .73 + .38
    # + .43 + .17 + .72 + .37 + .12 + .67) / 10 = 0.385
    judge = _PlantedJudge(pairs, fwd=[0.92, 0.82, 0.27, 0.62, 0.57], bwd=[0.17, 0.72, 0.37, 0.12, 0.67])
    res = evaluate_pairs(judge, pairs, "pairwise", batch_size=3)
    assert res["pairs"] == 5 and res["accuracy"] == 0.6 and res["position_bias_rate"] == 0.6
    assert res["ece"] == pytest.approx(0.385, abs=1e-6)
    # pointwise: right when P(yes | chosen) > P(yes | rejected): pairs 0, 1, 4 (the margins would say 0, 1, 3, 4);
    # calibration of sigmoid(margin_c - margin_r) = .92 .82 .27 .62 .57 and complements: 2 x (.08 + .18 + .73 + .38
    # + .43) / 10 = 0.36
    gaps = [math.log(q / (1 - q)) for q in (0.92, 0.82, 0.27, 0.62, 0.57)]
    chosen = [(0.6, g + 1.0) for g in gaps]
    rejected = [(p, 1.0) for p in (0.3, 0.4, 0.6, 0.7, 0.5)]
    res = evaluate_pairs(_PlantedJudge(pairs, chosen=chosen, rejected=rejected), pairs, "pointwise", batch_size=3)
    assert res["accuracy"] == 0.6 and "position_bias_rate" not in res
    assert res["ece"] == pytest.approx(0.36, abs=1e-6)


def _train_cli(cfg_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rewarddance.cli", "train-rm", "--config", str(cfg_path), "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow  # a child process killed mid-run (~30 s): run by .ci/run after the README command
def test_killed_run_resumes_to_the_same_weights(tiny_vlm, pairs_dir, tmp_path):
    """SIGINT mid-run saves a checkpoint; rerunning the command finishes with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    model = tiny_vlm(FAMILY)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    for out in (straight, broken):
        settings = _settings(model, pairs_dir, out, max_steps=40, save_every=0, log_every=10, merge=False)
        (tmp_path / f"{out.name}.yaml").write_text(yaml.safe_dump(settings))
    proc = _train_cli(tmp_path / "straight.yaml")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    # the broken run: interrupt once training has started (metrics.csv gets a row per step), then resume
    proc = _train_cli(tmp_path / "broken.yaml", "--log_every", "1")
    deadline = time.time() + 300
    while not (broken / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=300)
    assert rc == 130, proc.stderr.read()[-2000:]
    ckpts = sorted((broken / "checkpoints").iterdir())
    stopped = json.loads((ckpts[-1] / "state.json").read_text())["step"]
    assert 1 <= stopped < 40
    proc = _train_cli(tmp_path / "broken.yaml", "--log_every", "1")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(broken / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


@pytest.mark.parametrize("merge", [True, False])
def test_saved_model_loads_and_scores_as_trained(tiny_vlm, pairs_dir, tmp_path, merge):
    out = tmp_path / "run"
    cfg = _cfg(tiny_vlm(FAMILY), pairs_dir, out, merge=merge, eval_data={"train": str(pairs_dir)}, max_steps=3)
    result = train_rm(cfg, progress=False)
    final = out / "final"
    assert (final / ("model.safetensors" if merge else "adapter_model.safetensors")).exists()
    loaded = RewardModel.from_pretrained(final, device="cpu")
    pairs, _ = read_pairs(pairs_dir)
    again = evaluate_pairs(loaded, pairs, "pairwise")
    assert again["accuracy"] == result["eval"]["train"]["accuracy"]
    assert again["ece"] == pytest.approx(result["eval"]["train"]["ece"], abs=1e-5)
    base = RewardModel.from_pretrained(tiny_vlm(FAMILY), device="cpu")
    img = pairs[0].chosen
    assert abs(loaded.score([img], pairs[0].prompt).margin - base.score([img], pairs[0].prompt).margin).item() > 1e-4


def test_bad_configs_fail_before_training(tiny_vlm, pairs_dir, tmp_path):
    model = tiny_vlm(FAMILY)
    with pytest.raises(ValueError, match="objective"):
        _cfg(model, pairs_dir, tmp_path, objective="listwise")
    with pytest.raises(ValueError, match="lora_rank"):
        _cfg(model, pairs_dir, tmp_path, lora_rank=0)
    with pytest.raises(ValueError, match="unknown cot"):
        _cfg(model, pairs_dir, tmp_path, cot="sometimes")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"model": model, "data": "x", "output_dir": "y", "lr_max": 1}))
    with pytest.raises(ValueError, match="unknown setting.*lr_max"):
        RMTrainConfig.from_yaml(tmp_path / "cfg.yaml")
    with pytest.raises(DataError, match="no such pairs file"):
        train_rm(_cfg(model, tmp_path / "nothing", tmp_path / "o1"), progress=False)
    broken = tmp_path / "broken"
    write_dataset(broken, n=4, size=32, pairs=True, seed=2)
    rows = (broken / "pairs.jsonl").read_text().splitlines()
    (broken / json.loads(rows[1])["rejected"]).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"pairs.jsonl:2: rejected image .* unreadable"):
        train_rm(_cfg(model, broken, tmp_path / "o2"), progress=False)
    pairs, skipped = read_pairs(broken, skip_bad=True)
    assert len(pairs) == 3 and len(skipped) == 1 and "pairs.jsonl:2" in skipped[0]
    assert not (tmp_path / "o2" / "checkpoints").exists()


def test_cli_eval_rm(tiny_vlm, pairs_dir, capsys):
    from rewarddance.cli import main

    assert main(["eval-rm", "--model", tiny_vlm(FAMILY), "--data", str(pairs_dir), "--objective", "pointwise"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["pairs"] == 16 and "ece" in res and "position_bias_rate" not in res


def test_item_order_is_chosen_then_rejected(pairs_dir):
    pairs, _ = read_pairs(pairs_dir)
    items = _items(pairs[:1], "pointwise", "none")
    assert [it.yes for it in items] == [True, False] and isinstance(items[0], Item)
    items = _items(pairs[:1], "pairwise", "none")
    assert [it.yes for it in items] == [True, False]
    assert items[0].images[1].tobytes() == items[1].images[0].tobytes()  # the chosen image is image 2, then image 1


@pytest.mark.slow  # two processes: run by .ci/run after the README command
def test_two_processes_train_in_step(tiny_vlm, pairs_dir, tmp_path, launch_two, json_objects):
    """``accelerate launch`` with 2 CPU processes: each takes half of a global batch, gradients are averaged, both
    end with the same weights; only the main process writes checkpoints and the final model."""
    out = tmp_path / "out"
    settings = _settings(tiny_vlm(FAMILY), pairs_dir, out, max_steps=3, save_every=0)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(settings))
    proc = launch_two(["train-rm", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"], port=29541)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json_objects(proc.stdout)  # the two processes share stdout: their lines may interleave
    assert len(rows) == 2 and all(r["processes"] == 2 and r["step"] == 3 for r in rows)
    assert rows[0]["checksum"] == pytest.approx(rows[1]["checksum"], rel=1e-9)
    assert (out / "final" / "model.safetensors").is_file()
    assert len((out / "metrics.csv").read_text().splitlines()) == 4


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_lora_on_a_quantized_base(tiny_vlm, pairs_dir, tmp_path, bits):
    """QLoRA style: the base loads in 8-bit or 4-bit NF4 (bitsandbytes, on the CPU here), LoRA trains in full
    precision, and the adapter folder loads back over a quantized base. (bitsandbytes' CPU 4-bit matmul needs
    in_features divisible by 64, so that model's vision tower is 64 wide.)"""
    model = tiny_vlm(FAMILY, vision_hidden=64) if bits == "4bit" else tiny_vlm(FAMILY)
    cfg = _cfg(model, pairs_dir, tmp_path / "q", quantization=bits, merge=False, max_steps=2)
    res = train_rm(cfg, progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res["history"])
    loaded = RewardModel.from_pretrained(tmp_path / "q" / "final", device="cpu", quantization=bits)
    base = RewardModel.from_pretrained(model, device="cpu", quantization=bits)
    kind = "Linear8bitLt" if bits == "8bit" else "Linear4bit"
    assert any(kind in type(m).__name__ for m in loaded.model.modules())
    pairs, _ = read_pairs(pairs_dir)
    a = loaded.score([pairs[0].chosen], pairs[0].prompt).margin
    b = base.score([pairs[0].chosen], pairs[0].prompt).margin
    assert torch.isfinite(a).all() and (a - b).abs().item() > 1e-4  # the adapter is applied


def test_parquet_pairs_in_pick_a_pic_and_hpd_layouts(tiny_vlm, pairs_dir, tmp_path):
    """Parquet preference data: Pick-a-Pic columns (image bytes, label_0; ties skipped) and HPDv2 columns (paths,
    human_preference); a broken image is an error naming the file and row, or a reported skip; training runs on it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs, _ = read_pairs(pairs_dir)
    raw = [(p.prompt, Path(p.chosen).read_bytes(), Path(p.rejected).read_bytes()) for p in pairs[:6]]
    folder = tmp_path / "pick"
    folder.mkdir()
    table = {
        "caption": [r[0] for r in raw],
        "jpg_0": [r[1] if i % 2 == 0 else r[2] for i, r in enumerate(raw)],  # the preferred image alternates sides
        "jpg_1": [r[2] if i % 2 == 0 else r[1] for i, r in enumerate(raw)],
        "label_0": [1.0, 0.0, 1.0, 0.0, 0.5, 1.0],  # row 5 is a tie
    }
    table["jpg_1"][5] = b"\x89PNG\r\n\x1a\n broken"
    pq.write_table(pa.table(table), folder / "part-0.parquet")
    with pytest.raises(DataError, match=r"part-0.parquet:row 6: rejected image bytes are unreadable"):
        read_pairs(folder)
    got, bad = read_pairs(folder, skip_bad=True)
    assert len(got) == 4 and len(bad) == 1  # 6 rows - a tie - a broken one
    for pair, (prompt, chosen, rejected) in zip(got, raw):
        assert pair.prompt == prompt and pair.chosen == chosen and pair.rejected == rejected
    hpd = tmp_path / "hpd.parquet"
    rel = [
        (p.prompt, str(Path(p.chosen).relative_to(pairs_dir)), str(Path(p.rejected).relative_to(pairs_dir)))
        for p in pairs[:3]
    ]
    shutil.copytree(pairs_dir / "images", tmp_path / "images")
    pq.write_table(
        pa.table(
            {"prompt": [r[0] for r in rel], "image": [[r[2], r[1]] for r in rel], "human_preference": [[0, 1]] * 3}
        ),
        hpd,
    )
    got, _ = read_pairs(hpd)
    assert [Path(p.chosen).name for p in got] == [Path(r[1]).name for r in rel]
    res = train_rm(_cfg(tiny_vlm(FAMILY), folder, tmp_path / "o", skip_bad=True, max_steps=2), progress=False)
    assert res["step"] == 2 and len(res["skipped"]) == 1


def test_streamed_pairs_cover_each_epoch_once_in_a_seeded_order(pairs_dir):
    from itertools import islice

    from rewarddance.training.data import stream_pairs

    ids = [p.id for p in read_pairs(pairs_dir)[0]]
    first = [p.id for p in islice(stream_pairs(pairs_dir, seed=1, shuffle_buffer=5), 2 * len(ids))]
    assert sorted(first[: len(ids)]) == sorted(ids) and sorted(first[len(ids) :]) == sorted(ids)
    assert first[: len(ids)] != ids and first[: len(ids)] != first[len(ids) :]  # shuffled, differently per epoch
    again = [p.id for p in islice(stream_pairs(pairs_dir, seed=1, shuffle_buffer=5), 2 * len(ids))]
    assert again == first


def test_streaming_training_resumes_to_the_same_weights(tiny_vlm, pairs_dir, tmp_path):
    """stream: true reads pairs through a shuffle buffer; a run resumed from a checkpoint passes over the pairs
    already used and ends with the uninterrupted run's weights."""
    kw = dict(stream=True, shuffle_buffer=4, max_steps=4, save_every=2)
    a = train_rm(_cfg(tiny_vlm(FAMILY), pairs_dir, tmp_path / "a", **kw), progress=False)
    b_dir = tmp_path / "b"
    train_rm(_cfg(tiny_vlm(FAMILY), pairs_dir, b_dir, **kw), progress=False)
    shutil.rmtree(b_dir / "checkpoints" / "step-0000004")  # as if killed after step 2
    shutil.rmtree(b_dir / "final")
    b = train_rm(_cfg(tiny_vlm(FAMILY), pairs_dir, b_dir, **kw), progress=False)
    assert [h["step"] for h in b["history"]] == [3, 4]
    assert b["checksum"] == pytest.approx(a["checksum"], rel=1e-9)
    with pytest.raises(DataError, match="no such pairs file"):
        train_rm(_cfg(tiny_vlm(FAMILY), tmp_path / "nothing", tmp_path / "c", **kw), progress=False)
