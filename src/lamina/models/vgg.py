"""VGG-style networks (Simonyan & Zisserman 2014): stacks of 3x3 conv-norm-act, halved by max pooling.

Adapted to small images: pooling stops once the maps are 2x2 or smaller, and a global pool replaces
the large fully connected layers, so the same variant fits 28x28 grey and 64x64 colour images.
"""

from __future__ import annotations

from torch import nn

from lamina.models.classifier import GlobalPool, ImageClassifier
from lamina.models.layers import act_layer, conv_norm_act, norm_layer
from lamina.models.registry import register_variant


def vgg_features(
    in_channels: int, image_size: int, stages: list[list[int]], norm: str, act: str, pool: str
) -> tuple[nn.Sequential, int]:
    """stages: one list of conv widths per stage, e.g. [[64], [128, 128]]; returns (features, num_features)."""
    Norm, Act = norm_layer(norm), act_layer(act)
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for widths in stages:
        for width in widths:
            layers.append(conv_norm_act(channels, width, Norm, Act))
            channels = width
        if size > 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
    layers.append(GlobalPool(pool))  # (B, C)
    return nn.Sequential(*layers), channels * (2 if pool == "avgmax" else 1)


def _vgg(stages, in_channels=1, num_classes=10, image_size=28, norm="batch", act="relu", pool="max", dropout=0.0):
    features, num_features = vgg_features(in_channels, image_size, stages, norm, act, pool)
    return ImageClassifier(features, num_features, num_classes, dropout=dropout, in_channels=in_channels)


register_variant(
    "classify",
    "vgg-s",
    "small VGG-style net: conv 32, 64, 128, each followed by max pooling (fast)",
    _vgg,
    [[32], [64], [128]],
)
register_variant(
    "classify",
    "vgg-m",
    "VGG-style net: conv 32 32 | 64 64 | 128 128, pooled after each stage",
    _vgg,
    [[32, 32], [64, 64], [128, 128]],
)
register_variant(
    "classify",
    "vgg-l",
    "VGG-style net: conv 64 64 | 128 128 | 256 256, pooled after each stage",
    _vgg,
    [[64, 64], [128, 128], [256, 256]],
)
register_variant(
    "classify",
    "vgg11",
    "VGG-11 layout with batch norm (64 | 128 | 256x2 | 512x2 | 512x2)",
    _vgg,
    [[64], [128], [256, 256], [512, 512], [512, 512]],
)
