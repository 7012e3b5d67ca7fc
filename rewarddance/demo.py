"""``rewarddance demo``: generate, judge, choose, and measure whether the judge helped, offline on the CPU.

With the bundled models (:mod:`rewarddance.bundled`): for ShapesWorld prompts across the six categories (four each
by default) the bundled generator draws ``n`` candidates, the bundled reward model scores them, and the best is
chosen (best-of-N); search over paths spends the same denoiser budget on one search. ShapesWorld's strict
programmatic verifier then says which images really match their prompts (and which are not even clean scenes), so
the table shows the judge's effect measured by something other than the judge: verifier alignment of the first
sample vs best-of-N vs search vs any candidate, each with its binomial standard error and n, and the paired
difference best-of-N minus first sample. An annotated grid (each candidate's verdict with a short reason) is saved.
``--refl`` also trains a LoRA of the generator against the reward model by the shipped ReFL recipe
(``rewarddance/recipes/refl-shapes.yaml``, also ``examples/training/refl-shapes.yaml``) and measures verifier
alignment and P(yes) on held-out prompts before and after, with the paired standard error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bundled import DEFAULT_RM
from .shapes import CATEGORIES, parse_prompt, verify
from .shapes.sample import example_rng, sample_prompt
from .shapes.verify import NOT_CLEAN

REFL_RECIPE = Path(__file__).parent / "recipes" / "refl-shapes.yaml"
DEMO_SEED = 2024  # prompts of the demo (in-domain, never used to train the bundled generator: its seed is 31)
REFL_SEED = 77  # ReFL training prompts, distinct from the demo's


def demo_prompts(per_category: int = 1, seed: int = DEMO_SEED) -> list[tuple[str, str]]:
    """``(category, prompt)`` pairs: ``per_category`` in-domain prompts of each of the six categories."""
    out = []
    for i in range(per_category * len(CATEGORIES)):
        category = CATEGORIES[i % len(CATEGORIES)]
        out.append((category, sample_prompt(category, example_rng(seed, "id", i), "id").text))
    return out


def refl_config(generator: Path, model: str, prompts: list[str], out_dir: Path, steps: int | None, kw: dict):
    """The ReFL recipe (:data:`REFL_RECIPE`) for ``generator`` and ``model``: the demo's own training prompts and
    output folder, no checkpoints or evaluation of its own (the demo measures), ``steps`` optimiser steps (None: the
    recipe's); a generator with another schedule or size than the recipe's gets its own, and stop levels in the
    second half of that schedule."""
    import yaml

    from .training.refl_config import ReFLConfig

    recipe = yaml.safe_load(REFL_RECIPE.read_text(encoding="utf-8"))
    overrides = {
        "pretrained": str(generator),
        "reward_model": model,
        "prompts": prompts,
        "output_dir": str(out_dir),
        "save_every": 0,
        "resume": False,
        "eval_prompts": [],
        "eval_train_prompts": 0,
        "guidance_scale": kw["guidance_scale"],
        "resolution": kw["height"],
    }
    n = kw["num_inference_steps"]
    if n != recipe["num_inference_steps"]:
        overrides.update(num_inference_steps=n, stop_range=[n // 2, n - 1])
    if steps is not None:
        overrides["max_steps"] = steps
    return ReFLConfig.from_yaml(REFL_RECIPE, overrides)


# words that identify each reason the strict verifier gives for an unclean image, and the grid's short name for it
UNCLEAN_KINDS = (
    ("the frame is noise", "noise"),
    ("of the frame is speckle", "speckle"),
    ("region fills", "fill"),
    ("fits no shape", "no shape"),
    ("is not solid", "not solid"),
    ("is smeared", "smear"),
    ("unexplained texture", "texture"),
)


def short_reason(verdict, prompt: str) -> str:
    """The verifier's verdict in a few characters for the grid: ``"ok"``, ``"x unclean: speckle"`` (not a clean
    scene, and why), ``"x count 1!=2"`` (objects found != asked), ``"x no red circle"`` (a requested object is
    missing), ``"x not left of"`` (both objects there, wrong relation), ``"x one for two"`` (one object would have to
    be two of the requested ones)."""
    if verdict.passed:
        return "ok"
    if not verdict.clean:
        issue = verdict.reason.removeprefix(NOT_CLEAN)
        kind = next((short for words, short in UNCLEAN_KINDS if words in issue), " ".join(issue.split()[:2]))
        return f"x unclean: {kind}"
    spec = parse_prompt(prompt)
    dets = verdict.detections
    if spec.category == "counting":
        req = spec.objects[0]
        return f"x count {sum(req.matches(d) for d in dets)}!={req.count}"
    missing = next((req for req in spec.objects if not any(req.matches(d) for d in dets)), None)
    if missing is not None:
        return f"x no {missing.noun}"
    if spec.category == "position":
        return f"x not {spec.relation}"
    return "x one for two"


@dataclass
class PromptResult:
    category: str
    prompt: str
    images: list  # [3, H, W] in [0, 1], generation order
    scores: list[float]  # RM p_yes per candidate
    passed: list[bool]  # verifier per candidate
    best: int  # index chosen by best-of-N
    search_image: object = None  # [3, H, W] tensor
    search_score: float | None = None
    search_passed: bool | None = None
    reasons: list[str] = field(default_factory=list)  # short_reason per candidate (empty: not recorded)
    clean: list[bool] = field(default_factory=list)  # verifier: a clean scene, per candidate
    search_reason: str | None = None


@dataclass
class DemoResult:
    rows: list[PromptResult]
    n: int
    seconds: float
    refl: dict | None = None
    grid: Path | None = None
    table: dict = field(default_factory=dict)


def share(values: list[bool]) -> dict:
    """``{"k", "n", "p", "se"}``: how many of ``values`` are true, of how many, the share and its binomial standard
    error ``sqrt(p (1 - p) / n)`` (NaN for no values)."""
    n, k = len(values), sum(bool(v) for v in values)
    p = k / n if n else float("nan")
    return {"k": k, "n": n, "p": p, "se": math.sqrt(p * (1 - p) / n) if n else float("nan")}


METHODS = {  # what each alignment figure takes from a prompt's results: did the chosen image pass?
    "first sample": lambda r: r.passed[0],
    "best-of-N": lambda r: r.passed[r.best],
    "search over paths": lambda r: r.search_passed,
    "any candidate (oracle)": lambda r: any(r.passed),
}


def summarize(rows: list[PromptResult]) -> dict:
    """Verifier alignment per method (the share of prompts whose chosen image passes, with n and standard error),
    overall (``"all"``) and per category; the share of all best-of-N candidates that are not a clean scene; the
    paired difference best-of-N minus first sample; the judge's mean P(yes) of the first and the chosen sample."""
    table = {}
    for name, pick in METHODS.items():
        if any(pick(r) is None for r in rows):  # search did not run
            continue
        table[name] = {"all": share([pick(r) for r in rows])}
        for c in CATEGORIES:
            subset = [pick(r) for r in rows if r.category == c]
            if subset:
                table[name][c] = share(subset)
    table["not a clean scene"] = {"all": share([not ok for r in rows for ok in r.clean])}
    diffs = [float(r.passed[r.best]) - float(r.passed[0]) for r in rows]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) if len(diffs) > 1 else float("nan")
    table["best-of-N - first"] = {"all": {"p": mean, "se": math.sqrt(var / len(diffs)), "n": len(diffs)}}
    table["rm score, first"] = {"all": sum(r.scores[0] for r in rows) / len(rows)}
    table["rm score, best-of-N"] = {"all": sum(r.scores[r.best] for r in rows) / len(rows)}
    return table


def _pm(cell: dict) -> str:
    return f"{100 * cell['p']:5.1f}% +- {100 * cell['se']:4.1f}"


def format_table(table: dict, n: int) -> str:
    """The table ``rewarddance demo`` prints: per category the prompts passed of those asked, overall the share
    +- its standard error and n; then the unclean share, the paired difference and the judge's scores."""
    cats = [c for c in CATEGORIES if c in table["first sample"]]
    head = f"{'verifier alignment':<24}" + "".join(f"{c[:10]:>11}" for c in cats) + f"{'all (+- SE)':>17}{'n':>5}"
    lines = [head, "-" * len(head)]
    for name in METHODS:
        if name not in table:
            continue
        row = table[name]
        label = name.replace("best-of-N", f"best-of-{n}")
        cells = "".join(f"{row[c]['k']:>9}/{row[c]['n']}" for c in cats)
        lines.append(f"{label:<24}{cells}{_pm(row['all']):>17}{row['all']['n']:>5}")
    lines.append("-" * len(head))
    unclean, diff = table["not a clean scene"]["all"], table["best-of-N - first"]["all"]
    lines.append(
        f"not a clean scene (verifier): {100 * unclean['p']:.1f}% +- {100 * unclean['se']:.1f} of all "
        f"{unclean['n']} candidates ({unclean['k']})"
    )
    differs = diff["p"] != 0 and abs(diff["p"]) >= 2 * diff["se"]
    verdict = "a difference (at least 2 SE)" if differs else "no difference (under 2 SE)"
    lines.append(
        f"best-of-{n} - first sample: {100 * diff['p']:+.1f} points +- {100 * diff['se']:.1f} (paired SE, "
        f"n={diff['n']}): {verdict}"
    )
    lines.append(
        f"judge's mean P(yes): first sample {table['rm score, first']['all']:.3f}, "
        f"best-of-{n} choice {table['rm score, best-of-N']['all']:.3f}"
    )
    return "\n".join(lines)


def run_demo(
    model: str = DEFAULT_RM,
    generator: str = "shapes-gen",
    n: int = 8,
    per_category: int = 4,
    search: bool = True,
    seed: int = 0,
    grid: str | Path | None = "rewarddance-demo.png",
    log=print,
) -> DemoResult:
    """Best-of-N and search over paths on :func:`demo_prompts`; returns the per-prompt results and the table."""
    from .bundled import generator_defaults, load_generator
    from .model import RewardModel
    from .pipelines import SamplerConfig
    from .search import best_of_n, search_over_paths

    start = time.time()
    pipe = load_generator(generator)
    kw = generator_defaults(pipe)
    rm = RewardModel.from_pretrained(model, device="cpu", dtype="float32")
    steps = kw["num_inference_steps"]
    rows = []
    for i, (category, prompt) in enumerate(demo_prompts(per_category)):
        # each prompt its own seeds: a prompt drawn twice (single_object has only three) is two independent trials
        first_seed = seed + i * n
        bon = best_of_n(pipe, rm, prompt, n=n, seed=first_seed, batch_size=n, **kw)
        images = [img.float().cpu() for img in bon.images]
        verdicts = [verify(_to_pil(img), prompt) for img in images]
        row = PromptResult(
            category=category,
            prompt=prompt,
            images=images,
            scores=[float(s) for s in bon.scores],
            passed=[v.passed for v in verdicts],
            best=bon.order[0],
            reasons=[short_reason(v, prompt) for v in verdicts],
            clean=[v.clean for v in verdicts],
        )
        if search:
            # the same denoiser budget as best-of-N: n samples x steps
            paths = max(1, n // 4)
            res = search_over_paths(
                pipe,
                rm,
                prompt,
                n=paths,
                m=2,
                num_inference_steps=steps,
                budget=n * steps,
                seed=first_seed,
                config=SamplerConfig(guidance_scale=kw["guidance_scale"], height=kw["height"], width=kw["width"]),
            )
            row.search_image = res.best.float().cpu()
            row.search_score = float(res.scores[0])
            verdict = verify(_to_pil(row.search_image), prompt)
            row.search_passed, row.search_reason = verdict.passed, short_reason(verdict, prompt)
        rows.append(row)
        log(f"{category:<14} {prompt!r}: best-of-{n} P(yes) {row.scores[row.best]:.3f} (first {row.scores[0]:.3f})")
    result = DemoResult(rows=rows, n=n, seconds=time.time() - start)
    result.table = summarize(rows)
    if grid:
        result.grid = save_grid(rows, Path(grid))
    return result


def _to_pil(img):
    import torch
    from PIL import Image

    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


GRID_CELL = 128  # px: a generator's image is shown at the largest whole multiple of its side up to this
GRID_FONT = 14  # px
LEGEND = (
    "number: judge's P(yes);  box: judge's pick (best-of-N);  ok / x why: ShapesWorld verifier's verdict "
    "(unclean: not a clean scene; count found!=asked)"
)


def _font(size: int):
    """Pillow's built-in scalable font at ``size`` px (Pillow >= 10.1), else its small bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: no size argument
        return ImageFont.load_default()


def grid_cell(side: int, target: int = GRID_CELL) -> int:
    """The displayed side of a ``side`` px image: a whole multiple of it (nearest-neighbour upscaling keeps each
    pixel a crisp square) up to ``target``; an image larger than ``target`` is shrunk to it."""
    return side * max(1, target // side) if side <= target else target


def _cell_image(img, cell: int):
    from PIL import Image

    pil = _to_pil(img)
    resample = Image.NEAREST if cell >= pil.width else Image.LANCZOS
    return pil.resize((cell, cell), resample)


def save_grid(rows: list[PromptResult], path: Path, cell: int | None = None) -> Path:
    """A legend line, then one row per prompt: the prompt, the candidates (under each the judge's P(yes) and the
    verifier's verdict with its short reason, :func:`short_reason`; the best-of-N pick boxed in green), then the
    search result. Images are ``cell`` px (default: :func:`grid_cell` of the images' side, nearest-neighbour
    upscaled); a column is wide enough for its longest reason."""
    from PIL import Image, ImageDraw

    cell = cell or grid_cell(rows[0].images[0].shape[-1])
    font, title_font = _font(GRID_FONT), _font(GRID_FONT + 1)
    pad, line = 8, GRID_FONT + 8
    table = []  # per row: (image, score line, verdict line, passed, chosen) per column
    for row in rows:
        marks = row.reasons or ["ok" if ok else "x" for ok in row.passed]
        cells = [
            (img, f"{s:.2f}", mark, ok, i == row.best)
            for i, (img, s, ok, mark) in enumerate(zip(row.images, row.scores, row.passed, marks))
        ]
        if row.search_image is not None:
            mark = row.search_reason or ("ok" if row.search_passed else "x")
            cells.append((row.search_image, f"search {row.search_score:.2f}", mark, row.search_passed, False))
        table.append(cells)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col = max([cell] + [int(measure.textlength(t, font=font)) + 1 for cells in table for c in cells for t in c[1:3]])
    cols = max(len(cells) for cells in table)
    texts = [LEGEND] + [f"{row.category}: {row.prompt}" for row in rows]
    text_width = max(measure.textlength(text, font=title_font) for text in texts)
    width = int(max(pad + cols * (col + pad), 2 * pad + text_width))
    height = pad + line + len(rows) * (line + cell + 2 * line + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), LEGEND, fill=(70, 70, 70), font=font)
    y = pad + line + pad
    for row, cells in zip(rows, table):
        draw.text((pad, y), f"{row.category}: {row.prompt}", fill=(0, 0, 0), font=title_font)
        y += line
        for j, (img, score, mark, passed, chosen) in enumerate(cells):
            x = pad + j * (col + pad)
            canvas.paste(_cell_image(img, cell), (x, y))
            if chosen:
                draw.rectangle([x - 3, y - 3, x + cell + 2, y + cell + 2], outline=(0, 170, 0), width=3)
            draw.text((x, y + cell + 4), score, fill=(40, 40, 40), font=font)
            colour = (0, 120, 0) if passed else (200, 0, 0)
            draw.text((x, y + cell + 4 + line), mark, fill=colour, font=font)
        y += cell + 2 * line + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def run_refl_demo(
    model: str,
    generator: str,
    out_dir: Path,
    steps: int | None = None,
    eval_prompts: int = 48,
    log=print,
    progress: bool = False,
) -> dict:
    """ReFL of the generator with the reward model by the shipped recipe (:func:`refl_config`; ``steps`` None: the
    recipe's); verifier alignment and P(yes) of two samples per held-out prompt, before and after (same seeds), and
    their paired differences with standard errors. ``log`` gets a line as each stage starts and ``progress`` shows
    the training's progress bar (stderr); the result is returned, not logged."""
    from .bundled import generator_defaults, load_generator, resolve
    from .model import RewardModel
    from .training.refl import train_refl

    gen_path = Path(resolve(generator))
    pipe = load_generator(gen_path)
    kw = generator_defaults(pipe)
    held_out = [p for _, p in demo_prompts(max(1, eval_prompts // len(CATEGORIES)), seed=DEMO_SEED + 1)]
    train_prompts = [p for _, p in demo_prompts(20, seed=REFL_SEED)]
    rm = RewardModel.from_pretrained(model, device="cpu", dtype="float32")
    log(f"ReFL: sampling {len(held_out)} held-out prompts x 2 images before training ...")
    before = measure_alignment(pipe, rm, held_out, kw)
    cfg = refl_config(gen_path, model, train_prompts, out_dir, steps, kw)
    log(f"ReFL: {cfg.max_steps} steps of the recipe, LoRA of {generator} against {model} (output: {out_dir}) ...")
    train_refl(cfg, progress=progress, rm=rm)
    _load_lora(pipe, out_dir / "lora")
    log("ReFL: sampling the same prompts and seeds after training ...")
    after = measure_alignment(pipe, rm, held_out, kw)
    gain = {key: paired_difference(before[key + "_each"], after[key + "_each"]) for key in ("passed", "p_yes")}
    return {"steps": cfg.max_steps, "before": before, "after": after, "gain": gain, "prompts": len(held_out)}


def mean_se(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (sample standard deviation / sqrt n)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, math.sqrt(var / n)


def paired_difference(before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean of ``after - before`` over paired items and its standard error."""
    return mean_se([float(a) - float(b) for a, b in zip(after, before)])


def read_difference(diff: float, se: float) -> str:
    """How a difference reads: "no difference" when it is zero or under 2 standard errors, else its size in SE
    ("every item" when every paired item moved alike, so the SE is 0)."""
    if diff == 0 or abs(diff) < 2 * se:
        return "no difference"
    return f"{abs(diff) / se:.1f} SE" if se else "every item"


def _load_lora(pipe, folder: Path) -> None:
    """``pipe.load_lora_weights(folder)`` without diffusers' note that the text encoder has no LoRA (it has none:
    ReFL trains the UNet only)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.load_lora_weights(str(folder))
    finally:
        diffusers_logging.set_verbosity(level)


def sample_prompts(pipe, prompts: list[str], kw: dict, samples: int = 2, seed: int = 1000) -> list:
    """``samples`` images per prompt (``[samples, 3, H, W]`` in [0, 1] each), seeds fixed by prompt position."""
    import torch

    out = []
    for i, prompt in enumerate(prompts):
        gens = [torch.Generator().manual_seed(seed + i * samples + j) for j in range(samples)]
        with torch.no_grad():
            out.append(pipe([prompt] * samples, generator=gens, output_type="pt", **kw).images.float())
    return out


def measure_alignment(pipe, rm, prompts: list[str], kw: dict, samples: int = 2, seed: int = 1000) -> dict:
    """Verifier alignment and mean P(yes) of ``samples`` images per prompt (fixed seeds)."""
    passed, scores = [], []
    for prompt, images in zip(prompts, sample_prompts(pipe, prompts, kw, samples, seed)):
        scores += rm.score(images, prompt).p_yes.tolist()
        passed += [verify(_to_pil(img), prompt).passed for img in images]
    return {
        "alignment": sum(passed) / len(passed),
        "p_yes": sum(scores) / len(scores),
        "images": len(passed),
        "passed_each": [float(v) for v in passed],
        "p_yes_each": scores,
    }


def format_refl(refl: dict) -> str:
    """The demo's ReFL line: alignment and P(yes) before -> after, each paired difference +- its SE, and n."""
    b, a, (da, da_se), (dp, dp_se) = refl["before"], refl["after"], refl["gain"]["passed"], refl["gain"]["p_yes"]
    verdict = "a gain" if da > 2 * da_se else "a loss" if da < -2 * da_se else "no difference (under 2 SE)"
    return (
        f"ReFL ({refl['steps']} steps, {refl['prompts']} held-out prompts x 2 images = {b['images']}): verifier "
        f"alignment {100 * b['alignment']:.1f}% -> {100 * a['alignment']:.1f}% ({100 * da:+.1f} +- {100 * da_se:.1f} "
        f"paired SE: {verdict}); mean P(yes) {b['p_yes']:.3f} -> {a['p_yes']:.3f} ({dp:+.3f} +- {dp_se:.3f})"
    )


def add_demo_command(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo", help="offline: generate, judge, choose with the bundled models; show that the judge helps"
    )
    demo.add_argument("--model", default=DEFAULT_RM, help=f"reward model (default: the bundled {DEFAULT_RM})")
    demo.add_argument("--generator", default="shapes-gen", help="diffusers folder (default: the bundled shapes-gen)")
    demo.add_argument("--n", type=int, default=8, help="candidates per prompt")
    demo.add_argument("--per-category", type=int, default=4, help="prompts per category (six categories)")
    demo.add_argument("--seed", type=int, default=0, help="first candidate seed (prompt i uses seed + i * n on)")
    demo.add_argument("--no-search", action="store_true", help="skip search over paths")
    demo.add_argument("--out", default="rewarddance-demo.png", help="annotated grid PNG")
    demo.add_argument(
        "--refl", action="store_true", help="also train a LoRA by the ReFL recipe, report alignment before / after"
    )
    demo.add_argument("--refl-steps", type=int, default=None, help="ReFL optimiser steps (default: the recipe's)")
    demo.add_argument(
        "--refl-prompts", type=int, default=48, help="held-out prompts scored before / after ReFL (a multiple of 6)"
    )
    demo.add_argument("--refl-dir", default="rewarddance-demo-refl", help="ReFL output folder (LoRA, metrics)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    if args.n < 1 or args.per_category < 1:
        raise ValueError(f"--n and --per-category must be at least 1, got {args.n} and {args.per_category}")
    res = run_demo(args.model, args.generator, args.n, args.per_category, not args.no_search, args.seed, args.out)
    print()
    print(format_table(res.table, res.n))
    print(f"grid: {res.grid}   ({res.seconds:.0f} s)")
    if args.refl:
        from .training.metrics import say  # stage lines and the progress bar on stderr; the result once, below

        refl = run_refl_demo(
            args.model, args.generator, Path(args.refl_dir), args.refl_steps, args.refl_prompts, log=say, progress=True
        )
        print(format_refl(refl))
    return 0
