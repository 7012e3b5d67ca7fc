"""Re-measure the bundled models' cards on today's held-out data with the shipped code; no training.

    python benchmarks/remeasure_cards.py [--work /tmp/remeasure] [--models shapes-l]

For each judge: its accuracy on the held-out pairs of the bundled generator's samples (every set of
``recipes.shapes.GENERATED_EVAL``, drawn and labelled by ``recipes.shapes.eval_data`` as ``tests/test_bundled.py``
does) and on a clean scene against garbage; for the generator: its alignment (``recipes.shapes.measure_generator``
on its card's prompts, seed and samples). Run it after the verifier, the generator or a held-out set changes. It
rewrites those numbers in ``card.json`` and the ``README.md`` rendered from it and records, under ``remeasured`` with
the date, the numbers it replaced. Nothing is retrained: a judge's card still describes the data it was trained on.
(Before 2026-12-04 this script re-measured the cards of the lenient-verifier judges and wrote a note saying so;
those judges are no longer bundled.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rewarddance.bundled import GENERATOR, REWARD_MODELS, available, bundled_path, card, load_generator
from rewarddance.recipes.cards import write_card
from rewarddance.recipes.shapes import GENERATED_EVAL, eval_data, measure_generator, measure_rm


def _record(facts: dict, date: str, before: dict) -> None:
    """Keep ``before`` (the figures that changed; a set measured for the first time has none) under
    ``facts["remeasured"][date]``."""
    before = {k: v for k, v in before.items() if v is not None}
    if before:
        facts.setdefault("remeasured", {}).setdefault(date, {}).update(before)


def remeasure(work: Path, log=print, models: list[str] | None = None) -> dict:
    """Re-measure ``models`` (default: every bundled model) and rewrite their cards; returns the new figures."""
    models = models or [*REWARD_MODELS, GENERATOR]
    date = time.strftime("%Y-%m-%d")
    judges = [name for name in REWARD_MODELS if name in available() and name in models]
    folders = eval_data(work, generated=True) if judges else {}
    infos = (
        {f: json.loads((folders[name] / "info.json").read_text(encoding="utf-8")) for f, name in GENERATED_EVAL.items()}
        if judges
        else {}
    )
    out = {}
    for name in judges:
        facts = card(name)
        sets = {k: folders[k] for k in (*GENERATED_EVAL.values(), "garbage")}
        measured = measure_rm(name, sets)
        before = {k: facts["measured"].get(k) for k in sets if facts["measured"].get(k) != measured[k]}
        before.update({f: facts["generated"].get(f) for f in infos if facts["generated"].get(f) != infos[f]})
        facts["measured"].update(measured)
        facts["generated"].update(infos)
        _record(facts, date, before)
        write_card(bundled_path(name), facts)
        out[name] = measured
        log(f"{name}: {measured} (replaced: {before})")
    if GENERATOR in models:
        facts = card(GENERATOR)
        old = facts["measured"]
        measured = measure_generator(load_generator(), old["prompts"], old["seed"], samples=old["samples"])
        _record(facts, date, {"measured": old} if measured != old else {})
        facts["measured"] = measured
        write_card(bundled_path(GENERATOR), facts)
        out[GENERATOR] = measured
        log(f"{GENERATOR}: alignment {old['alignment']} -> {measured['alignment']} ({measured['by_category']})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the held-out pairs (default: a temp dir)")
    parser.add_argument("--models", nargs="+", default=None, help="bundled names to re-measure (default: all)")
    args = parser.parse_args()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        remeasure(args.work, models=args.models)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            remeasure(Path(tmp), models=args.models)


if __name__ == "__main__":
    main()
