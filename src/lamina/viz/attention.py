"""Attention maps: which source subwords the decoder looked at for each output subword."""

from __future__ import annotations

from pathlib import Path

from lamina.viz.plot import pyplot, save


def plot_attention(source: list[str], target: list[str], weights, out: str | Path) -> Path:
    """weights: (len(target), len(source)) rows summing to 1; source along x, target down y."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(source) + 2), max(3, 0.4 * len(target) + 1.5)))
    image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(source)), [s.replace("\u2581", "_") for s in source], rotation=60, ha="right")
    ax.set_yticks(range(len(target)), [t.replace("\u2581", "_") for t in target])
    ax.set_xlabel("source subwords")
    ax.set_ylabel("output subwords")
    fig.colorbar(image, ax=ax, fraction=0.04, label="attention weight")
    return save(fig, Path(out))
