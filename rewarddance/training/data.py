"""Preference data for reward-model training: pairs of images for one prompt, the preferred one first.

Two on-disk formats:

- ShapesWorld's ``pairs.jsonl`` (see ``rewarddance/shapes/FORMAT.md``): one JSON object per line with ``prompt``,
  ``chosen``, ``rejected`` (image paths relative to the file's folder), optional ``reason`` (a sentence naming what
  is wrong with the rejected image), ``id`` and ``split``. A folder stands for its ``pairs.jsonl``.
- Parquet files (a ``.parquet`` file or a folder of them; needs ``pyarrow``), read batch by batch, with the columns
  of Pick-a-Pic (``caption``, ``jpg_0``, ``jpg_1`` as image bytes, ``label_0``: 1 if image 0 is preferred, 0 if
  image 1, 0.5 a tie, skipped), of HPDv2 (``prompt``, ``image``: two paths or byte strings, ``human_preference``:
  which one people chose), or plain ``prompt``, ``chosen``, ``rejected``. Paths are relative to the file's folder.
"""

from __future__ import annotations

import io
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
    chosen: str | bytes  # a path, or the encoded image itself (Parquet data)
    rejected: str | bytes
    reason: str | None = None
    split: str | None = None


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir() and not (p / PAIRS).exists() and any(p.glob("*.parquet")):
        return p
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
    if file.is_dir() or file.suffix == ".parquet":
        return _read_parquet(file, skip_bad, check_images)
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


def _open(src: str | bytes, name: str):
    if isinstance(src, bytes):
        try:
            return load_image(Image.open(io.BytesIO(src)), name=name)
        except (OSError, SyntaxError) as err:  # PIL: unidentified or truncated data
            raise ImageError(f"{name}: unreadable image bytes ({err})") from err
    return load_image(src)


def load_pair_images(pair: PreferencePair):
    """``(chosen, rejected)`` as RGB PIL images; :class:`DataError` naming the pair if one cannot be read."""
    try:
        return _open(pair.chosen, f"pair {pair.id} chosen"), _open(pair.rejected, f"pair {pair.id} rejected")
    except ImageError as err:
        raise DataError(f"pair {pair.id}: {err}") from err


def _check_image(src, where: str, key: str) -> None:
    if isinstance(src, bytes):
        try:
            with Image.open(io.BytesIO(src)) as im:
                im.verify()
        except Exception as err:  # PIL raises many types for broken data
            raise DataError(f"{where}: {key} image bytes are unreadable ({err})") from err
        return
    p = Path(src)
    if not p.is_file():
        raise DataError(f"{where}: {key} image not found: {p}")


def _parquet_row(row: dict, root: Path, where: str) -> tuple[str, object, object] | None:
    """``(prompt, chosen, rejected)`` of one row in any of the supported column layouts; None for a tie."""

    def image(v):
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        if isinstance(v, dict) and "bytes" in v:  # the `datasets` Image feature
            return bytes(v["bytes"]) if v["bytes"] is not None else str(root / v["path"])
        if isinstance(v, str):
            return str(root / v)
        raise DataError(f"{where}: cannot read an image from a {type(v).__name__}")

    if {"caption", "jpg_0", "jpg_1", "label_0"} <= set(row):  # Pick-a-Pic
        label = float(row["label_0"])
        if label == 0.5:
            return None
        first, second = image(row["jpg_0"]), image(row["jpg_1"])
        return (row["caption"], first, second) if label > 0.5 else (row["caption"], second, first)
    if {"prompt", "image", "human_preference"} <= set(row):  # HPDv2
        imgs, pref = list(row["image"]), list(row["human_preference"])
        if len(imgs) != 2 or len(pref) != 2 or pref[0] == pref[1]:
            raise DataError(f"{where}: expected two images and a preference for one, got {pref}")
        best = 0 if pref[0] > pref[1] else 1
        return row["prompt"], image(imgs[best]), image(imgs[1 - best])
    if {"prompt", "chosen", "rejected"} <= set(row):
        return row["prompt"], image(row["chosen"]), image(row["rejected"])
    raise DataError(f"{where}: unknown columns {sorted(row)}; see rewarddance.training.data for the layouts")


def _read_parquet(path: Path, skip_bad: bool, check_images: bool):
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'rewarddance[data]')") from err
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    pairs, problems = [], []
    for file in files:
        n = 0
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                n += 1
                where = f"{file}:row {n}"
                try:
                    got = _parquet_row(row, file.parent, where)
                    if got is None:
                        continue
                    prompt, chosen, rejected = got
                    if check_images:
                        _check_image(chosen, where, "chosen")
                        _check_image(rejected, where, "rejected")
                except DataError as err:
                    if not skip_bad:
                        raise
                    problems.append(str(err))
                    continue
                rid = str(row.get("id", row.get("ranking_id", f"{file.stem}-{n}")))
                pairs.append(PreferencePair(rid, str(prompt), chosen, rejected, row.get("reason"), row.get("split")))
    if not pairs:
        raise DataError(f"{path}: no usable pairs" + (f" ({len(problems)} skipped as bad)" if problems else ""))
    return pairs, problems
