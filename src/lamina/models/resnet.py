"""Residual networks (He et al. 2015), from torchvision's blocks, adapted to small images.

``resnet20`` is the CIFAR-style network of the paper (3 stages of 16/32/64 channels); ``resnet18``
is torchvision's ImageNet ResNet-18 with a 3x3 stride-1 stem and no stem pooling, which is how it
is trained on 28-32 pixel images.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from lamina.models.classifier import GlobalPool, ImageClassifier
from lamina.models.layers import conv_norm_act, norm_layer
from lamina.models.registry import register_model, register_variant


def _stage(cin: int, cout: int, blocks: int, stride: int, norm) -> nn.Sequential:
    downsample = None
    if stride != 1 or cin != cout:  # projection shortcut when the shape changes
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))
    layers = [tv_resnet.BasicBlock(cin, cout, stride, downsample, norm_layer=norm)]
    layers += [tv_resnet.BasicBlock(cout, cout, norm_layer=norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def small_resnet_features(in_channels: int, widths: list[int], blocks: list[int], norm: str) -> nn.Sequential:
    Norm = norm_layer(norm)
    layers: list[nn.Module] = [conv_norm_act(in_channels, widths[0], Norm, lambda: nn.ReLU(inplace=True))]
    channels = widths[0]
    for i, (width, n) in enumerate(zip(widths, blocks)):
        layers.append(_stage(channels, width, n, 1 if i == 0 else 2, Norm))
        channels = width
    layers.append(GlobalPool("avg"))
    return nn.Sequential(*layers)


def _small_resnet(widths, blocks, in_channels=1, num_classes=10, image_size=28, norm="batch", dropout=0.0):
    features = small_resnet_features(in_channels, widths, blocks, norm)
    return ImageClassifier(features, widths[-1], num_classes, dropout, in_channels)


register_variant(
    "classify",
    "resnet8",
    "small residual net: stem 32, stages 32/64/128 with one basic block each",
    _small_resnet,
    [32, 64, 128],
    [1, 1, 1],
)
register_variant(
    "classify",
    "resnet20",
    "CIFAR-style ResNet-20: stages 16/32/64 with three basic blocks each",
    _small_resnet,
    [16, 32, 64],
    [3, 3, 3],
)


@register_model("classify", "resnet18", "torchvision ResNet-18 with a 3x3 stride-1 stem for small images")
def resnet18(in_channels=1, num_classes=10, image_size=28, dropout=0.0) -> ImageClassifier:
    net = tv_resnet.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()  # keep resolution: 28x28 maps would shrink to 1x1 far too early
    num_features = net.fc.in_features
    net.fc = nn.Identity()  # torchvision's forward then ends with the pooled, flattened features
    return ImageClassifier(net, num_features, num_classes, dropout, in_channels)


def load_features(features: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy a classify ResNet's backbone (its `features.*` weights) into `features`, a module laid out
    the same way (features.0 the stem, then the stages), as detection and captioning backbones are;
    returns the names loaded: every one of the classifier's, or a ValueError naming the first that
    does not fit (a backbone of another layout is refused, not loaded in part). A grey backbone's
    first convolution is spread over the three colour channels, its weights divided by three, so that
    a grey image gives the same response as before."""
    own = features.state_dict()
    loaded = {}
    for key, value in state.items():
        if not key.startswith("features."):
            continue
        name = key.removeprefix("features.")
        if name not in own:  # a backbone of another layout (VGG, DenseNet) must not load in part, silently
            raise ValueError(f"{key} has no counterpart here (the backbone here is a ResNet)")
        if name == "0.0.weight" and value.shape[1] == 1 and own[name].shape[1] == 3:
            value = value.repeat(1, 3, 1, 1) / 3
        if value.shape != own[name].shape:
            raise ValueError(f"features.{name} is {tuple(value.shape)} there and {tuple(own[name].shape)} here")
        loaded[name] = value
    if "0.0.weight" not in loaded:
        raise ValueError("it has no convolutional stem laid out as lamina's ResNets (features.0.0.weight)")
    features.load_state_dict(loaded, strict=False)
    return [f"features.{k}" for k in loaded]
