"""Pictures of a classifier's behaviour: the confusion matrix and its worst mistakes."""

from __future__ import annotations

from pathlib import Path

import torch

from lamina.viz.plot import pyplot, save


def plot_confusion(cm: torch.Tensor, classes: list[str], path: Path) -> Path:
    plt = pyplot()
    k = len(classes)
    rates = cm.double() / cm.sum(1, keepdim=True).clamp_min(1)  # each row sums to 1: recall on the diagonal
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    ax.set_title(f"confusion matrix (accuracy {float(cm.diag().sum() / cm.sum().clamp_min(1)):.2%})")
    return save(fig, path)


def plot_errors(
    images: torch.Tensor,
    true: torch.Tensor,
    pred: torch.Tensor,
    confidence: torch.Tensor,
    classes: list[str],
    path: Path,
) -> Path:
    """A grid of misclassified images (uint8, (N, C, H, W)) with their true and predicted labels."""
    plt = pyplot()
    n = len(images)
    cols = 6
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.7, rows * 1.9), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i].permute(1, 2, 0).numpy()
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(f"true: {classes[true[i]]}\npred: {classes[pred[i]]} {confidence[i]:.0%}", fontsize=7)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no errors", ha="center", va="center")
    fig.suptitle("worst mistakes (lowest probability of the true class)" if n else "no misclassified images")
    return save(fig, path)
