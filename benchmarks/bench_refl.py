"""ReFL: seconds per step and peak memory by configuration (pipeline family, gradient checkpointing).

On this CPU the tiny random pipelines of every family (32 px, 6 steps, LoRA rank 4) and a tiny LLaVA judge, for
regressions; each configuration runs in a fresh child process so its peak memory is its own. ``--device cuda`` runs the same
tiny rows on the GPU and reports ``torch.cuda.max_memory_allocated()`` during training (the models excluded) instead
of the CPU's resident set size; it checks the GPU path, while the issue's memory targets (SDXL + a 2B-class RM in
8-bit within 24 GB at batch 1; SD 1.5 within 12 GB) need real checkpoints, which this script does not load.

    python benchmarks/bench_refl.py [--steps 6] [--device cpu|cuda] [--json FILE]

``--batching`` instead times one ReFL step (rollouts, backward, optimiser step) at batch 1, 4 and 8 two ways, side
by side on the same rows: the batched step (``rollout_rewards`` over the micro-batch: one denoiser call per level,
one decode, one reward call) and the per-prompt loop it replaced (``rollout_rewards`` once per prompt, the same
arithmetic as the old one-prompt rollout). Each repeat draws fresh rows (prompt, stop level in [2, 5] so rows stop
at different levels, noise seed) and runs both ways in turn; the first repeat is a warm-up and is not counted.

    python benchmarks/bench_refl.py --batching [--batches 1 4 8] [--repeats 5] [--kind sd] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

KINDS = ("sd", "sdxl", "sd3", "flux")


def child(kind: str, steps: int, checkpointing: bool, device: str = "cpu") -> dict:
    import torch

    from rewarddance import RewardModel
    from rewarddance.testing.tiny import build_tiny_vlm
    from rewarddance.testing.tiny_diffusion import build_tiny_pipeline
    from rewarddance.training.refl import train_refl
    from rewarddance.training.refl_config import ReFLConfig

    torch.set_num_threads(2)
    rm = RewardModel.from_pretrained(str(build_tiny_vlm("llava", tempfile.mkdtemp(), init_std=0.02)), device=device)
    pipe = build_tiny_pipeline(kind, "ddim" if kind in ("sd", "sdxl") else None).to(device)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = ReFLConfig(
        pretrained="in-process",
        reward_model="in-process",
        prompts=["a red circle", "a blue square"],
        output_dir=tempfile.mkdtemp(),
        num_inference_steps=6,
        stop_range=[4, 5],
        resolution=32,
        lora_rank=4,
        lora_alpha=4,
        batch_size=1,
        max_steps=steps + 1,
        save_every=0,
        eval_prompts=[],
        gradient_checkpointing=checkpointing,
        device=device,
        dtype="float32",  # the tiny pipelines are built in fp32 (ReFL's default on CUDA would be bf16)
    )
    res = train_refl(cfg, progress=False, pipe=pipe, rm=rm)
    per_step = statistics.median(h["seconds"] for h in res["history"][1:])  # the first step warms up
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = {
        "kind": kind,
        "checkpointing": checkpointing,
        "device": device,
        "s_per_step": per_step,
        "peak_rss_mib": peak / 1024,
        "rss_over_load_mib": (peak - base_rss) / 1024,
        "steps": res["step"],
    }
    if cuda:
        torch.cuda.synchronize()
        row["cuda_peak_over_load_mib"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        row["machine"] = torch.cuda.get_device_name()
    return row


def batching(kind: str, batches: list[int], repeats: int, device: str, threads: int) -> list[dict]:
    """Seconds per ReFL step, batched vs one rollout per prompt, for each batch size (see the module docstring)."""
    import time

    import torch

    from rewarddance import RewardModel
    from rewarddance.context import RewardContext
    from rewarddance.pipelines import SamplerConfig
    from rewarddance.testing.tiny import build_tiny_vlm
    from rewarddance.testing.tiny_diffusion import build_tiny_pipeline
    from rewarddance.training.refl import add_lora, pipe_denoiser, rollout_rewards
    from rewarddance.training.refl_config import ReFLConfig

    torch.set_num_threads(threads)
    prompts = ["a red circle", "a blue square", "two green triangles", "a yellow star above a purple circle"]
    rm = RewardModel.from_pretrained(str(build_tiny_vlm("llava", tempfile.mkdtemp(), init_std=0.02)), device=device)
    pipe = build_tiny_pipeline(kind, "ddim" if kind in ("sd", "sdxl") else None).to(device)
    pipe.set_progress_bar_config(disable=True)
    cfg = ReFLConfig(
        pretrained="in-process", reward_model="in-process", prompts=prompts, output_dir=tempfile.mkdtemp(), lora_rank=4
    )
    torch.manual_seed(0)
    params = add_lora(pipe_denoiser(pipe), cfg)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sampler_cfg = SamplerConfig(num_inference_steps=6, height=32, width=32)
    if kind == "flux":
        sampler_cfg.max_sequence_length = min(sampler_cfg.max_sequence_length, pipe.tokenizer_2.model_max_length)
    context = RewardContext()

    def step(rows: list[tuple], together: bool) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for group in [rows] if together else [[row] for row in rows]:
            p, stops, seeds = (list(col) for col in zip(*group))
            r = rollout_rewards(pipe, rm, p, sampler_cfg, stops, seeds, None, context)
            (-torch.log(r.clamp_min(1e-12))).sum().div(len(rows)).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    gen = torch.Generator().manual_seed(0)
    out = []
    for batch in batches:
        times: dict[bool, list[float]] = {True: [], False: []}
        for rep in range(repeats + 1):  # repeat 0 warms up
            rows = [
                (
                    prompts[int(torch.randint(0, len(prompts), (1,), generator=gen))],
                    int(torch.randint(2, 6, (1,), generator=gen)),
                    int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
                )
                for _ in range(batch)
            ]
            for together in (True, False):
                seconds = step(rows, together)
                if rep:
                    times[together].append(seconds)
        row = {"kind": kind, "batch": batch, "repeats": repeats, "device": device, "threads": threads}
        for together, name in ((True, "batched"), (False, "per_prompt")):
            row[f"{name}_median_s"] = statistics.median(times[together])
            row[f"{name}_min_s"], row[f"{name}_max_s"] = min(times[together]), max(times[together])
        row["speedup"] = row["per_prompt_median_s"] / row["batched_median_s"]
        if device == "cuda":
            row["machine"] = torch.cuda.get_device_name()
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the pipelines and judge run")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--batching", action="store_true", help="time the batched step against the per-prompt loop")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8], help="batch sizes (with --batching)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per batch size (with --batching)")
    ap.add_argument("--kind", choices=KINDS, default="sd", help="tiny pipeline family (with --batching)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (with --batching)")
    args = ap.parse_args()
    if args.batching:
        if args.repeats < 1 or min(args.batches) < 1:
            ap.error("--repeats and --batches must be >= 1")
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                ap.error("--device cuda: no CUDA device is available here")
        rows = batching(args.kind, args.batches, args.repeats, args.device, args.threads)
        machine = f"{platform.machine()} CPU, {args.threads} threads"
        print(
            "| pipeline | batch | batched s / step (median, min-max) | per-prompt s / step (median, min-max) | "
            "speed-up | repeats | machine |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| tiny {r['kind']} | {r['batch']} | {r['batched_median_s']:.3f} ({r['batched_min_s']:.3f}-"
                f"{r['batched_max_s']:.3f}) | {r['per_prompt_median_s']:.3f} ({r['per_prompt_min_s']:.3f}-"
                f"{r['per_prompt_max_s']:.3f}) | {r['speedup']:.2f}x | {r['repeats']} | {r.get('machine', machine)} |"
            )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    if args.child:
        kind, steps, ckpt, device = args.child
        print(json.dumps(child(kind, int(steps), ckpt == "1", device)))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is available here")
    machine = f"{platform.machine()} CPU, 2 threads"
    mem_col = "CUDA peak above the loaded models" if args.device == "cuda" else "RSS above the loaded models"
    print(f"| pipeline | grad. checkpointing | s / step | peak RSS | {mem_col} | machine |")
    print("|---|---|---|---|---|---|")
    rows = []
    for kind in KINDS:
        for ckpt in ("0", "1"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, str(args.steps), ckpt, args.device],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append(r)
            mem = r.get("cuda_peak_over_load_mib", r["rss_over_load_mib"])
            print(
                f"| tiny {kind} | {'on' if r['checkpointing'] else 'off'} | {r['s_per_step']:.3f} | "
                f"{r['peak_rss_mib']:.0f} MiB | {mem:.0f} MiB | {r.get('machine', machine)} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
