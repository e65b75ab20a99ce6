"""A registry of model builders, keyed by task and name (timm/torchvision style).

@register_model("classify", "vgg-s", "VGG-style net, one conv per stage")
def vgg_s(**kwargs) -> nn.Module: ...

get_model("classify", "vgg-s", in_channels=1, num_classes=10, image_size=28)
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lamina.errors import UsageError, choices


@dataclass(frozen=True)
class ModelSpec:
    task: str
    name: str
    builder: Callable[..., nn.Module]
    description: str


_REGISTRY: dict[tuple[str, str], ModelSpec] = {}


def register_model(task: str, name: str, description: str):
    """Decorator: register a builder under (task, name); a duplicate name is a programming error."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if (task, name) in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered for task {task!r}")
        _REGISTRY[(task, name)] = ModelSpec(task, name, builder, description)
        return builder

    return decorator


def register_variant(task: str, name: str, description: str, family: Callable[..., nn.Module], *args, **defaults):
    """Register a variant of a configurable family: family(*args, **defaults, **options). Its options
    and their defaults (with the variant's own) are what `lamina config` lists."""
    return register_model(task, name, description)(functools.partial(family, *args, **defaults))


def get_spec(task: str, name: str) -> ModelSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[(task, name)]
    except KeyError:
        names = [spec.name for spec in list_models(task)]
        raise UsageError(f"unknown model {name!r} for task {task!r}; choose from: {choices(names)}") from None


def get_model(task: str, name: str, **kwargs) -> nn.Module:
    spec = get_spec(task, name)
    try:
        return spec.builder(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # a bad option from --set model.x=..., e.g. dropout=2
        raise UsageError(f"model {name!r}: {str(exc).splitlines()[0]}") from None


def check_options(task: str, name: str, options: dict) -> None:
    """Reject a misspelt model option before any data is read: build the model on the meta device (no
    memory, no initialisation) with its default sizes and these options. Only unknown names are
    reported here; values may depend on the data and are checked when the real model is built."""
    builder = get_spec(task, name).builder  # an unknown model name is a usage error of its own
    try:
        with torch.device("meta"):
            builder(**options)
    except UsageError:
        raise
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        if unknown and unknown[1] in options:
            raise UsageError(f"model {name!r} has no option {unknown[1]!r}") from None
    except Exception:  # noqa: BLE001 - anything else surfaces, with its own message, when the model is built
        pass


def model_options(task: str, name: str) -> dict[str, object]:
    """The keyword options of a model and their defaults (the model.<option> keys of --set), read
    off its builder's signature."""
    signature = inspect.signature(get_spec(task, name).builder)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in signature.parameters.values() if p.kind in kinds and p.default is not p.empty}


def list_models(task: str | None = None) -> list[ModelSpec]:
    _ensure_loaded()
    specs = [s for s in _REGISTRY.values() if task is None or s.task == task]
    return sorted(specs, key=lambda s: (s.task, s.name))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ensure_loaded() -> None:
    # The families are listed explicitly (no folder scanning); importing them registers their builders.
    from lamina.models import (  # noqa: F401
        caption,
        densenet,
        detection,
        lenet,
        mlp,
        resnet,
        rnn,
        seq2seq,
        speech,
        text,
        vgg,
    )
