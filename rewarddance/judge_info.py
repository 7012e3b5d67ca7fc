"""What a trained judge was trained to answer: ``rewarddance.json`` in its folder.

A judge trained by ``rewarddance train-rm`` (and each bundled ShapesWorld judge) records how it was asked during
training: pointwise ("Does this image match the prompt?") or pairwise ("Is image 2 better than image 1?"), the
chain-of-thought mode, the task preset and the answer format. Asked anything else, a small judge answers noise
(a pointwise judge asked pairwise questions is near chance with a strong position bias), so the command line reads
this file to choose its defaults and warns when told to ask otherwise. A hub VLM without the file is a general
model: ``RewardModel.trained_for`` is ``None`` and nothing is assumed.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILENAME = "rewarddance.json"
OBJECTIVES = ("pointwise", "pairwise")
ANSWERS = {
    "none": "yes or no",
    "judgment_first": "yes or no, then a reason",
    "reasoning_first": "a reason, then 'Final answer (yes or no):' and the verdict",
}


class JudgeInfoError(ValueError):
    """A ``rewarddance.json`` that cannot be read; the message names the file."""


@dataclass(frozen=True)
class TrainedFor:
    """How a judge was trained to be asked: ``objective`` (pointwise or pairwise), ``cot`` mode, ``task`` preset,
    and ``answer``, the shape of the answer it learned to write (derived from ``cot``)."""

    objective: str
    cot: str = "none"
    task: str = "alignment"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise JudgeInfoError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.cot not in ANSWERS:
            raise JudgeInfoError(f"cot must be one of {tuple(ANSWERS)}, got {self.cot!r}")

    @property
    def answer(self) -> str:
        return ANSWERS[self.cot]

    def to_dict(self) -> dict:
        return {**asdict(self), "answer": self.answer}


def write_trained_for(folder: str | os.PathLike, info: TrainedFor) -> Path:
    """Write ``rewarddance.json`` into a saved judge's ``folder``; returns its path."""
    path = Path(folder) / FILENAME
    path.write_text(json.dumps(info.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def read_trained_for(folder: str | os.PathLike) -> TrainedFor | None:
    """The ``rewarddance.json`` of a model ``folder``; ``None`` when the folder has none (or is not a folder)."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return TrainedFor(objective=raw["objective"], cot=raw.get("cot", "none"), task=raw.get("task", "alignment"))
    except (json.JSONDecodeError, KeyError, TypeError, JudgeInfoError) as err:
        raise JudgeInfoError(f"{path}: not a judge description ({err})") from err


def mismatches(info: TrainedFor | None, name: str, objective: str | None = None, cot: str | None = None) -> list[str]:
    """One line per way in which asking judge ``name`` with ``objective`` / ``cot`` departs from its training."""
    if info is None:
        return []
    out = []
    if objective is not None and objective != info.objective:
        out.append(
            f"{name} was trained as a {info.objective} judge ({FILENAME}); its {objective} answers are unreliable"
        )
    if cot is not None and cot != info.cot:
        out.append(
            f"{name} was trained with cot={info.cot} (it answers {info.answer}); asked with cot={cot} it may write "
            "nonsense and its scores are unreliable"
        )
    return out
