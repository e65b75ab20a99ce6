"""The `lamina` command: parse arguments, call the API, print. No logic of its own, and no task names:
the train flags come from the settings each task declares, and a subcommand from each verb.

Errors are one line on stderr: exit code 2 for usage, 1 for failures, 130 after Ctrl-C.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # before torch is imported: `--time-budget` counts the whole command

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import typing  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from lamina import config as config_mod  # noqa: E402
from lamina.commands import Arg, Verb  # noqa: E402
from lamina.errors import LaminaError, Reported, UsageError  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _tasks():
    from lamina.tasks import list_tasks

    return list_tasks()


# ----- the parser, from the registry ---------------------------------------------------------------
def _train_flags(parser: argparse.ArgumentParser) -> None:
    """One option per setting that declares a flag: the shared settings, then every task's data
    settings; a flag that several tasks declare (--data, --val) is one option whose help names each."""
    found: dict[str, dict[str, Any]] = {}  # flag -> the setting's key, field and type, and the helps
    dests: list[str] = []
    for task_cls in [None, *_tasks()]:
        cfg = config_mod.empty(task_cls.Data if task_cls else config_mod.DataConfig)
        for key, f in config_mod.declared(cfg).items():
            flag = f.metadata.get("flag")
            if not flag or (task_cls and not key.startswith("data.")):
                continue  # the shared sections' flags come once, from the first pass
            hint = typing.get_type_hints(type(getattr(cfg, key.partition(".")[0])))[f.name]
            entry = found.setdefault(flag, {"key": key, "field": f, "hint": hint, "helps": []})
            if entry["key"] != key:
                raise ValueError(f"{flag} is declared for both {entry['key']} and {key}")
            entry["helps"].append(f"{task_cls.name}: {f.metadata['help']}" if task_cls else f.metadata["help"])
    for flag, entry in found.items():
        f, hint = entry["field"], entry["hint"]
        if hint is bool:
            options: dict[str, Any] = {"action": "store_true", "default": None}
        elif f.metadata.get("choices"):
            options = {"choices": f.metadata["choices"], "default": None}
        else:
            options = {
                "type": hint if hint in (int, float) else str,
                "metavar": f.metadata.get("metavar"),
                "default": None,
            }
        help_text = "; ".join(dict.fromkeys(entry["helps"])).replace("%", "%%")
        dests.append(parser.add_argument(flag, help=help_text, **options).dest)
    parser.set_defaults(settings=dests)  # the keyword arguments of api.train these options fill


def _union(parser: argparse.ArgumentParser, per_task: dict[str, tuple[Arg, ...]]) -> None:
    """Options of a command whose set depends on the run's task: each once, its help naming the tasks."""
    merged: dict[tuple[str, ...], tuple[Arg, list[str]]] = {}
    for task, args in per_task.items():
        for a in args:
            merged.setdefault(a.flags, (a, []))[1].append(task)
    for a, tasks in merged.values():
        a = dataclasses.replace(a, options={**a.options, "help": f"{a.options.get('help', '')} ({', '.join(tasks)})"})
        a.add_to(parser)


def _verb_parser(sub, verb: Verb, task_cls) -> None:
    p = sub.add_parser(verb.name, help=verb.help)
    p.add_argument("run", help=f"a {task_cls.name} run directory")
    defaults = verb.defaults(getattr(task_cls, verb.attr))
    for a in verb.args:
        a.add_to(p, defaults.get(a.dest, None))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help=f"print one JSON object: {verb.returns}" if verb.returns else "")
    p.set_defaults(handler=lambda a: cmd_verb(a, task_cls, verb))


def _inspect_parser(sub, tasks) -> None:
    """`lamina inspect RUN WHAT`: a subcommand per view any task declares (its options the union of the
    tasks' declarations of it), and `all`."""
    p = sub.add_parser("inspect", help="look inside a run: filters, activations, saliency, attention, ... (or all)")
    p.add_argument("run", help="a run directory")
    views = p.add_subparsers(dest="what", parser_class=_Parser, required=True, metavar="WHAT")
    declared: dict[str, dict[str, Any]] = {}
    for task_cls in tasks:
        for v in task_cls.insights:
            entry = declared.setdefault(v.name, {"help": v.help, "args": {}, "tasks": [], "defaults": {}})
            entry["tasks"].append(task_cls.name)
            entry["defaults"].update(v.defaults())
            for a in v.args:
                entry["args"].setdefault(a.flags, a)
    inputs = Arg(("inputs",), {"nargs": "*", "metavar": "INPUT", "help": "inputs for the views that read one"})
    declared["all"] = {"help": "every view that fits the run, in one folder with an index.html", "tasks": [],
                       "args": {("inputs",): inputs}, "defaults": {}}  # fmt: skip
    for name, entry in declared.items():
        tasks_named = f" ({', '.join(entry['tasks'])})" if entry["tasks"] else ""
        vp = views.add_parser(name, help=entry["help"] + tasks_named)
        for a in entry["args"].values():
            a.add_to(vp, entry["defaults"].get(a.dest))
        vp.add_argument("--out", metavar="DIR", help="where the pictures go (default: RUN/inspect)")
        vp.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default: cpu)")
        vp.add_argument("--json", action="store_true", help="print one JSON object: {view, run, plots, ...}")
        vp.set_defaults(handler=cmd_inspect, view_args={a.dest for a in entry["args"].values()})


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lamina", description="Train, evaluate and use deep networks.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    tasks = _tasks()

    t = sub.add_parser("train", help="train a model for a task (under torchrun: in several processes)")
    t.add_argument("task", nargs="?", help=f"what to learn: {', '.join(c.name for c in tasks)}")
    _train_flags(t)
    t.add_argument("--out", help="run directory (default: runs/TASK-DATA-MODEL[-N])")
    t.add_argument(
        "--resume", nargs="?", const=True, default=False, metavar="RUN", help="continue RUN (or --out) where it stopped"
    )
    t.add_argument("--config", metavar="FILE.yaml", help="settings file (sections: data, model, optim, train)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting, e.g. optim.lr=0.05 (see: lamina config TASK)",
    )
    t.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    t.set_defaults(handler=cmd_train)

    e = sub.add_parser("evaluate", help="measure a trained run on a split")
    e.add_argument("run")
    e.add_argument("--data", help="dataset name or path (default: the run's own)")
    e.add_argument("--split", choices=["train", "val", "test"], help="default: test if the data has one, else val")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--out", metavar="DIR", help="where plots and per-example files go (default: the run directory)")
    _union(e, {c.name: c.evaluate_args for c in tasks})
    e.add_argument("--json", action="store_true", help="print one JSON object: {task, run, data, split, n, metrics}")
    e.set_defaults(handler=cmd_evaluate)

    pr = sub.add_parser(
        "predict", help="predict for inputs: image files, texts or audio files, as the run's task reads"
    )
    pr.add_argument("run")
    pr.add_argument("inputs", nargs="+", metavar="INPUT")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _union(pr, {c.name: c.predict_args for c in tasks})
    pr.add_argument("--json", action="store_true", help="print one JSON object: {task, run, results: [...]}")
    pr.set_defaults(handler=cmd_predict)

    x = sub.add_parser("export", help="write a run's model as ONNX, with its preprocessing in JSON beside it")
    x.add_argument("run")
    x.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    x.add_argument("--out", metavar="FILE.onnx", help="where the graph goes (default: RUN/model.onnx)")
    x.add_argument("--json", action="store_true", help="print one JSON object: {task, run, onnx, preprocessing, ...}")
    x.set_defaults(handler=cmd_export)

    se = sub.add_parser("search", help="search a task's settings with Optuna: every trial a run, the study resumable")
    se.add_argument("task")
    se.add_argument("--trials", type=int, default=20, help="trials in the study (default: 20)")
    se.add_argument("--time-budget", type=float, default=75, metavar="S", help="seconds of each trial (default: 75)")
    se.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds of search")
    se.add_argument("--space", metavar="FILE.yaml", help="settings to search: KEY: [choices] or {low, high, log}")
    se.add_argument("--out", metavar="DIR", help="the study and its trials' runs (default: runs/search-TASK)")
    se.add_argument("--nproc", type=int, default=1, help="trials run at once, in processes sharing the cores")
    se.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                    help="how trials that trail are stopped early (default: median)")  # fmt: skip
    se.add_argument("--seed", type=int, default=0, help="the sampler's seed (each trial trains with train.seed)")
    se.add_argument("--data", help="dataset name or path (default: the task's)")
    se.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting every trial keeps")
    se.add_argument("--json", action="store_true", help="print one JSON object: {task, trials, best, table, plot}")
    se.set_defaults(handler=cmd_search)

    ex = sub.add_parser("explain", help="the principles from scratch: back-propagation by hand, the classic pipeline")
    exs = ex.add_subparsers(dest="explain_command", parser_class=_Parser, required=True, metavar="WHAT")
    bp = exs.add_parser("backprop", help="an MLP in NumPy: forward and backward passes written out, trained")
    bp.add_argument("--hidden", default="256,128", help="widths of the hidden layers (default: 256,128)")
    bp.add_argument("--epochs", type=int, default=3)
    bp.add_argument("--batch-size", type=int, default=64)
    bp.add_argument("--lr", type=float, default=0.05, help="SGD step size, with momentum 0.9 (default: 0.05)")
    bp.add_argument("--limit", type=int, default=0, help="use only the first N training and test images")
    bp.add_argument("--seed", type=int, default=0)
    bp.add_argument("--json", action="store_true", help="print one JSON object: {layers, gradient_check, epochs, ...}")
    bp.set_defaults(handler=cmd_explain_backprop)
    cl = exs.add_parser("classic", help="engineered features (HOG) and a linear SVM, as before deep learning")
    cl.add_argument("--features", choices=["hog", "hog+bovw"], default="hog", help="HOG, or HOG and visual words")
    cl.add_argument("--C", type=float, default=0.05, dest="C", help="the SVM's inverse regularisation (default: 0.05)")
    cl.add_argument("--limit", type=int, default=0, help="use only the first N training and test images")
    cl.add_argument("--json", action="store_true", help="print one JSON object: {features, test_accuracy, seconds}")
    cl.set_defaults(handler=cmd_explain_classic)

    _inspect_parser(sub, tasks)

    at = sub.add_parser("attack", help="adversarial examples: a run's test figure against FGSM or PGD of each size")
    at.add_argument("run")
    at.add_argument("--method", choices=["fgsm", "pgd"], default="pgd", help="default: pgd")
    at.add_argument("--eps", metavar="E,E,...", help="L-infinity sizes, pixels in [0, 1] (classify default: "
                    "0,0.02,0.05,0.1; detect: 0,0.005,0.01,0.02)")  # fmt: skip
    at.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    at.add_argument("--step-size", type=float, metavar="A", help="PGD step (default: 2.5 eps / steps)")
    at.add_argument("--target", metavar="C", help="a targeted attack towards class C (name or index; classify)")
    at.add_argument("--limit", type=int, help="test examples attacked (classify: 1000, detect: 50)")
    at.add_argument("--seed", type=int, default=0, help="PGD's random start")
    at.add_argument("--out", metavar="DIR", help="where the plots go (default: the run directory)")
    at.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    at.add_argument(
        "--json", action="store_true", help="print one JSON object: {method, n, curve: [{eps, ...}], plots}"
    )
    at.set_defaults(handler=cmd_attack)

    for task_cls in tasks:
        for verb in task_cls.verbs:
            _verb_parser(sub, verb, task_cls)

    m = sub.add_parser("models", help="list models: names, parameter counts, descriptions")
    m.add_argument("task", nargs="?")
    m.add_argument("--json", action="store_true")
    m.set_defaults(handler=cmd_models)

    c = sub.add_parser("config", help="every setting of a task: default, type, help (the keys of --set)")
    c.add_argument("task")
    c.add_argument("--model", help="list the options of this model (default: the task's default model)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=cmd_config)

    r = sub.add_parser("runs", help="list the runs in a folder: task, model, status, best metric, time")
    r.add_argument("folder", nargs="?", default="runs")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=cmd_runs)

    s = sub.add_parser("serve", help="serve runs over HTTP: a JSON API for every verb and a web page")
    s.add_argument(
        "runs", nargs="*", default=["runs"], metavar="RUN", help="run directories or folders of runs (default: runs)"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="server processes, each with every model")
    s.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    s.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="change a limit: body_bytes, image_pixels, audio_seconds, text_chars, inputs, "
                   "request_seconds, queue, or an option's largest value (length, beam, ...)")  # fmt: skip
    s.set_defaults(handler=cmd_serve)

    d = sub.add_parser("data", help="datasets available here and where they come from")
    dsub = d.add_subparsers(dest="data_command", parser_class=_Parser)
    dsub.add_parser("list", help="list datasets and whether they are on this machine")
    dp = dsub.add_parser("prepare", help="locate (or download, or make) and verify a dataset")
    dp.add_argument("name")
    from lamina.data.sources import DATASETS

    _union(dp, {d.name: d.prepare_args for d in DATASETS.values() if d.prepare_args})
    d.set_defaults(handler=cmd_data)
    return p


# ----- commands ------------------------------------------------------------------------------------
def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


def _errors(result: dict[str, Any]) -> bool:
    """Print the error of every input that failed (the others went on); True if any did."""
    failed = [r for r in result.get("results", []) if isinstance(r, dict) and "error" in r]
    for r in failed:
        print(f"lamina: error: {r['error']}", file=sys.stderr)
    return bool(failed)


def _finish(task, verb: str, result: dict[str, Any], as_json: bool) -> int:
    failed = _errors(result)
    if as_json:
        _print_json(result)
    else:
        task.render(verb, result)
    return 1 if failed else 0


def cmd_train(a: argparse.Namespace) -> int:
    from lamina import api

    settings = {k: getattr(a, k) for k in a.settings if getattr(a, k) is not None}
    # With --json, stdout carries only the summary object; progress lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
        summary = api.train(
            a.task, out=a.out, resume=a.resume, config_file=a.config, sets=a.set, started=STARTED, **settings
        )
    if summary.get("rank", 0):
        return 130 if summary["status"] == "interrupted" else 0  # torchrun's other processes: rank 0 reports
    if a.json:
        _print_json(summary)
    else:
        from lamina.tasks import get_task

        get_task(a.task or _task_of(summary["run"])).render("train", summary)
    return 130 if summary["status"] == "interrupted" else 0


def _task_of(run: str) -> str:
    return json.loads((Path(run) / "lamina.json").read_text())["task"]


def _options(a: argparse.Namespace, known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in vars(a).items() if k in known}


def cmd_evaluate(a: argparse.Namespace) -> int:
    from lamina import api

    run = api.load(a.run, a.device)
    known = {arg.dest for c in _tasks() for arg in c.evaluate_args}
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
    result = run.evaluate(data=a.data, split=a.split, out_dir=a.out, **_options(a, known))
    return _finish(run.task, "evaluate", result, a.json)


def cmd_predict(a: argparse.Namespace) -> int:
    from lamina import api

    run = api.load(a.run, a.device)
    known = {arg.dest for c in _tasks() for arg in c.predict_args}
    result = run.predict(a.inputs, **_options(a, known))
    return _finish(run.task, "predict", result, a.json)


def cmd_export(a: argparse.Namespace) -> int:
    from lamina import api

    result = api.export(a.run, a.format, a.out)
    if a.json:
        _print_json(result)
        return 0
    for g in result["graphs"]:
        print(
            f"wrote {g['onnx']} ({g['exporter']} exporter, opset {g['opset']}; onnxruntime within "
            f"{g['max_abs_difference']:.1g} of PyTorch) and {g['preprocessing']}"
        )
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from lamina import api

    run = api.load(a.run, a.device)
    arguments = {k: v for k, v in vars(a).items() if k in a.view_args and v not in (None, [])}
    result = api.inspect(run, a.what, out=a.out, **arguments)
    if a.json:
        _print_json(result)
        return 0
    renderer = getattr(run.task, f"render_inspect_{a.what}", None)
    if renderer is not None:
        renderer(result, sys.stdout)
    else:
        for skipped in result.get("skipped", []):
            print(f"not drawn: {skipped['view']}: {skipped['why']}")
        for path in result.get("plots", []):
            print(f"wrote {path}")
        if "index" in result:
            print(f"wrote {result['index']}")
    return 0


def cmd_attack(a: argparse.Namespace) -> int:
    from lamina import api

    try:
        eps = [float(e) for e in a.eps.split(",")] if a.eps else None
    except ValueError:
        raise UsageError(f"--eps takes numbers separated by commas, e.g. 0,0.05,0.1 (got {a.eps!r})") from None
    options = {k: v for k, v in (("limit", a.limit), ("step_size", a.step_size), ("target", a.target)) if v is not None}
    result = api.attack(a.run, a.method, eps, steps=a.steps, seed=a.seed, out_dir=a.out, device=a.device, **options)
    if a.json:
        _print_json(result)
        return 0
    metric = next(k for k in result["curve"][0] if k != "eps")
    print(f"{result['method']} on {result['n']} {result['split']} examples" + (f", towards {result['target']}"
          if result["target"] else ""))  # fmt: skip
    for p in result["curve"]:
        extra = f"  turned into the target {p['success']:.1%}" if "success" in p else ""
        print(f"  eps {p['eps']:<8g} {metric} {p[metric]:.4f}{extra}")
    for path in result["plots"]:
        print(f"wrote {path}")
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    from lamina import api

    settings = {"data": a.data} if a.data else {}
    result = api.search(
        a.task, trials=a.trials, time_budget=a.time_budget, timeout=a.timeout, space=a.space, out=a.out,
        nproc=a.nproc, pruner=a.pruner, seed=a.seed, sets=a.set, **settings,
    )  # fmt: skip
    if a.json:
        _print_json(result)
        return 0
    print(Path(result["table"]).read_text(), end="")
    counts = f"{result['complete']} complete, {result['pruned']} pruned, {result['failed']} failed"
    print(f"{counts} in {result['seconds']:.0f} s")
    best = result["best"]
    if best:
        print(f"best: trial {best['trial']}, {result['metric']} {best['value']:.4f} ({best['run']})")
        print(f"train it again: {best['command']}")
    print(f"wrote {result['table']} and {result['plot']}")
    return 0


def cmd_explain_backprop(a: argparse.Namespace) -> int:
    from lamina.principles import backprop

    try:
        hidden = tuple(int(w) for w in a.hidden.split(","))
    except ValueError:
        raise UsageError(f"--hidden takes widths separated by commas, e.g. 256,128 (got {a.hidden!r})") from None

    def show(r: dict) -> None:
        norms = "  ".join(f"layer {i + 1} {n:.3g}" for i, n in enumerate(r["gradient_norms"]))
        print(f"epoch {r['epoch']}: loss {r['loss']:.4f}, test accuracy {r['test_accuracy']:.2%}; "
              f"mean gradient norms: {norms}", file=sys.stderr if a.json else sys.stdout)  # fmt: skip

    result = backprop.explain(hidden, a.epochs, a.batch_size, a.lr, a.limit, a.seed, emit=show)
    if a.json:
        _print_json(result)
        return 0
    print(f"an MLP {' -> '.join(map(str, result['layers']))} in NumPy, gradients by hand; they differ from "
          f"autograd's by at most {result['gradient_check']:.1e}")  # fmt: skip
    print(f"test accuracy {result['test_accuracy']:.2%} after {a.epochs} epochs in {result['seconds']:.0f} s")
    return 0


def cmd_explain_classic(a: argparse.Namespace) -> int:
    from lamina.principles import classic

    result = classic.explain(a.features, a.limit, a.C)
    if a.json:
        _print_json(result)
        return 0
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items())
    print(f"{result['features']} features ({result['dimensions']} numbers per image) + {result['classifier']}: "
          f"test accuracy {result['test_accuracy']:.2%} ({times})")  # fmt: skip
    return 0


def cmd_verb(a: argparse.Namespace, task_cls, verb: Verb) -> int:
    from lamina import api

    arguments = _options(a, {arg.dest for arg in verb.args})
    for arg in verb.args:
        if arg.stdin and not arguments.get(arg.dest):
            if sys.stdin.isatty():
                print(f"lamina: reading {arg.dest} from stdin, one per line (Ctrl-D to end)", file=sys.stderr)
            arguments[arg.dest] = [line.rstrip("\n") for line in sys.stdin]
    run = api.load(a.run, a.device)
    if verb.stream and not a.json:
        arguments["emit"] = lambda piece: print(piece, end="", flush=True)
    result = run.call(verb.name, **arguments)
    return _finish(run.task, verb.name, result, a.json)


def cmd_models(a: argparse.Namespace) -> int:
    from lamina.models.registry import count_parameters, get_spec, list_models
    from lamina.tasks import get_task

    if a.task:
        get_task(a.task)
    rows = []
    for spec in list_models(a.task):
        model = get_spec(spec.task, spec.name).builder()  # its default sizes: 1x28x28 images, 84 characters, ...
        rows.append(
            {
                "task": spec.task,
                "name": spec.name,
                "parameters": count_parameters(model),
                "description": spec.description,
            }
        )
    if a.json:
        _print_json(rows)
        return 0
    for r in rows:
        print(f"{r['task']:10s} {r['name']:12s} {r['parameters']:>12,}  {r['description']}")
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    from lamina.models.registry import model_options
    from lamina.tasks import get_task

    task_cls = get_task(a.task)
    cfg = config_mod.resolve(task_cls.defaults, data=task_cls.Data, sets=[f"model.name={a.model}"] if a.model else [])
    rows = config_mod.describe(cfg)
    for name, default in model_options(task_cls.name, cfg.model.name).items():
        decided = " (decided by the data)" if name in task_cls.data_model_args else ""
        kind = type(default).__name__ if default is not None else ""
        help_text = f"option of the {cfg.model.name} model{decided}"
        rows.append(
            {"key": f"model.{name}", "default": default, "type": kind, "help": help_text, "flag": None, "choices": []}
        )
    if a.json:
        _print_json(rows)
        return 0
    print(f"settings of {task_cls.name} runs (lamina train {task_cls.name} --set KEY=VALUE, or a --config file):")
    for r in rows:
        extra = [f"flag {r['flag']}"] if r["flag"] else []
        extra += [f"one of {', '.join(r['choices'])}"] if r["choices"] else []
        shown = json.dumps(r["default"]) if not isinstance(r["default"], str) else repr(r["default"])
        print(f"  {r['key']:24s} {shown:16s} {r['type']:10s} {r['help']}" + (f" ({'; '.join(extra)})" if extra else ""))
    return 0


def cmd_runs(a: argparse.Namespace) -> int:
    from lamina.engine.checkpoint import list_runs

    rows = list_runs(Path(a.folder))
    if a.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no runs in {a.folder}")
        return 0
    print(f"{'run':32s} {'task':10s} {'model':12s} {'status':12s} {'best':>22s} {'seconds':>9s}  created")
    for r in rows:
        best = f"{r['metric']} {r['value']:.4f}" if r.get("value") is not None else "-"
        seconds = f"{r['seconds']:,.0f}" if r.get("seconds") is not None else "-"
        print(
            f"{r['run'][:32]:32s} {r['task']:10s} {r['model'][:12]:12s} {r['status']:12s} {best:>22s} "
            f"{seconds:>9s}  {r.get('created', '')}"
        )
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from lamina.serve import serve
    from lamina.serve.limits import Limits, with_overrides

    serve(a.runs, a.host, a.port, a.workers, with_overrides(Limits(), a.limit), a.device)
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from lamina.data.sources import DATASETS, find_dataset

    if a.data_command == "prepare":
        dataset = find_dataset(a.name)
        if dataset is None:
            raise UsageError(f"unknown dataset {a.name!r}; choose from: {', '.join(sorted(DATASETS))}")
        known = {arg.dest for arg in dataset.prepare_args}
        print(f"{a.name}: {dataset.prepare(a.name, **_options(a, known))}")
        return 0
    tasks = _tasks()
    for dataset in DATASETS.values():
        print(f"{dataset.task:10s} {dataset.name:16s} {dataset.description}\n{'':27s} {dataset.status()}")
    paths = "; ".join(f"{c.name}: {c.data_paths}" for c in tasks if c.data_paths)
    print(f"any task also takes --data PATH ({paths})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:  # without building the parser, which reads every task (and imports torch)
        from lamina import __version__

        print(f"lamina {__version__}")
        return 0
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.version:
            from lamina import __version__

            print(f"lamina {__version__}")
            return 0
        if not args.command:
            parser.print_help()
            return 2
        if args.command == "data" and not args.data_command:
            args.data_command = "list"
        return args.handler(args)
    except Reported:
        return 1
    except LaminaError as exc:
        print(f"lamina: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lamina models | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # disk full, permission denied, ...: the user's environment, said in one line
        print(f"lamina: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, with the way to the full traceback
        if os.environ.get("LAMINA_DEBUG"):
            raise
        print(
            f"lamina: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(set LAMINA_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
