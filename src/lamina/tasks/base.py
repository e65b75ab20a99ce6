"""What a task (an application) hands the engine and the API.

A task couples data, a model from the registry, a loss (the error signal), metrics and prediction.
The engine only calls ``step`` and ``evaluate``; the API calls the rest. One level of inheritance,
no more: a task overrides what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lamina.config import RunConfig
from lamina.engine.device import Precision
from lamina.engine.loop import BatchStream, StepOutput
from lamina.errors import UsageError


@dataclass
class Prepared:
    """A task's data for one run, ready on the device, plus what must be saved to use the model later."""

    train: BatchStream
    val: BatchStream | None
    test: BatchStream | None
    meta: dict[str, Any]  # labels, vocabularies, input shape, normalisation, data provenance
    model_args: dict[str, Any] = field(default_factory=dict)  # builder arguments implied by the data
    # Validation measured in full after training, where `val` is a quick estimate during training.
    final_val: BatchStream | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # saved in the run directory (e.g. a tokenizer)


class Task:
    name: str = ""
    description: str = ""
    monitor: tuple[str, str] = ("loss", "min")  # validation metric that picks the best checkpoint
    defaults: dict[str, Any] = {}  # dotted config keys layered over the dataclass defaults
    datasets: dict[str, str] = {}  # registered data names -> one-line description

    def __init__(self, cfg: RunConfig, device: torch.device, precision: Precision, run_dir: Path | None = None):
        self.cfg, self.device, self.precision = cfg, device, precision
        self.run_dir = run_dir  # the run's directory, for the files a task keeps there (Prepared.files)

    @classmethod
    def normalise_data(cls, name: str) -> str:
        """The data name as saved in the run: a path becomes absolute, so the run works from anywhere;
        a registered dataset name stays a name even if a file of that name lies in the working directory."""
        if not name or name in cls.datasets:
            return name
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name

    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        """Data for training. `previous_meta`: the saved meta of the run being resumed, whose
        normalisation must be kept."""
        raise NotImplementedError

    def has_split(self, data: str, split: str) -> bool:
        raise NotImplementedError

    def views(self) -> int:
        """Forward passes per sample in the final evaluation (test-time augmentation), for time budgets."""
        return 1

    def step(self, model: nn.Module, batch: Any) -> StepOutput:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Training state the task carries between steps (e.g. a recurrent state), saved for resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: BatchStream, tta: bool | None = None) -> dict[str, float]:
        """Metrics on a stream, 'loss' included; called during training (tta=False: one view, fast
        model selection) and at its end (tta=None: as the run is configured)."""
        raise NotImplementedError

    def report(self, model: nn.Module, meta: dict[str, Any], data: str, split: str, out_dir: Path) -> dict[str, Any]:
        """The full evaluation of `lamina evaluate`: {'n': ..., 'metrics': {...}, 'plots': [paths]}."""
        raise NotImplementedError

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list[str], **options) -> list[dict[str, Any]]:
        """One result dict per input; a bad input gets {'error': ...} and the others go on."""
        raise NotImplementedError

    def init_from(self, model: nn.Module, run_dir: str | Path, freeze: bool) -> None:
        """Start from another run's weights (transfer)."""
        raise UsageError(f"task {self.name!r} does not support --init")
