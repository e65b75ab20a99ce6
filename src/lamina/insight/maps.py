"""What a convolutional network computes, as tensors: its first layer's kernels, the feature maps of each
stage for an input, and which pixels a decision depends on.

A task describes how these see its network with a ``Probe``: how an image becomes the network's input,
which modules end its stages (input side first), and what it found in an image as differentiable
scores (``Target``: a class's logit for a classifier, each detected object's score for a detector).

- saliency (Simonyan et al. 2014): |d score / d pixel|, the largest over the colour channels;
- Grad-CAM (Selvaraju et al. 2017): the last stage's feature maps weighted by the mean gradient of the
  score over each map, summed, rectified, and scaled up to the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Target:
    name: str  # what it is, for a title: "sneaker (logit 4.2)", "bag 0.93"
    score: torch.Tensor  # a scalar that depends on the input and on every stage
    box: list[float] | None = None  # where, for a detected object: [x1, y1, x2, y2] in input pixels


@dataclass
class Probe:
    load: Callable[[Any], torch.Tensor]  # an image (path, PIL, array) -> (C, H, W) float in [0, 1], the input
    forward: Callable[[torch.Tensor], Any]  # (1, C, H, W) float -> the network's output (hooks see the stages)
    stages: list[tuple[str, nn.Module]]  # modules whose outputs are feature maps, input side first
    targets: Callable[[torch.Tensor, str | None], list[Target]] | None = None  # (1, C, H, W), wanted -> scores


def first_layer(model: nn.Module) -> nn.Module:
    """The first Conv2d (or, in an MLP, the first Linear) in the order the model declares them."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m
    raise ValueError("the model has no convolution or linear layer")


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def kernels(layer: nn.Module, image_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """(N, C, k, k) weights of a first convolution; for a first Linear layer over flattened images, each
    unit's weights as an image (N, C, H, W): the template it matches."""
    w = layer.weight.detach().float().cpu()
    if isinstance(layer, nn.Linear):
        c, h, wd = image_shape
        return w.view(-1, c, h, wd)
    return w


def stage_outputs(probe: Probe, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The feature maps of every stage for one input (1, C, H, W), in order."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach()))
        for name, module in probe.stages
    ]
    try:
        with torch.no_grad():
            probe.forward(x)
    finally:
        for h in hooks:
            h.remove()
    return [(name, outputs[name][0].float().cpu()) for name, _ in probe.stages if name in outputs]


def saliency(probe: Probe, x: torch.Tensor, wanted: str | None = None) -> list[tuple[Target, torch.Tensor]]:
    """Per target, (H, W) |d score / d input|, max over channels (not rescaled)."""
    x = x.detach().clone().requires_grad_(True)
    found = []
    with torch.enable_grad():
        targets = probe.targets(x, wanted)
        for i, t in enumerate(targets):
            (grad,) = torch.autograd.grad(t.score, x, retain_graph=i < len(targets) - 1)
            found.append((t, grad[0].abs().amax(0).float().cpu()))
    return found


def gradcam(
    probe: Probe, x: torch.Tensor, wanted: str | None = None, layer: nn.Module | None = None
) -> list[tuple[Target, torch.Tensor]]:
    """Per target, the (H, W) Grad-CAM map of `layer` (default: the last stage), at the input's size."""
    layer = layer or probe.stages[-1][1]
    kept: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: kept.append(out))
    found = []
    with torch.enable_grad():  # also for a frozen network: the input carries the graph
        try:
            targets = probe.targets(x.detach().clone().requires_grad_(True), wanted)
        finally:
            hook.remove()
        activation = kept[-1]  # the pass that made the targets
        for i, t in enumerate(targets):
            (grad,) = torch.autograd.grad(t.score, activation, retain_graph=i < len(targets) - 1)
            weights = grad.float().mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1): how much each map matters
            cam = F.relu((weights * activation.float()).sum(1, keepdim=True))  # (1, 1, h, w)
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
            found.append((t, cam[0, 0].detach().cpu()))
    return found


def stage_ends(features: nn.Module, example: torch.Tensor, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The children of `features` (run in order on `example`) that end a stage: the last child at each
    spatial resolution whose output is a feature map (B, C, H, W) larger than 1 x 1, and the last such
    map of all. A module with one stage-making child (a torchvision network wrapped whole) is looked
    into instead."""
    shapes: list[tuple[str, nn.Module, tuple]] = []
    hooks = [
        child.register_forward_hook(lambda _m, _i, out, n=name, c=child: shapes.append((n, c, tuple(out.shape))))
        for name, child in features.named_children()
    ]
    try:
        with torch.no_grad():
            features(example)
    finally:
        for h in hooks:
            h.remove()
    maps_only = [(n, c, s) for n, c, s in shapes if len(s) == 4 and s[-1] * s[-2] > 1]  # a pooled 1 x 1 is no map
    if len({s[-2:] for _, _, s in maps_only}) == 1 and len(maps_only) == 1 and list(maps_only[0][1].children()):
        name, child, _ = maps_only[0]
        inner = _inputs_of(features, child, example)
        return stage_ends(child, inner, f"{prefix}{name}.")
    ends = [
        (f"{prefix}{n}", c)
        for i, (n, c, s) in enumerate(maps_only)
        if i == len(maps_only) - 1 or maps_only[i + 1][2][-2:] != s[-2:]
    ]
    return ends


def _inputs_of(parent: nn.Module, child: nn.Module, example: torch.Tensor) -> torch.Tensor:
    seen = []
    hook = child.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    try:
        with torch.no_grad():
            parent(example)
    finally:
        hook.remove()
    return seen[0]
