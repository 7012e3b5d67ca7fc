"""Reproduce the bundled models from their seeds (CPU is enough; times below are 2 cores).

    python -m rewarddance.recipes.shapes generator --out rewarddance/bundled/shapes-gen
    python -m rewarddance.recipes.shapes rm --size m --work /tmp/shapes-rm --out rewarddance/bundled/shapes-m
    python -m rewarddance.recipes.shapes variant --size m --variant cot --work /tmp/shapes-rm   # an ablation judge
    python -m rewarddance.recipes.shapes rm --size m --patch 7 --work /tmp/shapes-rm --out DIR   # 7 px patches

Generator first (:mod:`rewarddance.shapes.generator`): the judges' last stage learns from its samples. Reward
models: a tiny LLaVA of the size's shape (:data:`RM_SIZES`), caption-pretrained on 16,000 ShapesWorld scenes
(``training.caption``), trained as a pointwise judge on 8,000 rendered preference pairs (``training.rm``,
Bradley-Terry + weighted cross-entropy; stages 1-2 are the slow quality test's recipe, tests/test_rm_quality.py),
then on pairs of the bundled generator's own samples labelled by the ShapesWorld verifier, mixed with rendered
pairs (a size named in :data:`SCALED` gets its settings scaled and may add rendered blob negatives,
:mod:`rewarddance.shapes.blobs`); measured on 300 in-domain and 300 out-of-domain rendered pairs and on held-out
generated pairs. Each output folder gets ``card.json`` (the measured facts) and a ``README.md`` model card written
from it. Finished stages in ``--work`` are reused, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from ..shapes.verify import reason_sentence
from .cards import write_card

IMAGE_SIZE = 56  # the judges' working resolution (the generator's 32 px images are resized up to it)
RM_SIZES: dict[str, dict] = {
    "s": dict(hidden=48, layers=2, heads=4, vision_hidden=32, vision_layers=2),
    "m": dict(hidden=96, layers=4, heads=4, vision_hidden=64, vision_layers=3),
    "l": dict(hidden=192, layers=6, heads=6, vision_hidden=128, vision_layers=4),
}
VLM_SEED = 5
DATA = {  # name: (count, split, seed, pairs)
    "scenes": (16000, "id", 21, False),
    "train": (8000, "id", 11, True),
    "id": (300, "id", 12, True),
    "ood": (300, "ood", 13, True),
}
CAPTION = dict(max_steps=8000, batch_size=32, lr=1e-3, seed=0)
POINTWISE = dict(objective="pointwise", train="all", lr=3e-4, batch_size=16, max_steps=2000, warmup_steps=50, seed=0)
# the generator's own samples, labelled by the verifier (training and held-out prompts differ by seed)
GENERATED = {
    "generated-train": dict(prompts=1500, samples=8, pairs_per_prompt=3, seed=41, garbage=1),
    "generated-eval": dict(prompts=150, samples=8, pairs_per_prompt=2, seed=42),
    # a larger held-out draw (other prompts, another seed; ~350 pairs, a standard error near 2.5 points where the
    # first set's ~130 pairs give 4.3): differences between judges of 5-9 points need it
    "generated-eval-large": dict(prompts=450, samples=8, pairs_per_prompt=2, seed=44),
}
# the measured names of the held-out sets of the generator's samples, by folder
GENERATED_EVAL = {"generated-eval": "generated", "generated-eval-large": "generated-large"}
# held-out pairs of a clean scene that satisfies the prompt against garbage made from that scene or from nothing
# (:data:`rewarddance.shapes.corrupt.GARBAGE`, every kind equally often): does the judge prefer a scene to noise?
GARBAGE_EVAL = dict(pairs=130, seed=43, size=32)
MIX_RENDERED = 3000  # rendered pairs mixed into the on-policy stage, so the judge keeps what it knew
ONPOLICY = dict(objective="pointwise", train="all", lr=1e-4, batch_size=16, max_steps=1000, warmup_steps=50, seed=0)
# What the recipe scales with a judge's size (the paper scales data and steps with the model): for a size named
# here, factors on the settings above and, with "blob_pairs", the rendered blob negatives of BLOB_PAIRS added to the
# last stage's mix. S and M are trained by the settings above as they are. L (twice M's width) gets every learning
# rate halved (its caption loss showed M's rate too high for it), 1.5x the rendered-pair steps and 3x the last
# stage's steps on the mix with blob pairs; at M's learning rates it fell below M (RESULTS.md, "shapes-l by a scaled
# recipe").
SCALED: dict[str, dict] = {
    "l": {
        "caption": {"lr": 0.5},
        "pointwise": {"lr": 0.5, "max_steps": 1.5},
        "onpolicy": {"lr": 0.5, "max_steps": 3},
        "blob_pairs": True,
    }
}
BLOB_PAIRS = dict(scenes=12000, seed=71)  # :func:`rewarddance.shapes.blobs.write_blob_pairs`: 9,704 pairs


def stage_settings(size: str, stage: str) -> dict:
    """The training settings of ``stage`` (caption, pointwise, onpolicy) for judge ``size``: the stage's settings
    times the factors :data:`SCALED` gives that size (step counts rounded)."""
    settings = dict({"caption": CAPTION, "pointwise": POINTWISE, "onpolicy": ONPOLICY}[stage])
    for key, factor in SCALED.get(size, {}).get(stage, {}).items():
        value = settings[key] * factor
        settings[key] = round(value) if isinstance(settings[key], int) else value
    return settings


# the one setting each ablation judge changes (paper Table 7: pairwise judging against a reference image; Table 9:
# chain-of-thought training, here the verdict first and then the reason, teacher-forced; the reward stays P(yes) at
# the verdict, so scoring costs what it did)
VARIANTS = {"pairwise": dict(objective="pairwise"), "cot": dict(cot="judgment_first")}


def write_data(work: Path) -> dict[str, Path]:
    """The ShapesWorld folders of :data:`DATA` under ``work`` (reused when already there)."""
    from ..shapes import write_dataset

    out = {}
    for name, (n, split, seed, pairs) in DATA.items():
        out[name] = work / name
        if not (out[name] / "manifest.jsonl").exists():
            write_dataset(out[name], n=n, size=IMAGE_SIZE, pairs=pairs, split=split, seed=seed, progress=False)
    return out


def eval_data(work: Path, generated: bool = True) -> dict[str, Path]:
    """Only the held-out pair folders (what the bundled-model tests measure against the card): rendered in-domain
    and out-of-domain pairs, a clean scene against garbage, and (``generated``; 4,800 samples to draw, ~12 min on
    2 cores) the two held-out sets of pairs of the bundled generator's samples (:data:`GENERATED_EVAL`)."""
    from ..bundled import bundled_path
    from ..shapes import write_dataset
    from ..shapes.generator import load_generator

    out = {}
    for name in ("id", "ood"):
        n, split, seed, _ = DATA[name]
        out[name] = work / name
        if not (out[name] / "pairs.jsonl").exists():
            write_dataset(out[name], n=n, size=IMAGE_SIZE, pairs=True, split=split, seed=seed, progress=False)
    out["garbage"] = work / "garbage-eval"
    write_garbage_pairs(out["garbage"], **GARBAGE_EVAL)
    if generated:
        pipe = load_generator(bundled_path("shapes-gen"))
        for folder, name in GENERATED_EVAL.items():
            out[name] = work / folder
            write_generated_pairs(pipe, out[name], **GENERATED[folder])
    return out


def measure_rm(model, folders: dict[str, Path], objective: str = "pointwise", context=None) -> dict:
    """Held-out accuracy and calibration of a judge (a name, folder or loaded RewardModel) on each pair folder:
    pointwise (the chosen image's P(yes) is higher) or pairwise (both orders averaged; ``training.rm``)."""
    from ..model import RewardModel
    from ..training.data import read_pairs
    from ..training.rm import evaluate_pairs

    rm = model if isinstance(model, RewardModel) else RewardModel.from_pretrained(model, device="cpu", dtype="float32")
    out = {}
    for name, folder in folders.items():
        pairs, _ = read_pairs(folder)
        res = evaluate_pairs(rm, pairs, objective, context=context)
        out[name] = {"pairs": res["pairs"], "accuracy": round(res["accuracy"], 4), "ece": round(res["ece"], 4)}
    return out


STAGE_CHECKPOINT_EVERY = 250  # training steps between a stage's checkpoints: an interrupted stage resumes from one


def _stage(folder: Path, run, log) -> dict:
    """Run a training stage into ``folder`` unless its ``final`` model is already there (stages resume, and a stage
    stopped midway resumes from its last checkpoint); returns ``stage.json``: the minutes it took and its last logged
    metrics. A stage that was stopped (SIGINT / SIGTERM) ends the recipe with a one-line error instead of going on."""
    record = folder / "stage.json"
    if (folder / "final").exists() and record.exists():
        log(f"reusing {folder / 'final'}")
        return json.loads(record.read_text(encoding="utf-8"))
    t0 = time.time()
    result = run()
    if "stopped_at" in result:
        raise RecipeStopped(
            f"{folder.name}: stopped at step {result['stopped_at']}; run the same command again to resume from its "
            "last checkpoint"
        )
    facts = {"minutes": round((time.time() - t0) / 60, 1), "last": result["history"][-1] if result["history"] else {}}
    record.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    return facts


class RecipeStopped(RuntimeError):
    """A training stage of a recipe was stopped before its end (its checkpoints stay for the next run)."""


def write_generated_pairs(
    pipe, out: Path, prompts: int, samples: int, pairs_per_prompt: int, seed: int, garbage: int = 0
) -> dict:
    """Preference pairs from the generator's own samples, labelled by the strict ShapesWorld verifier: per
    in-domain prompt ``samples`` images; up to ``pairs_per_prompt`` (passing, failing) pairs, each with the
    verifier's reason. ``garbage``: per prompt with a passing sample, that many more pairs whose rejected image is
    garbage of the kinds the generator's failures resemble (noise frames, smears, blobs; every kind of
    :data:`~rewarddance.shapes.corrupt.GARBAGE` in turn, built from a scene that satisfies the prompt). Writes
    ``out/pairs.jsonl`` + PNGs and returns the pass rate, the share of samples that are not a clean scene and the
    pair counts (reused when ``info.json`` exists)."""
    import torch

    from ..bundled import generator_defaults
    from ..shapes import CATEGORIES, verify
    from ..shapes.corrupt import GARBAGE
    from ..shapes.corrupt import garbage as make_garbage
    from ..shapes.sample import example_rng, sample_prompt, scene_for

    info = out / "info.json"
    if info.exists():
        return json.loads(info.read_text(encoding="utf-8"))
    (out / "images").mkdir(parents=True, exist_ok=True)
    kw = generator_defaults(pipe)
    lines, passed_all, clean_all, n_garbage, n_garbage_passed = [], [], [], 0, 0
    for i in range(prompts):
        spec = sample_prompt(CATEGORIES[i % len(CATEGORIES)], example_rng(seed, "id", i), "id")
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + i * samples + j) for j in range(samples)]
        images = pipe([spec.text] * samples, generator=gens, **kw).images
        verdicts = [verify(im, spec) for im in images]
        passed_all += [v.passed for v in verdicts]
        clean_all += [v.clean for v in verdicts]
        good = [j for j, v in enumerate(verdicts) if v.passed]
        bad = [j for j, v in enumerate(verdicts) if not v.passed]
        for k, (g, b) in enumerate(list(zip(good, bad))[:pairs_per_prompt]):
            names = [f"images/{i:05d}-{g}.png", f"images/{i:05d}-{b}.png"]
            images[g].save(out / names[0])
            images[b].save(out / names[1])
            row = {"id": f"gen-{i:05d}-{k}", "prompt": spec.text, "category": spec.category}
            reason = reason_sentence(verdicts[b].reason)
            lines.append({**row, "chosen": names[0], "rejected": names[1], "reason": reason, "split": "generated"})
        for k in range(garbage if good else 0):
            kind = GARBAGE[(i * garbage + k) % len(GARBAGE)]
            scene = scene_for(spec, example_rng(seed, "id", i, stream=1 + k), "id")
            junk = make_garbage(kind, images[0].width, seed=seed * 1_000_003 + i * garbage + k, scene=scene)
            verdict = verify(junk, spec)
            if verdict.passed:  # at 32 px a mild smear of a one-object scene can still be that scene: no negative
                n_garbage_passed += 1
                continue
            names = [f"images/{i:05d}-{good[k % len(good)]}.png", f"images/{i:05d}-garbage{k}.png"]
            images[good[k % len(good)]].save(out / names[0])
            junk.save(out / names[1])
            row = {"id": f"gen-{i:05d}-g{k}", "prompt": spec.text, "category": spec.category, "garbage": kind}
            reason = reason_sentence(verdict.reason)
            lines.append({**row, "chosen": names[0], "rejected": names[1], "reason": reason, "split": "generated"})
            n_garbage += 1
    with open(out / "pairs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    facts = {
        "prompts": prompts,
        "samples": samples,
        "seed": seed,
        "pass_rate": round(sum(passed_all) / len(passed_all), 4),
        "not_clean": round(1 - sum(clean_all) / len(clean_all), 4),
    }
    facts["pairs"] = len(lines)
    if garbage:
        facts["garbage_pairs"] = n_garbage
        facts["garbage_that_passed"] = n_garbage_passed  # left out: the verifier read them as the prompt's scene
    info.write_text(json.dumps(facts) + "\n", encoding="utf-8")
    return facts


def write_garbage_pairs(out: Path, pairs: int, seed: int, size: int) -> dict:
    """Held-out pairs (a rendered scene that satisfies an in-domain prompt, garbage of one kind made from that
    scene or from nothing) at the generator's ``size``, each kind of :data:`~rewarddance.shapes.corrupt.GARBAGE`
    equally often; reused when ``info.json`` exists."""
    from ..shapes import CATEGORIES, render, verify
    from ..shapes.corrupt import GARBAGE, garbage
    from ..shapes.sample import example_rng, sample_prompt, scene_for

    info = out / "info.json"
    if info.exists():
        return json.loads(info.read_text(encoding="utf-8"))
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(pairs):
        kind = GARBAGE[i % len(GARBAGE)]
        spec = sample_prompt(CATEGORIES[i % len(CATEGORIES)], example_rng(seed, "id", i), "id")
        for stream in range(1, 20):  # at 32 px about one render in a hundred is too small to verify: draw again
            scene = scene_for(spec, example_rng(seed, "id", i, stream=stream), "id")
            clean = render(scene, size)
            if verify(clean, spec).passed:
                break
        for attempt in range(20):  # a mild smear at 32 px can still read as the scene: draw it again
            junk = garbage(kind, size, seed=seed * 1000 + i + 1_000_000 * attempt, scene=scene)
            verdict = verify(junk, spec)
            if not verdict.passed:
                break
        names = [f"images/{i:04d}-scene.png", f"images/{i:04d}-{kind}.png"]
        clean.save(out / names[0])
        junk.save(out / names[1])
        row = {"id": f"garbage-{i:04d}", "prompt": spec.text, "category": spec.category, "garbage": kind}
        lines.append({**row, "chosen": names[0], "rejected": names[1], "reason": reason_sentence(verdict.reason)})
    (out / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    facts = {"pairs": pairs, "seed": seed, "size": size, "kinds": len(GARBAGE)}
    info.write_text(json.dumps(facts) + "\n", encoding="utf-8")
    return facts


def add_verifier_reasons(folder: Path) -> None:
    """Give every pair of a generated-pairs folder that has none the verifier's reason for rejecting its rejected
    image (chain-of-thought targets; folders written before reasons were recorded). The images are the saved PNGs,
    which the verifier judged when the pairs were made."""
    from PIL import Image

    from ..shapes import verify

    path = folder / "pairs.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if all("reason" in row for row in rows):
        return
    for row in rows:
        if "reason" not in row:
            with Image.open(folder / row["rejected"]) as im:
                row["reason"] = reason_sentence(verify(im.convert("RGB"), row["prompt"]).reason)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


def mix_pairs(out: Path, sources: list[tuple[Path, int]]) -> Path:
    """A ``pairs.jsonl`` in ``out`` holding the first ``count`` pairs of each source folder (absolute image paths)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for folder, count in sources:
        rows = (folder / "pairs.jsonl").read_text(encoding="utf-8").splitlines()[:count]
        for row in map(json.loads, rows):
            row["chosen"], row["rejected"] = str(folder / row["chosen"]), str(folder / row["rejected"])
            lines.append(json.dumps(row) + "\n")
    tmp = out / "pairs.jsonl.tmp"  # whole or not at all: another run may be reading it
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(out / "pairs.jsonl")
    return out


def prepare_rm_data(work: Path, log=print) -> tuple[dict[str, Path], dict]:
    """Everything the judges learn from, under ``work`` (reused when there): the rendered folders of :data:`DATA`,
    the generator's verifier-labelled pairs of :data:`GENERATED` (with the verifier's reasons) and ``mixed-train``
    (those pairs plus :data:`MIX_RENDERED` rendered ones). Returns the folders and the generated pairs' facts."""
    from ..bundled import bundled_path
    from ..shapes.generator import load_generator

    data = write_data(work)
    pipe = load_generator(bundled_path("shapes-gen"))
    generated = {name: write_generated_pairs(pipe, work / name, **settings) for name, settings in GENERATED.items()}
    for name in GENERATED:
        add_verifier_reasons(work / name)
    data["garbage"] = work / "garbage-eval"
    write_garbage_pairs(data["garbage"], **GARBAGE_EVAL)
    data["mixed"] = mix_pairs(work / "mixed-train", [(work / "generated-train", 10**9), (data["train"], MIX_RENDERED)])
    log(f"data ready in {work}: generated pairs {generated}")
    return data, generated


def rm_shape(size: str, patch: int | None = None) -> tuple[str, dict]:
    """The work-folder name and the tiny LLaVA's shape of judge ``size``; ``patch`` (px) replaces the vision patch
    of the bundled judges (CLIP's 14: 4 x 4 image tokens at :data:`IMAGE_SIZE`) and names its own folders."""
    if patch is None:
        return size, dict(RM_SIZES[size])
    if patch <= 0 or IMAGE_SIZE % patch:
        raise ValueError(f"patch {patch} must be a positive divisor of the judges' image size {IMAGE_SIZE}")
    return f"{size}-p{patch}", dict(RM_SIZES[size], patch_size=patch)


def caption_stage(
    size: str, work: Path, data: dict[str, Path], log=print, patch: int | None = None
) -> tuple[Path, dict]:
    """Stage 1 for ``size``: caption pretraining of a random tiny LLaVA (reused when done); its folder and facts."""
    from ..testing.tiny import build_tiny_vlm
    from ..training.caption import CaptionTrainConfig, train_captions

    name, shape = rm_shape(size, patch)
    folder = work / f"{name}-captions"

    def run():
        random_vlm = build_tiny_vlm("llava", work / f"{name}-random", image_size=IMAGE_SIZE, seed=VLM_SEED, **shape)
        cfg = CaptionTrainConfig(
            model=str(random_vlm),
            data=str(data["scenes"]),
            output_dir=str(folder),
            save_every=STAGE_CHECKPOINT_EVERY,
            **stage_settings(size, "caption"),
        )
        return train_captions(cfg, progress=False)

    return folder, _stage(folder, run, log)


def judge_stages(base: Path, size: str, name: str, work: Path, data: dict[str, Path], change: dict, log=print) -> dict:
    """Stages 2 and 3 of judge ``size`` from the caption-pretrained ``base``: the judge on rendered pairs, then on
    the mix of the generator's samples and rendered pairs (``mixed-train``, or ``mixed-train-blobs`` where
    :data:`SCALED` adds blob pairs), settings by :func:`stage_settings` with ``change`` applied; into
    ``work/{name}-pointwise`` and ``work/{name}-onpolicy``. Returns each stage's facts."""
    from ..training.rm import RMTrainConfig, train_rm

    def judge(start: Path, folder: Path, train_data: Path, settings: dict):
        cfg = RMTrainConfig(
            model=str(start),
            data=str(train_data),
            output_dir=str(folder),
            eval_every=0,
            save_every=STAGE_CHECKPOINT_EVERY,
            **settings,
        )
        return lambda: train_rm(cfg, progress=False)

    first, second = work / f"{name}-pointwise", work / f"{name}-onpolicy"
    pointwise, onpolicy = ({**stage_settings(size, stage), **change} for stage in ("pointwise", "onpolicy"))
    facts = {"pointwise": _stage(first, judge(base, first, data["train"], pointwise), log)}
    if "mixed" not in data:  # the generator's samples are made only now: the stages before need none of them
        data.update(prepare_rm_data(work, log)[0])
    mixed = data["mixed"]
    if SCALED.get(size, {}).get("blob_pairs"):
        mixed = mix_blob_pairs(work, data, log)
    facts["onpolicy"] = _stage(second, judge(first / "final", second, mixed, onpolicy), log)
    return facts


def mix_blob_pairs(work: Path, data: dict[str, Path], log=print) -> Path:
    """``work/mixed-train-blobs``: the recipe's mix (``mixed-train``'s pairs) followed by the rendered blob
    negatives of :data:`BLOB_PAIRS` (written to ``work/blob-pairs`` once)."""
    from ..shapes.blobs import write_blob_pairs

    log(f"blob pairs: {write_blob_pairs(work / 'blob-pairs', **BLOB_PAIRS)}")
    sources = [(work / "generated-train", 10**9), (data["train"], MIX_RENDERED), (work / "blob-pairs", 10**9)]
    return mix_pairs(work / "mixed-train-blobs", sources)


def train_rm_size(size: str, work: Path, out: Path, log=print, patch: int | None = None) -> dict:
    """The three stages for ``size`` (caption pretraining, judge on rendered pairs, judge on the generator's own
    samples mixed with rendered pairs); the judge and its card go to ``out``. Finished stages in ``work`` are reused.
    ``patch``: another vision patch than the bundled judges' (see :func:`rm_shape`)."""
    name, shape = rm_shape(size, patch)
    start = time.time()
    data = write_data(work)
    caption_dir, caption_facts = caption_stage(size, work, data, log, patch)
    stages = {"caption": caption_facts, **judge_stages(caption_dir / "final", size, name, work, data, {}, log)}
    data, generated = prepare_rm_data(work, log)  # made by judge_stages before its last stage; read back here
    final_dir = work / f"{name}-onpolicy"
    notes = [stage["note"] for stage in stages.values() if stage.get("note")]
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(final_dir / "final", out)
    facts = {
        "name": f"shapes-{name}",
        "architecture": "llava",
        "shape": shape,
        "parameters": _count_parameters(out),
        "image_size": IMAGE_SIZE,
        "vlm_seed": VLM_SEED,
        "data": {k: dict(zip(("count", "split", "seed", "pairs"), v)) for k, v in DATA.items()},
        "generated": generated,
        "mixed_rendered_pairs": MIX_RENDERED,
        "caption_pretraining": {
            **stage_settings(size, "caption"),
            "final_token_accuracy": round(stages["caption"]["last"]["token_accuracy"], 4),
        },
        "judge_training": stage_settings(size, "pointwise"),
        "onpolicy_training": stage_settings(size, "onpolicy"),
        "measured": measure_rm(
            out,
            {
                "id": data["id"],
                "ood": data["ood"],
                **{name: work / folder for folder, name in GENERATED_EVAL.items()},
                "garbage": data["garbage"],
            },
        ),
        "minutes": {name: stage["minutes"] for name, stage in stages.items()},
    }
    if SCALED.get(size, {}).get("blob_pairs"):  # written by judge_stages; read back here
        from ..shapes.blobs import write_blob_pairs

        facts["blob_pairs"] = write_blob_pairs(work / "blob-pairs", **BLOB_PAIRS)
    if notes:
        facts["note"] = " ".join(notes)
    write_card(out, facts)
    log(f"shapes-{name}: {facts['measured']} in {(time.time() - start) / 60:.1f} min")
    return facts


def train_variant(size: str, variant: str, work: Path, log=print) -> Path:
    """A judge of the scaling study's ablations: the bundled recipe for ``size`` from the same caption-pretrained
    base, with one setting of :data:`VARIANTS` changed in stages 2 and 3 (the bundled judge of that size is the
    control). Not bundled: ``benchmarks/shapes_scaling.py`` trains them into its work folder. Returns the judge."""
    data = write_data(work)
    caption_dir, _ = caption_stage(size, work, data, log)
    judge_stages(caption_dir / "final", size, f"{size}-{variant}", work, data, VARIANTS[variant], log)
    return work / f"{size}-{variant}-onpolicy" / "final"


def _count_parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            total += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return total


def measure_generator(
    pipe, n_prompts: int = 120, seed: int = 7, defaults: dict | None = None, samples: int = 1, per_prompt=False
) -> dict:
    """Strict-verifier alignment of ``samples`` samples per prompt over ``n_prompts`` in-domain prompts, overall (its
    standard error taken over prompts, as the samples of one prompt are not independent) and by category, the share
    of samples that are not a clean ShapesWorld scene, and the alignment of the first sample of each prompt alone
    (sample 0 of every prompt has the seed a one-sample measurement gives it). ``per_prompt``: also each prompt's
    share of passing and of clean samples (for a paired comparison of two generators)."""
    import torch

    from ..bundled import generator_defaults
    from ..shapes import CATEGORIES, verify
    from ..shapes.sample import example_rng, sample_prompt

    kw = defaults or generator_defaults(pipe)
    specs = [sample_prompt(CATEGORIES[i % 6], example_rng(seed, "id", i), "id") for i in range(n_prompts)]
    draws = [(j, i) for j in range(samples) for i in range(n_prompts)]  # every prompt's first sample comes first
    passed = [[False] * samples for _ in range(n_prompts)]
    clean = [0] * n_prompts
    batch = 24
    for start in range(0, len(draws), batch):
        chunk = draws[start : start + batch]
        gens = [torch.Generator().manual_seed(seed * 100000 + j * n_prompts + i) for j, i in chunk]
        images = pipe([specs[i].text for _, i in chunk], generator=gens, **kw).images
        for (j, i), image in zip(chunk, images):
            verdict = verify(image, specs[i])
            passed[i][j] = verdict.passed
            clean[i] += verdict.clean
    shares = [sum(p) / samples for p in passed]
    rate = sum(shares) / n_prompts
    spread = sum((x - rate) ** 2 for x in shares) / n_prompts  # one sample a prompt: the binomial p (1 - p)
    first = sum(p[0] for p in passed) / n_prompts
    by_category = {c: [x for x, spec in zip(shares, specs) if spec.category == c] for c in CATEGORIES}
    result = {
        "prompts": n_prompts,
        "samples": samples,
        "seed": seed,
        "alignment": round(rate, 4),
        "alignment_se": round(math.sqrt(spread / n_prompts), 4),
        "not_clean": round((len(draws) - sum(clean)) / len(draws), 4),
        "by_category": {c: round(sum(v) / len(v), 4) for c, v in by_category.items() if v},
        "first_sample_alignment": round(first, 4),
    }
    if per_prompt:
        result["per_prompt"] = {"alignment": shares, "clean": [c / samples for c in clean]}
    return result


# the generator card's prompts and samples per prompt (960 images): prompts differ far more than the samples of one
# prompt, so more prompts narrow the standard error more than more samples do
GENERATOR_CARD = dict(n_prompts=240, samples=4)


def train_generator_bundle(out: Path, log=print, work: Path | None = None) -> dict:
    """Train the generator with its default config, measure it and write its card (``work``: resumable stages)."""
    from ..shapes.generator import GeneratorConfig, train_generator

    train_generator(GeneratorConfig(), out, log=log, work=work)
    return describe_generator(out, log)


def describe_generator(out: Path, log=print) -> dict:
    """Measure the generator saved in ``out`` and write its card from ``training.json`` and the measurement."""
    import torch

    from ..shapes.generator import load_generator

    pipe = load_generator(out)
    record = json.loads((out / "training.json").read_text(encoding="utf-8"))
    params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    facts = {
        "name": "shapes-gen",
        "kind": "generator",
        "config": record["config"],
        "parameters": int(params),
        "minutes": record["minutes"],
        "losses": {"vae": record["vae"], "unet": record["unet"]},
        "measured": measure_generator(pipe, **GENERATOR_CARD),
        "torch": torch.__version__,
    }
    write_card(out, facts)
    log(f"shapes-gen: {facts['measured']}")
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewarddance.recipes.shapes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    gen = sub.add_parser("generator", help="the ShapesWorld text-to-image pipeline")
    gen.add_argument("--out", required=True, type=Path)
    gen.add_argument("--work", type=Path, help="the VAE and UNet checkpoints; an interrupted run continues from them")
    rm = sub.add_parser("rm", help="a ShapesWorld reward model")
    rm.add_argument("--size", required=True, choices=sorted(RM_SIZES))
    rm.add_argument("--work", required=True, type=Path, help="data and intermediate models (about 200 MB)")
    rm.add_argument("--out", required=True, type=Path)
    rm.add_argument("--patch", type=int, help="vision patch in px (the bundled judges: 14); its own work folders")
    var = sub.add_parser("variant", help="an ablation judge (not bundled): the recipe with one setting changed")
    var.add_argument("--size", required=True, choices=sorted(RM_SIZES))
    var.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    var.add_argument(
        "--work", required=True, type=Path, help="as for rm; the judge lands in work/SIZE-VARIANT-onpolicy"
    )
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, flush=True)

    try:
        if args.what == "generator":
            train_generator_bundle(args.out, log, args.work)
        elif args.what == "rm":
            train_rm_size(args.size, args.work, args.out, log, args.patch)
        else:
            log(f"{args.size}-{args.variant}: {train_variant(args.size, args.variant, args.work, log)}")
    except RecipeStopped as err:
        log(f"stopped: {err}")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
