"""lamina: train, evaluate, inspect and use deep networks for vision and language.

import lamina
lamina.train("classify", data="fashion-mnist", time_budget=75)
"""

__version__ = "0.1.0"
API = ("evaluate", "generate", "inspect_gradients", "load", "predict", "train", "transcribe", "translate")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    # The API (and with it torch) loads on first use, so `lamina --help` and the CLI's clock start fast.
    if name in API:
        from lamina import api

        return getattr(api, name)
    raise AttributeError(f"module 'lamina' has no attribute {name!r}")
