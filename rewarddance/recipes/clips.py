"""Does time reach a video judge? Train one on ShapesWorld clip pairs and measure it with the frames in order and
shuffled (the slow quality run of :mod:`rewarddance.shapes.clips`).

    python -m rewarddance.recipes.clips --work /tmp/clips-judge                  # from the bundled shapes-m judge
    python -m rewarddance.recipes.clips --work /tmp/clips-qwen --base qwen2_vl   # a caption-pretrained Qwen2-VL

Stages, each reused when its output is already in ``--work`` (an interrupted run continues from the last one):

1. *Data*: :data:`DATA` clip pairs at :data:`SIZE` px, :data:`FRAMES` frames (training and held-out seeds differ),
   with the two negatives that differ from the chosen clip in motion alone: played backwards (the same frames in
   the opposite order) and the other event order. Held frames (``static``) are left out: telling a moving clip from
   a still one needs no time, and they cost accuracy in 250-step probes on 1,500 pairs (held-out 56 % with them,
   61 % without).
2. *Base*: ``shapes-m``, the bundled ShapesWorld judge (a tiny LLaVA that sees colours and shapes; it takes a clip
   as its frames, consecutive images), or ``qwen2_vl``: a tiny Qwen2-VL of the same shape, caption-pretrained on
   16,000 ShapesWorld scenes first (the recipe of :mod:`rewarddance.recipes.shapes`), which takes the clip as a
   native video (temporal patches of 2 frames, M-RoPE time positions).
3. *Judge*: ``train-rm`` on the training pairs (:data:`JUDGE`: pointwise, task ``video_alignment``).
4. *Measure*: held-out accuracy (chosen clip's P(yes) above the rejected one's), then the same with each test
   clip's frames shuffled independently (a seeded order that is neither the identity nor the reversal). A judge
   that reads time beats :data:`CLAIM`'s accuracy in order and falls to near chance shuffled; a judge that read
   appearance only would score the same both ways. Facts go to ``results.json`` in ``--work``; the exit status is
   0 when the claim holds.

Time on 2 CPU cores shared with other training, one thread (timed on 10 steps of each base and on a 250-step
probe): data ~1 min (6,400 pairs, ~0.5 GB of PNG frames); the judge ~0.75 s a step at batch 16 from either base, so
the 3,000 steps of :data:`JUDGE` ~38 min; measuring ~1 min. ``--base qwen2_vl`` adds its caption pretraining (8,000
steps; the LLaVA of the same shape takes 13 min), so ~55 min in all. The judge checkpoints every 250 steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SIZE = 56  # the judges' working resolution (the bundled judges' too)
FRAMES = 8  # four temporal patches of two frames for Qwen2-VL; eight images for LLaVA
DATA = {  # name: (pairs, seed, negatives)
    "train": (6000, 31, ("reverse", "order")),
    "test": (400, 32, ("reverse", "order")),
}
JUDGE = dict(
    objective="pointwise",
    task="video_alignment",
    train="all",
    lr=3e-4,
    batch_size=16,
    max_steps=3000,
    warmup_steps=50,
    seed=0,
)
SHUFFLE_SEED = 0
CLAIM = {"accuracy": 0.75, "shuffled_within": 0.1}  # held-out accuracy at least 75 %; shuffled within 10 points of 50 %
BASES = ("shapes-m", "qwen2_vl")
QWEN = dict(
    hidden=96, layers=4, heads=6, vision_hidden=64, vision_layers=3
)  # shapes-m's, heads of 16 (M-RoPE sections)


def write_data(work: Path, log=print) -> dict[str, Path]:
    """The clip pair folders of :data:`DATA` under ``work`` (reused when complete; an interrupted one is redone)."""
    import shutil

    from ..shapes.clips import write_clip_dataset

    out = {}
    for name, (n, seed, negatives) in DATA.items():
        folder = work / f"clips-{name}"
        if not (folder / "info.json").exists():
            if folder.exists():
                shutil.rmtree(folder)
            t0 = time.time()
            write_clip_dataset(folder, n=n, size=SIZE, frames=FRAMES, seed=seed, negatives=negatives)
            log(f"{folder}: {n} pairs in {(time.time() - t0) / 60:.1f} min")
        out[name] = folder
    return out


def base_model(base: str, work: Path, log=print) -> Path:
    """The folder of the model the judge starts from (for ``qwen2_vl``, caption-pretrained here first)."""
    if base == "shapes-m":
        from ..bundled import bundled_path

        return Path(bundled_path("shapes-m"))
    if base != "qwen2_vl":
        raise ValueError(f"base must be one of {', '.join(BASES)}, got {base!r}")
    from ..shapes import write_dataset
    from ..testing.tiny import build_tiny_vlm
    from ..training.caption import CaptionTrainConfig, train_captions
    from .shapes import CAPTION, STAGE_CHECKPOINT_EVERY, VLM_SEED, _stage
    from .shapes import DATA as IMAGE_DATA

    n, split, seed, _ = IMAGE_DATA["scenes"]
    scenes = work / "scenes"
    if not (scenes / "info.json").exists():
        write_dataset(scenes, n=n, size=SIZE, split=split, seed=seed, overwrite=True)
    folder = work / "qwen2_vl-captions"

    def run():
        random_vlm = build_tiny_vlm("qwen2_vl", work / "qwen2_vl-random", image_size=SIZE, seed=VLM_SEED, **QWEN)
        cfg = CaptionTrainConfig(
            model=str(random_vlm),
            data=str(scenes),
            output_dir=str(folder),
            save_every=STAGE_CHECKPOINT_EVERY,
            **CAPTION,
        )
        return train_captions(cfg, progress=False)

    _stage(folder, run, log)
    return folder / "final"


def measure(rm, folder: Path, shuffle_seed: int | None = None, batch_size: int = 16) -> dict:
    """Pointwise accuracy of ``rm`` on the clip pairs in ``folder``, overall and per negative kind; with
    ``shuffle_seed`` every clip's frames are first put in a random order (each clip its own)."""
    import torch

    from ..context import RewardContext
    from ..shapes.clips import shuffled_order
    from ..training.data import load_pair_videos, read_pairs

    context = RewardContext(task="video_alignment")
    pairs, _ = read_pairs(folder)
    kinds = {}
    for line in (folder / "pairs.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        kinds[row["id"]] = row["negative"]
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    right: dict[str, list[bool]] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        clips = [load_pair_videos(p) for p in chunk]
        chosen, rejected = [c.frames for c, _ in clips], [r.frames for _, r in clips]
        if rng is not None:
            chosen = [f[shuffled_order(f.shape[0], rng)] for f in chosen]
            rejected = [f[shuffled_order(f.shape[0], rng)] for f in rejected]
        prompts = [p.prompt for p in chunk]
        with torch.no_grad():
            pc = rm.score(videos=chosen, prompts=prompts, context=context).p_yes
            pr = rm.score(videos=rejected, prompts=prompts, context=context).p_yes
        for p, won in zip(chunk, (pc > pr).tolist()):
            right.setdefault(kinds[p.id], []).append(bool(won))
    every = [w for ws in right.values() for w in ws]
    return {
        "pairs": len(every),
        "accuracy": round(sum(every) / len(every), 4),
        "by_negative": {k: {"pairs": len(ws), "accuracy": round(sum(ws) / len(ws), 4)} for k, ws in right.items()},
    }


def run_recipe(work: Path, base: str = "shapes-m", log=print, max_steps: int | None = None) -> dict:
    """All stages into ``work`` (finished ones reused); returns the facts also written to ``work/results.json``."""
    from ..model import RewardModel
    from ..training.rm import RMTrainConfig, train_rm
    from .shapes import _stage

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = write_data(work, log)
    start = base_model(base, work, log)
    settings = {**JUDGE, **({"max_steps": max_steps} if max_steps else {})}
    folder = work / f"{base}-clip-judge"
    cfg = RMTrainConfig(
        model=str(start), data=str(data["train"]), output_dir=str(folder), eval_every=0, save_every=250, **settings
    )
    stage = _stage(folder, lambda: train_rm(cfg, progress=False), log)
    facts: dict = {"base": base, "size": SIZE, "frames": FRAMES, "judge": settings, "judge_minutes": stage["minutes"]}
    for name, model in (("base", start), ("judge", folder / "final")):
        rm = RewardModel.from_pretrained(model, device="cpu", dtype="float32")
        key = "test" if name == "judge" else "base_test"
        facts[key] = measure(rm, data["test"])
        if name == "judge":
            facts["shuffled"] = measure(rm, data["test"], shuffle_seed=SHUFFLE_SEED)
    facts["claim"] = CLAIM
    facts["passed"] = bool(
        facts["test"]["accuracy"] >= CLAIM["accuracy"]
        and abs(facts["shuffled"]["accuracy"] - 0.5) <= CLAIM["shuffled_within"]
    )
    facts["minutes"] = round((time.time() - t0) / 60, 1)
    (work / "results.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    log(json.dumps({k: facts[k] for k in ("base_test", "test", "shuffled", "passed")}, indent=2))
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewarddance.recipes.clips", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--work", required=True, type=Path, help="data, models and results.json (~0.5 GB; ~1 GB with qwen2_vl)"
    )
    parser.add_argument("--base", default="shapes-m", choices=BASES, help="the model the judge starts from")
    parser.add_argument("--max-steps", type=int, help=f"judge steps (default {JUDGE['max_steps']})")
    args = parser.parse_args(argv)
    facts = run_recipe(args.work, args.base, lambda text: print(text, flush=True), args.max_steps)
    return 0 if facts["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
