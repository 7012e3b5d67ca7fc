"""Pictures a ReFL run leaves in its output folder: the reward curve (``reward_curve.png``) and sample grids.

The curve is a matplotlib figure drawn on the Agg canvas (no display, no pyplot state), so it works in a headless
training job and under several processes.
"""

from __future__ import annotations

from pathlib import Path

import torch

CURVE_SIZE = (8.0, 4.0)  # inches; at CURVE_DPI, an 800 x 400 PNG
CURVE_DPI = 100


def plot_reward_curve(history: list[dict], path: str | Path):
    """Plot the reward of each step of ``history`` (rows of ``metrics.csv``: ``step``, ``reward_mean``,
    ``window_mean``, ``window_std``) and save it as a PNG at ``path``. The sliding-window mean is the line, one
    window std either side the shaded band, each step's own mean the dots. Returns the matplotlib ``Figure``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("history: no steps to plot")
    steps = [row["step"] for row in history]
    mean = [row["window_mean"] for row in history]
    std = [row["window_std"] for row in history]
    fig = Figure(figsize=CURVE_SIZE, dpi=CURVE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(steps, [row["reward_mean"] for row in history], s=8, color="0.6", label="step mean", zorder=1)
    ax.fill_between(
        steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25, label="window std"
    )
    ax.plot(steps, mean, linewidth=2, label="window mean", zorder=2)
    ax.set_xlabel("step")
    ax.set_ylabel("reward (judge's P(yes))")
    ax.set_title("ReFL reward during training")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return fig


def save_sample_grid(images: torch.Tensor, path: str | Path) -> None:
    """Images ``[n, 3, H, W]`` in [0, 1] side by side in one PNG at ``path``."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = torch.cat(list(images.detach().float().cpu()), dim=2)  # [3, H, W * n]
    arr = (row.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype("uint8")
    Image.fromarray(arr).save(path)
