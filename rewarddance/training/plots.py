"""Pictures a diffusion trainer leaves in its output folder: the reward curve (``reward_curve.png``, with the
held-out evaluations in a second panel) and sample grids.

The curve is a matplotlib figure drawn on the Agg canvas (no display, no pyplot state), so it works in a headless
training job and under several processes.
"""

from __future__ import annotations

from pathlib import Path

import torch

CURVE_SIZE = (8.0, 4.0)  # inches; at CURVE_DPI, an 800 x 400 PNG
CURVE_DPI = 100
CURVE_WITH_EVAL_SIZE = (8.0, 7.0)  # two panels: training reward above, evaluations below


def plot_reward_curve(history: list[dict], path: str | Path, evaluations: list[dict] | None = None):
    """Plot the reward of each step of ``history`` (rows of ``metrics.csv``: ``step``, ``reward_mean``,
    ``window_mean``, ``window_std``) and save it as a PNG at ``path``. The sliding-window mean is the line, one
    window std either side the shaded band, each step's own mean the dots. With ``evaluations`` (rows of
    ``eval.csv``: ``step``, ``reward``, ``reward_se`` and, where a verifier ran, ``alignment``, ``alignment_se``) a
    second panel shows the held-out judge reward and, on its own axis at the right, the verifier's alignment, each
    with one standard error bars. Returns the matplotlib ``Figure``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("history: no steps to plot")
    steps = [row["step"] for row in history]
    mean = [row["window_mean"] for row in history]
    std = [row["window_std"] for row in history]
    fig = Figure(figsize=CURVE_WITH_EVAL_SIZE if evaluations else CURVE_SIZE, dpi=CURVE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(2, 1, 1) if evaluations else fig.add_subplot()
    ax.scatter(steps, [row["reward_mean"] for row in history], s=8, color="0.6", label="step mean", zorder=1)
    ax.fill_between(
        steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25, label="window std"
    )
    ax.plot(steps, mean, linewidth=2, label="window mean", zorder=2)
    ax.set_xlabel("step")
    ax.set_ylabel("reward (judge's P(yes))")
    ax.set_title("reward during training")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    if evaluations:
        _plot_evaluations(fig.add_subplot(2, 1, 2, sharex=ax), evaluations)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return fig


def _plot_evaluations(ax, rows: list[dict]) -> None:
    """The held-out judge reward (left axis) and verifier alignment (right axis) of each evaluation, with SE bars."""
    steps = [row["step"] for row in rows]
    judge = ax.errorbar(
        steps,
        [row["reward"] for row in rows],
        yerr=[row["reward_se"] or 0.0 for row in rows],
        marker="o",
        capsize=3,
        color="C0",
        label="held-out judge reward",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("judge's P(yes)")
    ax.set_title("evaluations (one standard error bars)")
    ax.grid(True, alpha=0.3)
    handles = [judge]
    verified = [row for row in rows if row.get("alignment") is not None]
    if verified:
        right = ax.twinx()
        handles.append(
            right.errorbar(
                [row["step"] for row in verified],
                [row["alignment"] for row in verified],
                yerr=[row["alignment_se"] for row in verified],
                marker="s",
                capsize=3,
                color="C3",
                label="verifier alignment",
            )
        )
        right.set_ylabel("verified alignment")
    ax.legend(handles=handles, loc="best")


def save_sample_grid(images: torch.Tensor, path: str | Path) -> None:
    """Images ``[n, 3, H, W]`` in [0, 1] side by side in one PNG at ``path``."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = torch.cat(list(images.detach().float().cpu()), dim=2)  # [3, H, W * n]
    arr = (row.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype("uint8")
    Image.fromarray(arr).save(path)
