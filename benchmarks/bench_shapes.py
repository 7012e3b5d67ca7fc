"""ShapesWorld benchmark: scenes per minute rendered + verified, verifier accuracy, robustness, pair labels.

    python benchmarks/bench_shapes.py                          # all modes, defaults below
    python benchmarks/bench_shapes.py --modes speed --sizes 64 --n 3000

Modes: ``speed`` (render and verify one scene at a time in one process: scenes/min of render + verify, ms per
stage including sampling the scene, and the verifier's accuracy on the same scenes), ``robustness`` (accuracy
under each corruption level), ``pairs`` (the fraction of pairs whose chosen image passes and rejected image fails
the verifier), ``strict`` (clean renders pass and are called clean at every size; how many corrupted renders
are called unclean; every kind of ``corrupt.garbage`` fails every prompt). Prints markdown rows with the machine's name in each; results go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from rewarddance.shapes import CATEGORIES, CORRUPTIONS, corrupt, render, render_array, sample_examples, verify
from rewarddance.shapes.pairs import sample_pairs


def machine() -> str:
    """CPU model and core count, for every row."""
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def make_examples(n: int, seed: int, split: str):
    """The one setup factory: ``n`` balanced examples."""
    return sample_examples(n, seed=seed, split=split)


def bench_speed(args, device: str) -> None:
    print(
        "| split | size | scenes | sample ms | render ms | verify ms | scenes/min (render+verify) | accuracy "
        "| machine |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for split in args.splits:
        t0 = time.perf_counter()
        examples = make_examples(args.n, args.seed, split)
        t_sample = (time.perf_counter() - t0) / len(examples)
        for size in args.sizes:
            for ex in examples[:20]:  # warm-up
                verify(render_array(ex.scene, size), ex.spec)
            t_render = t_verify = 0.0
            passed = 0
            t0 = time.perf_counter()
            for ex in examples:
                a = time.perf_counter()
                image = render_array(ex.scene, size)
                b = time.perf_counter()
                passed += verify(image, ex.spec).passed
                t_verify += time.perf_counter() - b
                t_render += b - a
            total = time.perf_counter() - t0
            n = len(examples)
            print(
                f"| {split} | {size} | {n} | {1e3 * t_sample:.2f} | {1e3 * t_render / n:.2f} | "
                f"{1e3 * t_verify / n:.2f} | "
                f"{60.0 * n / total:,.0f} | {passed / n:.4f} | {device} |",
                flush=True,
            )


def bench_robustness(args, device: str) -> None:
    print("| split | size | corruption | " + " | ".join(f"level {i + 1}" for i in range(4)) + " | machine |")
    print("|---|---|---|---|---|---|---|---|")
    for split in args.splits:
        examples = make_examples(args.n_robust, args.seed + 1, split)
        for size in args.robust_sizes:
            images = [render(ex.scene, size) for ex in examples]
            for kind, levels in CORRUPTIONS.items():
                cells = []
                for level in levels:
                    ok = sum(
                        verify(corrupt(im, kind, level, seed=i), ex.spec).passed
                        for i, (ex, im) in enumerate(zip(examples, images))
                    )
                    cells.append(f"{level:g}: {ok / len(examples):.3f}")
                print(f"| {split} | {size} | {kind} | " + " | ".join(cells) + f" | {device} |", flush=True)


def bench_pairs(args, device: str) -> None:
    print("| split | size | pairs | pairs/min (sample) | labels right | machine |")
    print("|---|---|---|---|---|---|")
    for split in args.splits:
        t0 = time.perf_counter()
        pairs = sample_pairs(args.n_pairs, seed=args.seed + 2, split=split)
        rate = 60.0 * len(pairs) / (time.perf_counter() - t0)
        for size in args.robust_sizes:
            right = sum(
                verify(render_array(p.chosen.scene, size), p.chosen.spec).passed
                and not verify(render_array(p.rejected, size), p.chosen.spec).passed
                for p in pairs
            )
            print(
                f"| {split} | {size} | {len(pairs)} | {rate:,.0f} | {right / len(pairs):.4f} | {device} |", flush=True
            )


def bench_strict(args, device: str) -> None:
    """The strict verifier's calibration: clean renders must pass (and be called clean), corrupted renders at each
    robustness level are counted clean or not, and every kind of ``corrupt.garbage`` must fail every prompt."""
    from collections import Counter

    from rewarddance.shapes.corrupt import GARBAGE, garbage

    print("| split | size | scenes | passed | not clean | machine |")
    print("|---|---|---|---|---|---|")
    for split in args.splits:
        examples = make_examples(args.n_strict, args.seed + 3, split)
        for size in args.sizes:
            verdicts = [verify(render_array(ex.scene, size), ex.spec) for ex in examples]
            passed, unclean = sum(v.passed for v in verdicts), sum(not v.clean for v in verdicts)
            print(f"| {split} | {size} | {len(examples)} | {passed / len(examples):.4f} | {unclean} | {device} |")
    print()
    print("| size | corruption | not clean at level 1 / 2 / 3 / 4 (of n) | machine |")
    print("|---|---|---|---|---|")
    examples = make_examples(args.n_strict, args.seed + 4, "id")
    for size in args.robust_sizes:
        for kind, levels in CORRUPTIONS.items():
            cells = []
            for level in levels:
                unclean = sum(
                    not verify(corrupt(render(ex.scene, size), kind, level, seed=i), ex.spec).clean
                    for i, ex in enumerate(examples)
                )
                cells.append(f"{level}: {unclean}")
            print(f"| {size} | {kind} | {' / '.join(cells)} (of {len(examples)}) | {device} |", flush=True)
    print()
    prompts = ["a photo of a square", "a photo of an orange square", "a photo of a circle"]
    print(
        "| garbage | size | images | verdicts (4 prompts each) | passed | not clean | reasons (most common) | machine |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in GARBAGE:
        for size in args.sizes:
            n = passed = unclean = 0
            reasons: Counter = Counter()
            for seed in range(args.n_garbage):
                ex = make_examples(1, args.seed + 5 + seed, "id")[0]
                image = garbage(kind, size, seed, ex.scene)
                for prompt in [*prompts, ex.prompt]:
                    v = verify(image, prompt)
                    n, passed, unclean = n + 1, passed + v.passed, unclean + (not v.clean)
                    reasons[v.reason.split(" (")[0].split(" at ")[0].split(": ")[-1]] += 1
            top = "; ".join(f"{r} x{c}" for r, c in reasons.most_common(2))
            print(f"| {kind} | {size} | {args.n_garbage} | {n} | {passed} | {unclean} | {top} | {device} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--modes", nargs="+", default=["speed", "robustness", "pairs", "strict"], help="speed robustness pairs strict"
    )
    parser.add_argument("--n", type=int, default=1200, help="scenes per size in the speed mode")
    parser.add_argument("--n-robust", type=int, default=600, help="scenes per cell in the robustness mode")
    parser.add_argument("--n-pairs", type=int, default=600, help="pairs in the pairs mode")
    parser.add_argument("--n-strict", type=int, default=300, help="scenes per cell in the strict mode")
    parser.add_argument("--n-garbage", type=int, default=30, help="images per garbage kind and size (strict mode)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512], help="speed mode sizes")
    parser.add_argument("--robust-sizes", type=int, nargs="+", default=[64, 128], help="robustness/pairs sizes")
    parser.add_argument("--splits", nargs="+", default=["id", "ood"], help="id and/or ood")
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    device = machine()
    print(f"categories: {', '.join(CATEGORIES)}; machine: {device}\n")
    for mode in args.modes:
        modes = {"speed": bench_speed, "robustness": bench_robustness, "pairs": bench_pairs, "strict": bench_strict}
        modes[mode](args, device)
        print()


if __name__ == "__main__":
    main()
