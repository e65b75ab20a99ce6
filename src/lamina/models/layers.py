"""Building blocks shared by the image families: layers are chosen by name and passed in, never hard-coded."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lamina.errors import UsageError, choices

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "group": lambda c: nn.GroupNorm(min(32, c // 4) or 1, c),
    "none": lambda c: nn.Identity(),
}


def act_layer(name: str) -> Callable[[], nn.Module]:
    if name not in ACTIVATIONS:
        raise UsageError(f"unknown activation {name!r}; choose from: {choices(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def norm_layer(name: str) -> Callable[[int], nn.Module]:
    if name not in NORMS:
        raise UsageError(f"unknown norm {name!r}; choose from: {choices(NORMS)}")
    return NORMS[name]


def conv_norm_act(cin: int, cout: int, norm: Callable, act: Callable, kernel: int = 3, stride: int = 1):
    """conv -> norm -> activation; the conv has no bias when a norm follows (the norm's shift replaces it)."""
    norm_module = norm(cout)
    bias = isinstance(norm_module, nn.Identity)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=bias), norm_module, act())
