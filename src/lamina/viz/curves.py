"""Training curves: loss and the task's metric against epochs, train and validation."""

from __future__ import annotations

from pathlib import Path

from lamina.viz.plot import pyplot, save


def plot_curves(history: list[dict], path: Path, metric: str) -> Path | None:
    if not history:
        return None
    plt = pyplot()
    keys = ("loss",) if metric == "loss" else ("loss", metric)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    axes = axes[0]
    x = [r["epoch"] for r in history]
    for ax, key in zip(axes, keys):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [r.get(f"{split}_{key}") for r in history]
            if any(y is not None for y in ys):
                ax.plot(x, ys, style, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if metric != "loss":
        axes[0].set_yscale("log")
    fig.suptitle("training curves")
    return save(fig, path)
