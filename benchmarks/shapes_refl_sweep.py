"""ReFL settings on the bundled pair: does any short run move the generator's verifier alignment?

Each setting is a LoRA ReFL of ``shapes-gen`` against one bundled judge, starting from the demo's settings
(``rewarddance.demo.refl_config``: 40 steps, lr 1e-3, rank 8, batch 4) with one change; after it, 2 samples of each
of 96 held-out prompts (the 24 of ``shapes_scaling.py`` and 72 more) go through the ShapesWorld verifier, and the
judge's own mean P(yes) is recorded. ``+pre`` adds the plain diffusion loss on 2,000 rendered 32 px scenes
(ImageReward's regulariser, weight 1).

    python benchmarks/shapes_refl_sweep.py [--judge shapes-m] [--threads 2] [--only lr1e-3,lr3e-4]

Prints a markdown row per setting (alignment and P(yes) after, each with its paired difference from the base on
the same 192 images and that difference's standard error); the rows are copied into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from rewarddance import RewardModel
from rewarddance.bundled import bundled_path, generator_defaults, load_generator
from rewarddance.demo import DEMO_SEED, demo_prompts, measure_alignment, paired_difference, read_difference, refl_config
from rewarddance.shapes import write_dataset
from rewarddance.training.refl import train_refl

PROMPT_SEED = DEMO_SEED + 2  # as in shapes_scaling.py: held-out prompts, and + 1 for the training prompts


def row(before: dict, after: dict) -> str:
    """Alignment and P(yes) after, each with its paired difference from ``before`` (+- SE; under 2 SE: none)."""
    cells = []
    for key, each, scale, unit in (("alignment", "passed_each", 100, " %"), ("p_yes", "p_yes_each", 1, "")):
        diff, se = paired_difference(before[each], after[each])
        digits = 1 if scale == 100 else 3
        cells += [
            f"{scale * after[key]:.{digits}f}{unit} (n = {after['images']})",
            f"{scale * diff:+.{digits}f} +- {scale * se:.{digits}f}: {read_difference(diff, se)}",
        ]
    return " | ".join(cells)


def settings(pretrain: Path) -> dict[str, dict]:
    pre = dict(pretrain_data=str(pretrain), pretrain_weight=1.0)
    return {
        "lr1e-3": {},
        "lr3e-4": dict(lr=3e-4),
        "lr1e-3+pre": pre,
        "lr3e-4-80steps+pre": dict(lr=3e-4, max_steps=80, **pre),
        "lr1e-3-200steps": dict(max_steps=200),
        "lr1e-3-200steps+pre": dict(max_steps=200, **pre),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--judge", default="shapes-m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="comma-separated setting names")
    parser.add_argument("--work", default=None, help="keeps the rendered pretraining scenes (default: temporary)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_prompts = [p for _, p in demo_prompts(20, seed=PROMPT_SEED + 1)]
    held_out = [p for _, p in demo_prompts(16, seed=PROMPT_SEED)]
    with tempfile.TemporaryDirectory() as tmp:
        pretrain = Path(args.work or tmp) / "pretrain32"
        if not (pretrain / "manifest.jsonl").exists():
            write_dataset(pretrain, n=2000, size=32, split="id", seed=77, progress=False)
        rm = RewardModel.from_pretrained(args.judge, device="cpu", dtype="float32")
        base = load_generator()
        kw = generator_defaults(base)
        before = measure_alignment(base, rm, held_out, kw)
        print(f"base: {row(before, before)}", flush=True)
        print("| setting | verifier alignment | gain (paired SE) | judge's mean P(yes) | gain (paired SE) | time |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        table = settings(pretrain)
        for name in args.only.split(",") if args.only else table:
            with tempfile.TemporaryDirectory() as out:
                t0 = time.time()
                cfg = refl_config(bundled_path("shapes-gen"), args.judge, train_prompts, Path(out), 40, kw)
                train_refl(dataclasses.replace(cfg, **table[name]), progress=False, rm=rm)
                pipe = load_generator()
                pipe.load_lora_weights(str(Path(out) / "lora"))
                after = measure_alignment(pipe, rm, held_out, kw)
                print(f"| {name} | {row(before, after)} | {time.time() - t0:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
