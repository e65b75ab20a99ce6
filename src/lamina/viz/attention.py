"""Attention maps: which source subwords the decoder looked at for each output subword."""

from __future__ import annotations

from pathlib import Path

from lamina.viz.plot import pyplot, save


def plot_attention(
    source: list[str],
    target: list[str],
    weights,
    out: str | Path,
    xlabel: str = "source subwords",
    ylabel: str = "output subwords",
) -> Path:
    """weights: (len(target), len(source)) rows summing to 1; source along x, target down y. Long
    sources (audio frames) get a tick every few positions."""
    plt = pyplot()
    width = min(24, max(4, 0.45 * len(source) + 2))
    fig, ax = plt.subplots(figsize=(width, min(24, max(3, 0.3 * len(target) + 1.5))))
    image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    every = max(1, round(len(source) / (width * 2)))
    ticks = range(0, len(source), every)
    ax.set_xticks(ticks, [source[i].replace("\u2581", "_") for i in ticks], rotation=60, ha="right")
    ax.set_yticks(range(len(target)), [t.replace("\u2581", "_") for t in target])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, fraction=0.04, label="attention weight")
    return save(fig, Path(out))
