"""The run directory on disk, written atomically so an interrupted process never leaves a torn file.

runs/<name>/
  lamina.json        task, model name and arguments, data description, resolved config, metrics, versions
  model.safetensors  the weights to use (no pickle: loading never executes code)
  trainer.pt         current weights, optimizer, schedule position, RNG states: what --resume needs
  metrics.jsonl      one line per evaluation during training
  curves.png         loss and metric per epoch
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lamina.errors import LaminaError

RUN_FILE = "lamina.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
METRICS_FILE = "metrics.jsonl"
FORMAT_VERSION = 1


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file in the same folder, then rename over the target (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights (safetensors wants contiguous, unshared tensors)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def load_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise LaminaError(f"cannot read weights {path}: {exc}") from None


def save_trainer(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_trainer(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LaminaError(
            f"{path.parent} has no {TRAINER_FILE}: training stopped before its first checkpoint; "
            "start it again without --resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's refusal of a foreign pickle is many lines of advice about weights_only: keep its first
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise LaminaError(f"cannot read {path}: not a lamina training checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or "model" not in state or "optimizer" not in state:
        raise LaminaError(f"cannot read {path}: not a lamina training checkpoint (no model and optimizer state)")
    return state


BASE_LIBRARIES = ("torch", "torchvision", "numpy", "pillow", "safetensors")


def versions(libraries: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python, lamina and every library that affects a run's results: the shared ones
    and those its task names (sacrebleu, sentencepiece, jiwer, soxr, ...)."""
    from importlib.metadata import PackageNotFoundError, version

    from lamina import __version__

    found = {"lamina": __version__, "python": platform.python_version()}
    for name in (*BASE_LIBRARIES, *libraries):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def read_run(run_dir: str | Path, task: str | None = None, need_weights: bool = True) -> dict[str, Any]:
    """Check that run_dir is a usable run (of the expected task) and return its lamina.json."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise LaminaError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise LaminaError(f"{run_dir} is not a run directory")
    meta_path = run_dir / RUN_FILE
    if not meta_path.is_file():
        raise LaminaError(f"{run_dir} is not a lamina run (no {RUN_FILE})")
    try:
        info = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LaminaError(f"{meta_path} is corrupt: {exc}") from None
    if not isinstance(info, dict) or "task" not in info or "model" not in info:
        raise LaminaError(f"{meta_path} is incomplete: no task or model recorded")
    if task is not None and info["task"] != task:
        raise LaminaError(f"{run_dir} is a {info['task']!r} run, not a {task!r} run")
    if need_weights and not (run_dir / WEIGHTS_FILE).is_file():
        raise LaminaError(
            f"run {run_dir} is incomplete: no {WEIGHTS_FILE} yet"
            + (
                f" (resume it with: lamina train {info['task']} --out {run_dir} --resume)"
                if (run_dir / TRAINER_FILE).is_file()
                else ""
            )
        )
    return info


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    # One short line per evaluation, flushed at once: a crash loses at most the line being written.
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash
    return records


def list_runs(folder: Path) -> list[dict[str, Any]]:
    """Every run directory under `folder` (one level down, or `folder` itself): its task, model, status,
    the best figure of the metric that picked its checkpoint, training time and creation date."""
    from lamina.errors import UsageError

    candidates = [folder] if (folder / RUN_FILE).is_file() else sorted(p for p in folder.glob("*") if p.is_dir())
    rows = []
    for path in candidates:
        try:
            info = read_run(path, need_weights=False)
        except LaminaError:
            continue
        try:
            from lamina.tasks import get_task

            metric = get_task(info["task"]).monitor[0]
        except UsageError:  # a task this installation does not know
            metric = "loss"
        metrics = info.get("metrics", {})
        value = metrics.get("test", {}).get(metric, metrics.get("val", {}).get(metric))
        split = "test" if metric in metrics.get("test", {}) else "val"
        rows.append(
            {
                "run": str(path),
                "task": info["task"],
                "model": info["model"].get("name", "?"),
                "status": info.get("status", "?"),
                "metric": f"{split} {metric}",
                "value": value,
                "seconds": info.get("training", {}).get("seconds"),
                "created": info.get("created", ""),
            }
        )
    return rows
