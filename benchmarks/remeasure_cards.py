"""Re-measure the verifier-dependent numbers of the bundled models' cards with the shipped code; no training.

    python benchmarks/remeasure_cards.py [--work /tmp/remeasure] [--models shapes-l]

The generator's alignment (``recipes.shapes.measure_generator``, the card's prompts and seed) and each judge's
accuracy on the held-out pairs of the generator's samples (``recipes.shapes.eval_data`` labels them with the
verifier at the time it runs, as ``tests/test_bundled.py`` does) depend on the verifier. This rewrites those numbers
in ``card.json`` and the ``README.md`` rendered from it, keeps the numbers they replace under ``remeasured.before``
(the first time only), and says in the card's note that the judges' training pairs were labelled by the verifier of
their time and not remade. The rendered in-domain and out-of-domain pairs do not depend on the verifier.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rewarddance.bundled import GENERATOR, REWARD_MODELS, available, bundled_path, card, load_generator
from rewarddance.recipes.cards import write_card
from rewarddance.recipes.shapes import eval_data, measure_generator, measure_rm

VERIFIER = "strict (a clean scene and the prompt; rewarddance.shapes.verify, issue 19)"


def _note(facts: dict, sentence: str) -> None:
    """The card's note: the note it had before the first re-measurement, then ``sentence``."""
    before = facts["remeasured"].setdefault("note_before", facts.get("note", ""))
    facts["note"] = (before + " " + sentence).strip()


def remeasure(work: Path, log=print, models: list[str] | None = None) -> dict:
    """Re-measure ``models`` (default: every bundled model) and rewrite their cards."""
    models = models or [*REWARD_MODELS, GENERATOR]
    folders = eval_data(work)
    info = json.loads((folders["generated"] / "info.json").read_text(encoding="utf-8"))
    date = time.strftime("%Y-%m-%d")
    out = {"generated-eval": info}
    for name in REWARD_MODELS:
        if name not in available() or name not in models:
            continue
        facts = card(name)
        both = measure_rm(name, {"generated": folders["generated"], "garbage": folders["garbage"]})
        measured = both["generated"]
        facts["measured"]["garbage"] = both["garbage"]
        facts.setdefault("remeasured", {"before": {}})
        facts["remeasured"]["before"].setdefault("generated", facts["measured"]["generated"])
        facts["remeasured"]["before"].setdefault("generated-eval", facts["generated"]["generated-eval"])
        facts["remeasured"].update(date=date, verifier=VERIFIER)
        facts["measured"]["generated"] = measured
        facts["generated"]["generated-eval"] = info
        old, old_eval = facts["remeasured"]["before"]["generated"], facts["remeasured"]["before"]["generated-eval"]
        train_rate = 100 * facts["generated"]["generated-train"]["pass_rate"]
        _note(
            facts,
            f"Re-measured {date} with the strict verifier (an image passes only if it is a clean ShapesWorld scene) on "
            f"samples of the generator bundled then: the held-out pairs of the generator's samples are now "
            f"{measured['pairs']} ({100 * info['pass_rate']:.1f} % of samples pass; when trained: {old['pairs']} "
            f"pairs, {100 * old_eval['pass_rate']:.1f} % pass, accuracy {100 * old['accuracy']:.1f} %). Stage 4's "
            f"{facts['generated']['generated-train']['pairs']:,} training pairs were samples of an earlier generator "
            f"labelled by the earlier, lenient verifier ({train_rate:.1f} % pass) and were not remade.",
        )
        write_card(bundled_path(name), facts)
        out[name] = measured
        log(f"{name}: generated pairs {old} -> {measured}")
    if GENERATOR not in models:
        return out
    facts = card(GENERATOR)
    before = facts["measured"]
    measured = measure_generator(load_generator(), before["prompts"], before["seed"], samples=before["samples"])
    facts.setdefault("remeasured", {"before": {"measured": before}})
    facts["remeasured"].update(date=date, verifier=VERIFIER)
    facts["measured"] = measured
    write_card(bundled_path(GENERATOR), facts)
    out[GENERATOR] = measured
    log(f"{GENERATOR}: alignment {before['alignment']} -> {measured['alignment']} ({measured['by_category']})")
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
