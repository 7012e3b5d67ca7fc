"""Rendered blob negatives for ShapesWorld judges (RESULTS.md, "Rendered blob negatives").

A scene that satisfies its prompt, rendered at 32 px (the bundled generator's size), against the same scene whose
shapes were bent until the strict verifier rejects them as "a blob fits no shape" (:mod:`rewarddance.shapes.blobs`,
which the judges' recipe calls where ``recipes.shapes.SCALED`` asks for blob pairs). Writes ``OUT/pairs.jsonl`` and
``OUT/images`` in the pair format train-rm reads.

    python benchmarks/blob_pairs.py OUT --scenes 12000 --seed 71
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rewarddance.shapes.blobs import write_blob_pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenes", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=71)
    args = parser.parse_args(argv)
    print(write_blob_pairs(args.out, args.scenes, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
