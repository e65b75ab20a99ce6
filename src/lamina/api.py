"""The Python API: what the CLI (and later the server) call. It names no task: everything
task-specific comes from the task's declarations (lamina.tasks.base).

    import lamina
    result = lamina.train("classify", data="fashion-mnist", epochs=3, out="runs/fmnist")
    run = lamina.load("runs/fmnist")
    run.evaluate(split="test")["metrics"]["accuracy"]
    run.predict(["shoe.png"], top_k=3)["results"]
    lamina.load("runs/fr").translate(["Open the file"])["results"][0]["translation"]   # a task's verb
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lamina import config as config_mod
from lamina.commands import Verb
from lamina.config import RunConfig
from lamina.engine import checkpoint as ckpt
from lamina.engine import log
from lamina.engine.device import Precision, resolve_amp, resolve_device
from lamina.engine.distributed import Distributed
from lamina.engine.loop import NonFiniteLoss, Trainer
from lamina.errors import LaminaError, Reported, UsageError, warn
from lamina.models.registry import check_options, count_parameters, get_model
from lamina.tasks import Task, get_task, list_tasks


def find_verb(name: str) -> tuple[type[Task], Verb] | None:
    """The task that declares the verb `name`, and the verb."""
    for task_cls in list_tasks():
        for verb in task_cls.verbs:
            if verb.name == name or verb.attr == name:
                return task_cls, verb
    return None


@dataclass
class Run:
    """A trained model loaded from its run directory, ready to evaluate, predict, and do what its task
    declares (run.translate(...), run.transcribe(...), run.generate(...)): each returns one dict,
    the shape `--json` prints."""

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
        `options`: the task's own (its evaluate_args, e.g. translate: beam, length_penalty)."""
        data = data or self.config.data.name
        out_dir = Path(out_dir) if out_dir else self.path
        if split is None:
            split = "test" if self.task.has_split(data, "test") else "val"
        self._check_options("evaluate", options, self.task.evaluate_args)
        result = self.task.report(self.model, self.meta, data, split, out_dir, **options)
        return {"task": self.task.name, "run": str(self.path), "data": data, "split": split, **result}

    def predict(self, inputs: list, **options) -> dict[str, Any]:
        """{'task', 'run', 'results': one dict per input}. Inputs are what the task reads: file paths
        or in-memory images / waveforms / texts; a bad input gets {'input', 'error'}, the others go on."""
        self._check_options("predict", options, self.task.predict_args)
        return {
            "task": self.task.name,
            "run": str(self.path),
            **self.task.predict(self.model, self.meta, list(inputs), **options),
        }

    def call(self, name: str, *args, **arguments) -> dict[str, Any]:
        """Run the verb `name` that this run's task declares."""
        verb = next((v for v in self.task.verbs if v.name == name or v.attr == name), None)
        if verb is None:
            owner = find_verb(name)
            doer = f" (that is what {owner[0].name} runs do)" if owner else ""
            raise UsageError(f"a {self.task.name} run does not {name}{doer}")
        return getattr(self.task, verb.attr)(self.model, self.meta, *args, **arguments)

    def __getattr__(self, name: str):
        if name.startswith("_") or find_verb(name) is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return functools.partial(self.call, name)

    def _check_options(self, what: str, options: dict, declared) -> None:
        known = {a.dest for a in declared}
        for option in options:
            if option not in known:
                raise UsageError(f"--{option.replace('_', '-')} does not apply to a {self.task.name} run ({what})")


def load(run_dir: str | Path, device: str = "auto", task: str | None = None) -> Run:
    run_dir = Path(run_dir)
    info = ckpt.read_run(run_dir, task=task)
    task_cls = get_task(info["task"])
    cfg = config_mod.from_dict(info.get("config", {}), task_cls.Data)
    dev = resolve_device(device)
    # A run trained with fp16 on a GPU is still usable here: inference picks what this device does well.
    amp = "auto" if cfg.train.amp == "fp16" and dev.type != "cuda" else cfg.train.amp
    task_obj = task_cls(cfg, dev, Precision(resolve_amp(amp, dev), dev), run_dir)
    model = _build(task_obj, info["model"]["name"], info["model"]["args"], dev)
    try:
        model.load_state_dict(task_obj.upgrade_state(ckpt.load_weights(run_dir / ckpt.WEIGHTS_FILE, dev), info["meta"]))
    except RuntimeError as exc:
        raise LaminaError(
            f"{run_dir / ckpt.WEIGHTS_FILE} does not match the model recorded in "
            f"{ckpt.RUN_FILE}: {str(exc).splitlines()[-1].strip()}"
        ) from None
    model.eval()
    return Run(run_dir, info, cfg, task_obj, model)


def _load_each(runs, device: str) -> list[Run]:
    return [r if isinstance(r, Run) else load(r, device) for r in runs]


def evaluate(
    run: str | Path | Run, data: str | None = None, split: str | None = None, device: str = "auto", **options
) -> dict:
    return _load_each([run], device)[0].evaluate(data, split, **options)


def predict(run: str | Path | Run, inputs: list, device: str = "auto", **options) -> dict[str, Any]:
    return _load_each([run], device)[0].predict(inputs, **options)


def call(name: str, run: str | Path | Run, *args, device: str = "auto", **arguments) -> dict[str, Any]:
    """lamina.<verb>(run, ...): load the run (unless given a Run) and do the verb."""
    return _load_each([run], device)[0].call(name, *args, **arguments)


def export(run: str | Path | Run, format: str = "onnx", out: str | Path | None = None) -> dict[str, Any]:
    """The run's model as ONNX graphs with their preprocessing in JSON beside them (lamina.export)."""
    from lamina.export import export as export_run

    return export_run(run, format, out)


def inspect(
    run: str | Path | Run, what: str, out: str | Path | None = None, device: str = "cpu", **arguments
) -> dict[str, Any]:
    """lamina inspect RUN WHAT: a view of a run, its pictures in `out` (default: RUN/inspect), e.g.
    inspect(run, "gradcam", inputs=["shoe.png"]), inspect(run, "all"). lamina.insight has the views."""
    from lamina.insight import inspect as view

    return view(_load_each([run], device)[0], what, out, **arguments)


def attack(
    run: str | Path | Run, method: str = "pgd", eps: list[float] | None = None, device: str = "auto", **options
) -> dict[str, Any]:
    """lamina attack RUN: the run's test figure against adversarial examples of each size in `eps`
    (lamina.adversarial; options: steps, step_size, target, limit, out_dir, seed)."""
    loaded = _load_each([run], device)[0]
    if options.get("out_dir") is None:
        options["out_dir"] = loaded.path
    result = loaded.task.attack(loaded.model, loaded.meta, method, eps, **options)
    return {"task": loaded.task.name, "run": str(loaded.path), **result}


def search(task: str, **options) -> dict[str, Any]:
    """lamina search TASK: Optuna over the task's settings, every trial a run (lamina.tune.search)."""
    from lamina.tune import search as run_search

    return run_search(task, **options)


def _build(task: Task, name: str, args: dict[str, Any], device: torch.device) -> nn.Module:
    model = get_model(task.name, name, **args)
    if task.cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)  # only 4-D weights change; a no-op for MLPs
    return model.to(device)


# ----- training ---------------------------------------------------------------------------------------
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


def _resolve_config(
    task_cls: type[Task], out, resume: bool, config_file, flags, sets, main: bool = True
) -> tuple[RunConfig, Path, bool]:
    """The run's configuration, its directory, and whether that directory was named automatically
    (only the main process looks for one: the others are told which it took)."""
    layers = dict(data=task_cls.Data, config_file=config_file, flags=flags, sets=sets)
    if resume:
        info = ckpt.read_run(out, task=task_cls.name, need_weights=False)
        base = config_mod.from_dict(info.get("config", {}), task_cls.Data)
        cfg = _normalise(task_cls, config_mod.resolve(task_cls.defaults, base=base, **layers))
        before, after = config_mod.flatten(base.to_dict()), config_mod.flatten(cfg.to_dict())
        fixed = task_cls.fixed_on_resume
        changed = sorted(k for k in set(before) | set(after) if k.startswith(fixed) and before.get(k) != after.get(k))
        if changed:
            raise UsageError(f"cannot change {', '.join(changed)} when resuming; start a new run instead")
        return cfg, Path(out), False
    cfg = config_mod.resolve(task_cls.defaults, **layers)
    if cfg.train.init:
        if not task_cls.transfer:
            raise UsageError(f"task {task_cls.name!r} does not support --init (transfer from another run)")
        # Transfer: the initialising run's model (its name and the options it was given) is the default,
        # under everything the user set; what the data decides (classes, channels) is decided anew.
        # A run of another task (a classifier's backbone for a detector) lends its weights, not its model.
        init_info = ckpt.read_run(cfg.train.init, need_weights=False)
        allowed = (task_cls.name, *task_cls.transfer_from)
        if init_info["task"] not in allowed:
            takes = " or ".join(repr(t) for t in allowed)
            raise LaminaError(f"{cfg.train.init} is a {init_info['task']!r} run, not a {takes} run")
        ckpt.read_run(cfg.train.init)  # with its weights
        if init_info["task"] == task_cls.name:
            init = config_mod.from_dict(init_info.get("config", {}))
            inherited = {"model.name": init.model.name, **{f"model.{k}": v for k, v in init.model.args.items()}}
            cfg = config_mod.resolve({**task_cls.defaults, **inherited}, **layers)
    check_options(task_cls.name, cfg.model.name, cfg.model.args)  # unknown models and options: before any data is read
    cfg = _normalise(task_cls, cfg)
    return (cfg, *_new_run_dir(out, cfg)) if main else (cfg, Path(out or "."), False)


def _normalise(task_cls: type[Task], cfg: RunConfig) -> RunConfig:
    """Paths saved in the run are absolute, so the run works from any working directory."""
    cfg.task = task_cls.name
    cfg.data.name = task_cls.normalise_data(cfg.data.name)
    config_mod.make_paths_absolute(cfg)
    return cfg


def _check_same_data(task_cls: type[Task], run_dir: Path, saved: dict[str, Any], meta: dict[str, Any]) -> None:
    """Resuming on different data would silently change the data order."""
    differ = [k for k in task_cls.resume_keys if k in saved and saved[k] != meta.get(k)]
    recorded = {k: v for k, v in saved.get("data", {}).items() if k in ("train", "val", "test", "sha256")}
    differ += [k for k, v in recorded.items() if meta.get("data", {}).get(k) != v]
    if differ:
        raise LaminaError(
            f"the data of {run_dir} changed since the run started ({', '.join(differ)} differ); "
            "resume needs the same data"
        )


def settings_keys(task_cls: type[Task]) -> dict[str, str]:
    """Keyword arguments of train() (the --flags, without their dashes) -> dotted setting keys."""
    return {flag[2:].replace("-", "_"): key for key, flag in config_mod.flags(task_cls.Data).items()}  # as argparse


def train(
    task: str | None = None,
    *,
    out: str | Path | None = None,
    resume: bool | str | Path = False,
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    started: float | None = None,
    on_evaluation=None,
    **settings: Any,
) -> dict[str, Any]:
    """Train a model for `task`; settings are its train flags (data=..., epochs=..., lr=...; see
    `lamina config TASK`). resume=RUN (or resume=True with out=RUN) continues a run where it stopped,
    the task read from it. Under torchrun, every process calls this and trains its share.

    The time budget counts from `started` (a time.monotonic() value; default: now), so data loading,
    evaluation and saving are all inside it. `on_evaluation(record, progress)` is told each
    evaluation (engine.loop.Trainer) and stops training by returning True. Returns a summary: run
    directory, status, best validation and test metrics, timings.
    """
    started = time.monotonic() if started is None else started
    if resume not in (False, True):
        out, resume = resume, True
    if resume and out is None:
        raise UsageError("--resume needs the run to continue: --resume RUN (or --out RUN --resume)")
    if task is None:
        if not resume:
            raise UsageError("give the task to train (e.g. lamina train classify), or --resume RUN")
        task = ckpt.read_run(out, need_weights=False)["task"]
    task_cls = get_task(task)
    keys = settings_keys(task_cls)
    unknown = sorted(set(settings) - set(keys))
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not a setting of {task!r} runs (see: lamina config {task})")
    flags = {keys[k]: v for k, v in settings.items()}
    dist = Distributed.from_environment()
    try:
        cfg, run_dir, automatic = _resolve_config(task_cls, out, resume, config_file, flags, sets, dist.main)
        if cfg.train.tensorboard:
            log.require_tensorboard()
        device = dist.device(resolve_device(cfg.train.device))
        dist.start(device)
        try:
            with log.quiet(cfg.train.quiet or not dist.main):
                return _train(task_cls, cfg, run_dir, automatic, resume, started, device, dist, on_evaluation)
        finally:
            dist.stop()
    except LaminaError as exc:
        if dist.main or isinstance(exc, Reported):
            raise
        raise Reported(str(exc)) from None  # every process meets it; the main one says it


def _train(task_cls, cfg, run_dir, automatic, resume, started, device, dist, on_evaluation=None) -> dict[str, Any]:
    saved = ckpt.load_trainer(run_dir / ckpt.TRAINER_FILE) if resume else None
    saved_meta = ckpt.read_run(run_dir, need_weights=False).get("meta") if resume else None
    torch.manual_seed(dist.seed(cfg.train.seed))
    precision = Precision(resolve_amp(cfg.train.amp, device), device)
    task_obj = task_cls(cfg, device, precision, run_dir, dist)
    if cfg.train.adversarial != "off" and task_cls.perturb is Task.perturb:
        task_obj.perturb(None, None)  # says, in one line and before any data is read, that this task has none
    prepared, run_dir = _prepare(task_obj, saved_meta, run_dir, automatic, resume, dist)
    model_args = {**cfg.model.args, **prepared.model_args}
    model = _build(task_obj, cfg.model.name, model_args, device)
    task_obj.setup_model(model, prepared.meta, resume)
    from lamina.viz import plot  # noqa: F401  (matplotlib loads now, not in the last seconds of a budget)

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
        dist=dist,
        on_evaluation=on_evaluation,
        perturb=task_obj.perturb if cfg.train.adversarial != "off" else None,
    )
    if saved is not None:
        saved["model"] = task_obj.upgrade_state(saved["model"], prepared.meta)
        trainer.resume_from(saved)  # before lamina.json is rewritten: a failed resume leaves the run as it was
    info = {
        "format": ckpt.FORMAT_VERSION,
        "task": task_cls.name,
        "model": {"name": cfg.model.name, "args": model_args, "parameters": count_parameters(model)},
        "meta": prepared.meta,
        "config": cfg.to_dict(),
        "status": "training",
        "processes": dist.world,
        "versions": ckpt.versions(task_cls.libraries),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if resume:  # when the run began, not when it was last continued
        info["created"] = ckpt.read_run(run_dir, need_weights=False).get("created", info["created"])
    write = ckpt.write_json if dist.main else (lambda path, obj: None)
    write(run_dir / ckpt.RUN_FILE, info)
    try:
        result = trainer.fit()
    except (NonFiniteLoss, torch.cuda.OutOfMemoryError) as exc:
        info["status"] = "diverged" if isinstance(exc, NonFiniteLoss) else "failed"
        write(run_dir / ckpt.RUN_FILE, info)
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
        "processes": dist.world,
    }
    if dist.active:
        summary["rank"] = dist.rank
    if result.status == "interrupted":
        info["status"] = "interrupted"
        write(run_dir / ckpt.RUN_FILE, info)
        summary["seconds"] = round(trainer.elapsed(), 2)
        return summary

    metrics: dict[str, Any] = {}
    if result.best_metrics:
        metrics["val"] = {k.removeprefix("val_"): v for k, v in result.best_metrics.items()}
    if final_val is not None:
        metrics["val"] = {**task_obj.evaluate(model, final_val), "n": final_val.n_samples}
    if test is not None:
        metrics["test"] = {**task_obj.evaluate(model, test), "n": test.n_samples}
    if dist.main:
        from lamina.viz.curves import plot_curves

        plot_curves(result.history, run_dir / "curves.png", task_cls.monitor[0])
    summary["seconds"] = round(trainer.elapsed(), 2)
    warnings = task_obj.warnings(result.history, metrics, prepared.meta)
    for warning in warnings if dist.main else ():
        warn(warning)
    if warnings:
        summary["warnings"] = info["warnings"] = warnings
    info.update(
        status="complete",
        stopped=result.status,
        metrics=metrics,
        training={k: summary[k] for k in ("steps", "epochs", "seconds", "precision")},
    )
    write(run_dir / ckpt.RUN_FILE, info)
    summary["metrics"] = metrics
    return summary


def _prepare(task_obj: Task, saved_meta, run_dir: Path, automatic: bool, resume: bool, dist: Distributed):
    """The data, prepared by the main process first (it builds what is cached, trains what is learnt
    from the data, claims the run directory and writes the task's files there), then by the others
    as if resuming from the main process's meta, so that every process reads the same vocabulary,
    normalisation and tokenizer."""
    outcome = None
    if dist.main:
        try:
            prepared = task_obj.prepare(saved_meta)
            if saved_meta is not None:
                _check_same_data(type(task_obj), run_dir, saved_meta, prepared.meta)
            run_dir = task_obj.run_dir = _claim(run_dir, automatic)
            if not resume:
                (run_dir / ckpt.METRICS_FILE).unlink(
                    missing_ok=True
                )  # the log of a run that died before its checkpoint
            for name, content in prepared.files.items():
                ckpt.atomic_write(run_dir / name, lambda tmp, content=content: tmp.write_bytes(content))
            outcome = (True, prepared.meta, str(run_dir))
        except BaseException as exc:  # anything (a bug, Ctrl-C): the others must not wait for data that never comes
            outcome = (False, str(exc) or type(exc).__name__, "")
            dist.broadcast(outcome)
            raise
    ok, meta, where = dist.broadcast(outcome)
    if not ok:
        raise Reported(meta)  # the main process says why
    if not dist.main:
        run_dir = task_obj.run_dir = Path(where)
        prepared = task_obj.prepare(meta)
    return prepared, run_dir
