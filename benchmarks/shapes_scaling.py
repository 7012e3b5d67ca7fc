"""The paper's reward-scaling tables in miniature, measured with the bundled ShapesWorld models on this CPU.

For every bundled reward model (``shapes-s``, ``shapes-m``, ``shapes-l``: one architecture, three sizes):

- ``accuracy``: pointwise accuracy on 300 in-domain and 300 out-of-domain held-out preference pairs (Table 2, top);
- ``alignment``: ShapesWorld verifier alignment of the bundled generator on held-out prompts: the first sample,
  best-of-N chosen by the RM, and search over paths with the same denoiser budget (Table 2, inference-time scaling);
- ``refl``: a short pointwise ReFL (LoRA) of the generator with each RM, then the first sample's verifier alignment
  on the same held-out prompts, and the reward's standard deviation over the last quarter of training (the paper's
  reward-hacking signal: a larger RM keeps a higher variance late in training).

The verifier is a program, not a model, so it measures what the RMs are for without sharing their errors.

    python benchmarks/shapes_scaling.py [--parts accuracy,alignment,refl] [--prompts-per-category 4] [--n 16]

Writes ``benchmarks/shapes_scaling.json`` and replaces the ``shapes_scaling`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rewarddance import RewardModel
from rewarddance.bundled import REWARD_MODELS, available, card, generator_defaults, load_generator
from rewarddance.bundled.train import eval_data, measure_rm
from rewarddance.demo import DEMO_SEED, _to_pil, demo_prompts
from rewarddance.pipelines import SamplerConfig
from rewarddance.search import search_over_paths
from rewarddance.shapes import verify

HERE = Path(__file__).resolve().parent
PROMPT_SEED = DEMO_SEED + 2  # held-out prompts of this benchmark (not the demo's, not ReFL's training prompts)


def candidates(pipe, prompts: list[str], n: int, kw: dict) -> list[torch.Tensor]:
    """``n`` samples per prompt, seeds 0 .. n-1 (shared by every RM, so best-of-N differs only by the judge)."""
    out = []
    for prompt in prompts:
        gens = [torch.Generator().manual_seed(s) for s in range(n)]
        with torch.no_grad():
            out.append(pipe([prompt] * n, generator=gens, output_type="pt", **kw).images.float())
    return out


def passes(images: torch.Tensor, prompt: str) -> list[bool]:
    return [verify(_to_pil(img), prompt).passed for img in images]


def part_alignment(pipe, rms: dict, prompts: list[str], n: int, kw: dict) -> dict:
    cands = candidates(pipe, prompts, n, kw)
    verdicts = [passes(c, p) for c, p in zip(cands, prompts)]
    base = statistics.mean(v[0] for v in verdicts)
    oracle = statistics.mean(any(v) for v in verdicts)
    mean_pass = statistics.mean(statistics.mean(v) for v in verdicts)
    rows = {}
    for name, rm in rms.items():
        t0 = time.time()
        chosen, searched = [], []
        for c, v, prompt in zip(cands, verdicts, prompts):
            scores = rm.score(c, prompt).p_yes.float()
            chosen.append(v[int(torch.argmax(scores))])
            res = search_over_paths(
                pipe,
                rm,
                prompt,
                n=max(1, n // 4),
                m=2,
                num_inference_steps=kw["num_inference_steps"],
                budget=n * kw["num_inference_steps"],
                seed=0,
                config=SamplerConfig(guidance_scale=kw["guidance_scale"], height=kw["height"], width=kw["width"]),
            )
            searched.append(passes(res.images[:1], prompt)[0])
        rows[name] = {
            "best_of_n": statistics.mean(chosen),
            "search": statistics.mean(searched),
            "seconds": round(time.time() - t0, 1),
        }
    return {
        "prompts": len(prompts),
        "n": n,
        "first": base,
        "mean_candidate": mean_pass,
        "oracle": oracle,
        "by_rm": rows,
    }


def part_refl(rms: dict, train_prompts: list[str], held_out: list[str], steps: int, kw: dict) -> dict:
    from rewarddance.bundled import bundled_path
    from rewarddance.demo import measure_alignment, refl_config
    from rewarddance.training.refl import train_refl

    rows = {}
    base_pipe = load_generator()
    verifier_rm = next(iter(rms.values()))
    before = measure_alignment(base_pipe, verifier_rm, held_out, kw)
    for name, rm in rms.items():
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            cfg = refl_config(bundled_path("shapes-gen"), name, train_prompts, Path(tmp), steps, kw)
            train_refl(cfg, progress=False, rm=rm)
            with open(Path(tmp) / "metrics.csv", encoding="utf-8") as f:
                log = list(csv.DictReader(f))
            late = log[-max(1, len(log) // 4) :]
            pipe = load_generator()
            pipe.load_lora_weights(str(Path(tmp) / "lora"))
            after = measure_alignment(pipe, rm, held_out, kw)
        rows[name] = {
            "alignment_after": after["alignment"],
            "own_reward_before": measure_alignment(base_pipe, rm, held_out, kw)["p_yes"],
            "own_reward_after": after["p_yes"],
            "late_reward_std": statistics.mean(float(r["window_std"]) for r in late),
            "late_reward_mean": statistics.mean(float(r["window_mean"]) for r in late),
            "seconds": round(time.time() - t0, 1),
        }
    return {"steps": steps, "prompts": len(held_out), "alignment_before": before["alignment"], "by_rm": rows}


def markdown(results: dict) -> str:
    names = [n for n in REWARD_MODELS if n in results.get("params", {})]
    lines = [
        "<!-- shapes_scaling: written by benchmarks/shapes_scaling.py; do not edit by hand -->",
        "### Reward scaling in miniature (ShapesWorld, bundled models)",
        "",
        f"`python benchmarks/shapes_scaling.py` on {results['machine']}, {results['date']}; {results['minutes']} min.",
        "",
    ]
    if "accuracy" in results:
        lines += [
            "| RM | parameters | in-domain accuracy | out-of-domain accuracy | on the generator's samples |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for n in names:
            a = results["accuracy"][n]
            lines.append(
                f"| {n} | {results['params'][n]:,} | {100 * a['id']['accuracy']:.1f} % | "
                f"{100 * a['ood']['accuracy']:.1f} % | {100 * a['generated']['accuracy']:.1f} % |"
            )
        lines.append("")
    if "alignment" in results:
        al = results["alignment"]
        lines += [
            f"Verifier alignment of the bundled generator, {al['prompts']} held-out prompts: first sample "
            f"{100 * al['first']:.1f} %, mean over all {al['n']} candidates {100 * al['mean_candidate']:.1f} %, "
            f"oracle (any candidate passes) {100 * al['oracle']:.1f} %.",
            "",
            f"| RM | best-of-{al['n']} | search over paths (same budget) |",
            "| --- | ---: | ---: |",
        ]
        for n in names:
            r = al["by_rm"][n]
            lines.append(f"| {n} | {100 * r['best_of_n']:.1f} % | {100 * r['search']:.1f} % |")
        lines.append("")
    if "refl" in results:
        rf = results["refl"]
        lines += [
            f"ReFL, {rf['steps']} steps (pointwise, LoRA rank 8, batch 4); first-sample verifier alignment on "
            f"{rf['prompts']} held-out prompts x 2 seeds, before: {100 * rf['alignment_before']:.1f} %.",
            "",
            "| RM | alignment after ReFL | RM's own P(yes) before -> after | reward std, last quarter |",
            "| --- | ---: | ---: | ---: |",
        ]
        for n in names:
            r = rf["by_rm"][n]
            lines.append(
                f"| {n} | {100 * r['alignment_after']:.1f} % | {r['own_reward_before']:.3f} -> "
                f"{r['own_reward_after']:.3f} | {r['late_reward_std']:.4f} |"
            )
        lines.append("")
    lines.append("<!-- /shapes_scaling -->")
    return "\n".join(lines)


def write_results_md(section: str) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- shapes_scaling:", "<!-- /shapes_scaling -->"
    if start in text:
        a = text.index(start)
        b = text.index(end) + len(end)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="accuracy,alignment,refl")
    parser.add_argument("--prompts-per-category", type=int, default=4)
    parser.add_argument("--n", type=int, default=16, help="best-of-N candidates (search gets the same budget)")
    parser.add_argument("--refl-steps", type=int, default=40)
    parser.add_argument("--work", default=None, help="folder for the held-out pairs (default: a temporary one)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite RESULTS.md from shapes_scaling.json")
    args = parser.parse_args()
    if args.markdown_only:
        write_results_md(markdown(json.loads((HERE / "shapes_scaling.json").read_text(encoding="utf-8"))))
        return
    torch.manual_seed(0)
    start = time.time()
    names = [n for n in REWARD_MODELS if n in available()]
    rms = {n: RewardModel.from_pretrained(n, device="cpu", dtype="float32") for n in names}
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "date": time.strftime("%Y-%m-%d"),
        "params": {n: card(n)["parameters"] for n in names},
    }
    parts = args.parts.split(",")
    pipe = load_generator()
    kw = generator_defaults(pipe)
    held_out = [p for _, p in demo_prompts(args.prompts_per_category, seed=PROMPT_SEED)]
    if "accuracy" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            folders = eval_data(Path(args.work or tmp))
            results["accuracy"] = {n: measure_rm(n, folders) for n in names}
        print("accuracy", results["accuracy"], flush=True)
    if "alignment" in parts:
        results["alignment"] = part_alignment(pipe, rms, held_out, args.n, kw)
        print("alignment", results["alignment"], flush=True)
    if "refl" in parts:
        train_prompts = [p for _, p in demo_prompts(20, seed=PROMPT_SEED + 1)]
        results["refl"] = part_refl(rms, train_prompts, held_out, args.refl_steps, kw)
        print("refl", results["refl"], flush=True)
    results["minutes"] = round((time.time() - start) / 60, 1)
    (HERE / "shapes_scaling.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    section = markdown(results)
    write_results_md(section)
    print(section)


if __name__ == "__main__":
    main()
