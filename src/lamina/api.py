"""The Python API: what the CLI (and later the server) call.

import lamina
result = lamina.train("classify", data="fashion-mnist", epochs=3, out="runs/fmnist")
run = lamina.load("runs/fmnist")
run.evaluate(split="test")["metrics"]["accuracy"]
run.predict(["shoe.png"], top_k=3)
"""

from __future__ import annotations

import inspect
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lamina import config as config_mod
from lamina.config import RunConfig
from lamina.engine import checkpoint as ckpt
from lamina.engine.device import Precision, resolve_amp, resolve_device
from lamina.engine.loop import NonFiniteLoss, Trainer
from lamina.errors import LaminaError, UsageError
from lamina.models.registry import check_options, count_parameters, get_model
from lamina.tasks import Task, get_task

# Keyword arguments of train() (and CLI flags) -> dotted config keys.
SETTINGS = {
    "data": "data.name",
    "model": "model.name",
    "epochs": "train.epochs",
    "time_budget": "train.time_budget",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "optimizer": "optim.name",
    "schedule": "optim.schedule",
    "seed": "train.seed",
    "device": "train.device",
    "amp": "train.amp",
    "val": "data.val",
    "catalogs": "data.catalogs",
    "reverse": "data.reverse",
    "init": "train.init",
    "freeze": "train.freeze",
    "quiet": "train.quiet",
}


@dataclass
class Run:
    """A trained model loaded from its run directory, ready to evaluate and predict."""

    path: Path
    info: dict[str, Any]
    config: RunConfig
    task: Task
    model: nn.Module

    @property
    def meta(self) -> dict[str, Any]:
        return self.info["meta"]

    def evaluate(
        self, data: str | None = None, split: str | None = None, out_dir: str | Path | None = None, **options
    ) -> dict:
        """Full metrics on a split (default: test where the data has one, else validation) plus plots.
        `options`: the task's own (translate: beam, length_penalty)."""
        data = data or self.config.data.name
        out_dir = Path(out_dir) if out_dir else self.path
        if split is None:
            split = "test" if self.task.has_split(data, "test") else "val"
        for option in options:
            if option not in inspect.signature(self.task.report).parameters:
                raise UsageError(f"--{option.replace('_', '-')} does not apply to a {self.task.name} run")
        result = self.task.report(self.model, self.meta, data, split, out_dir, **options)
        return {"task": self.task.name, "run": str(self.path), "data": data, "split": split, **result}

    def predict(self, inputs: list[str], **options) -> list[dict[str, Any]]:
        return self.task.predict(self.model, self.meta, [str(i) for i in inputs], **options)

    def translate(
        self, texts: list[str], beam: int = 5, length_penalty: float = 1.0, attention: bool = False
    ) -> list[dict[str, Any]]:
        """Translations of `texts` (translate runs): greedy for beam 1, else beam search."""
        if not hasattr(self.task, "translate"):
            raise UsageError(f"a {self.task.name} run does not translate (that is what translate runs do)")
        return self.task.translate(self.model, self.meta, list(texts), beam, length_penalty, attention)

    def transcribe(self, files: list[str | Path], beam: int = 1, attention: bool = False) -> list[dict[str, Any]]:
        """Transcripts of audio files (transcribe runs); a bad file gets {'file', 'error'}."""
        if not hasattr(self.task, "transcribe"):
            raise UsageError(f"a {self.task.name} run does not transcribe audio (that is what transcribe runs do)")
        return self.task.transcribe(self.model, self.meta, [str(f) for f in files], beam, attention)

    def generate(self, prompt: str = "", length: int = 500, **options) -> Iterator[str]:
        """Text after `prompt`, piece by piece as it is produced (tasks that generate: lm)."""
        if not hasattr(self.task, "generate"):
            raise UsageError(f"a {self.task.name} run does not generate text (that is what lm runs do)")
        return self.task.generate(self.model, self.meta, prompt, length, **options)


def _build(task: Task, name: str, args: dict[str, Any], device: torch.device) -> nn.Module:
    model = get_model(task.name, name, **args)
    if task.cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)  # only 4-D weights change; a no-op for MLPs
    return model.to(device)


def load(run_dir: str | Path, device: str = "auto", task: str | None = None) -> Run:
    run_dir = Path(run_dir)
    info = ckpt.read_run(run_dir, task=task)
    cfg = config_mod.from_dict(info.get("config", {}))
    dev = resolve_device(device)
    # A run trained with fp16 on a GPU is still usable here: inference picks what this device does well.
    amp = "auto" if cfg.train.amp == "fp16" and dev.type != "cuda" else cfg.train.amp
    task_obj = get_task(info["task"])(cfg, dev, Precision(resolve_amp(amp, dev), dev), run_dir)
    model = _build(task_obj, info["model"]["name"], info["model"]["args"], dev)
    try:
        model.load_state_dict(ckpt.load_weights(run_dir / ckpt.WEIGHTS_FILE, dev))
    except RuntimeError as exc:
        raise LaminaError(
            f"{run_dir / ckpt.WEIGHTS_FILE} does not match the model recorded in "
            f"{ckpt.RUN_FILE}: {str(exc).splitlines()[-1].strip()}"
        ) from None
    model.eval()
    return Run(run_dir, info, cfg, task_obj, model)


def evaluate(
    run: str | Path | Run, data: str | None = None, split: str | None = None, device: str = "auto", **options
) -> dict:
    run = run if isinstance(run, Run) else load(run, device)
    return run.evaluate(data, split, **options)


def translate(run: str | Path | Run, texts: list[str], beam: int = 5, device: str = "auto", **options) -> list[dict]:
    run = run if isinstance(run, Run) else load(run, device)
    return run.translate(texts, beam, **options)


def transcribe(run: str | Path | Run, files: list[str | Path], beam: int = 1, device: str = "auto") -> list[dict]:
    run = run if isinstance(run, Run) else load(run, device)
    return run.transcribe(files, beam)


def predict(run: str | Path | Run, inputs: list[str], device: str = "auto", **options) -> list[dict[str, Any]]:
    run = run if isinstance(run, Run) else load(run, device)
    return run.predict(inputs, **options)


def inspect_gradients(
    runs: list[str | Path], steps: int = 200, rows: int = 16, out: str | Path = "gradient-flow.png", device: str = "cpu"
) -> dict[str, Any]:
    """How far back the loss gradient reaches in each language-model run; plots the curves to `out`."""
    from lamina.viz.gradient_flow import plot_gradient_flow

    if steps < 1 or rows < 1:
        raise UsageError("--steps and --rows must be at least 1")
    curves: dict[str, list[float]] = {}
    for path in runs:
        run = load(path, device, task="lm")
        label = f"{Path(path).name} ({run.info['model']['name']})"
        if label in curves:  # runs of the same name in different folders
            label = f"{path} ({run.info['model']['name']})"
        curves[label] = run.task.gradient_flow(run.model, run.meta, steps, rows)
    plot = plot_gradient_flow(curves, Path(out))
    return {"steps": steps, "rows": rows, "curves": curves, "plot": str(plot)}


def generate(run: str | Path | Run, prompt: str = "", length: int = 500, device: str = "auto", **options) -> str:
    """The whole generated text (use Run.generate to stream it)."""
    run = run if isinstance(run, Run) else load(run, device)
    return "".join(run.generate(prompt, length, **options))


def _new_run_dir(out: str | Path | None, cfg: RunConfig) -> tuple[Path, bool]:
    """(run directory, chosen automatically?): --out if given, refusing to overwrite anything, else
    runs/<task>-<data>-<model>[-N]. Nothing is created yet: that waits until the data has loaded."""
    if out is None:
        data = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(cfg.data.name.rstrip("/")).name) or "data"
        return _next_free(Path("runs") / f"{cfg.task}-{data}-{cfg.model.name}"), True
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LaminaError(f"--out {out} is a file, not a run directory")
    if (out / ckpt.RUN_FILE).exists():
        if not _died_before_first_checkpoint(out):
            raise LaminaError(f"{out} already holds a run; continue it with --resume or choose another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise LaminaError(f"--out {out} is a folder with other files in it; choose a new or empty folder")
    parent = next(p for p in [out, *out.absolute().parents] if p.exists())
    if not os.access(parent, os.W_OK):  # find out now, not after minutes of data loading
        raise LaminaError(f"cannot create run directory {out}: {parent} is not writable")
    return out, False


def _next_free(base: Path) -> Path:
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _died_before_first_checkpoint(run_dir: Path) -> bool:
    """A lamina run killed before it saved anything: only its own lamina.json (and log) are there."""
    try:
        info = ckpt.read_run(run_dir, need_weights=False)
    except LaminaError:
        return False
    own = {ckpt.RUN_FILE, ckpt.METRICS_FILE}
    return info.get("status") == "training" and all(p.name in own for p in run_dir.iterdir())


def _claim(run_dir: Path, automatic: bool) -> Path:
    """Create the run directory; an automatic name taken meanwhile (a parallel run) moves to the next one."""
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=not automatic)
            return run_dir
        except FileExistsError:
            run_dir = _next_free(run_dir)
        except OSError as exc:
            raise LaminaError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None


# Settings that decide the data order, the model or the optimizer: a resumed run must keep them.
FIXED_ON_RESUME = ("data.", "model.", "train.batch_size", "train.seed", "train.init", "train.freeze", "optim.name")


def _resolve_config(task_cls: type[Task], out, resume: bool, config_file, flags, sets) -> tuple[RunConfig, Path, bool]:
    """The run's configuration, its directory, and whether that directory was named automatically."""
    if resume:
        if out is None:
            raise UsageError("--resume needs --out RUN: the run directory to continue")
        info = ckpt.read_run(out, task=task_cls.name, need_weights=False)
        base = config_mod.from_dict(info.get("config", {}))
        cfg = _normalise(
            task_cls, config_mod.resolve(task_cls.defaults, base=base, config_file=config_file, flags=flags, sets=sets)
        )
        before, after = config_mod.flatten(base.to_dict()), config_mod.flatten(cfg.to_dict())
        changed = sorted(
            k for k in set(before) | set(after) if k.startswith(FIXED_ON_RESUME) and before.get(k) != after.get(k)
        )
        if changed:
            raise UsageError(f"cannot change {', '.join(changed)} when resuming; start a new run instead")
        return cfg, Path(out), False
    cfg = config_mod.resolve(task_cls.defaults, config_file=config_file, flags=flags, sets=sets)
    if cfg.train.init:
        # Transfer: the initialising run's architecture is the default, under everything the user set.
        init = ckpt.read_run(cfg.train.init, task=task_cls.name)
        fixed = ("in_channels", "num_classes", "image_size")
        inherited = {"model.name": init["model"]["name"]}
        inherited.update({f"model.{k}": v for k, v in init["model"]["args"].items() if k not in fixed})
        cfg = config_mod.resolve({**task_cls.defaults, **inherited}, config_file=config_file, flags=flags, sets=sets)
    check_options(task_cls.name, cfg.model.name, cfg.model.args)  # unknown models and options: before any data is read
    cfg = _normalise(task_cls, cfg)
    return (cfg, *_new_run_dir(out, cfg))


def _normalise(task_cls: type[Task], cfg: RunConfig) -> RunConfig:
    """Paths saved in the run are absolute, so the run works from any working directory."""
    cfg.task = task_cls.name
    cfg.data.name = task_cls.normalise_data(cfg.data.name)
    if cfg.train.init:
        cfg.train.init = str(Path(cfg.train.init).expanduser().resolve())
    for name in ("val", "catalogs"):
        if getattr(cfg.data, name):
            setattr(cfg.data, name, str(Path(getattr(cfg.data, name)).expanduser().resolve()))
    return cfg


def _check_same_data(run_dir: Path, saved: dict[str, Any], meta: dict[str, Any]) -> None:
    """Resuming on different data would silently change the data order."""
    differ = [k for k in ("classes", "channels", "image_size", "vocab") if k in saved and saved[k] != meta.get(k)]
    recorded = {k: v for k, v in saved.get("data", {}).items() if k in ("train", "val", "test", "sha256")}
    differ += [k for k, v in recorded.items() if meta.get("data", {}).get(k) != v]
    if differ:
        raise LaminaError(
            f"the data of {run_dir} changed since the run started ({', '.join(differ)} differ); "
            "resume needs the same data"
        )


def train(
    task: str,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    started: float | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train a model for `task`; settings are the keys of SETTINGS (data=..., epochs=..., lr=...).

    The time budget counts from `started` (a time.monotonic() value; default: now), so data loading,
    evaluation and saving are all inside it. Returns a summary: run directory, status, best
    validation and test metrics, timings.
    """
    started = time.monotonic() if started is None else started
    task_cls = get_task(task)
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise UsageError(f"unknown train() argument(s): {', '.join(sorted(unknown))}")
    flags = {SETTINGS[k]: v for k, v in settings.items()}
    cfg, run_dir, automatic = _resolve_config(task_cls, out, resume, config_file, flags, sets)
    saved = ckpt.load_trainer(run_dir / ckpt.TRAINER_FILE) if resume else None
    saved_meta = ckpt.read_run(run_dir, need_weights=False).get("meta") if resume else None

    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    precision = Precision(resolve_amp(cfg.train.amp, device), device)
    task_obj = task_cls(cfg, device, precision, run_dir)
    prepared = task_obj.prepare(saved_meta)
    if saved_meta is not None:
        _check_same_data(run_dir, saved_meta, prepared.meta)
    model_args = {**cfg.model.args, **prepared.model_args}
    model = _build(task_obj, cfg.model.name, model_args, device)
    if cfg.train.init and not resume:
        task_obj.init_from(model, cfg.train.init, cfg.train.freeze)
    elif cfg.train.freeze:
        model.freeze_features()  # resuming a frozen transfer run: the weights come from trainer.pt
    from lamina.viz import plot  # noqa: F401  (matplotlib loads now, not in the last seconds of a budget)

    run_dir = task_obj.run_dir = _claim(run_dir, automatic)
    if not resume:
        (run_dir / ckpt.METRICS_FILE).unlink(missing_ok=True)  # the log of a run that died before its checkpoint
    for name, content in prepared.files.items():
        ckpt.atomic_write(run_dir / name, lambda tmp, content=content: tmp.write_bytes(content))
    val, test, final_val = prepared.val, prepared.test, prepared.final_val
    after = (test.n_samples * task_obj.views() if test else 0) + (final_val.n_samples if final_val else 0)
    trainer = Trainer(
        model,
        task_obj.step,
        prepared.train,
        (lambda m: task_obj.evaluate(m, val, tta=False)) if val else None,
        cfg,
        run_dir,
        precision,
        monitor=task_cls.monitor,
        started=started,
        reserve_passes=after,
        val_samples=val.n_samples if val else 0,
        carry=task_obj,
    )
    if saved is not None:
        trainer.resume_from(saved)  # before lamina.json is rewritten: a failed resume leaves the run as it was
    info = {
        "format": ckpt.FORMAT_VERSION,
        "task": task_cls.name,
        "model": {"name": cfg.model.name, "args": model_args, "parameters": count_parameters(model)},
        "meta": prepared.meta,
        "config": cfg.to_dict(),
        "status": "training",
        "versions": ckpt.versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    ckpt.write_json(run_dir / ckpt.RUN_FILE, info)
    try:
        result = trainer.fit()
    except (NonFiniteLoss, torch.cuda.OutOfMemoryError) as exc:
        info["status"] = "diverged" if isinstance(exc, NonFiniteLoss) else "failed"
        ckpt.write_json(run_dir / ckpt.RUN_FILE, info)
        if isinstance(exc, NonFiniteLoss):
            raise
        raise LaminaError(
            f"out of memory on {device} (batch size {cfg.train.batch_size}); try a smaller --batch-size"
        ) from None

    summary: dict[str, Any] = {
        "run": str(run_dir),
        "status": result.status,
        "steps": result.state.step,
        "epochs": round(result.state.samples / max(prepared.train.n_samples, 1), 3),
        "precision": result.precision,
    }
    if result.status == "interrupted":
        info["status"] = "interrupted"
        ckpt.write_json(run_dir / ckpt.RUN_FILE, info)
        summary["seconds"] = round(trainer.elapsed(), 2)
        return summary

    metrics: dict[str, Any] = {}
    if result.best_metrics:
        metrics["val"] = {k.removeprefix("val_"): v for k, v in result.best_metrics.items()}
    if final_val is not None:
        metrics["val"] = {**task_obj.evaluate(model, final_val), "n": final_val.n_samples}
    if test is not None:
        metrics["test"] = task_obj.evaluate(model, test)
        metrics["test"]["n"] = test.n_samples
    from lamina.viz.curves import plot_curves

    plot_curves(result.history, run_dir / "curves.png", task_cls.monitor[0])
    summary["seconds"] = round(trainer.elapsed(), 2)
    info.update(
        status="complete",
        stopped=result.status,
        metrics=metrics,
        training={k: summary[k] for k in ("steps", "epochs", "seconds", "precision")},
    )
    ckpt.write_json(run_dir / ckpt.RUN_FILE, info)
    summary["metrics"] = metrics
    return summary
