"""Shared matplotlib set-up: a non-interactive backend and atomic PNG writes."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    from lamina.engine.checkpoint import atomic_write

    plt = pyplot()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)
