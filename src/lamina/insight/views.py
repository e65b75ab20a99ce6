"""The views of `lamina inspect RUN WHAT`, as tasks declare them (``Task.insights``).

A view is a ``View``: a verb whose function takes the loaded run and the folder its pictures go to,
``function(run, out, **arguments) -> {"plots": [...], ...}``. The image views here work on any task
that describes its network with a ``Probe`` (``Task.probe``); tasks add their own (attention, gradient
flow) by pointing a View at a method. ``applies`` says whether a view fits a given run (a CTC model has
no attention to show), so that a view that does not gets a one-line error naming those that do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lamina.commands import Verb, arg
from lamina.errors import LaminaError, UsageError
from lamina.insight import maps


@dataclass(frozen=True)
class View(Verb):
    function: Callable[..., dict[str, Any]] | None = None  # function(run, out, **arguments)
    applies: Callable[[Any], bool] | None = None  # whether it fits a run (default: every run of the task)
    # The view reads inputs (images, texts, audio): `inspect RUN all` gives it the task's sample inputs.
    reads: bool = False

    def fits(self, run) -> bool:
        return self.applies is None or bool(self.applies(run))

    def defaults(self, implementation: Callable | None = None) -> dict[str, Any]:
        return super().defaults(self.function)


def _stem(source: Any, i: int) -> str:
    name = Path(str(source)).stem if isinstance(source, (str, Path)) else f"image{i}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:60] or f"input{i}"


def _probe(run) -> maps.Probe:
    return run.task.probe(run.model, run.meta)


def has_attention(run) -> bool:
    return getattr(run.model, "attention", None) is not None


def _convolutional(run) -> bool:
    return maps.has_conv(run.model)


def _load(probe: maps.Probe, inputs: list) -> list[tuple[str, torch.Tensor]]:
    if not inputs:
        raise UsageError("give an image to look at: lamina inspect RUN VIEW IMAGE...")
    return [(_stem(source, i), probe.load(source)) for i, source in enumerate(inputs)]


# ----- the generic image views --------------------------------------------------------------------------
def filters(run, out: Path) -> dict[str, Any]:
    """The first layer's learned kernels (or, for an MLP, each first-layer unit's weights as an image)."""
    from lamina.viz.insight import plot_filters

    layer = maps.first_layer(run.model)
    shape = (run.meta.get("channels", 1), run.meta.get("image_size", 28), run.meta.get("image_size", 28))
    if isinstance(layer, torch.nn.Linear) and layer.in_features != shape[0] * shape[1] * shape[2]:
        raise UsageError(f"the first layer of a {run.info['model']['name']} model takes no image")
    k = maps.kernels(layer, shape)
    kind = f"{k.shape[-2]}x{k.shape[-1]} kernels" if isinstance(layer, torch.nn.Conv2d) else "unit weights"
    title = f"{run.path.name}: the first layer's {len(k)} {kind} over {k.shape[1]} input channel(s)"
    plot = plot_filters(k[:128], out / "filters.png", title)
    return {"layer": type(layer).__name__, "shape": list(k.shape), "plots": [str(plot)]}


def activations(run, out: Path, inputs: list | None = None, maps_per_stage: int = 8) -> dict[str, Any]:
    """The feature maps of each stage for each input: from edges near the input to parts and whole
    objects deeper in, at ever lower resolution."""
    from lamina.viz.insight import plot_activations

    probe = _probe(run)
    plots, shapes = [], {}
    for stem, x in _load(probe, inputs or []):
        stages = maps.stage_outputs(probe, x[None])
        shapes = {name: list(a.shape) for name, a in stages}
        plots.append(str(plot_activations(x, stages, out / f"activations-{stem}.png", maps_per_stage)))
    return {"stages": shapes, "plots": plots}


def _heatmaps(run, out: Path, inputs, target, kind: str) -> dict[str, Any]:
    from lamina.viz.insight import plot_heatmaps

    probe = _probe(run)
    compute = maps.saliency if kind == "saliency" else maps.gradcam
    what = "saliency: |d score / d pixel|" if kind == "saliency" else f"Grad-CAM of {probe.stages[-1][0]}"
    plots, results = [], []
    for stem, x in _load(probe, inputs or []):
        found = compute(probe, x[None], target)
        if not found:
            raise LaminaError(f"{stem}: the network found nothing in it to explain")
        results.append({"input": stem, "targets": [{"name": t.name, "box": t.box} for t, _ in found],
                        "peak": [float(m.max()) for _, m in found]})  # fmt: skip
        shown = [(t.name, m, t.box) for t, m in found]
        plots.append(str(plot_heatmaps(x, shown, out / f"{kind}-{stem}.png", what)))
    return {"results": results, "plots": plots}


def saliency(run, out: Path, inputs: list | None = None, target: str | None = None) -> dict[str, Any]:
    return _heatmaps(run, out, inputs, target, "saliency")


def gradcam(run, out: Path, inputs: list | None = None, target: str | None = None) -> dict[str, Any]:
    return _heatmaps(run, out, inputs, target, "gradcam")


IMAGES = arg("inputs", nargs="*", metavar="IMAGE", input="image", path=True, help="image files")
TARGET = arg("--class", dest="target", metavar="C", help="explain this class (name or index; default: each found)")
FILTERS = View("filters", "the first layer's learned kernels", function=filters)
ACTIVATIONS = View("activations", "the feature maps of each stage for an image", (IMAGES,), function=activations,
                   applies=_convolutional, reads=True)  # fmt: skip
SALIENCY = View("saliency", "which pixels the decision depends on (|d score / d pixel|)", (IMAGES, TARGET),
                function=saliency, reads=True)  # fmt: skip
GRADCAM = View("gradcam", "where the last stage looked (Grad-CAM)", (IMAGES, TARGET), function=gradcam,
               applies=_convolutional, reads=True)  # fmt: skip


# ----- embeddings ---------------------------------------------------------------------------------------
def project(points: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    """(N, D) -> {'PCA': (N, 2), 't-SNE': (N, 2)} (scikit-learn), and PCA's explained variance."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = points.detach().float().cpu().numpy().astype(np.float64)
    x = x - x.mean(0)
    pca = PCA(2, random_state=seed).fit(x)
    projected = {"PCA": pca.transform(x)}
    reduced = PCA(min(50, *x.shape), random_state=seed).fit_transform(x)  # t-SNE on 50 PCA components, as usual
    perplexity = float(min(30, max(2, (len(x) - 1) / 3)))
    projected["t-SNE"] = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    return {"projections": projected, "explained_variance": [float(v) for v in pca.explained_variance_ratio_]}


def embeddings(run, out: Path, limit: int = 2000) -> dict[str, Any]:
    """A 2-D map (PCA and t-SNE) of the network's representation of the test split: the features it
    computes before its last layer, coloured by class (or the task's grouping)."""
    from lamina.viz.insight import plot_embeddings

    if limit < 5:
        raise UsageError("--limit must be at least 5")
    points, groups, names, what = run.task.embedding_points(run.model, run.meta, limit)
    if len(points) < 5:
        raise LaminaError(f"only {len(points)} examples to project; embeddings need at least 5")
    found = project(points)
    title = f"{run.path.name}: {what} of {len(points)} examples, {points.shape[1]} numbers each"
    plot = plot_embeddings(found["projections"], groups.numpy(), names, out / "embeddings.png", title)
    return {"n": len(points), "dimensions": int(points.shape[1]), "explained_variance": found["explained_variance"],
            "plots": [str(plot)]}  # fmt: skip


EMBEDDINGS = View(
    "embeddings",
    "a 2-D map (PCA, t-SNE) of the representation of the test split",
    (arg("--limit", type=int, metavar="N", help="examples to project"),),
    function=embeddings,
)


# ----- attention, through the verb that decodes -----------------------------------------------------------
def attention_view(verb: str, kind: str, metavar: str, applies: Callable[[Any], bool] | None = None) -> View:
    """The `attention` view of a task whose verb `verb` draws its attention (--show-attention)."""

    def show(run, out: Path, inputs: list | None = None) -> dict[str, Any]:
        if not inputs:
            raise UsageError(f"give what to decode: lamina inspect RUN attention {metavar}...")
        result = run.call(verb, list(inputs), show_attention=str(out / "attention.png"))
        plots = [*result.get("plots", []), *(r["plot"] for r in result["results"] if r.get("plot"))]
        shown = ("input", "translation", "caption", "transcript", "error")
        return {"results": [{k: r[k] for k in shown if k in r} for r in result["results"]], "plots": plots}

    inputs = arg("inputs", nargs="*", metavar=metavar, input=kind, path=kind != "text", help=f"{kind} inputs")
    return View("attention", f"where the decoder looked for each output it wrote ({verb})", (inputs,),
                function=show, applies=applies, reads=True)  # fmt: skip
