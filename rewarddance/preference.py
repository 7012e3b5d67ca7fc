"""Preferences between two batches, item by item: how the batches pair up, and how a preference is read from a
judge, pairwise (``compare`` with one side as the reference) or pointwise (Bradley-Terry on two scores). Shared by
:meth:`rewarddance.model.RewardModel.prefer` for images and :func:`rewarddance.video.prefer_videos` for videos."""

from __future__ import annotations

import torch


def pair_up(a: list, b: list, names: tuple[str, str] = ("a", "b"), kind: str = "images") -> tuple[list, list]:
    """Two batches to be compared item by item: equal lengths, or one item on a side, which is repeated; an empty
    batch or a length mismatch is an error naming the argument."""
    if not a or not b:
        raise ValueError(f"{names[0] if not a else names[1]}: the batch is empty")
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        raise ValueError(f"{names[0]} has {len(a)} {kind} and {names[1]} {len(b)}: give equal batches or one on a side")
    n = max(len(a), len(b))
    return (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)


def preference_of(a: list, b: list, prompts, objective: str, compare, score):
    """The :class:`~rewarddance.model.Preference` of ``b`` over ``a`` (paired batches of one length): pairwise,
    ``compare(b, a, prompts)`` with ``a`` as the reference; pointwise, ``score(a + b, prompts)`` and Bradley-Terry on
    the two margins."""
    from .model import Preference

    n = len(a)
    if objective == "pairwise":
        out = compare(b, a, prompts)
        return Preference(p_b_better=out.p_yes, margin=out.margin, objective=objective)
    if not isinstance(prompts, str) and prompts is not None:
        prompts = list(prompts)
        if len(prompts) != n:
            raise ValueError(f"prompts: got {len(prompts)} prompts for {n} pairs")
        prompts = prompts + prompts  # the prompt of pair i goes with a[i] and with b[i]
    out = score(a + b, prompts)
    margin = out.margin[n:] - out.margin[:n]
    return Preference(torch.sigmoid(margin), margin, objective, p_yes_a=out.p_yes[:n], p_yes_b=out.p_yes[n:])
