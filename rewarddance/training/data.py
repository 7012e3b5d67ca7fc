"""Preference data for reward-model training: pairs of images for one prompt, the preferred one first.

Two on-disk formats:

- ShapesWorld's ``pairs.jsonl`` (see ``rewarddance/shapes/FORMAT.md``): one JSON object per line with ``prompt``,
  ``chosen``, ``rejected`` (image paths relative to the file's folder), optional ``reason`` (a sentence naming what
  is wrong with the rejected image), ``id`` and ``split``. A folder stands for its ``pairs.jsonl``.
- Parquet files (a ``.parquet`` file or a folder of them; needs ``pyarrow``), read batch by batch, with the columns
  of Pick-a-Pic (``caption``, ``jpg_0``, ``jpg_1`` as image bytes, ``label_0``: 1 if image 0 is preferred, 0 if
  image 1, 0.5 a tie, skipped), of HPDv2 (``prompt``, ``image``: two paths or byte strings, ``human_preference``:
  which one people chose), or plain ``prompt``, ``chosen``, ``rejected``. Paths are relative to the file's folder.

A JSONL pair is a pair of videos when its row says ``"media": "video"`` or its ``chosen`` is a folder (of frame
images) or a video file (``.mp4``, ``.webm``, ``.mkv``, ``.mov``, ``.avi``, ``.m4v``); a GIF is a video only with
``media``. Videos are read by :func:`rewarddance.video.load_video` (ShapesWorld clips:
:func:`rewarddance.shapes.clips.write_clip_dataset`). One file holds pairs of one kind.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..images import MAX_IMAGE_PIXELS, ImageError, load_image
from ..manifest import read_jsonl

PAIRS = "pairs.jsonl"
MEDIA = ("image", "video")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")


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
    media: str = "image"  # "video": chosen and rejected are video files or folders of frames


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
    problems: list[str] = []
    pairs = list(iter_pairs(path, skip_bad, check_images, problems))
    if not pairs:
        raise DataError(f"{path}: no usable pairs" + (f" ({len(problems)} skipped as bad)" if problems else ""))
    return pairs, problems


def iter_pairs(
    path: str | os.PathLike, skip_bad: bool = False, check_images: bool = True, problems: list | None = None
) -> Iterator[PreferencePair]:
    """The pairs of a file or folder one at a time, in file order (Parquet read batch by batch); with ``skip_bad``
    a bad row is appended to ``problems`` (when given) instead of raised."""
    file = _resolve(path)
    parquet = file.is_dir() or file.suffix == ".parquet"
    for got in _parquet_rows(file, check_images) if parquet else _jsonl_rows(file, check_images):
        if isinstance(got, DataError):
            if not skip_bad:
                raise got
            if problems is not None:
                problems.append(str(got))
            continue
        yield got


def stream_pairs(
    path: str | os.PathLike,
    seed: int = 0,
    shuffle_buffer: int = 1024,
    skip_bad: bool = False,
    problems: list | None = None,
) -> Iterator[PreferencePair]:
    """Pairs without end, epoch after epoch, for data sets too large to hold: each epoch reads the files in order
    and yields from a buffer of ``shuffle_buffer`` pairs at random (seeded by ``seed`` and the epoch), so only the
    buffer's images are in memory. The order depends only on the arguments, so a resumed run that skips the pairs
    it already used sees the same ones. Problems are reported once, from the first epoch."""
    epoch = 0
    while True:
        rng = random.Random(seed * 100_003 + epoch)
        buffer: list[PreferencePair] = []
        seen = 0
        for pair in iter_pairs(path, skip_bad, True, problems if epoch == 0 else None):
            seen += 1
            buffer.append(pair)
            if len(buffer) >= shuffle_buffer:
                i = rng.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        if not seen:
            raise DataError(f"{path}: no usable pairs")
        rng.shuffle(buffer)
        yield from buffer
        epoch += 1


def jsonl_lines(file: Path) -> Iterator[tuple[str, dict | DataError]]:
    """``(where, row)`` for each non-blank line of a JSON Lines file, ``where`` being ``file:line``; a line that is
    not a JSON object comes as a :class:`DataError` naming it, in file order, for the caller to raise or report."""
    bad: list[dict] = []

    def flush():  # the bad lines read_jsonl skipped before the row it yields next
        while bad:
            line = bad.pop(0)
            yield f"{file}:{line['line']}", DataError(line["error"])

    for lineno, row in read_jsonl(file, skip_bad=True, bad=bad):
        yield from flush()
        yield f"{file}:{lineno}", row
    yield from flush()


def check_image_file(path: Path, where: str, key: str = "image") -> None:
    """:class:`DataError` naming ``where`` unless ``path`` is a file that PIL can read the header of."""
    if not path.is_file():
        raise DataError(f"{where}: {key} image not found: {path}")
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many types for broken files
        raise DataError(f"{where}: {key} image {path} is unreadable ({err})") from err


def _media_of(path: Path) -> str:
    """The media a path holds: a folder or a video file is a video; an image suffix is decided without the disk."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"):
        return "image"
    return "video" if path.is_dir() else "image"


def _row_media(row: dict, chosen: Path, rejected: Path, where: str) -> str:
    """The media of one JSONL row: its ``media`` field, else what its paths are; both paths must agree."""
    given = row.get("media")
    if given is not None and given not in MEDIA:
        raise DataError(f"{where}: media must be one of {', '.join(MEDIA)}, got {given!r}")
    if given is not None:
        return given
    media = _media_of(chosen)
    if media != _media_of(rejected):
        raise DataError(f"{where}: chosen is {'a video' if media == 'video' else 'an image'} but rejected is not")
    return media


def check_video_source(path: Path, where: str, key: str = "video") -> None:
    """:class:`DataError` naming ``where`` unless ``path`` is a video file or a folder holding frame images (the
    frames are decoded when the pair is used)."""
    if not path.exists():
        raise DataError(f"{where}: {key} video not found: {path}")
    if path.is_dir():
        from ..video import FRAME_SUFFIXES

        if not any(p.suffix.lower() in FRAME_SUFFIXES for p in path.iterdir()):
            raise DataError(f"{where}: {key} video folder {path} holds no frame images")


def load_pair_videos(pair: PreferencePair, num_frames: int | None = None):
    """``(chosen, rejected)`` as :class:`rewarddance.video.Clip` (frames ``[T, 3, H, W]`` in [0, 1]); a
    :class:`DataError` naming the pair if one cannot be read."""
    from ..video import VideoError, load_video

    try:
        chosen = load_video(pair.chosen, name=f"pair {pair.id} chosen", num_frames=num_frames)
        return chosen, load_video(pair.rejected, name=f"pair {pair.id} rejected", num_frames=num_frames)
    except (VideoError, ImportError) as err:
        raise DataError(f"pair {pair.id}: {err}") from err


def pairs_media(pairs: list[PreferencePair], what: str) -> str:
    """The media of ``pairs`` ("image" or "video"); :class:`DataError` naming ``what`` and the first pair of the
    other kind when they are mixed (an empty list is "image")."""
    if not pairs:
        return "image"
    media = pairs[0].media
    for pair in pairs:
        if pair.media != media:
            raise DataError(
                f"{what}: pair {pair.id} holds {pair.media}s but pair {pairs[0].id} holds {media}s; "
                "train and evaluate images and videos from separate files"
            )
    return media


def _jsonl_rows(file: Path, check_images: bool) -> Iterator[PreferencePair | DataError]:
    root = file.parent
    for where, row in jsonl_lines(file):
        try:
            if isinstance(row, DataError):
                raise row
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
            if missing:
                raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
            pair = PreferencePair(
                id=str(row.get("id", where.rsplit(":", 1)[1])),
                prompt=str(row["prompt"]),
                chosen=str(root / row["chosen"]),
                rejected=str(root / row["rejected"]),
                reason=row.get("reason"),
                split=row.get("split"),
                media=_row_media(row, root / row["chosen"], root / row["rejected"], where),
            )
            if check_images:
                check = check_video_source if pair.media == "video" else check_image_file
                check(Path(pair.chosen), where, "chosen")
                check(Path(pair.rejected), where, "rejected")
        except DataError as err:
            yield err  # the caller raises it or, skipping bad rows, reports it
            continue
        yield pair


def _open(src: str | bytes, name: str, max_pixels: int):
    if isinstance(src, bytes):
        try:
            # the size is checked on the header, before load_image decodes the pixels
            return load_image(Image.open(io.BytesIO(src)), name=name, max_pixels=max_pixels)
        except Image.DecompressionBombError as err:  # PIL's own limit, met at open
            raise ImageError(f"{name}: too many pixels ({err})") from err
        except (OSError, SyntaxError) as err:  # PIL: unidentified or truncated data
            raise ImageError(f"{name}: unreadable image bytes ({err})") from err
    return load_image(src, max_pixels=max_pixels)


def load_pair_images(pair: PreferencePair, max_pixels: int = MAX_IMAGE_PIXELS):
    """``(chosen, rejected)`` as RGB PIL images; :class:`DataError` naming the pair if one cannot be read or has more
    than ``max_pixels`` pixels."""
    try:
        chosen = _open(pair.chosen, f"pair {pair.id} chosen", max_pixels)
        return chosen, _open(pair.rejected, f"pair {pair.id} rejected", max_pixels)
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


def _parquet_rows(path: Path, check_images: bool) -> Iterator[PreferencePair | DataError]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'rewarddance[data]')") from err
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
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
                    yield err
                    continue
                rid = str(row.get("id", row.get("ranking_id", f"{file.stem}-{n}")))
                yield PreferencePair(rid, str(prompt), chosen, rejected, row.get("reason"), row.get("split"))
