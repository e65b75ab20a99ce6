"""Pictures of a detector's work: objects drawn on images, a gallery beside the truth, precision-recall."""

from __future__ import annotations

from pathlib import Path

import torch

from lamina.viz.plot import pyplot, save

PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]  # fmt: skip  (one colour per class, distinct on photographs)


def draw(image: torch.Tensor, objects: dict, classes: list[str], scores: bool = True) -> torch.Tensor:
    """(3, H, W) uint8 with each object's translucent mask, box and 'label score' drawn on it.
    objects: {'boxes' (N, 4), 'labels' (N,), optional 'scores' (N,) and 'masks' (N, H, W) bool}."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    labels = objects["labels"].tolist()
    colours = [PALETTE[(label - 1) % len(PALETTE)] for label in labels]
    if not labels:
        return image
    if objects.get("masks") is not None and len(objects["masks"]):
        image = draw_segmentation_masks(image, objects["masks"].bool(), alpha=0.45, colors=colours)
    names = [classes[label] for label in labels]
    if scores and objects.get("scores") is not None:
        names = [f"{n} {s:.2f}" for n, s in zip(names, objects["scores"].tolist())]
    return draw_bounding_boxes(image, objects["boxes"], names, colors=colours, width=2)


def save_image(image: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    from lamina.engine.checkpoint import atomic_write

    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    atomic_write(Path(path), lambda tmp: picture.save(tmp, format="PNG"))
    return Path(path)


def plot_gallery(images, preds, targets, classes, path: Path, min_score: float = 0.0, columns: int = 4) -> Path:
    """Pairs of panels: each image with its predictions (left) and with its ground truth (right)."""
    plt = pyplot()
    rows = -(-len(images) // (columns // 2))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, pred, target) in enumerate(zip(images, preds, targets)):
        for j, (objects, title) in enumerate(((pred, "predicted"), (target, "truth"))):
            ax = axes.flat[2 * i + j]
            ax.imshow(draw(image, objects, classes, scores=j == 0).permute(1, 2, 0).numpy())
            scored = f", score >= {min_score:g}" if j == 0 and min_score else ""
            ax.set_title(f"{title} ({len(objects['labels'])}{scored})", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def plot_precision_recall(curves: dict[str, torch.Tensor], path: Path) -> Path:
    """Precision against recall, averaged over classes, all sizes, 100 detections, at IoU 0.5 and 0.75;
    one panel per kind ('box', 'mask'). curves[kind]: pycocotools' (T, R, K, A, M) precision array."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 4), squeeze=False)
    recall = torch.linspace(0, 1, 101)
    for ax, (kind, precision) in zip(axes[0], curves.items()):
        for t, iou in ((0, "0.50"), (5, "0.75")):
            p = precision[t, :, :, 0, -1]  # (R, K)
            valid = (p >= 0).all(0)  # classes with objects
            mean = p[:, valid].mean(1) if valid.any() else torch.zeros(101)
            ax.plot(recall, mean, label=f"IoU {iou}: AP {mean.mean():.3f}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        ax.set_title(f"{kind}es" if kind == "box" else f"{kind}s")
    fig.suptitle("precision-recall, mean over classes")
    return save(fig, path)
