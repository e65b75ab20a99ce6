"""Optimizers and learning-rate schedules.

A schedule here is a function of *progress* p in [0, 1], not of the step count, so the same recipe
works whether training is bounded by epochs (p = step / total steps) or by a wall-clock budget
(p = elapsed / budget): with a budget the learning rate anneals to zero exactly when time runs out.
torch.optim.lr_scheduler cannot do that: its schedulers count steps towards a total fixed in
advance (OneCycleLR's total_steps), and under a time budget the number of steps is known only at
the end. The optimizers themselves are torch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lamina.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters (1-D tensors): decaying them only hurts."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def lr_factor(cfg: OptimConfig) -> Callable[[float], float]:
    """Progress p in [0, 1] -> multiplier of the base learning rate."""
    w = cfg.warmup

    if cfg.schedule == "constant":
        return lambda p: 1.0
    if cfg.schedule == "cosine":
        # Linear warm-up, then half a cosine down to zero.
        return lambda p: p / w if p < w else 0.5 * (1 + math.cos(math.pi * min(1.0, (p - w) / (1 - w))))
    # one-cycle (Smith & Topin 2018), linear variant: up from lr/25 to lr, then down to ~0.
    start = 1 / 25

    def onecycle(p: float) -> float:
        if p < w:
            return start + (1 - start) * p / w
        return max(0.0, 1 - (p - w) / (1 - w))

    return onecycle


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
