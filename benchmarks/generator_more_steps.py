"""Is the bundled generator short of training? Continue its UNet and text encoder for ``--steps`` more steps on the
recipe's own training scenes, then measure both generators on the card's prompts, seeds and samples with the strict
verifier, paired by prompt.

    python benchmarks/generator_more_steps.py [--steps 3500] [--lr 2.5e-4] [--work /tmp/generator-more] \\
        [--start DIR] [--seed 1] [--threads 2]

The continuation starts from the bundled (EMA) weights with a fresh AdamW, a 100-step warm-up to ``--lr`` and a
cosine decay, an EMA of decay 0.999 as the recipe's, and batches drawn with ``--seed`` (the recipe's are seed 0): it
asks whether more of the same training helps, not what a longer run from scratch would reach. ``--work`` keeps the
UNet's checkpoint every 500 steps (an interrupted run continues from it) and the trained pipeline in ``WORK/out``
(a second run only measures). ``--start``: continue another saved generator instead (a previous run's ``WORK/out``),
which is then the one compared with. Prints and writes ``WORK/measure.json``: both generators' alignment and unclean
share and the paired differences with their standard errors over prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from rewarddance.bundled import generator_defaults
from rewarddance.bundled import load_generator as load_bundled
from rewarddance.recipes.shapes import GENERATOR_CARD, measure_generator
from rewarddance.shapes.generator import (
    GeneratorConfig,
    encode_latents,
    load_generator,
    render_training_set,
    train_denoiser,
)


def paired(before: list[float], after: list[float]) -> tuple[float, float]:
    """The mean of ``after - before`` over prompts and its standard error."""
    d = [b - a for a, b in zip(before, after)]
    mean = sum(d) / len(d)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3500, help="more UNet + text encoder steps")
    parser.add_argument("--lr", type=float, default=2.5e-4, help="peak learning rate of the continuation")
    parser.add_argument("--work", default="/tmp/generator-more")
    parser.add_argument("--seed", type=int, default=1, help="seed of the batches, noise and timesteps")
    parser.add_argument("--start", default=None, help="a saved generator to continue (default: the bundled one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    settings = {"steps": args.steps, "lr": args.lr, "seed": args.seed, "start": args.start or "bundled"}
    saved = work / "settings.json"
    if saved.exists() and json.loads(saved.read_text(encoding="utf-8")) != settings:
        raise SystemExit(f"{work} holds a run with other settings ({saved.read_text().strip()}); use a new --work")
    saved.write_text(json.dumps(settings) + "\n", encoding="utf-8")
    if not (out / "model_index.json").exists():
        t0 = time.time()
        pipe = load_generator(args.start) if args.start else load_bundled()
        cfg = replace(GeneratorConfig(), unet_steps=args.steps, unet_lr=args.lr, seed=args.seed)
        prompts, images = render_training_set(cfg)  # the recipe's scenes (its data seed)
        latents = encode_latents(pipe.vae, images) * pipe.vae.config.scaling_factor
        train_denoiser(pipe, prompts, latents, cfg, log=print, work=work)
        pipe.save_pretrained(out, safe_serialization=True)
        print(f"trained {args.steps} more steps in {(time.time() - t0) / 60:.1f} min (this session's part)", flush=True)
    start = load_generator(args.start) if args.start else load_bundled()
    # the bundled sampling settings for both (a saved continuation has no training.json to read them from)
    card = dict(n_prompts=GENERATOR_CARD["n_prompts"], samples=GENERATOR_CARD["samples"], per_prompt=True)
    card["defaults"] = generator_defaults(load_bundled())
    before = measure_generator(start, **card)
    after = measure_generator(load_generator(out), **card)
    row = dict(settings)
    for name, res in (("start", before), ("continued", after)):
        row[name] = {k: res[k] for k in ("alignment", "alignment_se", "not_clean", "first_sample_alignment")}
    for key in ("alignment", "clean"):
        mean, se = paired(before["per_prompt"][key], after["per_prompt"][key])
        row[f"{key}_gain"], row[f"{key}_gain_se"] = round(mean, 4), round(se, 4)
    print(json.dumps(row), flush=True)
    (work / "measure.json").write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
