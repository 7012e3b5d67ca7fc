"""Reward-model training step: the fused loss (``yes_prob`` + ``selected_logprobs``, no logits tensor) against the
same loss computed from logits, two ways, side by side:

- ``fused``: ``rewarddance.training.rm.compute_loss``: hidden states at the needed positions go straight into the
  kernels; no logits tensor exists (the chunked torch path on the CPU, Triton on CUDA);
- ``gathered-logits``: the fair baseline: the same hidden states at the same positions (the verdict position of each
  item and every reason-token position), then ``lm_head`` on those rows only, ``log_softmax`` and gather: one
  ``[rows, V]`` logits tensor, what ``logits_to_keep`` or a gather before the head gives. fused vs this is what the
  fusion itself saves;
- ``full-logits``: ``model(...).logits`` -> ``log_softmax`` -> gather, the ``[B, T, V]`` way of a naive trainer.
  gathered vs this is what selecting positions saves, fused or not.

A tiny LLaVA (hidden 64) whose vocabulary is widened to a real size (default 151,936, Qwen's) so that the logits,
not the model, dominate memory: pairwise objective with judgment-first chain of thought (the reason tokens are what
make full logits expensive). Each variant runs in a fresh child process: seconds per step (median after a warm-up)
and peak RSS above the loaded model; the first step's losses are printed to show they agree.

    python benchmarks/bench_train_rm.py [--vocab 151936] [--pairs 8] [--steps 4] [--json FILE]
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
    from rewarddance.testing.tiny import build_tiny_vlm

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
    logits = rm.model(**rm.to_device(inputs), use_cache=False).logits.float()  # [B, T, V]
    logp = torch.log_softmax(logits, dim=-1)
    B = logp.shape[0]
    rows = logp[torch.arange(B), verdict_pos]
    yes, no = rm.verdict_ids(context)
    log_yes, log_no = rows[:, yes].logsumexp(-1), rows[:, no].logsumexp(-1)
    labels = torch.tensor([it.yes for it in items])
    ce = -torch.where(labels, log_yes, log_no).mean()
    keep = targets != -100
    reason = -logp[keep].gather(1, targets[keep][:, None]).mean()
    return {"loss": ce + cfg.reason_weight * reason, "logit_rows": logits.shape[0] * logits.shape[1]}


def gathered_logits_loss(rm, items, cfg, context):
    """The fair baseline: hidden states at the needed positions only, then lm_head, log_softmax, gather.

    The rows are the ones ``compute_loss`` feeds the kernels (each item's verdict position, every reason position);
    the loss is the same, but a ``[rows, V]`` fp32 logits tensor (and its log_softmax) is built and kept for backward.
    """
    import torch
    import torch.nn.functional as F

    from rewarddance.training.rm import encode_items

    inputs, verdict_pos, targets = encode_items(rm, items, context)
    hidden = rm.hidden_states(inputs)  # [B, T, H]
    B = hidden.shape[0]
    keep = targets != -100
    rows = torch.cat([hidden[torch.arange(B), verdict_pos], hidden[keep]])  # [B + K, H]
    logp = torch.log_softmax(F.linear(rows, *rm.head(trainable=True)).float(), dim=-1)  # [B + K, V]
    yes, no = rm.verdict_ids(context)
    log_yes, log_no = logp[:B, yes].logsumexp(-1), logp[:B, no].logsumexp(-1)
    labels = torch.tensor([it.yes for it in items])
    ce = -torch.where(labels, log_yes, log_no).mean()
    reason = -logp[B:].gather(1, targets[keep][:, None]).mean()
    return {"loss": ce + cfg.reason_weight * reason, "logit_rows": rows.shape[0]}


LOSSES = {"fused": None, "gathered-logits": gathered_logits_loss, "full-logits": full_logits_loss}


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
    times, losses, logit_rows = [], [], []
    for step in range(steps + 1):
        items = _items(data[step * pairs : (step + 1) * pairs], "pairwise", "judgment_first")
        t0 = time.perf_counter()
        parts = compute_loss(rm, items, cfg, context) if impl == "fused" else LOSSES[impl](rm, items, cfg, context)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(parts["loss"].item())
        logit_rows.append(parts.get("logit_rows", 0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = statistics.median(times[1:])
    return {
        "impl": impl,
        "s_per_step": s,
        "pairs_per_s": pairs / s,
        "extra_mib": (peak - base) / 1024,
        "first_loss": losses[0],
        "logit_rows": statistics.median(logit_rows[1:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=151_936, help="vocabulary size of the widened lm_head")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per step (x2 items: both orders)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], args.pairs, args.steps)))
        return
    folder = Path(tempfile.mkdtemp())
    build(folder, args.vocab)
    rows = {}
    for impl in LOSSES:
        cmd = [sys.executable, __file__, "--child", str(folder), impl, "--pairs", str(args.pairs)]
        out = subprocess.run(cmd + ["--steps", str(args.steps)], capture_output=True, text=True, check=True).stdout
        rows[impl] = json.loads(out.strip().splitlines()[-1])
    machine = f"{platform.machine()} CPU, 2 threads"
    print(f"tiny LLaVA, vocabulary {args.vocab:,}, pairwise + judgment-first CoT, {args.pairs} pairs per step\n")
    print(
        "| loss | logits built per step | s / step | pairs / s | peak RSS above the loaded model | first loss | machine |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows.values():
        built = f"[{r['logit_rows']:,.0f}, V]" if r["logit_rows"] else "none"
        print(
            f"| {r['impl']} | {built} | {r['s_per_step']:.3f} | {r['pairs_per_s']:.1f} | {r['extra_mib']:.0f} MiB | "
            f"{r['first_loss']:.5f} | {machine} |"
        )
    fused, gathered, full = rows["fused"], rows["gathered-logits"], rows["full-logits"]

    def ratio(a: dict, b: dict) -> str:
        mem = b["extra_mib"] / max(a["extra_mib"], 1.0)  # MiB above the model; 1 MiB floor against a zero
        return f"{b['s_per_step'] / a['s_per_step']:.2f}x the speed, {mem:.1f}x less memory"

    print(f"\nfusion itself (fused vs gathered-logits): {ratio(fused, gathered)}")
    print(f"selecting positions (gathered-logits vs full-logits): {ratio(gathered, full)}")
    print(f"both (fused vs full-logits): {ratio(fused, full)}")
    if args.json:
        args.json.write_text(json.dumps({"vocab": args.vocab, "pairs": args.pairs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
