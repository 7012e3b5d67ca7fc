"""Command line: ``rewarddance score`` and ``rewarddance compare``.

Heavy imports (torch, transformers) happen inside the commands so that ``rewarddance --help`` is quick.
"""

from __future__ import annotations

import argparse
import json
import sys

MODEL_HELP = "model: a Hugging Face id or a local folder (bundled default models come in a later release)"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--prompt", default=None, help="the text prompt the images were generated from")
    p.add_argument("--task", default="alignment", help="task preset (alignment, quality, aesthetics, ...)")
    p.add_argument("--criteria", default=None, help="extra judging criteria")
    p.add_argument("--cot", default="none", help="chain of thought: none, judgment_first, reasoning_first")
    p.add_argument("--dtype", default=None, help="torch dtype, e.g. float32 or bfloat16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    p.add_argument("--quantization", default=None, choices=["8bit", "4bit"], help="bitsandbytes quantisation")
    p.add_argument("--batch-size", type=int, default=None, help="items per forward pass (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _context(args):
    from .context import RewardContext

    return RewardContext(task=args.task, criteria=args.criteria, cot=args.cot, decode_reasons=args.cot != "none")


def _load(args):
    from .model import RewardModel

    ctx = _context(args)  # a bad --task or --cot fails before the model loads
    rm = RewardModel.from_pretrained(args.model, dtype=args.dtype, device=args.device, quantization=args.quantization)
    return rm, ctx


def _print(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    width = max(len("image"), *(len(r["image"]) for r in rows))
    print(f"{'image':<{width}}  {'p_yes':>8}  {'margin':>8}")
    for r in rows:
        line = f"{r['image']:<{width}}  {r['p_yes']:>8.4f}  {r['margin']:>8.3f}"
        print(line + (f"  {r['reason']}" if r.get("reason") else ""))


def cmd_score(args) -> int:
    if args.input is not None:
        return cmd_score_batch(args)
    if not args.images:
        raise ValueError("score: give image files, or --input DIR_OR_JSONL with --output FILE")
    if args.prompt is None:
        raise ValueError("score: --prompt is required when scoring image files")
    rm, ctx = _load(args)
    refs = [args.reference] * len(args.images) if args.reference else None
    out = rm.score(args.images, args.prompt, context=ctx, batch_size=args.batch_size, references=refs)
    rows = []
    for i, path in enumerate(args.images):
        row = {"image": path, "p_yes": float(out.p_yes[i]), "margin": float(out.margin[i])}
        if out.reasons is not None:
            row["reason"] = out.reasons[i]
        rows.append(row)
    _print(rows, args.json)
    return 0


def cmd_score_batch(args) -> int:
    from .batch import read_items, score_files

    if args.images:
        raise ValueError("score: give either image files or --input, not both")
    if args.output is None:
        raise ValueError("score --input needs --output FILE (JSON lines; appended to and resumed from)")
    items, bad_lines = read_items(args.input, prompt=args.prompt, reference=args.reference, skip_bad=args.skip_bad)
    no_prompt = [it.id for it in items if not it.prompt]
    if no_prompt and _context(args).uses_prompt:
        raise ValueError(
            f"--input {args.input}: {len(no_prompt)} items have no prompt (first: {no_prompt[0]}); "
            "give --prompt, or a 'prompt' field in the manifest"
        )
    rm, ctx = _load(args)
    report = score_files(
        rm,
        items,
        args.output,
        context=ctx,
        batch_size=args.batch_size or 8,
        skip_bad=args.skip_bad,
        errors_path=args.errors,
        progress=not args.no_progress,
    )
    bad = bad_lines + report.bad
    msg = f"scored {report.written} images into {args.output} ({report.already_done} were already there)"
    if report.processes > 1:
        msg += f" with {report.processes} processes"
    if bad:
        msg += f"; skipped {len(bad)} bad items:"
        for b in bad[:20]:
            msg += f"\n  {b['error']}"
        if len(bad) > 20:
            msg += f"\n  ... {len(bad) - 20} more in {report.errors_path}"
    print(msg, file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    if args.prompt is None:
        raise ValueError("compare: --prompt is required")
    rm, ctx = _load(args)
    out = rm.compare([args.b], [args.a], args.prompt, context=ctx)
    p = float(out.p_yes[0])
    row = {
        "a": args.a,
        "b": args.b,
        "p_b_better": p,
        "margin": float(out.margin[0]),
        "winner": args.b if p > 0.5 else args.a,
    }
    print(json.dumps(row) if args.json else f"P({args.b} better than {args.a}) = {p:.4f}; winner: {row['winner']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewarddance", description="Generative reward models: P(yes) from a VLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="pointwise scores of images for a prompt")
    score.add_argument("images", nargs="*", help="image files (or use --input)")
    score.add_argument("--reference", default=None, help="score pairwise against this reference image")
    score.add_argument(
        "--input", default=None, help="batch job: a JSONL manifest, a folder with one, or a folder of images"
    )
    score.add_argument("--output", default=None, help="batch job: results JSONL; appended to, and skipped on rerun")
    score.add_argument("--skip-bad", action="store_true", help="batch job: skip bad images and report them at the end")
    score.add_argument("--errors", default=None, help="batch job: where skipped items go (default OUTPUT.errors.jsonl)")
    score.add_argument("--no-progress", action="store_true", help="batch job: no progress bar")
    _add_model_args(score)
    score.set_defaults(func=cmd_score)
    compare = sub.add_parser("compare", help="P(B better than A) for a prompt")
    compare.add_argument("a", help="image A (image 1, the reference)")
    compare.add_argument("b", help="image B (image 2, the candidate)")
    _add_model_args(compare)
    compare.set_defaults(func=cmd_compare)
    from .shapes.cli import add_shapes_commands  # numpy + Pillow only

    add_shapes_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rewarddance`` command; returns the exit code (2 for a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # ImageError, ModelLoadError, PromptTooLongError ... are ValueErrors
        print(f"rewarddance: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
