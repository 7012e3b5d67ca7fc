"""Preference data for reward-model training: pairs of images for one prompt, the preferred one first.

The on-disk format is ShapesWorld's ``pairs.jsonl`` (see ``rewarddance/shapes/FORMAT.md``): one JSON object per
line with ``prompt``, ``chosen``, ``rejected`` (image paths relative to the file's folder), optional ``reason`` (a
sentence naming what is wrong with the rejected image), ``id`` and ``split``. Any generator's data in that shape
works; a folder stands for its ``pairs.jsonl``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..images import ImageError, load_image

PAIRS = "pairs.jsonl"


class DataError(ValueError):
    """A preference file or one of its rows cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class PreferencePair:
    """One preference: ``chosen`` is better than ``rejected`` for ``prompt``; ``reason`` says why (optional)."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    reason: str | None = None
    split: str | None = None


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / PAIRS
    if not p.is_file():
        raise DataError(f"{path}: no such pairs file (a JSONL file, or a folder holding {PAIRS})")
    return p


def read_pairs(
    path: str | os.PathLike, skip_bad: bool = False, check_images: bool = True
) -> tuple[list[PreferencePair], list[str]]:
    """The pairs of a JSONL file (or a folder's ``pairs.jsonl``) and the problems skipped with ``skip_bad``.

    A malformed line, a missing field or (with ``check_images``) a missing or unreadable image raises
    :class:`DataError` naming the file and line, or with ``skip_bad`` is left out and reported in the second value.
    """
    file = _resolve(path)
    root = file.parent
    pairs, problems = [], []
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{file}:{lineno}"
            try:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{where}: not valid JSON ({err.msg})") from err
                missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row, dict) or k not in row]
                if missing:
                    raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
                pair = PreferencePair(
                    id=str(row.get("id", lineno)),
                    prompt=str(row["prompt"]),
                    chosen=str(root / row["chosen"]),
                    rejected=str(root / row["rejected"]),
                    reason=row.get("reason"),
                    split=row.get("split"),
                )
                if check_images:
                    for key in ("chosen", "rejected"):
                        p = Path(getattr(pair, key))
                        if not p.is_file():
                            raise DataError(f"{where}: {key} image not found: {p}")
                        try:
                            with Image.open(p) as im:
                                im.verify()
                        except Exception as err:  # PIL raises many types for broken files
                            raise DataError(f"{where}: {key} image {p} is unreadable ({err})") from err
            except DataError as err:
                if not skip_bad:
                    raise
                problems.append(str(err))
                continue
            pairs.append(pair)
    if not pairs:
        raise DataError(f"{file}: no usable pairs" + (f" ({len(problems)} skipped as bad)" if problems else ""))
    return pairs, problems


def load_pair_images(pair: PreferencePair):
    """``(chosen, rejected)`` as RGB PIL images; :class:`DataError` naming the pair if one cannot be read."""
    try:
        return load_image(pair.chosen), load_image(pair.rejected)
    except ImageError as err:
        raise DataError(f"pair {pair.id}: {err}") from err
