"""Does the bundled generator draw better with other sampling settings? Strict-verifier alignment and the share of
samples that are not a clean scene, for each guidance scale x step count x scheduler, on the card's 120 prompts
(seed 7; ``recipes.shapes.measure_generator``; one sample per prompt, the same seeds for every setting). The
stochastic samplers (DDIM with ``--eta`` > 0, DDPM's ancestral steps, Euler ancestral) draw fresh noise at each step
from the same seeded generators.

    python benchmarks/shapes_sampler_sweep.py [--guidance 1.5 2 3 4 6] [--steps 20 50] [--eta 0 1] \\
        [--schedulers ddim-leading ddim-trailing dpm++ unipc ddpm euler-a] [--prompts 120] [--threads 2] \\
        [--out sweep.jsonl]

Prints one JSON line per setting (and appends it to ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    UniPCMultistepScheduler,
)

from rewarddance.bundled import generator_defaults, load_generator
from rewarddance.recipes.shapes import measure_generator

SCHEDULERS = {  # name: how to build it from the bundled DDIM config
    "ddim-leading": lambda cfg: DDIMScheduler.from_config(cfg),  # the bundled default
    "ddim-trailing": lambda cfg: DDIMScheduler.from_config(cfg, timestep_spacing="trailing"),
    "dpm++": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, timestep_spacing="trailing"),
    "unipc": lambda cfg: UniPCMultistepScheduler.from_config(cfg, timestep_spacing="trailing"),
    "ddpm": lambda cfg: DDPMScheduler.from_config(cfg),  # ancestral: fresh noise at every step
    "euler-a": lambda cfg: EulerAncestralDiscreteScheduler.from_config(cfg),
}
ETA = ("ddim-leading", "ddim-trailing")  # the schedulers whose step takes an eta (DDIM's share of fresh noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0, 6.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20])
    parser.add_argument("--schedulers", nargs="+", default=["ddim-leading"], choices=sorted(SCHEDULERS))
    parser.add_argument("--eta", type=float, nargs="+", default=[0.0], help="DDIM's eta (the DDIM schedulers only)")
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also append each line to this JSONL file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_generator()
    base, defaults = pipe.scheduler.config, generator_defaults(pipe)
    for name in args.schedulers:
        pipe.scheduler = SCHEDULERS[name](base)
        for steps, g, eta in itertools.product(args.steps, args.guidance, args.eta if name in ETA else [0.0]):
            kw = {**defaults, "guidance_scale": g, "num_inference_steps": steps, **({"eta": eta} if eta else {})}
            t0 = time.perf_counter()
            res = measure_generator(pipe, n_prompts=args.prompts, defaults=kw)
            row = {"scheduler": name, "guidance": g, "steps": steps, "eta": eta}
            line = json.dumps({**row, "seconds": round(time.perf_counter() - t0, 1), **res})
            print(line, flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
