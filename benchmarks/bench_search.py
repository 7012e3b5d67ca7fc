"""Inference-time scaling on a tiny pipeline: wall time, denoiser evaluations and reward-model calls per second.

Until the bundled ShapesWorld models exist, quality gains cannot be measured; this records what each method costs
on a tiny random SD pipeline (32 px) and a tiny random LLaVA reward model, side by side with plain generation of
the same number of images, in one run.

    python benchmarks/bench_search.py [--steps 20] [--n 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from rewarddance import RewardModel
from rewarddance.guidance import RewardGuidanceCallback, run_guided
from rewarddance.pipelines import SamplerConfig
from rewarddance.search import best_of_n, search_over_paths, tournament
from rewarddance.testing.tiny import build_tiny_vlm
from rewarddance.testing.tiny_diffusion import build_tiny_pipeline

PROMPT = "a red circle left of a blue square"


def timed(fn, repeats: int):
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="denoising steps")
    ap.add_argument("--n", type=int, default=8, help="candidates / particles")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = build_tiny_pipeline("sd", "ddim")
    pipe.set_progress_bar_config(disable=True)
    rm = RewardModel.from_pretrained(str(build_tiny_vlm("llava", tempfile.mkdtemp())), device="cpu")
    kw = dict(num_inference_steps=args.steps, height=32, width=32)
    n, steps = args.n, args.steps
    rows = []

    def plain():
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        return pipe([PROMPT] * n, generator=gens, output_type="pt", **kw).images

    t, _ = timed(plain, args.repeats)
    rows.append(("plain generation", t, n * steps, 0, 0))

    t, res = timed(lambda: best_of_n(pipe, rm, PROMPT, n=n, batch_size=n, **kw), args.repeats)
    rows.append((f"best_of_n (N={n})", t, n * steps, res.rm_calls, n))

    imgs = res.images
    t, tour = timed(lambda: tournament(imgs, rm, PROMPT, top_k=2, schedule="round_robin"), args.repeats)
    rows.append((f"tournament round robin ({n} images)", t, 0, tour.rm_calls, 2 * len(tour.matches)))

    cfg = SamplerConfig(**kw)
    m = 2
    budget = 2 * n * steps
    t, sop = timed(
        lambda: search_over_paths(
            pipe, rm, PROMPT, n=n // 2, m=m, num_inference_steps=steps, budget=budget, config=cfg
        ),
        args.repeats,
    )
    rows.append(
        (f"search over paths (N={n // 2}, M={m}, budget {budget})", t, sop.evaluations, sop.rm_calls, sop.rm_images)
    )

    def guided():
        cb = RewardGuidanceCallback(rm, PROMPT, every=max(1, steps // 4))
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        run_guided(pipe, PROMPT, cb, num_images_per_prompt=n, generator=gens, output_type="pt", **kw)
        return cb

    t, cb = timed(guided, args.repeats)
    rows.append((f"guidance callback (B={n}, every {max(1, steps // 4)})", t, n * steps, cb.rm_calls, cb.images_scored))

    machine = f"{platform.processor() or platform.machine()} CPU, {args.threads} threads"
    print(f"tiny SD pipeline (32 px, {steps} DDIM steps) + tiny LLaVA RM; median of {args.repeats}; {machine}\n")
    print(
        "| method | s (median) | denoiser evals | RM calls | images scored | images scored / s (whole method) | machine |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, t, ev, calls, scored in rows:
        rate = f"{scored / t:.1f}" if scored else "-"
        print(f"| {name} | {t:.3f} | {ev} | {calls} | {scored} | {rate} | {machine} |")


if __name__ == "__main__":
    main()
