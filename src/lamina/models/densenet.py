"""Densely connected networks (Huang et al. 2016), torchvision's DenseNet adapted to small images."""

from __future__ import annotations

from torch import nn
from torchvision.models import DenseNet

from lamina.models.classifier import ImageClassifier
from lamina.models.registry import register_model


def _densenet(growth_rate, block_config, num_init_features, in_channels, num_classes, dropout):
    net = DenseNet(growth_rate, tuple(block_config), num_init_features, bn_size=4, drop_rate=0.0)
    # The ImageNet stem (7x7 stride-2 conv + pooling) would throw away most of a 28x28 image.
    net.features.conv0 = nn.Conv2d(in_channels, num_init_features, 3, 1, 1, bias=False)
    net.features.pool0 = nn.Identity()
    num_features = net.classifier.in_features
    net.classifier = nn.Identity()  # torchvision's forward then returns the pooled features
    return ImageClassifier(net, num_features, num_classes, dropout, in_channels)


@register_model("classify", "densenet-s", "small DenseNet-BC: growth 12, blocks of 4/8/8 layers")
def densenet_s(in_channels=1, num_classes=10, image_size=28, growth_rate=12, block_config=(4, 8, 8), dropout=0.0):
    return _densenet(growth_rate, block_config, 2 * growth_rate, in_channels, num_classes, dropout)
