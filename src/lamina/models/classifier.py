"""The interface every image classifier shares: input normalisation, a backbone mapping images to a
feature vector, and a head.

The model takes images as they are stored, (B, C, H, W) uint8 (or float in [0, 1]), and normalises
them with the mean and standard deviation of its training images, kept as buffers in its weights
(torchvision's detection models do the same with their transform): evaluation, prediction, a server
and an exported graph all see exactly the same preprocessing, and a transferred backbone keeps the
normalisation it learned with.

Transfer learning builds the model with a head sized for the new labels, copies another run's
backbone into ``features`` and optionally freezes it; ``reset_head`` does the same in place for users
of the Python API (as timm's ``reset_classifier``). The engine only ever sees ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """(B, C, H, W) uint8 0-255 or float 0-1 -> (x - mean) / std per channel, float32."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def set(self, mean: list[float], std: list[float]) -> None:
        with torch.no_grad():
            self.mean.copy_(torch.tensor(mean).view_as(self.mean))
            self.std.copy_(torch.tensor(std).view_as(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() * (1 / 255) if not x.is_floating_point() else x.float()
        return (x - self.mean) * (1 / self.std)  # keeps the input's memory format (channels-last)


class ImageClassifier(nn.Module):
    def __init__(
        self, features: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0, in_channels: int = 1
    ):
        super().__init__()
        self.normalize = Normalize(in_channels)
        self.features = features  # (B, C, H, W) -> (B, num_features)
        self.num_features = num_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(num_features, num_classes)
        self.frozen = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))  # (B, num_classes)

    def reset_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes).to(self.head.weight.device)

    def freeze_features(self) -> None:
        """Train only the head: the backbone keeps its weights and its normalisation statistics."""
        self.frozen = True
        self.features.requires_grad_(False)
        self.features.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.features.eval()  # batch-norm statistics of a frozen backbone must not drift (Keras does the same)
        return self


class GlobalPool(nn.Module):
    """(B, C, H, W) -> (B, C): average, max, or both concatenated."""

    def __init__(self, kind: str = "avg"):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return x.amax(dim=(2, 3))
        if self.kind == "avgmax":
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return x.mean(dim=(2, 3))
