"""The trainers' per-step metrics file: rows appended to a CSV, the header written with the first rows.

A resumed run starts again from its last checkpoint, so the rows of steps after that checkpoint (written before the
run stopped) are dropped first with :func:`drop_rows_after`; each step then appears once.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to the CSV at ``path``; a new file gets a header of the keys in the order the rows first
    give them."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


def say(text: str) -> None:
    """A one-line note to the user on stderr (stdout carries the trainers' JSON summary)."""
    print(text, file=sys.stderr, flush=True)


def drop_rows_after(path: Path, step: int) -> int:
    """Keep only the rows of ``path`` (a metrics CSV with a ``step`` column, or a JSON Lines file of objects with a
    ``step`` key) whose step is at most ``step``; rewrite it atomically and return how many rows went. A file left
    with no rows is removed, so the next rows start it again with their own header."""
    path = Path(path)
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        lines = [line for line in text.splitlines() if line.strip()]
        kept = [line for line in lines if _jsonl_step(line) <= step]
        dropped, body = len(lines) - len(kept), "".join(line + "\n" for line in kept)
    else:
        rows = list(csv.DictReader(text.splitlines()))
        kept = [r for r in rows if _number(r.get("step")) <= step]
        dropped = len(rows) - len(kept)
        body = None
    if not dropped:
        return 0
    if not kept:
        path.unlink()
        return dropped
    tmp = path.with_name(path.name + ".tmp")
    if body is None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(kept[0]))
            w.writeheader()
            w.writerows(kept)
    else:
        tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)
    return dropped


def _jsonl_step(line: str) -> float:
    try:
        return _number(json.loads(line).get("step"))
    except (ValueError, AttributeError):
        return float("inf")  # a line torn by a killed process: dropped


def _number(value) -> float:
    """A row's step as a number; a missing or unreadable one (a torn line) counts as after any checkpoint."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")
