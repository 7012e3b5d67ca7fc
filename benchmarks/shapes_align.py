"""Does a training recipe make the bundled generator better, measured by the strict verifier on held-out prompts?

Trains a LoRA of ``shapes-gen`` with ``rewarddance train-refl`` or ``train-grpo`` from a recipe (YAML plus
``--set key=value`` overrides), then samples ``--samples`` images of each of ``--held-out`` held-out ShapesWorld
prompts (the demo's prompt draw, seed ``DEMO_SEED + 2``: never the recipe's training prompts) with fixed seeds,
before and after, and runs the strict verifier on each. The two measurements share prompts and seeds, so the gain
is a paired difference; its standard error is the one of the per-image differences. The judge's own mean P(yes) on
the same images is recorded beside it (a judge gain without a verifier gain is reward hacking).

    python benchmarks/shapes_align.py --method grpo --config examples/training/grpo-shapes.yaml --out /tmp/al/g1 \\
        [--set lr=3e-4 --set max_steps=60] [--judge shapes-m] [--held-out 96] [--samples 2] [--threads 2]

``--lora DIR`` measures a LoRA trained elsewhere instead (e.g. a one-prompt run: does it carry over to other
prompts?). ``--prompt TEXT`` (repeatable) measures those prompts instead of the held-out draw (e.g. a one-prompt
run's own prompt on seeds its evaluation never used). ``--against DIR`` adds the paired difference of this run's
images after training from those of another measurement of the same prompts and seeds (``DIR/after.json``).
Writes ``OUT/result.json`` (with alignment by category) and prints it; the base measurement is cached in
``OUT/../base-<judge>[-<hash of the --prompt list>]-<prompts>x<samples>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch
import yaml

from rewarddance import RewardModel
from rewarddance.bundled import generator_defaults, load_generator
from rewarddance.demo import DEMO_SEED, _load_lora, _to_pil, demo_prompts, mean_se, paired_difference, sample_prompts
from rewarddance.shapes import verify

HELD_OUT_SEED = DEMO_SEED + 2  # as shapes_scaling.py and shapes_refl_sweep.py
IMAGE_SEED = 1000


def held_out_prompts(n: int) -> list[str]:
    per_category = math.ceil(n / 6)
    return [p for _, p in demo_prompts(per_category, seed=HELD_OUT_SEED)][:n]


def measure(pipe, rm, prompts: list[str], kw: dict, samples: int) -> dict:
    """Per image: did it pass the verifier, and the judge's P(yes); in prompt order, ``samples`` per prompt."""
    passed, p_yes = [], []
    for prompt, images in zip(prompts, sample_prompts(pipe, prompts, kw, samples, IMAGE_SEED)):
        p_yes += rm.score(images, prompt).p_yes.tolist()
        passed += [bool(verify(_to_pil(img), prompt).passed) for img in images]
    return {"passed": passed, "p_yes": p_yes}


def summary(before: dict, after: dict) -> dict:
    out = {"n": len(before["passed"])}
    for key in ("passed", "p_yes"):
        b = [float(v) for v in before[key]]
        a = [float(v) for v in after[key]]
        (mb, sb), (ma, sa) = mean_se(b), mean_se(a)
        md, sd = paired_difference(b, a)
        name = "alignment" if key == "passed" else "judge_p_yes"
        out[name] = {
            "before": round(mb, 4),
            "before_se": round(sb, 4),
            "after": round(ma, 4),
            "after_se": round(sa, 4),
            "gain": round(md, 4),
            "gain_se": round(sd, 4),
            "gain_in_se": round(md / sd, 2) if sd > 0 else None,
        }
    return out


def by_category(prompts: list[str], samples: int, before: dict, after: dict) -> dict:
    """Alignment before and after for each ShapesWorld category: ``{category: [before, after, images]}``."""
    from rewarddance.shapes import parse_prompt

    out: dict[str, list] = {}
    for i, prompt in enumerate(prompts):
        row = out.setdefault(parse_prompt(prompt).category, [0, 0, 0])
        for k in range(i * samples, (i + 1) * samples):
            row[0] += before["passed"][k]
            row[1] += after["passed"][k]
            row[2] += 1
    return {c: [round(b / n, 3), round(a / n, 3), n] for c, (b, a, n) in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=["refl", "grpo"], required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], help="key=value override of the recipe (YAML value)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--judge", default=None, help="the judge that measures P(yes) (default: the recipe's)")
    parser.add_argument("--held-out", type=int, default=96)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--lora", default=None, help="measure this trained LoRA folder instead of training (the recipe names the judge)"
    )
    parser.add_argument("--prompt", action="append", default=[], help="measure this prompt (repeatable)")
    parser.add_argument("--against", default=None, help="an earlier --out of the same prompts: paired difference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    out = Path(args.out)
    overrides["output_dir"] = str(out / "run")
    if args.method == "refl":
        from rewarddance.training.refl import train_refl as train
        from rewarddance.training.refl_config import ReFLConfig as Config
    else:
        from rewarddance.training.grpo import train_grpo as train
        from rewarddance.training.grpo_config import GRPOConfig as Config
    cfg = Config.from_yaml(args.config, overrides)
    judge = args.judge or cfg.reward_model
    rm = RewardModel.from_pretrained(judge, device="cpu", dtype="float32")
    prompts = args.prompt or held_out_prompts(args.held_out)
    named = "-" + hashlib.sha1("\n".join(prompts).encode()).hexdigest()[:8] if args.prompt else ""
    other = json.loads((Path(args.against) / "after.json").read_text()) if args.against else None
    if other is not None and len(other["passed"]) != len(prompts) * args.samples:
        parser.error(f"--against {args.against}: {len(other['passed'])} images, here {len(prompts) * args.samples}")
    pipe = load_generator(cfg.pretrained)
    kw = generator_defaults(pipe)
    base_path = out.parent / f"base-{judge}{named}-{len(prompts)}x{args.samples}.json"
    if base_path.exists():
        before = json.loads(base_path.read_text())
    else:
        before = measure(pipe, rm, prompts, kw, args.samples)
        base_path.parent.mkdir(parents=True, exist_ok=True)
        base_path.write_text(json.dumps(before))
    t0 = time.time()
    result = {"lora": args.lora, "step": None} if args.lora else train(cfg, progress=False)
    minutes = (time.time() - t0) / 60
    _load_lora(pipe, Path(result["lora"]))
    after = measure(pipe, rm, prompts, kw, args.samples)
    record = {
        "method": args.method,
        "config": args.config,
        "overrides": {k: v for k, v in overrides.items() if k != "output_dir"},
        "judge": judge,
        "train_minutes": None if args.lora else round(minutes, 1),
        "lora": args.lora,
        "steps": result.get("step"),
        **summary(before, after),
        "by_category": by_category(prompts, args.samples, before, after),
        "prompts": args.prompt or None,
        "against": None if other is None else {"run": args.against, **summary(other, after)},
        "trainer": {  # the trainer's own evaluation (its eval_prompts, or training prompts), when it ran one
            k: result.get(k)
            for k in ("reward_before", "reward_after", "alignment_before", "alignment_before_se", "alignment_after")
            + ("alignment_after_se", "alignment_n")
        },
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(record, indent=1))
    (out / "after.json").write_text(json.dumps(after))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
