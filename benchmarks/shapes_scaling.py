"""The paper's reward-scaling tables in miniature, measured with the bundled ShapesWorld models on this CPU.

For every bundled reward model (``shapes-s``, ``shapes-m``, ``shapes-l``: one architecture, three sizes):

- ``accuracy``: pointwise accuracy on 300 in-domain and 300 out-of-domain held-out preference pairs and on 217
  pairs of the generator's own samples (Table 2, top);
- ``alignment``: ShapesWorld verifier alignment of the bundled generator on held-out prompts: the first sample,
  best-of-N chosen by the RM, and search over paths with the same denoiser budget (Table 2, inference-time scaling);
- ``refl``: a short pointwise ReFL (LoRA) of the generator with each RM, then the first sample's verifier alignment
  on held-out prompts, and the reward's standard deviation over the last quarter of training (the paper's
  reward-hacking signal: a larger RM keeps a higher variance late in training).

Ablations, each against the bundled judge of ``--ablation-size`` (the same recipe from the same caption-pretrained
base; the changed judges are trained into ``--work`` by ``rewarddance.recipes.shapes.train_variant`` when missing):

- ``pairwise``: a pairwise judge (reference image + candidate) vs the pointwise one: accuracy, and ReFL against
  references cached from best-of-16 by the pairwise judge's tournament, the top 2 vs the bottom 2 (Tables 7 and 8);
- ``cot``: a judge trained to give its verdict and then the verifier's reason vs one trained on the verdict alone:
  accuracy, best-of-N and ReFL (Table 9).

The verifier is a program, not a model, so it measures what the RMs are for without sharing their errors.

    python benchmarks/shapes_scaling.py [--parts accuracy,alignment,refl,pairwise,cot] [--work DIR] [--keep]

``--keep`` reruns only ``--parts`` and carries every other part over from the existing ``shapes_scaling.json``, with
the date it was measured on (for a change that touches some parts only: a retrained ``shapes-l`` leaves the
ablations, which change ``--ablation-size``'s judge, as they were).

``--work`` keeps the held-out pairs and the ablation judges between runs (the bundled training's work folder, if
you have one, already holds the caption-pretrained bases). Writes ``benchmarks/shapes_scaling.json``, the plot
``benchmarks/shapes_scaling.png`` (accuracy and alignment by RM size) and replaces the ``shapes_scaling`` section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rewarddance import RewardContext, RewardModel
from rewarddance.bundled import REWARD_MODELS, available, bundled_path, card, generator_defaults, load_generator
from rewarddance.demo import (
    DEMO_SEED,
    _to_pil,
    demo_prompts,
    mean_se,
    paired_difference,
    read_difference,
    refl_config,
    sample_prompts,
)
from rewarddance.pipelines import SamplerConfig
from rewarddance.recipes.shapes import eval_data, measure_rm, train_variant
from rewarddance.reference_sets import build_references, load_references
from rewarddance.search import search_over_paths
from rewarddance.shapes import verify
from rewarddance.training.refl import train_refl

HERE = Path(__file__).resolve().parent
PROMPT_SEED = DEMO_SEED + 2  # held-out prompts of this benchmark (not the demo's, not ReFL's training prompts)
COT = RewardContext(cot="judgment_first")


def candidates(pipe, prompts: list[str], n: int, kw: dict) -> list[torch.Tensor]:
    """``n`` samples per prompt, seeds 0 .. n-1 (shared by every RM, so best-of-N differs only by the judge)."""
    out = []
    for prompt in prompts:
        gens = [torch.Generator().manual_seed(s) for s in range(n)]
        with torch.no_grad():
            out.append(pipe([prompt] * n, generator=gens, output_type="pt", **kw).images.float())
    return out


def passes(images, prompt: str) -> list[bool]:
    return [verify(_to_pil(img), prompt).passed for img in images]


@dataclasses.dataclass
class HeldOut:
    """Samples of a generator on the held-out prompts (fixed seeds) and the verifier's verdicts on them."""

    prompts: list[str]
    images: list[torch.Tensor]  # per prompt [samples, 3, H, W]
    passed: list[list[bool]]

    @classmethod
    def sample(cls, pipe, prompts: list[str], kw: dict) -> HeldOut:
        images = sample_prompts(pipe, prompts, kw)  # the seeds of demo.measure_alignment
        return cls(prompts, images, [passes(im, p) for im, p in zip(images, prompts)])

    @property
    def flat(self) -> list[bool]:
        """The verdicts, prompt by prompt (the same order for every generator: seeds are fixed by position)."""
        return [v for row in self.passed for v in row]

    @property
    def alignment(self) -> float:
        return statistics.mean(self.flat)

    def p_yes(self, rm, context=None) -> float:
        """The judge's mean pointwise P(yes) over the samples."""
        return statistics.mean(
            v for im, p in zip(self.images, self.prompts) for v in rm.score(im, p, context=context).p_yes.tolist()
        )


def best_of_n(rm, cands: list[torch.Tensor], verdicts: list[list[bool]], prompts: list[str], context=None) -> list:
    """The verifier's verdict on the candidate the judge scores highest, per prompt."""
    chosen = []
    for c, v, prompt in zip(cands, verdicts, prompts):
        chosen.append(v[int(torch.argmax(rm.score(c, prompt, context=context).p_yes.float()))])
    return chosen


def part_alignment(pipe, rms: dict, prompts: list[str], cands, verdicts, kw: dict) -> dict:
    n = len(cands[0])
    rows = {}
    for name, rm in rms.items():
        t0 = time.time()
        searched = []
        for prompt in prompts:
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
        chosen = best_of_n(rm, cands, verdicts, prompts)
        rows[name] = {
            "best_of_n": statistics.mean(chosen),
            "search": statistics.mean(searched),
            "best_of_n_passed": chosen,
            "search_passed": searched,
            "seconds": round(time.time() - t0, 1),
        }
    return {
        "prompts": len(prompts),
        "n": n,
        "first": statistics.mean(v[0] for v in verdicts),
        "first_passed": [v[0] for v in verdicts],
        "mean_candidate": statistics.mean(statistics.mean(v) for v in verdicts),
        "oracle": statistics.mean(any(v) for v in verdicts),
        "by_rm": rows,
    }


def run_refl(rm, model: str, train_prompts: list[str], held_out: list[str], steps: int, kw: dict, **changes):
    """One ReFL run of the bundled generator (the demo's settings, ``changes`` applied) against ``rm``; returns its
    facts and the trained generator's held-out samples."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        cfg = refl_config(bundled_path("shapes-gen"), model, train_prompts, Path(tmp), steps, kw)
        train_refl(dataclasses.replace(cfg, **changes), progress=False, rm=rm)
        with open(Path(tmp) / "metrics.csv", encoding="utf-8") as f:
            log = list(csv.DictReader(f))
        late = log[-max(1, len(log) // 4) :]
        pipe = load_generator()
        pipe.load_lora_weights(str(Path(tmp) / "lora"))
        after = HeldOut.sample(pipe, held_out, kw)
    facts = {
        "alignment_after": after.alignment,
        "after_passed": after.flat,
        "late_reward_std": statistics.mean(float(r["window_std"]) for r in late),
        "late_reward_mean": statistics.mean(float(r["window_mean"]) for r in late),
        "seconds": round(time.time() - t0, 1),
    }
    return facts, after


def part_refl(rms: dict, train_prompts: list[str], base: HeldOut, steps: int, kw: dict) -> dict:
    rows = {}
    for name, rm in rms.items():
        facts, after = run_refl(rm, name, train_prompts, base.prompts, steps, kw)
        rows[name] = {**facts, "own_reward_before": base.p_yes(rm), "own_reward_after": after.p_yes(rm)}
    return {
        "steps": steps,
        "prompts": len(base.prompts),
        "alignment_before": base.alignment,
        "before_passed": base.flat,
        "by_rm": rows,
    }


def part_pairwise(pipe, size: str, work: Path, folders: dict, train_prompts: list[str], base: HeldOut, steps, kw):
    """Tables 7 and 8: the pairwise judge's accuracy, and ReFL against its top-2 / bottom-2 cached references
    (``pipe``: the base generator, which draws the candidates the references are chosen from)."""
    path = train_variant(size, "pairwise", work)
    judge = RewardModel.from_pretrained(path, device="cpu", dtype="float32")
    out = {"size": size, "accuracy": measure_rm(judge, folders, objective="pairwise")}
    cache: dict = {}

    def generate(prompt, seeds):  # both reference sets rank the same 16 samples per prompt
        key = (prompt, tuple(seeds))
        if key not in cache:
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            with torch.no_grad():
                cache[key] = pipe([prompt] * len(seeds), generator=gens, output_type="pt", **kw).images.float()
        return cache[key]

    with tempfile.TemporaryDirectory() as tmp:
        for keep in ("top", "bottom"):
            t0 = time.time()
            folder = Path(tmp) / keep
            build_references(generate, judge, train_prompts, folder, n=16, top_k=2, keep=keep, progress=False)
            refs = load_references(folder)
            verdicts = [verify(str(f), prompt).passed for prompt, files in refs.items() for f in files]
            facts, _ = run_refl(
                judge, str(path), train_prompts, base.prompts, steps, kw, mode="pairwise", references=str(folder)
            )
            out[keep] = {
                **facts,
                "reference_alignment": statistics.mean(verdicts),
                "seconds": round(time.time() - t0, 1),
            }
            print(f"pairwise, {keep}-2 references: {out[keep]}", flush=True)
    return out


def part_cot(size: str, work: Path, folders: dict, prompts, cands, verdicts, train_prompts, base: HeldOut, steps, kw):
    """Table 9: the judge trained with chain of thought (verdict first, then the reason), read at its verdict."""
    path = train_variant(size, "cot", work)
    judge = RewardModel.from_pretrained(path, device="cpu", dtype="float32")
    out = {"size": size, "accuracy": measure_rm(judge, folders, context=COT)}
    out["best_of_n_passed"] = best_of_n(judge, cands, verdicts, prompts, context=COT)
    out["best_of_n"], out["n"] = statistics.mean(out["best_of_n_passed"]), len(cands[0])
    facts, after = run_refl(judge, str(path), train_prompts, base.prompts, steps, kw, cot="judgment_first")
    out["refl"] = {**facts, "own_reward_before": base.p_yes(judge, COT), "own_reward_after": after.p_yes(judge, COT)}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _share(passed: list) -> str:
    """A share of passes with its standard error: ``34.4 +- 3.4 %``."""
    mean, se = mean_se([float(v) for v in passed])
    return f"{100 * mean:.1f} +- {100 * se:.1f} %"


def _gain(before: list, after: list) -> str:
    """``after - before`` over paired items in points, its SE, and whether it is a difference at 2 SE."""
    diff, se = paired_difference([float(v) for v in before], [float(v) for v in after])
    return f"{100 * diff:+.1f} +- {100 * se:.1f} ({read_difference(diff, se)})"


def _accuracy(cell: dict) -> tuple[float, float]:
    """A pair accuracy and its binomial standard error over the ``pairs`` it was measured on."""
    p, n = cell["accuracy"], cell["pairs"]
    return p, math.sqrt(p * (1 - p) / n) if n else 0.0


# the pair folders of ``eval_data``, in table order, with their labels
ACCURACY_SETS = {
    "id": "in-domain",
    "ood": "out-of-domain",
    "generated": "generated",
    "generated-large": "generated (larger set)",
    "garbage": "clean vs garbage",
}


def _accuracy_cells(acc: dict, sets=("id", "ood", "generated")) -> str:
    """The accuracy +- SE of each of ``sets`` ("-" where it was not measured), as table cells."""
    cells = []
    for k in sets:
        if k not in acc:
            cells.append("-")
            continue
        p, se = _accuracy(acc[k])
        cells.append(f"{100 * p:.1f} +- {100 * se:.1f} %")
    return " | ".join(cells)


def _carried(results: dict) -> str:
    """Which parts a ``--keep`` run carried over, and from when."""
    carried = results.get("carried", {})
    if not carried:
        return ""
    dates = sorted(set(carried.values()))
    by_date = "; ".join(f"{', '.join(k for k, v in carried.items() if v == d)} measured {d}" for d in dates)
    return f" for {', '.join(results['parts_run'])} (the other parts carried over from an earlier run: {by_date})"


def markdown(results: dict) -> str:
    """The RESULTS.md section: every share with its standard error, every gain paired with the same prompts and seeds
    before (a gain under 2 SE reads "no difference")."""
    names = [n for n in REWARD_MODELS if n in results.get("params", {})]
    lines = [
        "<!-- shapes_scaling: written by benchmarks/shapes_scaling.py; do not edit by hand -->",
        "### Reward scaling in miniature (ShapesWorld, bundled models)",
        "",
        f"`python benchmarks/shapes_scaling.py` on {results['machine']}, {results['date']}; {results['minutes']} min"
        f"{_carried(results)}. Shares are +- one standard error; gains are paired (same prompts and seeds) and read "
        "as a difference only at 2 SE or more.",
        "",
    ]
    if "accuracy" in results:
        acc = results["accuracy"][names[0]] if names else {}
        counts = ", ".join(f"{acc[k]['pairs']} {label}" for k, label in ACCURACY_SETS.items() if k in acc)
        lines += [
            f"Pointwise accuracy on held-out preference pairs ({counts}):",
            "",
            "| RM | parameters | in-domain accuracy | out-of-domain accuracy | on the generator's samples "
            "| the generator's samples, larger set | a clean scene vs garbage |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for n in names:
            cells = _accuracy_cells(results["accuracy"][n], tuple(ACCURACY_SETS))
            lines.append(f"| {n} | {results['params'][n]:,} | {cells} |")
        lines.append("")
    if "alignment" in results:
        al = results["alignment"]
        lines += [
            f"Verifier alignment of the bundled generator, {al['prompts']} held-out prompts (n = {al['prompts']} per "
            f"cell): first sample {_share(al['first_passed'])}, mean over all {al['n']} candidates "
            f"{_pct(al['mean_candidate'])}, oracle (any candidate passes) {_pct(al['oracle'])}.",
            "",
            f"| RM | best-of-{al['n']} | gain over the first sample | search over paths (same budget) | gain |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for n in names:
            r = al["by_rm"][n]
            lines.append(
                f"| {n} | {_share(r['best_of_n_passed'])} | {_gain(al['first_passed'], r['best_of_n_passed'])} | "
                f"{_share(r['search_passed'])} | {_gain(al['first_passed'], r['search_passed'])} |"
            )
        lines.append("")
    refl = results.get("refl")
    if refl:
        before = refl["before_passed"]
        lines += [
            f"ReFL, {refl['steps']} steps ({refl.get('settings', 'pointwise, LoRA rank 8, batch 4')}); first-sample "
            f"verifier alignment on {refl['prompts']} held-out prompts x 2 seeds (n = {len(before)}), before: "
            f"{_share(before)}.",
            "",
            "| RM | alignment after ReFL | gain | RM's own P(yes) before -> after | reward std, last quarter |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for n in names:
            r = refl["by_rm"][n]
            lines.append(
                f"| {n} | {_share(r['after_passed'])} | {_gain(before, r['after_passed'])} | "
                f"{r['own_reward_before']:.3f} -> {r['own_reward_after']:.3f} | {r['late_reward_std']:.4f} |"
            )
        lines.append("")
    pw = results.get("pairwise")
    if pw:
        control = f"shapes-{pw['size']}"
        lines += [
            f"Pointwise vs pairwise judging (paper Tables 7 and 8): the {control} recipe, and the same recipe trained "
            "as a pairwise judge (reference image + candidate; accuracy with both image orders averaged). Pairwise "
            "ReFL rewards P(candidate better than a cached reference of the prompt): the top 2 or the bottom 2 of 16 "
            "base samples ranked by the pairwise judge's tournament, one drawn per rollout. Gains against the "
            "alignment before ReFL above.",
            "",
            "| judge | in-domain | out-of-domain | generated | ReFL reward | references pass the verifier "
            "| alignment after ReFL | gain | reward std, last quarter |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        if control in results.get("accuracy", {}) and refl and control in refl["by_rm"]:
            r = refl["by_rm"][control]
            lines.append(
                f"| {control} (pointwise) | {_accuracy_cells(results['accuracy'][control])} | P(yes) | - | "
                f"{_share(r['after_passed'])} | {_gain(refl['before_passed'], r['after_passed'])} | "
                f"{r['late_reward_std']:.4f} |"
            )
        for keep in ("top", "bottom"):
            r = pw[keep]
            gain = _gain(refl["before_passed"], r["after_passed"]) if refl else "-"
            lines.append(
                f"| pairwise | {_accuracy_cells(pw['accuracy'])} | vs {keep}-2 of best-of-16 | "
                f"{_pct(r['reference_alignment'])} | {_share(r['after_passed'])} | {gain} | "
                f"{r['late_reward_std']:.4f} |"
            )
        lines.append("")
    cot = results.get("cot")
    if cot:
        control = f"shapes-{cot['size']}"
        al = results.get("alignment", {})
        lines += [
            f"Chain-of-thought training (paper Table 9): the {control} recipe, and the same recipe trained to answer "
            '"Yes." / "No. <the verifier\'s reason>" (verdict first; the reason tokens add their cross-entropy). '
            "Both are read the same way: P(yes) at the verdict, no decoding.",
            "",
            f"| judge | in-domain | out-of-domain | generated | best-of-{cot['n']} | alignment after ReFL |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        if control in results.get("accuracy", {}) and control in al.get("by_rm", {}) and refl:
            lines.append(
                f"| {control} (verdict only) | {_accuracy_cells(results['accuracy'][control])} | "
                f"{_share(al['by_rm'][control]['best_of_n_passed'])} | "
                f"{_share(refl['by_rm'][control]['after_passed'])} |"
            )
        lines.append(
            f"| {control} + CoT | {_accuracy_cells(cot['accuracy'])} | {_share(cot['best_of_n_passed'])} | "
            f"{_share(cot['refl']['after_passed'])} |"
        )
        if control in al.get("by_rm", {}):
            lines += [
                "",
                f"CoT minus verdict-only, paired: best-of-{cot['n']} "
                f"{_gain(al['by_rm'][control]['best_of_n_passed'], cot['best_of_n_passed'])}"
                + (
                    f"; after ReFL {_gain(refl['by_rm'][control]['after_passed'], cot['refl']['after_passed'])}"
                    if refl and control in refl["by_rm"]
                    else ""
                )
                + ".",
            ]
        lines.append("")
    if results.get("plot"):
        lines += [f"![accuracy and alignment by RM size]({results['plot']})", ""]
    lines.append("<!-- /shapes_scaling -->")
    return "\n".join(lines)


def _larger_generated(acc: dict) -> dict:
    """The larger set of generated pairs where it was measured (runs before 2026-12-04 have only the first)."""
    return acc.get("generated-large", acc["generated"])


SERIES = (  # what the plot draws against RM size: label, value and SE of results for an RM name
    ("in-domain accuracy", lambda r, n: _accuracy(r["accuracy"][n]["id"])),
    ("out-of-domain accuracy", lambda r, n: _accuracy(r["accuracy"][n]["ood"])),
    ("accuracy on generated pairs", lambda r, n: _accuracy(_larger_generated(r["accuracy"][n]))),
    ("best-of-N alignment", lambda r, n: mean_se([float(v) for v in r["alignment"]["by_rm"][n]["best_of_n_passed"]])),
    ("alignment after ReFL", lambda r, n: mean_se([float(v) for v in r["refl"]["by_rm"][n]["after_passed"]])),
)


def plot(results: dict, path: Path) -> bool:
    """``path``: each series of :data:`SERIES` over the RM sizes with 1-SE error bars, the base generator's
    first-sample alignment as a grey band (its own SE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in REWARD_MODELS if n in results.get("params", {})]
    if len(names) < 2 or not all(k in results for k in ("accuracy", "alignment", "refl")):
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    xs = list(range(len(names)))
    for k, (label, value) in enumerate(SERIES):
        points = [value(results, n) for n in names]
        shift = (k - len(SERIES) / 2) * 0.03  # keep the error bars apart
        ax.errorbar(
            [x + shift for x in xs],
            [100 * m for m, _ in points],
            yerr=[100 * se for _, se in points],
            marker="o",
            capsize=3,
            label=label,
        )
    first, first_se = mean_se([float(v) for v in results["alignment"]["first_passed"]])
    ax.axhspan(
        100 * (first - first_se), 100 * (first + first_se), color="grey", alpha=0.25, label="first sample (base)"
    )
    ax.set_xticks(xs, [f"{n}\n{results['params'][n] / 1e6:.2f} M" for n in names])
    ax.set_ylim(0, 100)
    ax.set_ylabel("%  (+- 1 SE)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


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


PARTS = ("accuracy", "alignment", "refl", "pairwise", "cot")


def carry_over(previous: dict, parts: list[str]) -> dict:
    """The parts of an earlier run that ``parts`` does not rerun, and the date each was measured on."""
    old_carried = previous.get("carried", {})
    kept = {k: previous[k] for k in PARTS if k in previous and k not in parts}
    return {**kept, "parts_run": parts, "carried": {k: old_carried.get(k, previous["date"]) for k in kept}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="accuracy,alignment,refl,pairwise,cot")
    parser.add_argument("--prompts-per-category", type=int, default=8, help="held-out prompts for best-of-N")
    parser.add_argument("--n", type=int, default=16, help="best-of-N candidates (search gets the same budget)")
    parser.add_argument("--refl-steps", type=int, default=40)
    parser.add_argument("--refl-prompts-per-category", type=int, default=8, help="ReFL training prompts")
    parser.add_argument("--refl-eval-per-category", type=int, default=16, help="held-out prompts after ReFL (x2)")
    parser.add_argument("--ablation-size", default="m", help="the bundled judge the ablations change (s, m, l)")
    parser.add_argument("--work", default=None, help="held-out pairs and ablation judges (default: temporary)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite RESULTS.md from shapes_scaling.json")
    parser.add_argument("--keep", action="store_true", help="carry the parts not in --parts over from the last run")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    if args.markdown_only:
        results = json.loads((HERE / "shapes_scaling.json").read_text(encoding="utf-8"))
        if plot(results, HERE / "shapes_scaling.png"):
            results["plot"] = "shapes_scaling.png"
        write_results_md(markdown(results))
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
    if args.keep:
        results.update(carry_over(json.loads((HERE / "shapes_scaling.json").read_text(encoding="utf-8")), parts))
    pipe = load_generator()
    kw = generator_defaults(pipe)
    held_out = [p for _, p in demo_prompts(args.prompts_per_category, seed=PROMPT_SEED)]
    train_prompts = [p for _, p in demo_prompts(args.refl_prompts_per_category, seed=PROMPT_SEED + 1)]
    refl_held_out = [p for _, p in demo_prompts(args.refl_eval_per_category, seed=PROMPT_SEED)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        folders = eval_data(work) if {"accuracy", "pairwise", "cot"} & set(parts) else {}
        if "accuracy" in parts:
            results["accuracy"] = {n: measure_rm(rms[n], folders) for n in names}
            print("accuracy", results["accuracy"], flush=True)
        if {"alignment", "cot"} & set(parts):
            cands = candidates(pipe, held_out, args.n, kw)
            verdicts = [passes(c, p) for c, p in zip(cands, held_out)]
        if "alignment" in parts:
            results["alignment"] = part_alignment(pipe, rms, held_out, cands, verdicts, kw)
            print("alignment", results["alignment"], flush=True)
        if {"refl", "pairwise", "cot"} & set(parts):
            base = HeldOut.sample(pipe, refl_held_out, kw)
        if "refl" in parts:
            results["refl"] = part_refl(rms, train_prompts, base, args.refl_steps, kw)
            print("refl", results["refl"], flush=True)
        if "pairwise" in parts:
            results["pairwise"] = part_pairwise(
                pipe, args.ablation_size, work, folders, train_prompts, base, args.refl_steps, kw
            )
            print("pairwise", results["pairwise"], flush=True)
        if "cot" in parts:
            results["cot"] = part_cot(
                args.ablation_size, work, folders, held_out, cands, verdicts, train_prompts, base, args.refl_steps, kw
            )
            print("cot", results["cot"], flush=True)
    results["minutes"] = round((time.time() - start) / 60, 1)
    if plot(results, HERE / "shapes_scaling.png"):
        results["plot"] = "shapes_scaling.png"
    (HERE / "shapes_scaling.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    section = markdown(results)
    write_results_md(section)
    print(section)


if __name__ == "__main__":
    main()
