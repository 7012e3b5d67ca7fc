"""benchmarks/shapes_scaling.py's report: every share carries its standard error, gains are paired and read as a
difference only at 2 SE (a synthetic result; the benchmark itself runs for an hour)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("shapes_scaling", HERE.parent / "benchmarks" / "shapes_scaling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _results() -> dict:
    names = ("shapes-s", "shapes-m", "shapes-l")
    acc = {k: {"pairs": 300, "accuracy": 0.8, "ece": 0.05} for k in ("id", "ood", "generated", "garbage")}
    before = [True] * 40 + [False] * 60  # 40 %
    after = {  # +1 point (no difference), +20 points
        "shapes-s": [True] * 41 + [False] * 59,
        "shapes-m": [True] * 60 + [False] * 40,
        "shapes-l": before,
    }
    return {
        "machine": "test",
        "date": "2026-12-03",
        "minutes": 1.0,
        "params": dict.fromkeys(names, 1000),
        "accuracy": dict.fromkeys(names, acc),
        "alignment": {
            "prompts": 4,
            "n": 16,
            "first": 0.25,
            "first_passed": [True, False, False, False],
            "mean_candidate": 0.3,
            "oracle": 1.0,
            "by_rm": {
                n: {
                    "best_of_n": 0.5,
                    "search": 0.5,
                    "best_of_n_passed": [True, True, False, False],
                    "search_passed": [True, False, True, False],
                }
                for n in names
            },
        },
        "refl": {
            "steps": 40,
            "prompts": 50,
            "alignment_before": 0.4,
            "before_passed": before,
            "by_rm": {
                n: {
                    "after_passed": after[n],
                    "alignment_after": sum(after[n]) / 100,
                    "own_reward_before": 0.5,
                    "own_reward_after": 0.6,
                    "late_reward_std": 0.2,
                }
                for n in names
            },
        },
    }


def test_shares_gains_and_accuracies_carry_their_standard_errors(scaling):
    md = scaling.markdown(_results())
    se_acc = 100 * math.sqrt(0.8 * 0.2 / 300)
    assert f"80.0 +- {se_acc:.1f} %" in md  # binomial SE over the pairs
    se_before = 100 * math.sqrt(0.4 * 0.6 / 99)
    assert f"40.0 +- {se_before:.1f} %" in md
    rows = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| shapes-")}
    assert "+1.0 +- 1.0 (no difference)" in md  # one item changed of 100
    assert "+20.0 +- 4.0 (5.0 SE)" in md  # twenty items, each +1
    assert "+0.0 +- 0.0 (no difference)" in md
    assert len(rows) == 3
    assert "(n = 100)" in md


def test_the_plot_has_error_bars(scaling, tmp_path):
    path = tmp_path / "plot.png"
    assert scaling.plot(_results(), path)
    assert path.stat().st_size > 1000


def test_keep_carries_the_parts_not_rerun_with_their_dates(scaling):
    """``--keep``: a rerun of some parts takes the others from the last run and says when they were measured."""
    previous = {**_results(), "pairwise": {"x": 1}, "date": "2026-12-01"}
    carried = scaling.carry_over(previous, ["accuracy", "refl"])
    assert carried["alignment"] == previous["alignment"] and carried["pairwise"] == {"x": 1}
    assert "accuracy" not in carried and "refl" not in carried  # the rerun parts are measured anew
    assert carried["carried"] == {"alignment": "2026-12-01", "pairwise": "2026-12-01"}
    # carried again by a later run: the date stays the one it was measured on
    again = scaling.carry_over({**_results(), **carried, "date": "2026-12-04"}, ["alignment"])
    assert again["carried"]["pairwise"] == "2026-12-01"
    assert again["carried"]["refl"] == "2026-12-04"
    md = scaling.markdown({**_results(), **scaling.carry_over({**_results(), "date": "2026-12-01"}, ["refl"])})
    assert "for refl (the other parts carried over from an earlier run: accuracy, alignment measured 2026-12-01)" in md
    assert "carried over" not in scaling.markdown(_results())
