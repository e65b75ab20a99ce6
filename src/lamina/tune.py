"""Hyper-parameter search (tuning): `lamina search TASK --trials N --time-budget S [--space FILE.yaml]`.

Optuna chooses each trial's settings (TPE, Bergstra et al. 2011) and stops trials that trail the
others early (median or Hyperband pruning), fed by the engine's own evaluations through
``api.train(on_evaluation=...)``. A trial is a normal `lamina train` run in OUT/trial-NNNN, with the
same time budget as every other, so the search compares recipes at the cost a user will pay. The
objective is the run's validation figure (the task's monitor): the test split stays unseen until
the best recipe is re-measured.

The study lives in OUT/study.db (SQLite): running the same command again continues it, and a trial
cut short by Ctrl-C or a crash is tried again with the same settings. `--nproc N` runs trials in N
processes sharing the study, each with its share of the cores.

A search space maps setting keys (those of `lamina config TASK`) to a list of choices or to a range:

    optim.lr: {low: 0.02, high: 1.0, log: true}
    train.batch_size: [64, 128, 256]
    data.crop_padding: {low: 0, high: 4}          # integers when both ends are
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # a trial's process: its time budget counts from here, as `lamina train`'s does

import math  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from lamina.errors import LaminaError, UsageError  # noqa: E402

STUDY_FILE = "study.db"
TRIALS_FILE = "trials.tsv"
PLOT_FILE = "trials.png"
# Evaluations are reported to the pruner by the share of the time budget gone, in this many steps, so that
# trials with different batch sizes (and so different steps per epoch) are compared at the same cost.
PRUNING_STEPS = 20


def require() -> Any:
    try:
        import optuna
    except ImportError:
        raise LaminaError("lamina search needs Optuna: pip install 'lamina[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # lamina says what happened to each trial itself
    return optuna


# ----- the space ----------------------------------------------------------------------------------------
def default_space(task_cls) -> dict[str, Any]:
    """The task's declared space, else the learning rate and weight decay around its defaults."""
    if task_cls.search_space:
        return dict(task_cls.search_space)
    from lamina import config as config_mod

    optim = config_mod.resolve(task_cls.defaults, data=task_cls.Data).optim
    return {
        "optim.lr": {"low": optim.lr / 10, "high": optim.lr * 3, "log": True},
        "optim.weight_decay": {"low": 1e-6, "high": 0.1, "log": True},
    }


def read_space(path: str | Path) -> dict[str, Any]:
    try:
        space = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise LaminaError(f"cannot read the search space {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(space, dict) or not space:
        raise UsageError(f"{path} must map setting keys to choices or ranges, e.g. 'optim.lr: {{low: 0.01, high: 1}}'")
    return space


def check_space(task_cls, space: dict[str, Any]) -> None:
    """Every key a setting of the task, every range well formed: said before any trial starts."""
    from lamina import config as config_mod
    from lamina.models.registry import model_options

    cfg = config_mod.resolve(task_cls.defaults, data=task_cls.Data)
    known = set(config_mod.flatten(cfg.to_dict()))
    names = space.get("model.name", [])
    models = {cfg.model.name, *(names if isinstance(names, list) else [])}
    options = {f"model.{o}" for m in models for o in model_options(task_cls.name, m)}
    for key, spec in space.items():
        if key not in known and key not in options:
            raise UsageError(f"{key!r} in the search space is not a setting of {task_cls.name} runs (lamina config)")
        if isinstance(spec, list):
            if not spec:
                raise UsageError(f"{key}: an empty list of choices")
        elif isinstance(spec, dict) and {"low", "high"} <= set(spec) and set(spec) <= {"low", "high", "log", "step"}:
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise UsageError(f"{key}: low and high must be numbers with low < high (got {low!r}, {high!r})")
            if spec.get("log") and low <= 0:
                raise UsageError(f"{key}: a log range must be positive (low {low!r})")
        else:
            raise UsageError(f"{key}: give a list of choices or {{low, high[, log, step]}} (got {spec!r})")


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    chosen = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            chosen[key] = trial.suggest_categorical(key, spec)
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not spec.get("log"):
            chosen[key] = trial.suggest_int(key, spec["low"], spec["high"], step=int(spec.get("step", 1)))
        else:
            chosen[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return chosen


def as_sets(params: dict[str, Any]) -> list[str]:
    """--set KEY=VALUE of a trial's settings; floats to 4 significant digits, as the trial trains and as a
    user retypes them (TPE's 0.09544438849721851 is no better than 0.09544)."""
    return [f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in params.items()]


# ----- one trial ----------------------------------------------------------------------------------------
class Objective:
    """Train one run with a trial's settings, in a process of its own; its validation figure is the
    trial's value. A fresh process pays what `lamina train` pays (Python, torch, reading the data), so
    that the search's figures are those a user will see: in the searching process itself, the data
    already decoded and everything warm, a 74-second trial trained about 10 s longer than a run of the
    same recipe did."""

    def __init__(self, task: str, out: Path, space: dict, time_budget: float, sets: list[str], settings: dict,
                 pruner: str, threads: int):  # fmt: skip
        self.task, self.out, self.space, self.time_budget = task, out, space, time_budget
        self.sets, self.settings, self.pruner, self.threads = sets, settings, pruner, threads

    def __call__(self, trial) -> float:
        import json
        import subprocess
        import sys

        from lamina.tasks import get_task

        optuna = require()
        params = suggest(trial, self.space)
        run_dir = self.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run", run_dir.name)
        key = get_task(self.task).monitor[0]
        train = {"out": str(run_dir), "time_budget": self.time_budget, "sets": [*self.sets, *as_sets(params)],
                 **self.settings}  # fmt: skip
        spec = {"out": str(self.out), "task": self.task, "pruner": self.pruner, "trial": trial._trial_id,
                "threads": self.threads, "train": train}  # fmt: skip
        child = subprocess.Popen([sys.executable, "-m", "lamina.tune", json.dumps(spec)], stdout=subprocess.PIPE,
                                 text=True)  # fmt: skip
        try:
            stdout, _ = child.communicate()
        except KeyboardInterrupt:  # the trial got the same Ctrl-C: it saves a resumable run and says so
            child.communicate()
            trial.set_user_attr("interrupted", True)
            raise
        lines = stdout.strip().splitlines()
        summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"error": "the trial died"}
        if "error" in summary:  # a loss gone NaN, a model that does not fit: a failed trial; the search goes on
            trial.set_user_attr("error", summary["error"])
            raise LaminaError(f"trial {trial.number}: {summary['error']}")
        trial.set_user_attr("seconds", summary.get("seconds"))
        if summary["status"] == "interrupted":
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt
        value = summary.get("metrics", {}).get("val", {}).get(key)
        test = summary.get("metrics", {}).get("test", {}).get(key)
        if test is not None:
            trial.set_user_attr(f"test_{key}", test)
        if summary["status"] == "pruned":
            raise optuna.TrialPruned(f"val {key} {value} trailed the other trials")
        if value is None:
            raise LaminaError(f"trial {trial.number} measured no validation {key}")
        return value


def reporter(trial, key: str, mode: str):
    """The engine's on_evaluation for a trial: its best validation figure so far, at each of
    PRUNING_STEPS shares of the time budget; True (stop) when the pruner says the trial trails."""
    reported: set[int] = set()
    best: list[float] = []

    def on_evaluation(record: dict[str, Any], progress: float) -> bool:
        value = record.get(f"val_{key}")
        if value is None or not math.isfinite(value):
            return False
        best.append(value if not best else (max if mode == "max" else min)(best[-1], value))
        step = min(int(progress * PRUNING_STEPS), PRUNING_STEPS - 1)
        if step in reported:  # one value per step; the run keeps its best weights, so the best so far
            return False
        reported.add(step)
        trial.report(best[-1], step)
        return trial.should_prune()

    return on_evaluation


def _trial_process(spec: dict[str, Any]) -> int:
    """`python -m lamina.tune SPEC`: one trial's training, reporting to the study as it goes; prints the
    summary (or {"error"}) as the last line of its output."""
    import json

    import torch

    from lamina import api
    from lamina.tasks import get_task

    optuna = require()
    torch.set_num_threads(spec["threads"])
    study = _study(Path(spec["out"]), spec["task"], 0, spec["pruner"])
    trial = optuna.trial.Trial(study, spec["trial"])
    key, mode = get_task(spec["task"]).monitor
    try:
        summary = api.train(spec["task"], quiet=True, started=STARTED, on_evaluation=reporter(trial, key, mode),
                            **spec["train"])  # fmt: skip
    except LaminaError as exc:
        summary = {"error": str(exc)}
    print(json.dumps(summary, default=str))
    return 0


def counted(study) -> int:
    """Trials that count towards --trials: complete, pruned, or failed on their own (a trial stopped by
    Ctrl-C is tried again, and does not count)."""
    State = require().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return sum(
        t.state in (State.COMPLETE, State.PRUNED)
        or (t.state == State.FAIL and not t.user_attrs.get("interrupted") and t.number not in retried)
        for t in trials
    )


class StopAt:
    """Stops the study (in every process that shares it) once `trials` count."""

    def __init__(self, trials: int):
        self.trials = trials

    def __call__(self, study, trial) -> None:
        if counted(study) >= self.trials:
            study.stop()


def _study(out: Path, task: str, seed: int, pruner: str):
    """The study in OUT/study.db, created or continued. The sampler's seed moves on with the trials
    already there, so that a continued search does not draw its first trials again."""
    from lamina.tasks import get_task

    optuna = require()

    mode = get_task(task).monitor[1]
    pruners = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=PRUNING_STEPS // 4),
        "hyperband": optuna.pruners.HyperbandPruner(min_resource=PRUNING_STEPS // 4, max_resource=PRUNING_STEPS),
        "none": optuna.pruners.NopPruner(),
    }
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{Path(out).absolute() / STUDY_FILE}", engine_kwargs={"connect_args": {"timeout": 60}}
    )
    name = f"lamina-{task}"
    existing = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}.get(name, 0)
    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize" if mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed + 1000 * existing, multivariate=True, n_startup_trials=8),
        pruner=pruners[pruner],
        load_if_exists=True,
    )


def start_from_defaults(study, task_cls, space: dict[str, Any], sets: list[str]) -> None:
    """The first trial is the task's own recipe (its settings that lie in the space, the rest drawn):
    the search knows from the start what the hand-tuned default gives."""
    from lamina import config as config_mod

    flat = config_mod.flatten(config_mod.resolve(task_cls.defaults, data=task_cls.Data, sets=sets).to_dict())
    chosen = {}
    for key, spec in space.items():
        value = flat.get(key)
        if isinstance(spec, list) and value in spec:
            chosen[key] = value
        elif isinstance(spec, dict) and isinstance(value, (int, float)) and spec["low"] <= value <= spec["high"]:
            chosen[key] = value
    if chosen:
        study.enqueue_trial(chosen, user_attrs={"default": True})


def _retry_cut_short(study) -> int:
    """Trials a crash left running, or Ctrl-C stopped, run again with the same settings (once each); the
    trial cut short then no longer counts towards --trials, its retry does."""
    optuna = require()
    State = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    again = 0
    for t in trials:
        if t.state == State.RUNNING:  # nobody else runs this study (lamina search holds it): a crash
            study.tell(t.number, state=State.FAIL)
        elif not (t.state == State.FAIL and t.user_attrs.get("interrupted")):
            continue
        if t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            again += 1
    return again


# ----- the search ---------------------------------------------------------------------------------------
def search(
    task: str,
    *,
    trials: int = 20,
    time_budget: float = 75,
    timeout: float | None = None,
    space: str | Path | dict | None = None,
    out: str | Path | None = None,
    nproc: int = 1,
    pruner: str = "median",
    seed: int = 0,
    sets: list[str] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Search `task`'s settings over `trials` runs of `time_budget` seconds each (or until `timeout`
    seconds have gone); returns the trials, the best one, the command that trains it again, and
    the table and plot written in `out`."""
    from lamina import api
    from lamina.tasks import get_task

    require()
    task_cls = get_task(task)
    if trials < 1 or time_budget <= 0 or nproc < 1 or (timeout is not None and timeout <= 0):
        raise UsageError("--trials, --time-budget, --nproc and --timeout must be positive")
    if pruner not in ("median", "hyperband", "none"):
        raise UsageError(f"unknown pruner {pruner!r}; choose from: median, hyperband, none")
    unknown = sorted(set(settings) - set(api.settings_keys(task_cls)))
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not a setting of {task!r} runs (see: lamina config {task})")
    space = read_space(space) if isinstance(space, (str, Path)) else dict(space or default_space(task_cls))
    check_space(task_cls, space)
    out = Path(out or f"runs/search-{task}")
    if out.exists() and not (out / STUDY_FILE).exists() and any(out.iterdir()):
        raise LaminaError(f"{out} holds other files and no {STUDY_FILE}; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    study = _study(out, task, seed, pruner)
    recorded = study.user_attrs.get("space")
    if recorded is not None and recorded != space:
        raise UsageError(f"{out} holds a search over another space; continue it with the same --space, or choose --out")
    study.set_user_attr("space", space)
    if not study.trials:
        start_from_defaults(study, task_cls, space, sets or [])
    again = _retry_cut_short(study)
    started = time.monotonic()
    threads = max(1, (os.cpu_count() or 1) // nproc)  # each trial's process gets its share of the cores
    objective = Objective(task, out, space, time_budget, list(sets or []), settings, pruner, threads)
    queued = sum(t.state == require().trial.TrialState.WAITING for t in study.trials)
    for jobs, n in ((1, queued), (nproc, None)):
        # Queued trials (the default recipe, retries) one at a time: two of Optuna's threads can take the
        # same one from SQLite. Then n_jobs threads, each waiting on its own trial's process.
        left = None if timeout is None else timeout - (time.monotonic() - started)  # --timeout is the whole search's
        n = trials - counted(study) if n is None else min(n, trials - counted(study))
        if n > 0 and (left is None or left > 0):
            study.optimize(objective, n_trials=n, timeout=left, n_jobs=jobs, callbacks=[StopAt(trials)],
                           catch=(LaminaError,))  # fmt: skip
    return summarise(study, task_cls, out, time_budget, sets or [], settings, time.monotonic() - started, again)


def summarise(study, task_cls, out: Path, time_budget, sets, settings, seconds: float, retried: int) -> dict[str, Any]:
    optuna = require()
    key = task_cls.monitor[0]
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            continue  # not run yet (a retry queued by a search that stopped first)
        last = max(t.intermediate_values.items(), default=(None, None))[1]
        rows.append(
            {
                "trial": t.number,
                "state": "interrupted" if t.user_attrs.get("interrupted") else t.state.name.lower(),
                "value": t.value if t.value is not None else last,
                f"test_{key}": t.user_attrs.get(f"test_{key}"),
                "seconds": t.user_attrs.get("seconds"),
                "run": str(out / t.user_attrs["run"]) if "run" in t.user_attrs else None,
                "params": t.params,
                **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
            }
        )
    complete = [r for r in rows if r["state"] == "complete"]
    best = None
    if complete:
        b = study.best_trial
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
        command = f"lamina train {task_cls.name} --time-budget {time_budget:g} {flags} " + " ".join(
            f"--set {s}" for s in [*sets, *as_sets(b.params)]
        )
        best = {"trial": b.number, "value": b.value, "params": b.params, "run": str(out / b.user_attrs["run"]),
                "command": " ".join(command.split())}  # fmt: skip
    from lamina.viz.search import plot_trials, write_table

    table = write_table(rows, key, out / TRIALS_FILE)
    log = {k for k, spec in (study.user_attrs.get("space") or {}).items() if isinstance(spec, dict) and spec.get("log")}
    plot = plot_trials(rows, key, task_cls.monitor[1], out / PLOT_FILE, log)
    return {
        "task": task_cls.name,
        "metric": f"val_{key}",
        "study": str(out / STUDY_FILE),
        "trials": rows,
        "complete": len(complete),
        "pruned": sum(r["state"] == "pruned" for r in rows),
        "failed": sum(r["state"] == "fail" for r in rows),
        "retried": retried,
        "best": best,
        "seconds": round(seconds, 1),
        "table": str(table),
        "plot": str(plot),
    }


if __name__ == "__main__":
    import json
    import sys

    raise SystemExit(_trial_process(json.loads(sys.argv[1])))
