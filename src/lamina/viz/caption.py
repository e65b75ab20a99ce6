"""Where a captioner looked: each generated word over the image, its attention laid on top
(the figures of Show, Attend and Tell)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lamina.viz.plot import pyplot, save


def _picture(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 -> (H, W, 3) for imshow."""
    return image.permute(1, 2, 0).cpu().numpy()


def _upsampled(weights: torch.Tensor, size: int) -> np.ndarray:
    """(L,) weights over a square grid -> (size, size), smooth, scaled to [0, 1] for display."""
    side = int(round(weights.numel() ** 0.5))
    grid = weights.float().view(1, 1, side, side)
    big = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0, 0].clamp(min=0)
    return (big / big.max().clamp(min=1e-9)).numpy()


def _panel(ax, image: torch.Tensor, weights: torch.Tensor | None, title: str) -> None:
    """The image, lit where the attention is (the rest dimmed), as in the paper's figures."""
    picture = _picture(image).astype(np.float32)
    if weights is not None:
        light = _upsampled(weights, image.shape[-1])[..., None]  # (H, W, 1) in [0, 1]
        picture = picture * (0.15 + 0.85 * light)
    ax.imshow(picture.round().clip(0, 255).astype(np.uint8))
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def plot_words(image: torch.Tensor, words: list[str], attention: torch.Tensor, path: str | Path,
               columns: int = 6) -> Path:  # fmt: skip
    """The image, then one panel per generated word (and the end of the caption, when the search
    ended it) with where the model looked for it. attention: (steps, L)."""
    plt = pyplot()
    labels = [*words, "<end>"][: attention.shape[0]]
    panels = 1 + len(labels)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _panel(axes.flat[0], image, None, "input")
    for k, label in enumerate(labels):
        _panel(axes.flat[k + 1], image, attention[k], label)
    fig.suptitle(" ".join(words), fontsize=11)
    fig.tight_layout()
    return save(fig, Path(path))


def plot_gallery(items: list[tuple[torch.Tensor, list[str], torch.Tensor]], path: str | Path,
                 columns: int = 8) -> Path:  # fmt: skip
    """One row per image: its caption's words, each over where the model looked for it."""
    plt = pyplot()
    columns = min(columns, 1 + max(len(w) + 1 for _, w, _ in items))
    fig, axes = plt.subplots(len(items), columns, figsize=(1.7 * columns, 1.9 * len(items)), squeeze=False)
    for row, (image, words, attention) in zip(axes, items):
        for ax in row:
            ax.axis("off")
        _panel(row[0], image, None, "input")
        labels = [*words, "<end>"][: attention.shape[0]]
        for k, label in enumerate(labels[: columns - 1]):
            _panel(row[k + 1], image, attention[k], label)
    fig.tight_layout()
    return save(fig, Path(path))
