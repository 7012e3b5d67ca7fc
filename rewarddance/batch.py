"""Batch scoring jobs: a folder or JSONL manifest in, one JSON line per image out, resumable and data parallel.

``rewarddance score --input DIR_OR_JSONL --output results.jsonl`` runs :func:`score_files`. The job appends each
batch's rows to the output as soon as they are computed (flushed and fsynced), and a second run skips every id
already in the output, so an interrupted job loses at most the batch in flight. With ``skip_bad`` an unreadable
image or an item the model rejects (a prompt longer than the context, say) is left out and reported at the end,
and written to an errors file beside the output; without it the first bad item stops the job with its name.

Under ``accelerate launch`` (several GPUs, nodes, or CPU processes) each process takes every ``world``-th pending
item, writes to its own part file ``{output}.part{rank}``, and the main process folds the parts into the output
when all are done. A run interrupted in between leaves part files that the next run reads as done.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .distributed import process_state, sum_over_processes
from .images import MAX_IMAGE_PIXELS, ImageError, load_image
from .manifest import read_jsonl

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MANIFEST = "manifest.jsonl"


class BatchInputError(ValueError):
    """The job's input (folder, manifest or output file) cannot be read as asked."""


@dataclass(frozen=True)
class BatchItem:
    """One image to score: ``id`` keys the output row; paths are absolute or relative to the working directory."""

    id: str
    image: str
    prompt: str | None
    reference: str | None = None
    extra: tuple = ()  # (key, value) pairs copied from the manifest record into the output row


@dataclass
class BatchReport:
    """What a run did: rows written by this run, items already done before it, and the bad items skipped."""

    written: int = 0
    already_done: int = 0
    bad: list[dict] = field(default_factory=list)
    errors_path: Path | None = None
    processes: int = 1
    main: bool = True  # the main process (the one that reports)


# ---------------------------------------------------------------------------------------------------- reading
def _record_items(path: Path, prompt: str | None, reference: str | None, bad: list[dict]) -> list[BatchItem]:
    root = path.parent
    items, seen = [], {}
    for lineno, rec in read_jsonl(path, skip_bad=True, bad=bad):
        where = f"{path}:{lineno}"
        if "image" not in rec:
            bad.append({"line": lineno, "error": f"{where}: expected a JSON object with an 'image' field"})
            continue
        item_id = str(rec.get("id", rec["image"]))
        if item_id in seen:
            raise BatchInputError(f"{where}: id {item_id!r} already used on line {seen[item_id]}")
        seen[item_id] = lineno
        ref = rec.get("reference", reference)
        extra = tuple((k, rec[k]) for k in ("category", "split") if k in rec)
        items.append(
            BatchItem(
                id=item_id,
                image=str(root / rec["image"]),
                prompt=rec.get("prompt", prompt),
                reference=None if ref is None else str(root / ref if "reference" in rec else ref),
                extra=extra,
            )
        )
    return items


def read_items(
    source: str | os.PathLike, prompt: str | None = None, reference: str | None = None, skip_bad: bool = False
) -> tuple[list[BatchItem], list[dict]]:
    """The items of a job and the malformed manifest lines skipped (only with ``skip_bad``; otherwise they raise).

    ``source`` is a JSONL manifest (one object per line: ``image`` relative to the manifest's folder, optional
    ``prompt``, ``reference``, ``id``; ShapesWorld's ``manifest.jsonl`` is one), a folder holding a
    ``manifest.jsonl``, or a folder of image files (scored with ``prompt``; ids are their relative paths).
    ``prompt`` and ``reference`` fill in for records that lack them.
    """
    path = Path(source)
    if not path.exists():
        raise BatchInputError(f"--input {path}: no such file or folder")
    bad: list[dict] = []
    if path.is_dir() and not (path / MANIFEST).is_file():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise BatchInputError(f"--input {path}: no {MANIFEST} and no image files ({', '.join(IMAGE_SUFFIXES)})")
        items = [BatchItem(p.relative_to(path).as_posix(), str(p), prompt, reference) for p in files]
    else:
        items = _record_items(path / MANIFEST if path.is_dir() else path, prompt, reference, bad)
        if bad and not skip_bad:
            raise BatchInputError(bad[0]["error"] + (f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""))
        if not items:
            raise BatchInputError(f"--input {path}: no items")
    return items, bad


def _done_ids(path: Path) -> set[str]:
    """Ids already in an output (or part) file. A torn last line from an interrupted write is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):  # the process died mid-line: drop the fragment so appends start on a fresh line
        with open(path, "r+b") as f:
            f.truncate(keep)
    done = set()
    for lineno, line in enumerate(data[:keep].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise BatchInputError(f"{path}:{lineno}: not a result row of this tool ({err}); move it away") from err
    return done


# ---------------------------------------------------------------------------------------------------- scoring
def _append(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def _bad(item: BatchItem, err: Exception) -> dict:
    return {"id": item.id, "image": item.image, "error": str(err)}


def _row(item: BatchItem, p: float, m: float, reason: str | None) -> dict:
    row = {"id": item.id, "image": item.image, "prompt": item.prompt}
    if item.reference is not None:
        row["reference"] = item.reference
    row.update(dict(item.extra))
    row.update(p_yes=p, margin=m)
    if reason is not None:
        row["reason"] = reason
    return row


def _score_group(rm, items: Sequence[BatchItem], images: list, refs: list | None, context, batch_size) -> list[dict]:
    prompts = [it.prompt for it in items]
    out = rm.score(images, prompts, context=context, batch_size=batch_size, references=refs)
    reasons = out.reasons or [None] * len(items)
    return [_row(it, float(p), float(m), r) for it, p, m, r in zip(items, out.p_yes, out.margin, reasons)]


def _one_item_error(item: BatchItem, err: Exception) -> str:
    """An error the model raised for a batch of one, named by the item: its "item 0: " (the position within that
    batch of one) is replaced by the item's id and image."""
    return f"{item.id} ({item.image}): {re.sub(r'^item 0: ', '', str(err))}"


def _renamed(err: ValueError, message: str) -> ValueError:
    """``err``'s class (PromptTooLongError, ImageError ...) with a new message; a plain ValueError if it needs more."""
    try:
        return type(err)(message)
    except TypeError:
        return ValueError(message)


def _score_chunk(
    rm, chunk: Sequence[BatchItem], context, skip_bad: bool, bad: list[dict], max_pixels: int = MAX_IMAGE_PIXELS
) -> list[dict]:
    """Rows for the items of one chunk. Images load one by one so a bad file names itself; a model error on the
    chunk is retried item by item to find the item that caused it, which is skipped under ``skip_bad`` and named in
    the error otherwise."""
    loaded, cache = [], {}
    for it in chunk:
        try:
            img = load_image(it.image, name=f"{it.id} ({it.image})", max_pixels=max_pixels)
            ref = None
            if it.reference is not None:
                if it.reference not in cache:
                    cache[it.reference] = load_image(
                        it.reference, name=f"reference of {it.id} ({it.reference})", max_pixels=max_pixels
                    )
                ref = cache[it.reference]
        except ImageError as err:
            if not skip_bad:
                raise
            bad.append(_bad(it, err))
            continue
        loaded.append((it, img, ref))
    rows = []
    for pairwise in (False, True):
        group = [x for x in loaded if (x[2] is not None) == pairwise]
        if not group:
            continue
        items, imgs, refs = zip(*group)
        try:
            rows += _score_group(rm, items, list(imgs), list(refs) if pairwise else None, context, len(items))
        except ValueError as err:
            for it, img, ref in group:
                try:
                    rows += _score_group(rm, [it], [img], [ref] if pairwise else None, context, 1)
                except ValueError as one_err:
                    if not skip_bad:
                        raise _renamed(one_err, _one_item_error(it, one_err)) from one_err
                    bad.append({**_bad(it, one_err), "error": _one_item_error(it, one_err)})
            if not skip_bad:  # every item passed alone: the batch as a whole failed
                raise ValueError(f"batch of {', '.join(it.id for it in items)}: {err}") from err
    return rows


def score_files(
    rm,
    items: Sequence[BatchItem],
    output: str | os.PathLike,
    context=None,
    batch_size: int = 8,
    skip_bad: bool = False,
    errors_path: str | os.PathLike | None = None,
    progress: bool = True,
    bad_lines: Sequence[dict] = (),
    max_pixels: int | None = None,
) -> BatchReport:
    """Score ``items`` into the JSONL file ``output`` (see the module docstring). Items are sorted by reference and
    prompt so that a batch shares its prefix; rows are appended in that order, each with its ``id``.

    Under ``skip_bad`` the errors file starts with ``bad_lines`` (the malformed manifest lines :func:`read_items`
    skipped) and each bad item is appended as soon as its chunk is done, so a killed run keeps what it found.
    ``max_pixels`` bounds each image's size (default :data:`rewarddance.images.MAX_IMAGE_PIXELS`).
    """
    from tqdm.auto import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    errors_path = Path(errors_path) if errors_path else output.with_name(output.name + ".errors.jsonl")
    state = process_state()
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    parts = sorted(output.parent.glob(output.name + ".part*"))
    done = _done_ids(output).union(*(_done_ids(p) for p in parts))
    if state:
        state.wait_for_everyone()  # every rank has read the same done set before anyone writes
    pending = sorted((it for it in items if it.id not in done), key=lambda it: (it.reference or "", it.prompt or ""))
    mine = pending[rank::world]
    target = output.with_name(f"{output.name}.part{rank}") if state else output
    report = BatchReport(
        already_done=len(items) - len(pending), errors_path=errors_path, processes=world, main=rank == 0
    )
    errors_target = errors_path.with_name(f"{errors_path.name}.part{rank}") if state else errors_path
    errors_target.write_text("", encoding="utf-8")  # a rerun tries last run's bad items again
    if rank == 0 and bad_lines:
        report.bad += list(bad_lines)
        _append(errors_target, bad_lines)
    bar = tqdm(total=len(mine), desc="scoring", unit="img", disable=not progress or rank != 0)
    try:  # closed before any error is printed, so the message does not land on the bar's line
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            found = len(report.bad)
            rows = _score_chunk(rm, chunk, context, skip_bad, report.bad, max_pixels or MAX_IMAGE_PIXELS)
            report.written += _append(target, rows)
            if len(report.bad) > found:
                _append(errors_target, report.bad[found:])
            bar.update(len(chunk))
    finally:
        bar.close()
    if state:
        state.wait_for_everyone()
        if state.is_main_process:
            _merge_parts(output, errors_path, world)
        state.wait_for_everyone()
        report.bad = [json.loads(x) for x in errors_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        report.written = sum_over_processes(report.written, state)
    if not report.bad:
        errors_path.unlink(missing_ok=True)
    return report


def _merge_parts(output: Path, errors_path: Path, world: int) -> None:
    """Main process: append every part file's new rows to the output, then remove the parts."""
    done = _done_ids(output)
    for part in sorted(output.parent.glob(output.name + ".part*")):
        rows = [json.loads(x) for x in part.read_text(encoding="utf-8").splitlines() if x.strip()]
        _append(output, (r for r in rows if str(r["id"]) not in done))
        done.update(str(r["id"]) for r in rows)
        part.unlink()
    bad = []
    for rank in range(world):
        part = errors_path.with_name(f"{errors_path.name}.part{rank}")
        if part.exists():
            bad += [x for x in part.read_text(encoding="utf-8").splitlines() if x.strip()]
            part.unlink()
    errors_path.write_text("".join(x + "\n" for x in bad), encoding="utf-8")
