"""The pictures of `lamina attack`: a figure against the attack's size, and examples."""

from __future__ import annotations

from pathlib import Path

import torch

from lamina.viz.plot import pyplot, save


def plot_attack_curve(curve: list[dict], path: Path, what: str, metric: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    eps = [p["eps"] for p in curve]
    ax.plot(eps, [p[metric] for p in curve], "o-", label=metric)
    if "success" in curve[0]:
        ax.plot(eps, [p["success"] for p in curve], "s--", label="turned into the target")
    ax.set_xlabel("eps (L-infinity, pixels in [0, 1])")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} under attack ({what})", fontsize=9)
    return save(fig, path)


def plot_examples(clean: torch.Tensor, adv: torch.Tensor, names: list[tuple[str, str]], path: Path, eps: float) -> Path:
    """Per example, three rows: the clean image (its true class), the adversarial one (what the network
    said), and the perturbation (scaled to eps)."""
    plt = pyplot()
    n = len(clean)
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.6), squeeze=False)
    grey = clean.shape[1] == 1
    for i in range(n):
        for r, (img, title) in enumerate(((clean[i], names[i][0]), (adv[i], names[i][1]))):
            axes[r][i].imshow(img[0] if grey else img.permute(1, 2, 0), cmap="gray" if grey else None, vmin=0, vmax=1)
            axes[r][i].set_title(title, fontsize=7, color="black" if r == 0 or names[i][0] == names[i][1] else "red")
        delta = (adv[i] - clean[i]).mean(0) if not grey else (adv[i] - clean[i])[0]
        axes[2][i].imshow(delta, cmap="RdBu_r", vmin=-max(eps, 1e-6), vmax=max(eps, 1e-6))
        for r in range(3):
            axes[r][i].axis("off")
    axes[0][0].set_title(f"clean: {names[0][0]}", fontsize=7)
    fig.suptitle(f"clean (true class), adversarial (the network's answer), perturbation (eps {eps:g})", fontsize=8)
    fig.tight_layout()
    return save(fig, path)
