"""ShapesWorld on disk: write a data set folder (JSONL + PNG) and evaluate a folder of images with the verifier.

Layout of a folder made by :func:`write_dataset` (``rewarddance shapes make``)::

    DIR/
      info.json        {"format": "shapesworld", "version": 1, "split", "seed", "size", "n", "pairs", "categories"}
      manifest.jsonl   one scene per line: {"id", "prompt", "category", "image", "split", "size", "scene"}
      pairs.jsonl      with --pairs, one pair per line: {"id", "prompt", "category", "chosen", "rejected",
                       "reason", "negative", "split", "size", "rejected_scene"}
      images/          {id}.png (the manifest's images, the pairs' chosen) and {id}-rejected.png

Paths in ``image``, ``chosen`` and ``rejected`` are relative to the JSONL file's folder. ``scene`` is
:meth:`.scene.Scene.to_dict`. Every manifest image satisfies its prompt; every rejected image does not. The full
description is ``FORMAT.md`` beside this file.

:func:`evaluate` reads any JSONL with ``image`` and ``prompt`` fields (the manifest, or one written for images a
generator made from its prompts), or a folder in GenEval's generation layout (``NNNNN/metadata.jsonl`` with the
prompt, ``NNNNN/samples/*.png``), and scores each image with the verifier, per GenEval category.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..manifest import read_jsonl
from .pairs import iter_pairs
from .prompts import CATEGORIES, caption, parse_prompt
from .render import MIN_SIZE, render
from .sample import check_split, iter_examples
from .scene import ShapesError
from .verify import Scoreboard, VerifierConfig, verify

FORMAT_NAME = "shapesworld"
FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
PAIRS = "pairs.jsonl"
INFO = "info.json"
IMAGES = "images"
_OWN_IMAGE = re.compile(r"(id|ood)-\d{6,}(-rejected)?\.png")


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False)


def write_dataset(
    out: str | os.PathLike,
    n: int,
    size: int = 64,
    split: str = "id",
    seed: int = 0,
    pairs: bool = False,
    categories: Iterable[str] = CATEGORIES,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Render ``n`` examples (or ``n`` pairs with ``pairs=True``) into folder ``out``; returns the manifest path.

    Categories are cycled so that each gets ``n / len(categories)`` items (to within one). Refuses a folder that
    already holds a data set unless ``overwrite``.
    """
    check_split(split)
    categories = tuple(categories)
    if n < 1:
        raise ShapesError(f"--n must be at least 1, got {n}")
    if size < MIN_SIZE:
        raise ShapesError(f"--size must be at least {MIN_SIZE} px, got {size}")
    out = Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise ShapesError(f"{out} already holds a data set ({MANIFEST}); pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ShapesError(f"output path {out} exists and is not a folder")
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    if overwrite:  # drop what an earlier run wrote, so that a smaller run leaves no stale files behind
        for old in (out / IMAGES).glob("*.png"):
            if _OWN_IMAGE.fullmatch(old.name):
                old.unlink()
        for name in (MANIFEST, PAIRS, INFO):
            (out / name).unlink(missing_ok=True)
    if pairs:
        items: Iterator = iter_pairs(n, seed, split, categories)
    else:
        items = iter_examples(n, seed, split, categories)
    manifest_tmp = out / (MANIFEST + ".part")
    pairs_file = open(out / PAIRS, "w", encoding="utf-8") if pairs else None
    try:
        with open(manifest_tmp, "w", encoding="utf-8") as manifest:
            for i, item in enumerate(_progress(items, n, "shapes make", progress)):
                ex = item.chosen if pairs else item
                uid = f"{split}-{i:06d}"
                image = f"{IMAGES}/{uid}.png"
                render(ex.scene, size).save(out / image, compress_level=3)
                record = {
                    "id": uid,
                    "prompt": ex.prompt,
                    "category": ex.category,
                    "image": image,
                    "split": split,
                    "size": size,
                    "caption": caption(ex.scene.objects),
                    "scene": ex.scene.to_dict(),
                }
                manifest.write(json.dumps(record) + "\n")
                if pairs_file is not None:
                    pair = item
                    rejected = f"{IMAGES}/{uid}-rejected.png"
                    render(pair.rejected, size).save(out / rejected, compress_level=3)
                    pair_record = {
                        "id": uid,
                        "prompt": ex.prompt,
                        "category": ex.category,
                        "chosen": image,
                        "rejected": rejected,
                        "reason": pair.reason,
                        "negative": pair.negative,
                        "split": split,
                        "size": size,
                        "rejected_scene": pair.rejected.to_dict(),
                    }
                    pairs_file.write(json.dumps(pair_record) + "\n")
    finally:
        if pairs_file is not None:
            pairs_file.close()
    os.replace(manifest_tmp, out / MANIFEST)
    info = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "split": split,
        "seed": seed,
        "size": size,
        "n": n,
        "pairs": pairs,
        "categories": list(categories),
    }
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out / MANIFEST


def resolve_manifest(path: str | os.PathLike) -> Path:
    """A folder -> its ``manifest.jsonl``; a ``.jsonl`` file -> itself. Clear errors for anything else."""
    path = Path(path)
    if not path.exists():
        raise ShapesError(f"no such file or folder: {path}")
    if path.is_dir():
        manifest = path / MANIFEST
        if not manifest.exists():
            raise ShapesError(
                f"folder {path} has no {MANIFEST} (JSON lines with 'image' and 'prompt' fields, see "
                "rewarddance/shapes/FORMAT.md) and no GenEval-style NNNNN/metadata.jsonl + samples/ folders"
            )
        return manifest
    return path


def geneval_records(folder: Path) -> list[dict]:
    """Records for a folder in GenEval's generation layout: ``NNNNN/metadata.jsonl`` (a JSON object with
    ``prompt``) and ``NNNNN/samples/*.png``; image paths are relative to ``folder``."""
    records = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "metadata.jsonl").is_file()):
        meta = next(read_records(sub / "metadata.jsonl"), None)
        if meta is None or "prompt" not in meta:
            raise ShapesError(f"{sub / 'metadata.jsonl'} has no 'prompt'")
        for png in sorted((sub / "samples").glob("*.png")):
            records.append(
                {"id": f"{sub.name}/{png.stem}", "prompt": meta["prompt"], "image": f"{sub.name}/samples/{png.name}"}
            )
    return records


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """JSON objects of a JSONL file, one per non-empty line; a line that is not an object raises with its number."""
    for _, record in read_jsonl(path, error=ShapesError):
        yield record


@dataclass
class EvalResult:
    """What :func:`evaluate` found: the scoreboard, one row per image, and the items skipped as bad."""

    scoreboard: Scoreboard
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


def evaluate(
    path: str | os.PathLike,
    config: VerifierConfig | None = None,
    skip_bad: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Verify every ``image`` against its ``prompt`` in a folder's manifest, a JSONL file, or a folder in GenEval's
    generation layout (see :func:`geneval_records`).

    A missing or unreadable image, or a prompt outside ShapesWorld's templates, raises :class:`ShapesError`
    naming the line, or with ``skip_bad`` is recorded in ``errors`` and left out of the scores.
    """
    folder = Path(path)
    if folder.is_dir() and not (folder / MANIFEST).exists() and any(folder.glob("*/metadata.jsonl")):
        manifest, records = folder, geneval_records(folder)
        root = folder
    else:
        manifest = resolve_manifest(path)
        records = list(read_records(manifest))
        root = manifest.parent
    if not records:
        raise ShapesError(f"{manifest} has no records")
    board = Scoreboard()
    result = EvalResult(scoreboard=board)
    for lineno, record in enumerate(_progress(records, len(records), "shapes eval", progress), 1):
        try:
            if "image" not in record or "prompt" not in record:
                raise ShapesError(f"record needs 'image' and 'prompt' fields, got {sorted(record)}")
            spec = parse_prompt(record["prompt"])
            image_path = root / record["image"]
            if not image_path.is_file():
                raise ShapesError(f"image not found: {image_path}")
            verdict = verify(image_path, spec, config)
        except ShapesError as err:
            item = {"line": lineno, "id": record.get("id"), "image": record.get("image"), "error": str(err)}
            if not skip_bad:
                raise ShapesError(f"{manifest} item {lineno}: {err}") from err
            result.errors.append(item)
            continue
        board.add(verdict.category, verdict.passed)
        result.rows.append(
            {
                "id": record.get("id"),
                "image": record["image"],
                "prompt": record["prompt"],
                "category": verdict.category,
                "passed": verdict.passed,
                "reason": verdict.reason,
                "detections": [
                    {"shape": d.shape, "colour": d.colour, "box": list(d.box), "x": round(d.x, 4), "y": round(d.y, 4)}
                    for d in verdict.detections
                ],
            }
        )
    if not result.rows:
        raise ShapesError(f"no item of {manifest} could be evaluated ({len(result.errors)} skipped as bad)")
    return result
