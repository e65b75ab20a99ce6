"""Model families. Each module registers thin builders for its variants."""

from lamina.models import densenet, lenet, mlp, resnet, rnn, seq2seq, speech, vgg  # noqa: F401
from lamina.models.registry import count_parameters, get_model, list_models, register_model

__all__ = ["count_parameters", "get_model", "list_models", "register_model"]
