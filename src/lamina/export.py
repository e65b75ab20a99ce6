"""`lamina export RUN --format onnx`: a trained run as ONNX graphs that onnxruntime runs alone.

Each task declares what to export (Task.export_graphs -> [ExportSpec]): a small module around its
model that takes what a user has (uint8 pixels, log-mel frames) and does the rest in the graph,
example inputs, the axes that vary, and the preprocessing and decoding left outside, which is
written beside each graph as JSON. This module names no task: it traces each graph (torch.export,
or the TorchScript exporter where the task says torch.export cannot trace its model), names the
varying axes, checks onnxruntime against PyTorch on the example inputs and writes the files.

    lamina.export("runs/fmnist")          # -> {'onnx': 'runs/fmnist/model.onnx', 'preprocessing': ...}

`lamina.export` is both the API's function and this module (importing a submodule sets the package
attribute to it), so the module itself is callable: either spelling works.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch

from lamina.errors import LaminaError, UsageError, choices, warn
from lamina.tasks.base import ExportSpec

FORMATS = ("onnx",)
INSTALL = "pip install 'lamina[export]' (onnx, onnxscript and onnxruntime)"
TORCHSCRIPT_OPSET = 17  # torchvision's detectors need at least 11; the parity tests run at 17


def export(run, format: str = "onnx", out: str | Path | None = None) -> dict[str, Any]:
    """Write the run's graphs (`out`, default RUN/model.onnx; further parts as model.PART.onnx),
    each with its preprocessing as JSON beside it (model.json). Returns {'task', 'run', 'format',
    'graphs': [{'onnx', 'preprocessing', 'inputs', 'outputs', 'exporter', 'opset',
    'max_abs_difference', 'seconds'}]}, and the first graph's keys at the top level."""
    from lamina.api import Run, load

    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; choose from: {choices(FORMATS)}")
    require_onnx()
    loaded = run if isinstance(run, Run) else load(run, device="cpu")
    model = loaded.model.cpu().eval()
    specs = loaded.task.export_graphs(model, loaded.meta)
    out = Path(out) if out else loaded.path / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] + [out.with_name(f"{out.stem}.{spec.name}.onnx") for spec in specs[1:]]
    about = {"task": loaded.task.name, "model": loaded.info["model"]["name"], "run": str(loaded.path)}
    if len(specs) > 1:  # each JSON names its siblings
        about["parts"] = {spec.name or "main": path.name for spec, path in zip(specs, paths)}
    graphs = [write_graph(spec, path, about) for spec, path in zip(specs, paths)]
    about.pop("parts", None)
    return {**about, "format": format, **graphs[0], "graphs": graphs}


def require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise LaminaError(f"ONNX export needs {', '.join(missing)}: {INSTALL}")


def write_graph(spec: ExportSpec, path: Path, about: dict[str, Any]) -> dict[str, Any]:
    """One graph and its JSON; `about` (task, model, run, parts) goes into the JSON as it is."""
    started = time.perf_counter()
    module = spec.module.eval()
    with torch.no_grad():
        expected = as_tuple(module(*spec.inputs))
    exporter = trace(spec, path)
    opset = name_axes(spec, path)
    difference = compare(path, spec, expected)
    if difference > spec.tolerance:
        warn(f"{path}: onnxruntime differs from PyTorch by up to {difference:.3g} on the example inputs")
    described = {
        "format": "onnx",
        "graph": path.name,
        **({"part": spec.name} if spec.name else {}),
        **about,
        "exporter": exporter,
        "opset": opset,
        "inputs": [tensor_info(n, x, spec.dynamic) for n, x in zip(spec.input_names, spec.inputs)],
        "outputs": [tensor_info(n, y, spec.dynamic) for n, y in zip(spec.output_names, expected)],
        **spec.preprocessing,
    }
    from lamina import __version__

    described["lamina"] = __version__
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(described, indent=1) + "\n", encoding="utf-8")
    keys = ("inputs", "outputs", "exporter", "opset")
    return {
        **({"part": spec.name} if spec.name else {}),
        "onnx": str(path),
        "preprocessing": str(json_path),
        **{k: described[k] for k in keys},
        "max_abs_difference": difference,
        "seconds": round(time.perf_counter() - started, 2),
    }


def trace(spec: ExportSpec, path: Path) -> str:
    """Export with the spec's exporter; a failed torch.export falls back to the TorchScript exporter
    (torch.export's coverage changes from release to release)."""
    if spec.exporter == "dynamo":
        try:
            with quiet():
                torch.onnx.export(
                    spec.module,
                    spec.inputs,
                    str(path),
                    dynamo=True,
                    input_names=spec.input_names,
                    output_names=spec.output_names,
                    dynamic_shapes=dynamo_shapes(spec),
                    verbose=False,
                )
            return "dynamo"
        except Exception as exc:  # noqa: BLE001  (any tracing failure: the other exporter may still work)
            warn(f"torch.export could not trace the graph ({type(exc).__name__}); using the TorchScript exporter")
    with quiet():
        torch.onnx.export(
            spec.module,
            spec.inputs,
            str(path),
            dynamo=False,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes={k: dict(v) for k, v in spec.dynamic.items()},
            opset_version=TORCHSCRIPT_OPSET,
        )
    return "torchscript"


def dynamo_shapes(spec: ExportSpec) -> dict[str, dict[int, Any]]:
    """torch.export's dynamic shapes, keyed by forward's argument names (the input names). DYNAMIC
    lets torch.export find the constraints; the axes get their names in the file afterwards."""
    dim = torch.export.Dim.DYNAMIC
    return {name: {axis: dim for axis in spec.dynamic.get(name, {})} for name in spec.input_names}


@contextlib.contextmanager
def quiet():
    """The exporters' progress lines and deprecation notes go to stderr or nowhere: stdout carries
    the result (--json)."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        yield


def name_axes(spec: ExportSpec, path: Path) -> int:
    """Give the varying axes of the inputs and outputs their names (batch, width, ...) in the file,
    whichever exporter wrote it; returns the graph's opset."""
    import onnx

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        for axis, name in spec.dynamic.get(value.name, {}).items():
            dims = value.type.tensor_type.shape.dim
            if axis < len(dims):
                dims[axis].dim_param = name
    onnx.save(model, str(path))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def compare(path: Path, spec: ExportSpec, expected: tuple[torch.Tensor, ...]) -> float:
    """Largest difference of onnxruntime's outputs from PyTorch's on the example inputs; integer
    outputs (labels, lengths) must be equal."""
    got = run_onnx(path, dict(zip(spec.input_names, spec.inputs)))
    worst = 0.0
    for name, want, have in zip(spec.output_names, expected, got):
        want = want.detach().cpu().numpy()
        if want.shape != have.shape:
            raise LaminaError(f"{path}: output {name} has shape {have.shape} in onnxruntime, {want.shape} in PyTorch")
        if want.dtype.kind in "iub":
            if (want != have).any():
                raise LaminaError(f"{path}: output {name} differs between onnxruntime and PyTorch")
        elif want.size:
            worst = max(worst, float(abs(want.astype("float64") - have).max()))
    return worst


def run_onnx(path: str | Path, inputs: dict[str, Any]) -> list:
    """onnxruntime's outputs for {input name: tensor or array}, on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return session.run(None, feed)


def tensor_info(name: str, x: torch.Tensor, dynamic: dict[str, dict[int, str]]) -> dict[str, Any]:
    axes = dynamic.get(name, {})
    return {
        "name": name,
        "shape": [axes.get(i, n) for i, n in enumerate(x.shape)],
        "dtype": str(x.dtype).removeprefix("torch."),
    }


def as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
