"""The Task contract: everything the engine, the API and the CLI need to know about one application.

A task couples data, a model from the registry, a loss (the error signal), metrics and its verbs.
It declares, as class attributes:

    name, description     what it is called and does (lamina train NAME)
    Data                  its data.* settings: a DataConfig subclass (flags included, e.g. --val)
    defaults              dotted settings it changes from the shared defaults (optim.lr, model.name, ...)
    datasets              names of registered datasets it reads (lamina.data.sources), and
    data_paths            what else --data takes (a folder of images, a text file, ...)
    monitor               the validation metric that picks the best checkpoint, and "min" or "max"
    verbs                 what its runs do besides predict and evaluate (commands.Verb)
    predict_args, evaluate_args   options of `lamina predict` and `lamina evaluate` for its runs
    inputs                what predict reads: "image", "audio" or "text" (how the server takes them)
    resume_keys           meta keys that must not change when a run resumes (its classes, vocabulary)
    data_model_args       model builder arguments the data decides (number of classes, vocabulary size)
    transfer              whether --init RUN (and --freeze) work
    transfer_from         other tasks whose runs --init takes (detect starts from a classify backbone)
    libraries             distributions whose versions affect its results (recorded in lamina.json)
    not_exported          why its runs have no ONNX export, where ``export_graphs`` is not implemented
    search_space          what `lamina search` tries by default: setting key -> choices or {low, high, log}
    insights              the views of `lamina inspect RUN WHAT` (lamina.insight.views.View)

and implements the methods below. The engine only calls ``step`` and ``evaluate``; the API the rest.
One level of inheritance, no more: a task overrides what it needs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from lamina.commands import Arg, Verb
from lamina.config import DataConfig, RunConfig
from lamina.engine.device import Precision
from lamina.engine.distributed import Distributed
from lamina.engine.loop import BatchStream, StepOutput
from lamina.errors import UsageError

# Settings that decide the data order, the model or the optimizer: a resumed run must keep them.
FIXED_ON_RESUME = (
    "data.",
    "model.",
    "train.batch_size",
    "train.accumulate",
    "train.seed",
    "train.init",
    "train.freeze",
    "optim.name",
)

# Why encoder-decoders are not exported (README: Export): their output is searched for step by step.
ENCODER_DECODER = (
    "an encoder-decoder searches its output one token at a time (beam and attention state live in a Python "
    "loop outside the network); exporting it takes two graphs, the encoder and one decoder step, and that "
    "search rewritten around them"
)


@dataclass
class ExportSpec:
    """One graph of a trained run, as `lamina export` writes it: the module to trace (a small wrapper
    around the model that takes what a user has, e.g. uint8 pixels, and does the rest in the graph),
    example inputs, which of their axes vary, and the preprocessing and decoding a user must do
    outside the graph, written beside it as JSON."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]  # example inputs, in the order forward takes them
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]  # input or output name -> {axis: name} of the axes that vary
    preprocessing: dict[str, Any]  # what the graph expects and how to read its outputs (the JSON)
    # "dynamo" (torch.export) where it traces the model; "torchscript" where it cannot (recurrent
    # layers with a dynamic length, torchvision's detectors).
    exporter: str = "dynamo"
    name: str = ""  # the part, for runs with several graphs (a reader's detector beside its recognizer)
    tolerance: float = 1e-4  # largest difference from PyTorch expected of onnxruntime, on float outputs


@dataclass
class Prepared:
    """A task's data for one run, ready on the device, plus what must be saved to use the model later."""

    train: BatchStream
    val: BatchStream | None
    test: BatchStream | None
    meta: dict[str, Any]  # labels, vocabularies, input shape, preprocessing, data provenance
    model_args: dict[str, Any] = field(default_factory=dict)  # builder arguments implied by the data
    # Validation measured in full after training, where `val` is a quick estimate during training.
    final_val: BatchStream | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # saved in the run directory (e.g. a tokenizer)


class Task:
    name: str = ""
    description: str = ""
    Data: type[DataConfig] = DataConfig
    defaults: dict[str, Any] = {}
    datasets: tuple[str, ...] = ()
    data_paths: str = ""  # what --data PATH may be, for `lamina data list`
    monitor: tuple[str, str] = ("loss", "min")
    verbs: tuple[Verb, ...] = ()
    predict_args: tuple[Arg, ...] = ()
    inputs: str = ""
    evaluate_args: tuple[Arg, ...] = ()
    resume_keys: tuple[str, ...] = ()
    data_model_args: tuple[str, ...] = ()  # builder arguments the data decides (Prepared.model_args)
    fixed_on_resume: tuple[str, ...] = FIXED_ON_RESUME
    transfer: bool = False
    transfer_from: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    not_exported: str = "its models have no exportable graph yet"
    search_space: dict[str, Any] = {}  # empty: the learning rate and weight decay around the defaults
    insights: tuple = ()

    def __init__(
        self,
        cfg: RunConfig,
        device: torch.device,
        precision: Precision,
        run_dir: Path | None = None,
        dist: Distributed | None = None,
    ):
        self.cfg, self.device, self.precision = cfg, device, precision
        self.run_dir = run_dir  # the run's directory, for the files a task keeps there (Prepared.files)
        self.dist = dist or Distributed()  # which process of how many: evaluation is shared between them

    @classmethod
    def normalise_data(cls, name: str) -> str:
        """The data name as saved in the run: a path becomes absolute, so the run works from anywhere;
        a registered dataset name stays a name even if a file of that name lies in the working directory."""
        if not name or name in cls.datasets:
            return name
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name

    # ----- training -------------------------------------------------------------------------------
    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        """Data for training. `previous_meta`: the meta of the run being resumed (or of the main
        process, in the others), whose vocabulary and preprocessing must be kept."""
        raise NotImplementedError

    def setup_model(self, model: nn.Module, meta: dict[str, Any], resume: bool) -> None:
        """Called once the model is built for training: transfer (--init, --freeze) and whatever the
        data decides beyond the builder's arguments."""
        if self.cfg.train.init or self.cfg.train.freeze:
            raise UsageError(f"task {self.name!r} does not support --init or --freeze")

    @property
    def global_batch(self) -> int:
        """Samples in one training batch over every process: --batch-size is each process's share."""
        if not self.cfg.train.batch_size:
            raise UsageError(f"task {self.name!r} cannot choose its batch size: give --batch-size N (N >= 1)")
        return self.cfg.train.batch_size * self.dist.world

    def settle_batch_size(self, n_train: int, largest: int = 256, smallest: int = 16, steps: int = 50) -> None:
        """--batch-size 0: the largest power of two up to `largest` (over every process) that still
        gives `steps` optimizer steps per epoch, and at least `smallest`. A recipe tuned on 50,000
        images at batch 256 gets 7 steps per epoch from 1,600 images: too few for its warm-up and
        learning rate, which then blow the network up in the first epoch. The choice is saved with the
        run's configuration, so a resumed run keeps it."""
        t = self.cfg.train
        if t.batch_size:
            return
        batch = largest
        while batch > smallest and n_train / batch < steps:
            batch //= 2
        t.batch_size = max(1, batch // self.dist.world)

    def upgrade_state(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Weights saved by an older lamina, brought to this one's model (called whenever saved
        weights are loaded); as they are by default."""
        return state

    def step(self, model: nn.Module, batch: Any) -> StepOutput:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Training state the task carries between steps (e.g. a recurrent state), saved for resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def views(self) -> int:
        """Forward passes per sample in the final evaluation (test-time augmentation, decoding), for
        time budgets."""
        return 1

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: BatchStream, tta: bool | None = None) -> dict[str, float]:
        """Metrics on a stream, 'loss' included; called during training (tta=False: fast, for model
        selection) and at its end (tta=None: as the run is configured). Every process evaluates its
        share of the stream (self.dist) and all return the metrics of the whole of it."""
        raise NotImplementedError

    def warnings(self, history: list[dict[str, Any]], metrics: dict[str, Any], meta: dict[str, Any]) -> list[str]:
        """What the user should know at the end of training: here, a training loss that rose (the
        learning rate too high for the run's length and data). Tasks add their own (chance level)."""
        losses = [r["train_loss"] for r in history if "train_loss" in r]
        if len(losses) >= 2 and losses[-1] > losses[0]:
            return [
                f"the training loss rose from {losses[0]:.4g} to {losses[-1]:.4g}: the learning rate is probably "
                "too high for this data; try a lower --lr, a smaller --batch-size or more --epochs"
            ]
        return []

    # ----- using a trained run --------------------------------------------------------------------
    def has_split(self, data: str, split: str) -> bool:
        raise NotImplementedError

    def report(
        self, model: nn.Module, meta: dict[str, Any], data: str, split: str, out_dir: Path, **options
    ) -> dict[str, Any]:
        """`lamina evaluate`: {'n': ..., 'metrics': {...}, 'plots': [paths], 'files': [paths]}."""
        raise NotImplementedError

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list, **options) -> dict[str, Any]:
        """{'results': [one dict per input]}; a bad input gets {'error': ...} and the others go on."""
        raise NotImplementedError

    def export_graphs(self, model: nn.Module, meta: dict[str, Any]) -> list[ExportSpec]:
        """`lamina export`: the graphs of a trained run (the first is the main one), on the CPU. Tasks
        whose runs can be exported override this; the others say why not."""
        raise UsageError(f"a {self.name} run cannot be exported to ONNX: {self.not_exported}")

    # ----- looking inside (lamina inspect) and pushing on it (lamina attack) ------------------------
    def probe(self, model: nn.Module, meta: dict[str, Any]):
        """How the image views (lamina.insight.maps.Probe) see this task's network."""
        raise UsageError(f"a {self.name} run has no image views")

    def embedding_points(self, model: nn.Module, meta: dict[str, Any], limit: int):
        """(points (N, D), group of each (N,), group names, what the points are) for `inspect embeddings`."""
        raise UsageError(f"a {self.name} run has no embeddings view")

    def attack(
        self, model: nn.Module, meta: dict[str, Any], method: str, eps: list[float], **options
    ) -> dict[str, Any]:
        """`lamina attack RUN`: the run's figure on its test split against adversarial examples of each
        size in `eps` (lamina.adversarial): {'curve': [{'eps', <metric>, ...}], 'plots'}."""
        raise UsageError(f"a {self.name} run cannot be attacked: lamina attack measures classify and detect runs")

    def perturb(self, model: nn.Module, batch: Any) -> Any:
        """The batch with its inputs replaced by adversarial ones (train.adversarial): Madry's inner step."""
        raise UsageError(f"train.adversarial applies to image classification, not to {self.name} runs")

    def sample_inputs(self, meta: dict[str, Any], limit: int = 3) -> list:
        """Inputs `inspect RUN all` looks at when given none: a few of the run's test examples."""
        return []

    # ----- how results read on a terminal ---------------------------------------------------------
    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> str:
        """The one figure `lamina train` ends with, e.g. 'test accuracy 92.76%' ('' for none)."""
        return ""

    @classmethod
    def render(cls, verb: str, result: dict[str, Any], out: TextIO | None = None) -> None:
        """Print a verb's result for a person (--json prints the dict itself). Entries with an
        'error' have been reported on stderr already."""
        out = out or sys.stdout
        renderer = getattr(cls, f"render_{verb.replace('-', '_')}", None)
        if renderer is None:
            print(json.dumps(result, indent=1, default=str), file=out)
        else:
            renderer(result, out)

    @classmethod
    def render_train(cls, s: dict[str, Any], out: TextIO) -> None:
        if s["status"] == "interrupted":
            print(f"interrupted at step {s['steps']}; continue with: lamina train --resume {s['run']}", file=sys.stderr)
            return
        for split in ("val", "test"):
            m = s.get("metrics", {}).get(split)
            if m:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
                print(f"{split}: {shown}" + (f"  ({m['n']:,} samples)" if "n" in m else ""), file=out)
        headline = cls.headline(s.get("metrics", {}))
        print(
            f"{headline + ' after' if headline else 'done in'} {s['seconds']:.1f} s ({s['epochs']:.2f} epochs, "
            f"{s['precision']}); run saved in {s['run']}",
            file=out,
        )

    @classmethod
    def render_evaluate(cls, result: dict[str, Any], out: TextIO) -> None:
        m = result["metrics"]
        print(f"{result['task']} on {result['data']} ({result['split']}, {result['n']:,} samples)", file=out)
        for key, value in m.items():
            if isinstance(value, float):
                print(f"  {key:16s} {value:.4f}", file=out)
        if "decoding" in result:
            print("  decoding         " + ", ".join(f"{k} {v}" for k, v in result["decoding"].items()), file=out)
        for key, value in m.items():  # breakdowns: {group: {metric: value}} (per class, length, noise ...)
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                render_breakdown(key, value, out)
        for path in [*result.get("files", []), *result.get("plots", [])]:
            print(f"wrote {path}", file=out)


def render_breakdown(title: str, rows: dict[str, dict[str, Any]], out: TextIO) -> None:
    """A table with one row per group and one column per figure."""
    columns = list(dict.fromkeys(k for r in rows.values() for k in r))
    print(f"  {title.replace('_', ' '):20s} " + " ".join(f"{c:>9s}" for c in columns), file=out)
    for name, r in rows.items():
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append(f"{v:9.4f}" if isinstance(v, float) else f"{'-' if v is None else v:>9}")
        print(f"  {str(name)[:20]:20s} " + " ".join(cells), file=out)
