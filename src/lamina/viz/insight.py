"""The pictures of `lamina inspect`: kernels, feature maps, heat maps over an image, embeddings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lamina.viz.plot import pyplot, save


def _image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> what imshow takes."""
    x = x.detach().float().cpu().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def plot_filters(kernels: torch.Tensor, path: Path, title: str) -> Path:
    """A grid of (N, C, k, k) kernels: colour where C is 3 (each scaled to its own range), else the
    mean over input channels on a diverging scale (red excites, blue inhibits)."""
    plt = pyplot()
    n = len(kernels)
    cols = min(n, 16 if kernels.shape[-1] <= 7 else 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        k = kernels[i]
        if k.shape[0] == 3:
            lo, hi = k.min(), k.max()
            ax.imshow(((k - lo) / (hi - lo + 1e-12)).permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            m = k.mean(0).numpy()
            v = float(np.abs(m).max()) or 1.0
            ax.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def plot_activations(image: torch.Tensor, stages: list[tuple[str, torch.Tensor]], path: Path, maps: int = 8) -> Path:
    """One row per stage, input side at the top: the input, then the stage's `maps` most active
    feature maps (by mean activation), each on its own scale, with the stage's shape."""
    plt = pyplot()
    rows = len(stages)
    fig, axes = plt.subplots(rows, maps + 1, figsize=((maps + 1) * 1.1, rows * 1.25 + 0.3), squeeze=False)
    for r, (name, act) in enumerate(stages):
        axes[r][0].imshow(_image(image), cmap="gray" if image.shape[0] == 1 else None)
        axes[r][0].set_title("input" if r == 0 else "", fontsize=7)
        strongest = act.mean(dim=(1, 2)).argsort(descending=True)[:maps].tolist()
        for c in range(maps):
            ax = axes[r][c + 1]
            if c < len(strongest):
                ax.imshow(act[strongest[c]].numpy(), cmap="viridis")
                ax.set_title(f"#{strongest[c]}", fontsize=6)
        axes[r][1].set_ylabel(f"{name}\n{act.shape[0]}x{act.shape[1]}x{act.shape[2]}", fontsize=7)
        axes[r][1].yaxis.set_visible(True)
        axes[r][1].set_yticks([])
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
    fig.suptitle("feature maps, stage by stage (strongest maps of each)", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def plot_heatmaps(
    image: torch.Tensor, maps: list[tuple[str, torch.Tensor, list[float] | None]], path: Path, what: str
) -> Path:
    """The image, then per target its map over the image (scaled to its own maximum), its box drawn."""
    plt = pyplot()
    n = len(maps) + 1
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    shown = _image(image)
    grey = image.shape[0] == 1
    axes.flat[0].imshow(shown, cmap="gray" if grey else None)
    axes.flat[0].set_title("input", fontsize=8)
    for ax, (title, heat, box) in zip(list(axes.flat)[1:], maps):
        heat = heat / (heat.max() + 1e-12)
        ax.imshow(shown, cmap="gray" if grey else None)
        ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        if box is not None:
            x1, y1, x2, y2 = box
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=1.2))
        ax.set_title(title, fontsize=7)
    fig.suptitle(what, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def plot_embeddings(
    projections: dict[str, np.ndarray], labels: np.ndarray, names: list[str], path: Path, title: str
) -> Path:
    """One scatter per projection (PCA, t-SNE), a colour per class."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(projections), figsize=(5.2 * len(projections), 4.6), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for ax, (method, xy) in zip(axes[0], projections.items()):
        for k, name in enumerate(names):
            pts = xy[labels == k]
            if len(pts):
                ax.scatter(pts[:, 0], pts[:, 1], s=5, color=cmap(k % cmap.N), label=name, alpha=0.8)
        ax.set_title(method, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)
