"""lamina: train, evaluate, inspect and use deep networks for vision and language.

    import lamina
    lamina.train("classify", data="fashion-mnist", time_budget=75)
    lamina.load("runs/classify-fashion-mnist-vgg-s").predict(["shoe.png"])
    lamina.export("runs/classify-fashion-mnist-vgg-s", out="shoes.onnx")   # onnxruntime runs it alone

Every verb a task declares is a function here too: lamina.translate(run, texts),
lamina.transcribe(run, files), lamina.generate(run, prompt=...), ...
"""

__version__ = "0.1.0"
API = (
    "attack",
    "evaluate",
    "export",
    "inspect",
    "load",
    "predict",
    "register_dataset",
    "register_model",
    "register_task",
    "search",
    "train",
)
__all__ = ["__version__", *API]


def __getattr__(name: str):
    # The API (and with it torch) loads on first use, so `lamina --help` and the CLI's clock start fast.
    if name in ("register_task",):
        from lamina.tasks import register_task

        return register_task
    if name == "register_model":
        from lamina.models.registry import register_model

        return register_model
    if name == "register_dataset":
        from lamina.data.sources import register_dataset

        return register_dataset
    if name in API:
        from lamina import api

        return getattr(api, name)
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"lamina.{name}") is None:  # not a submodule
        import functools

        from lamina import api

        if api.find_verb(name) is not None:
            return functools.partial(api.call, name)
    raise AttributeError(f"module 'lamina' has no attribute {name!r}")
