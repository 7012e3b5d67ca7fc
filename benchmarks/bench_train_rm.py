"""Reward-model training step: the fused loss (``yes_prob`` + ``selected_logprobs``, no logits tensor) against the
same loss computed from full logits (``model(...).logits`` -> ``log_softmax`` -> gather), side by side.

A tiny LLaVA (hidden 64) whose vocabulary is widened to a real size (default 151,936, Qwen's) so that the logits,
not the model, dominate memory: pairwise objective with judgment-first chain of thought (the reason tokens are what
make full logits expensive). Each variant runs in a fresh child process: seconds per step (median after a warm-up)
and peak RSS above the loaded model; both losses are printed to show they agree.

    python benchmarks/bench_train_rm.py [--vocab 151936] [--pairs 8] [--steps 4]
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
import time
from pathlib import Path


def build(out: Path, vocab: int) -> None:
    from transformers import AutoModelForImageTextToText

    from rewarddance.shapes import write_dataset
    from rewarddance.tiny import build_tiny_vlm

    build_tiny_vlm("llava", out / "model")
    model = AutoModelForImageTextToText.from_pretrained(out / "model")
    model.resize_token_embeddings(vocab)
    model.save_pretrained(out / "model")
    write_dataset(out / "pairs", n=64, size=56, pairs=True, seed=0)


def full_logits_loss(rm, items, cfg, context):
    """The reference: the same verdict and reason cross-entropies from the full [B, T, V] logits."""
    import torch

    from rewarddance.training.rm import encode_items

    inputs, verdict_pos, targets = encode_items(rm, items, context)
    logits = rm.model(**rm._to_model(inputs), use_cache=False).logits.float()  # [B, T, V]
    logp = torch.log_softmax(logits, dim=-1)
    B = logp.shape[0]
    rows = logp[torch.arange(B), verdict_pos]
    yes, no = rm._answer_ids(context)
    log_yes, log_no = rows[:, yes].logsumexp(-1), rows[:, no].logsumexp(-1)
    labels = torch.tensor([it.yes for it in items])
    ce = -torch.where(labels, log_yes, log_no).mean()
    keep = targets != -100
    reason = -logp[keep].gather(1, targets[keep][:, None]).mean()
    return {"loss": ce + cfg.reason_weight * reason}


def child(folder: Path, impl: str, pairs: int, steps: int) -> dict:
    import torch

    from rewarddance import RewardModel
    from rewarddance.context import RewardContext
    from rewarddance.training.data import read_pairs
    from rewarddance.training.rm import RMTrainConfig, _items, compute_loss

    torch.manual_seed(0)
    torch.set_num_threads(2)
    rm = RewardModel.from_pretrained(folder / "model", device="cpu")
    cfg = RMTrainConfig(model="x", data="x", output_dir="x", objective="pairwise", cot="judgment_first", train="lm")
    context = RewardContext(cot="judgment_first")
    data, _ = read_pairs(folder / "pairs")
    params = [p for n, p in rm.model.named_parameters() if "language_model" in n or "lm_head" in n]
    for p in rm.model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, losses = [], []
    for step in range(steps + 1):
        items = _items(data[step * pairs : (step + 1) * pairs], "pairwise", "judgment_first")
        t0 = time.perf_counter()
        parts = compute_loss(rm, items, cfg, context) if impl == "fused" else full_logits_loss(rm, items, cfg, context)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(parts["loss"].item())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = statistics.median(times[1:])
    return {
        "impl": impl,
        "s_per_step": s,
        "pairs_per_s": pairs / s,
        "extra_mib": (peak - base) / 1024,
        "first_loss": losses[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=151_936, help="vocabulary size of the widened lm_head")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per step (x2 items: both orders)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], args.pairs, args.steps)))
        return
    folder = Path(tempfile.mkdtemp())
    build(folder, args.vocab)
    rows = []
    for impl in ("fused", "full-logits"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(folder),
            impl,
            "--pairs",
            str(args.pairs),
            "--steps",
            str(args.steps),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    machine = f"{platform.machine()} CPU, 2 threads"
    print(f"tiny LLaVA, vocabulary {args.vocab:,}, pairwise + judgment-first CoT, {args.pairs} pairs per step\n")
    print("| loss | s / step | pairs / s | peak RSS above the loaded model | first loss | machine |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['impl']} | {r['s_per_step']:.3f} | {r['pairs_per_s']:.1f} | {r['extra_mib']:.0f} MiB | "
            f"{r['first_loss']:.5f} | {machine} |"
        )


if __name__ == "__main__":
    main()
