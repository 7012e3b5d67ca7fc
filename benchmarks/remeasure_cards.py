"""Re-measure the verifier-dependent numbers of the bundled models' cards with the shipped code; no training.

    python benchmarks/remeasure_cards.py [--work /tmp/remeasure]

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
from rewarddance.recipes.shapes import eval_data, measure_generator, measure_rm, write_card

VERIFIER = "strict (a clean scene and the prompt; rewarddance.shapes.verify, issue 19)"


def _note(facts: dict, sentence: str) -> None:
    """The card's note: the note it had before the first re-measurement, then ``sentence``."""
    before = facts["remeasured"].setdefault("note_before", facts.get("note", ""))
    facts["note"] = (before + " " + sentence).strip()


def remeasure(work: Path, log=print) -> dict:
    folders = eval_data(work)
    info = json.loads((folders["generated"] / "info.json").read_text(encoding="utf-8"))
    date = time.strftime("%Y-%m-%d")
    out = {"generated-eval": info}
    for name in REWARD_MODELS:
        if name not in available():
            continue
        facts = card(name)
        measured = measure_rm(name, {"generated": folders["generated"]})["generated"]
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
            f"Re-measured {date} with the strict verifier (an image passes only if it is a clean ShapesWorld scene): "
            f"the held-out pairs of the generator's samples are now {measured['pairs']} ({100 * info['pass_rate']:.1f}"
            f" % of samples pass; before: {old['pairs']} pairs, {100 * old_eval['pass_rate']:.1f} % pass, accuracy "
            f"{100 * old['accuracy']:.1f} %). Stage 4's {facts['generated']['generated-train']['pairs']:,} training "
            f"pairs were labelled by the earlier, lenient verifier ({train_rate:.1f} % pass) and were not remade.",
        )
        write_card(bundled_path(name), facts)
        out[name] = measured
        log(f"{name}: generated pairs {old} -> {measured}")
    facts = card(GENERATOR)
    before = facts["measured"]
    measured = measure_generator(load_generator(), before["prompts"], before["seed"])
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
    args = parser.parse_args()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        remeasure(args.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            remeasure(Path(tmp))


if __name__ == "__main__":
    main()
