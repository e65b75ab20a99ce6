"""LeNet-5 (LeCun et al. 1998): two convolution + subsampling stages, then three fully connected layers."""

from __future__ import annotations

from torch import nn

from lamina.models.classifier import ImageClassifier
from lamina.models.layers import act_layer
from lamina.models.registry import register_model


@register_model(
    "classify", "lenet5", "LeNet-5: conv 6 - pool - conv 16 - pool - fc 120 - fc 84 (tanh, average pooling)"
)
def lenet5(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    act: str = "tanh",
    pool: str = "avg",
    dropout: float = 0.0,
) -> ImageClassifier:
    Act = act_layer(act)
    Pool = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
    features = nn.Sequential(
        # The original takes 32x32 inputs; padding 2 gives 28x28 images the same 28x28 C1 maps.
        nn.Conv2d(in_channels, 6, 5, padding=2 if image_size <= 28 else 0),
        Act(),
        Pool(2),  # (B, 6, 14, 14)
        nn.Conv2d(6, 16, 5),
        Act(),
        Pool(2),  # (B, 16, 5, 5)
        nn.AdaptiveAvgPool2d(5),  # any input size -> (B, 16, 5, 5)
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        Act(),
        nn.Linear(120, 84),
        Act(),
    )
    return ImageClassifier(features, 84, num_classes, dropout, in_channels)
