"""JSON Lines manifests: the one reader of every ``.jsonl`` file the package takes as input.

ShapesWorld folders, batch-scoring inputs, preference pairs, caption data and the ReFL reference cache are all one
JSON object per line. :func:`read_jsonl` reads them the same way: blank lines are skipped, a line is numbered as an
editor numbers it, and a line that is not a JSON object is an error naming ``file:line``, raised, or with
``skip_bad`` reported and skipped. What each reader then requires of an object (its fields) stays with the reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path


class ManifestError(ValueError):
    """A line of a JSON Lines file that is not a JSON object; the message names the file and line."""


def read_jsonl(
    path: str | os.PathLike,
    skip_bad: bool = False,
    bad: list[dict] | None = None,
    error: type[Exception] = ManifestError,
) -> Iterator[tuple[int, dict]]:
    """``(line_no, object)`` for each non-blank line of ``path``; ``line_no`` counts from 1 and includes blank lines.

    A line that is not valid JSON, or valid JSON but not an object, raises ``error`` (a caller's own exception class)
    with a message ``"{path}:{line_no}: ..."``; with ``skip_bad`` it is skipped instead and, when ``bad`` is given,
    ``{"line": line_no, "error": message}`` is appended to it before the next object is yielded, so bad lines and
    good ones are seen in file order.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                problem = None if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"
            except json.JSONDecodeError as err:
                problem = f"not valid JSON ({err.msg})"
            if problem is None:
                yield line_no, obj
                continue
            message = f"{path}:{line_no}: {problem}"
            if not skip_bad:
                raise error(message)
            if bad is not None:
                bad.append({"line": line_no, "error": message})
