"""``rewarddance shapes make`` and ``rewarddance shapes eval``: the ShapesWorld commands.

The main CLI calls :func:`add_shapes_commands` with its subparsers; each command's ``func(args)`` returns an exit
code and raises :class:`~.scene.ShapesError` (a ``ValueError``) for a user error, which the main CLI prints.
"""

from __future__ import annotations

import argparse
import json
import sys

from .dataset import evaluate, write_dataset
from .prompts import CATEGORIES
from .sample import SPLITS
from .verify import NOT_CLEAN


def _categories(text: str) -> tuple[str, ...]:
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    return names


def cmd_make(args: argparse.Namespace) -> int:
    """Render a ShapesWorld data set (or preference pairs) into ``args.out``."""
    manifest = write_dataset(
        args.out,
        n=args.n,
        size=args.size,
        split=args.split,
        seed=args.seed,
        pairs=args.pairs,
        categories=args.categories,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    what = "pairs" if args.pairs else "scenes"
    print(f"wrote {args.n} {what} ({args.split}, {args.size} px) to {manifest.parent}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Verify a folder of images against their prompts and print a GenEval-style table, and how many images are
    not clean ShapesWorld scenes (each of those fails whatever its prompt)."""
    result = evaluate(args.path, skip_bad=args.skip_bad, progress=not args.no_progress)
    board = result.scoreboard
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for row in result.rows:
                f.write(json.dumps(row) + "\n")
    unclean = sum(row["reason"].startswith(NOT_CLEAN) for row in result.rows)
    if args.json:
        print(json.dumps({**board.to_dict(), "not_clean": unclean, "skipped": result.errors}))
    else:
        print(board.table())
        print(f"{NOT_CLEAN}{unclean} of {len(result.rows)} images ({100.0 * unclean / len(result.rows):.1f} %)")
        for err in result.errors:
            print(f"skipped line {err['line']} ({err['image']}): {err['error']}", file=sys.stderr)
    if args.min_accuracy is not None and (board.overall or 0.0) < args.min_accuracy:
        print(f"overall {board.overall:.4f} is below --min-accuracy {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


def add_shapes_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``shapes make`` and ``shapes eval`` on an argparse subparsers object; returns the ``shapes`` parser."""
    shapes = subparsers.add_parser(
        "shapes",
        help="ShapesWorld: procedural scenes, a programmatic verifier, preference pairs",
        description="ShapesWorld: coloured shapes with GenEval-style prompts, a verifier, and preference pairs.",
    )
    sub = shapes.add_subparsers(dest="shapes_command", required=True)

    make = sub.add_parser("make", help="render scenes (or preference pairs) with prompts into a folder")
    make.add_argument("--n", type=int, required=True, help="number of scenes (with --pairs: number of pairs)")
    make.add_argument("--out", required=True, help="output folder (manifest.jsonl, images/, pairs.jsonl)")
    make.add_argument("--size", type=int, default=64, help="image side in px (16 and up; 32-512 tested)")
    make.add_argument("--pairs", action="store_true", help="also write pairs.jsonl with rejected images and reasons")
    make.add_argument("--split", choices=SPLITS, default="id", help="id: in-domain; ood: held-out combos+background")
    make.add_argument("--seed", type=int, default=0, help="random seed; item i depends only on (seed, split, i)")
    make.add_argument(
        "--categories", type=_categories, default=CATEGORIES, help="comma-separated subset of: " + ", ".join(CATEGORIES)
    )
    make.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    make.add_argument("--no-progress", action="store_true", help="no progress bar")
    make.set_defaults(func=cmd_make)

    ev = sub.add_parser("eval", help="verify images against their prompts; GenEval-style table per category")
    ev.add_argument("path", help="a folder with manifest.jsonl, or a JSONL file with 'image' and 'prompt' fields")
    ev.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    ev.add_argument("--out", default=None, help="write one JSON line per image (verdict, reason, detections)")
    ev.add_argument("--skip-bad", action="store_true", help="skip missing images and bad prompts, and report them")
    ev.add_argument("--min-accuracy", type=float, default=None, help="exit 1 when the overall score is below this")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)
    return shapes
