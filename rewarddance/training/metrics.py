"""The trainers' per-step metrics file: rows appended to a CSV, the header written with the first rows."""

from __future__ import annotations

import csv
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
