"""Command line ``rewarddance``, ten commands:

- ``score``: pointwise P(yes) of images for a prompt (or pairwise against ``--reference``), or a resumable batch job
  over a JSONL manifest or a folder (``--input``, ``--output``);
- ``compare``: P(image B is better than image A) for a prompt;
- ``train-rm``, ``train-captions``, ``train-refl``, ``train-grpo``: the trainers, each from a YAML config with
  ``--key value`` overrides;
- ``eval-rm``: accuracy, calibration and position bias of a judge on preference pairs;
- ``shapes``: ShapesWorld, an offline GenEval (``shapes make`` renders data, ``shapes eval`` verifies images);
- ``demo``: generate, judge and choose with the bundled models, offline;
- ``serve``: a judge behind HTTP (``rewarddance.serving``).

Heavy imports (torch, transformers) happen inside the commands so that ``rewarddance --help`` is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bundled import DEFAULT_RM, REWARD_MODELS, resolve  # names only: json, os, pathlib
from .judge_info import mismatches, read_trained_for  # json and pathlib only

MODEL_HELP = (
    f"model: a Hugging Face id, a local folder, or a bundled ShapesWorld judge ({', '.join(REWARD_MODELS)}); "
    f"default: {DEFAULT_RM}"
)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_RM, help=MODEL_HELP)
    p.add_argument(
        "--server",
        default=None,
        help="ask a served judge instead of loading --model: http://HOST:PORT (rewarddance serve) or "
        "openai:BASE_URL#MODEL (vLLM, SGLang ...); --task defaults to alignment",
    )
    p.add_argument("--api-key", default=None, help="bearer key of --server (default: $REWARDDANCE_API_KEY)")
    p.add_argument("--prompt", default=None, help="the text prompt the images were generated from")
    p.add_argument(
        "--task", default=None, help="task preset (alignment, quality, aesthetics, ...); default: the judge's own"
    )
    p.add_argument("--criteria", default=None, help="extra judging criteria")
    p.add_argument(
        "--cot",
        default=None,
        help="chain of thought: none, judgment_first, reasoning_first; default: what the judge was trained with",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images with more pixels than this (decompression bombs; default: 100 million, "
        "rewarddance.images.MAX_IMAGE_PIXELS)",
    )
    p.add_argument("--dtype", default=None, help="torch dtype, e.g. float32 or bfloat16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    p.add_argument("--quantization", default=None, choices=["8bit", "4bit"], help="bitsandbytes quantisation")
    p.add_argument(
        "--batch-size", type=int, default=None, help="items per forward pass (default: all on a GPU, 4 on the CPU)"
    )
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _warn(message: str) -> None:
    print(f"rewarddance: warning: {message}", file=sys.stderr)


def _quiet_libraries() -> None:
    """Keep a command's output to its own lines: no "Loading weights" bar from transformers, no note from
    bitsandbytes about the optional ``kernels`` package, no note per forward pass from its 8-bit matmul about
    casting to float16. Warnings that matter (missing weights, say) still show."""
    import logging

    import transformers.utils.logging as hf_logging

    hf_logging.disable_progress_bar()
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _settle(args, objective: str | None = None):
    """Fill ``--task`` and ``--cot`` from what the judge was trained for (its ``rewarddance.json``; ``none`` and
    ``alignment`` for a general VLM) and warn, one line each, where the command asks it something else. Reads no
    weights. Returns the judge's :class:`~rewarddance.judge_info.TrainedFor` or ``None``."""
    folder = Path(resolve(args.model))
    info = read_trained_for(folder) if folder.is_dir() and not getattr(args, "server", None) else None
    given_cot = args.cot
    if args.task is None:
        args.task = info.task if info else "alignment"
    if args.cot is None:
        args.cot = info.cot if info else "none"
    for line in mismatches(info, args.model, objective=objective, cot=given_cot):
        _warn(line)
    return info


def _context(args):
    from .context import RewardContext

    return RewardContext(task=args.task, criteria=args.criteria, cot=args.cot, decode_reasons=args.cot != "none")


def _images(paths: list[str], max_pixels: int) -> list:
    """The images of the command line, read here so that ``--max-pixels`` applies; errors name the file."""
    from .images import MAX_IMAGE_PIXELS, load_image

    return [load_image(path, max_pixels=max_pixels or MAX_IMAGE_PIXELS) for path in paths]


def _load(args):
    from .model import RewardModel

    ctx = _context(args)  # a bad --task or --cot fails before the model loads
    if args.server:
        from .remote import load_judge

        return load_judge(args.server, api_key=args.api_key), ctx
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
    _settle(args, objective="pairwise" if args.reference else "pointwise")
    images = _images(args.images, args.max_pixels)
    refs = _images([args.reference], args.max_pixels) * len(images) if args.reference else None
    rm, ctx = _load(args)
    out = rm.score(images, args.prompt, context=ctx, batch_size=args.batch_size, references=refs)
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
    with_ref = sum(it.reference is not None for it in items)
    for objective in ("pairwise",) * (with_ref > 0) + ("pointwise",) * (with_ref < len(items)):
        _settle(args, objective=objective)
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
        bad_lines=bad_lines,
        max_pixels=args.max_pixels,
    )
    bad = report.bad
    msg = (
        f"scored {_count(report.written, 'image')} into {args.output} "
        f"({report.already_done} {'was' if report.already_done == 1 else 'were'} already there)"
    )
    if report.processes > 1:
        msg += f" with {report.processes} processes"
    if bad:
        msg += f"; skipped {len(bad)} bad items:"
        for b in bad[:20]:
            msg += f"\n  {b['error']}"
        if len(bad) > 20:
            msg += f"\n  ... {len(bad) - 20} more in {report.errors_path}"
    if report.main:
        print(msg, file=sys.stderr)
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_compare(args) -> int:
    if args.prompt is None:
        raise ValueError("compare: --prompt is required")
    info = _settle(args, objective=args.objective)
    objective = args.objective or (info.objective if info else None if args.server else "pairwise")
    a, b = _images([args.a, args.b], args.max_pixels)
    rm, ctx = _load(args)
    pref = rm.prefer([a], [b], args.prompt, context=ctx, objective=objective)
    objective = pref.objective  # (a served judge's own when --server and no --objective)
    p, margin = float(pref.p_b_better[0]), float(pref.margin[0])
    if objective == "pointwise":
        # a pointwise judge scores each image on its own; Bradley-Terry on the two margins gives P(B better than A)
        p_a, p_b = float(pref.p_yes_a[0]), float(pref.p_yes_b[0])
        how = f"pointwise judge: sigmoid(margin B - margin A); P(yes) of A {p_a:.4f}, of B {p_b:.4f}"
    else:
        how = "pairwise: P(yes) to 'is image 2 better than image 1?'"
    winner = args.b if p > 0.5 else args.a if p < 0.5 else None
    row = {"a": args.a, "b": args.b, "p_b_better": p, "margin": margin, "winner": winner, "objective": objective}
    if objective == "pointwise":
        row.update(p_yes_a=p_a, p_yes_b=p_b)
    text = f"P({args.b} better than {args.a}) = {p:.4f}; winner: {winner or 'tie'} ({how})"
    print(json.dumps(row) if args.json else text)
    return 0


def _overrides(extra: list[str]) -> dict:
    """``--key value`` pairs after ``--config`` -> settings (values parsed as YAML: numbers, booleans, null)."""
    import yaml

    out, i = {}, 0
    while i < len(extra):
        key = extra[i]
        if not key.startswith("--") or i + 1 >= len(extra):
            raise ValueError(f"overrides must be --key value pairs, got {' '.join(extra[i:])!r}")
        out[key[2:].replace("-", "_")] = yaml.safe_load(extra[i + 1])
        i += 2
    return out


def _train(config_cls, train_fn, args, extra: list[str], summary) -> int:
    """A trainer command: YAML config plus ``--key value`` overrides; 130 when interrupted (a checkpoint is saved)."""
    cfg = config_cls.from_yaml(args.config, _overrides(extra))
    result = train_fn(cfg, progress=not args.no_progress)
    if "stopped_at" in result:
        print(f"stopped at step {result['stopped_at']}; a checkpoint was saved, run the same command to resume")
        return 130
    sys.stdout.write(json.dumps(summary(cfg, result)) + "\n")  # one write: processes share stdout
    sys.stdout.flush()
    return 0


def cmd_train_rm(args, extra: list[str]) -> int:
    from .training.rm import RMTrainConfig, train_rm

    def summary(cfg, r):
        final = str(Path(cfg.output_dir) / "final")
        return {
            "step": r["step"],
            "eval": r["eval"],
            "final": final,
            "processes": r["processes"],
            "checksum": r["checksum"],
        }

    return _train(RMTrainConfig, train_rm, args, extra, summary)


def cmd_train_captions(args, extra: list[str]) -> int:
    from .training.caption import CaptionTrainConfig, train_captions

    keys = ("step", "eval", "final", "processes", "checksum")
    return _train(CaptionTrainConfig, train_captions, args, extra, lambda cfg, r: {k: r[k] for k in keys})


_DIFFUSION_KEYS = (
    "step",
    "reward_before",
    "reward_after",
    "reward_before_se",
    "reward_after_se",
    "reward_on",
    "verifier",
    "alignment_before",
    "alignment_before_se",
    "alignment_after",
    "alignment_after_se",
    "alignment_n",
    "reward_hacking",
    "early_stopped_at",
    "exported_step",
    "lora",
    "nan_skipped",
    "processes",
    "lora_checksum",
)


def _diffusion_summary(cfg, result: dict) -> dict:
    """The JSON summary of train-refl / train-grpo; a run flagged for reward hacking also gets a warning line."""
    from .training.diffusion_loop import hacking_warning

    warning = hacking_warning(result)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return {k: result[k] for k in _DIFFUSION_KEYS}


def cmd_train_refl(args, extra: list[str]) -> int:
    from .training.refl import train_refl
    from .training.refl_config import ReFLConfig

    return _train(ReFLConfig, train_refl, args, extra, _diffusion_summary)


def cmd_train_grpo(args, extra: list[str]) -> int:
    from .training.grpo import train_grpo
    from .training.grpo_config import GRPOConfig

    return _train(GRPOConfig, train_grpo, args, extra, _diffusion_summary)


def cmd_eval_rm(args) -> int:
    from .context import RewardContext
    from .model import RewardModel
    from .training.data import read_pairs
    from .training.rm import evaluate_pairs

    info = _settle(args, objective=args.objective)
    objective = args.objective or (info.objective if info else "pairwise")
    ctx = RewardContext(task=args.task, cot=args.cot)  # a bad --task or --cot fails before anything loads
    pairs, skipped = read_pairs(args.data, skip_bad=args.skip_bad)
    rm = RewardModel.from_pretrained(args.model, dtype=args.dtype, device=args.device, quantization=args.quantization)
    result = evaluate_pairs(rm, pairs, objective, ctx, args.batch_size, max_pixels=args.max_pixels)
    result["objective"] = objective
    result["skipped"] = skipped
    print(json.dumps(result))
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
    compare.add_argument(
        "--objective",
        default=None,
        choices=["pairwise", "pointwise"],
        help="pairwise: ask 'is B better than A?'; pointwise: score each and compare (Bradley-Terry); "
        "default: what the judge was trained for (pairwise for a general VLM)",
    )
    _add_model_args(compare)
    compare.set_defaults(func=cmd_compare)
    train = sub.add_parser("train-rm", help="train a reward model on preference pairs (YAML config)")
    train.add_argument("--config", required=True, help="YAML file of RMTrainConfig settings; --key value overrides")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train_rm, takes_extra=True)
    cap = sub.add_parser("train-captions", help="caption pretraining of a VLM before it is trained as a judge")
    cap.add_argument("--config", required=True, help="YAML file of CaptionTrainConfig settings; --key value overrides")
    cap.add_argument("--no-progress", action="store_true", help="no progress bar")
    cap.set_defaults(func=cmd_train_captions, takes_extra=True)
    refl = sub.add_parser("train-refl", help="ReFL: LoRA fine-tuning of a diffusion model with a frozen reward model")
    refl.add_argument("--config", required=True, help="YAML file of ReFLConfig settings; --key value overrides")
    refl.add_argument("--no-progress", action="store_true", help="no progress bar")
    refl.set_defaults(func=cmd_train_refl, takes_extra=True)
    grpo = sub.add_parser(
        "train-grpo", help="GRPO: LoRA fine-tuning of a diffusion model from group-relative rewards of a frozen judge"
    )
    grpo.add_argument("--config", required=True, help="YAML file of GRPOConfig settings; --key value overrides")
    grpo.add_argument("--no-progress", action="store_true", help="no progress bar")
    grpo.set_defaults(func=cmd_train_grpo, takes_extra=True)
    ev = sub.add_parser("eval-rm", help="pairwise accuracy, calibration and position bias on preference pairs")
    ev.add_argument("--model", default=DEFAULT_RM, help=MODEL_HELP)
    ev.add_argument("--data", required=True, help="a pairs.jsonl file or a folder holding one")
    ev.add_argument(
        "--objective",
        default=None,
        choices=["pairwise", "pointwise"],
        help="how to ask; default: what the judge was trained for (pairwise for a general VLM)",
    )
    ev.add_argument("--task", default=None, help="task preset; default: the judge's own (alignment)")
    ev.add_argument("--cot", default=None, help="chain of thought mode; default: what the judge was trained with")
    ev.add_argument("--batch-size", type=int, default=16, help="pairs per batch")
    ev.add_argument("--skip-bad", action="store_true", help="skip unreadable pairs and report them")
    ev.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images with more pixels than this (default: rewarddance.images.MAX_IMAGE_PIXELS, 100 million)",
    )
    ev.add_argument("--dtype", default=None, help="torch dtype")
    ev.add_argument("--device", default=None, help="cpu, cuda ...")
    ev.add_argument("--quantization", default=None, choices=["8bit", "4bit"], help="bitsandbytes quantisation")
    ev.set_defaults(func=cmd_eval_rm)
    from .shapes.cli import add_shapes_commands  # numpy + Pillow only

    add_shapes_commands(sub)
    from .demo import add_demo_command

    add_demo_command(sub)
    from .serving.cli import add_serve_command  # argparse only: FastAPI loads when the command runs

    add_serve_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rewarddance`` command; returns the exit code (2 for a user error)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command != "shapes":  # (the shapes commands never import transformers: keep them quick)
            _quiet_libraries()
        code = args.func(args, extra) if getattr(args, "takes_extra", False) else args.func(args)
    except (ValueError, OSError) as err:  # ImageError, ModelLoadError, PromptTooLongError ... are ValueErrors
        print(f"rewarddance: error: {err}", file=sys.stderr)
        return 2
    if "torch.distributed" in sys.modules:  # (never import torch just for this: `shapes` commands do not need it)
        from .distributed import shutdown

        shutdown()  # under accelerate launch: leave the process group cleanly
    return code


if __name__ == "__main__":
    raise SystemExit(main())
