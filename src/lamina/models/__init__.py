"""Model families. Each module registers thin builders for its variants; the registry imports them
on first use (registry._ensure_loaded), so that importing a shared part (decoding, attention) does
not import every family and torchvision with it."""

from lamina.models.registry import count_parameters, get_model, list_models, register_model

__all__ = ["count_parameters", "get_model", "list_models", "register_model"]
