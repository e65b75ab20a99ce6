"""Multi-layer perceptron: layers of units, each a weighted sum of its inputs followed by a non-linearity."""

from __future__ import annotations

from torch import nn

from lamina.models.classifier import ImageClassifier
from lamina.models.layers import act_layer
from lamina.models.registry import register_model


def mlp_features(in_dim: int, hidden: list[int], act: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C*H*W)
    for width in hidden:
        layers += [nn.Linear(in_dim, width), act_layer(act)()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


@register_model("classify", "mlp", "perceptron with two hidden layers (512, 256) of ReLU units")
def mlp(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    hidden: list[int] = (512, 256),
    act: str = "relu",
    dropout: float = 0.2,
) -> ImageClassifier:
    hidden = list(hidden)
    features = mlp_features(in_channels * image_size * image_size, hidden, act, dropout)
    width = hidden[-1] if hidden else in_channels * image_size * image_size
    return ImageClassifier(features, width, num_classes, in_channels=in_channels)
