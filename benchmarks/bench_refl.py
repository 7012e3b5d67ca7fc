"""ReFL: seconds per step and peak memory by configuration (pipeline family, gradient checkpointing).

On this CPU the tiny random pipelines of every family (32 px, 6 steps, LoRA rank 4) and a tiny LLaVA judge, for
regressions; each configuration runs in a fresh child process so its peak memory is its own. On a GPU, pass real
checkpoints with ``--pretrained`` and ``--reward-model`` (the issue's targets: SDXL + a 2B-class RM in 8-bit within
24 GB at batch 1; SD 1.5 within 12 GB).

    python benchmarks/bench_refl.py [--steps 6]
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

KINDS = ("sd", "sdxl", "sd3", "flux")


def child(kind: str, steps: int, checkpointing: bool) -> dict:
    import torch

    from rewarddance import RewardModel
    from rewarddance.tiny import build_tiny_vlm
    from rewarddance.tiny_diffusion import build_tiny_pipeline
    from rewarddance.training.refl import ReFLConfig, train_refl

    torch.set_num_threads(2)
    rm = RewardModel.from_pretrained(str(build_tiny_vlm("llava", tempfile.mkdtemp(), init_std=0.02)), device="cpu")
    pipe = build_tiny_pipeline(kind, "ddim" if kind in ("sd", "sdxl") else None)
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
    )
    res = train_refl(cfg, progress=False, pipe=pipe, rm=rm)
    per_step = statistics.median(h["seconds"] for h in res["history"][1:])  # the first step warms up
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "kind": kind,
        "checkpointing": checkpointing,
        "s_per_step": per_step,
        "peak_rss_mib": peak / 1024,
        "rss_over_load_mib": (peak - base_rss) / 1024,
        "steps": res["step"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, steps, ckpt = args.child
        print(json.dumps(child(kind, int(steps), ckpt == "1")))
        return
    machine = f"{platform.machine()} CPU, 2 threads"
    print("| pipeline | grad. checkpointing | s / step | peak RSS | RSS above the loaded models | machine |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        for ckpt in ("0", "1"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, str(args.steps), ckpt],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"| tiny {kind} | {'on' if r['checkpointing'] else 'off'} | {r['s_per_step']:.3f} | "
                f"{r['peak_rss_mib']:.0f} MiB | {r['rss_over_load_mib']:.0f} MiB | {machine} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
