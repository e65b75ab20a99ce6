"""`lamina inspect RUN WHAT`: the principles made visible on a trained run.

Each task declares its views (``Task.insights``, lamina.insight.views.View): the generic image views
(filters, activations, saliency, Grad-CAM, embeddings) and its own (attention, gradient flow). `all`
writes every view that fits the run into one folder, with an HTML page that shows them.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError, UsageError

INDEX_FILE = "index.html"


def views_of(run) -> list:
    return [v for v in run.task.insights if v.fits(run)]


def inspect(run, what: str, out: str | Path | None = None, **arguments) -> dict[str, Any]:
    """The view `what` of a loaded run, its pictures in `out` (default: RUN/inspect)."""
    out = Path(out) if out else run.path / "inspect"
    if what == "all":
        return inspect_all(run, out, arguments.pop("inputs", None) or [], **arguments)
    fitting = views_of(run)
    view = next((v for v in fitting if v.name == what), None)
    if view is None:
        names = ", ".join([v.name for v in fitting] + ["all"])
        model = run.info["model"]["name"]
        raise UsageError(f"{what!r} does not apply to a {run.task.name} run ({model}); the views that do: {names}")
    known = {a.dest for a in view.args}
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise UsageError(f"--{unknown[0].replace('_', '-')} does not apply to the {what} view")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = view.function(run, out, **arguments)
    return {"view": what, "run": str(run.path), **result, "seconds": round(time.perf_counter() - started, 2)}


def inspect_all(run, out: Path, inputs: list, **arguments) -> dict[str, Any]:
    """Every view that fits the run, with the inputs given (or the task's sample inputs), and an index page."""
    if arguments:
        raise UsageError(f"--{next(iter(arguments)).replace('_', '-')} does not apply to the all view")
    out.mkdir(parents=True, exist_ok=True)
    fitting = views_of(run)
    if not inputs and any(v.reads for v in fitting):
        inputs = run.task.sample_inputs(run.meta)
    done, skipped = [], []
    for view in fitting:
        if view.reads and not inputs:
            skipped.append({"view": view.name, "why": "no input to look at"})
            continue
        try:
            done.append(inspect(run, view.name, out, **({"inputs": inputs} if view.reads else {})))
        except LaminaError as exc:  # one view that cannot be made must not lose the others
            skipped.append({"view": view.name, "why": str(exc)})
    index = write_index(run, out / INDEX_FILE, done, skipped, fitting)
    return {"view": "all", "run": str(run.path), "views": done, "skipped": skipped, "index": str(index),
            "plots": [p for d in done for p in d.get("plots", [])]}  # fmt: skip


def write_index(run, path: Path, done: list[dict], skipped: list[dict], views: list) -> Path:
    from lamina.engine.checkpoint import atomic_write

    helps = {v.name: v.help for v in views}
    e = html.escape
    info = run.info
    sections = []
    for d in done:
        images = "".join(
            f'<figure><a href="{e(Path(p).name)}"><img src="{e(Path(p).name)}" alt="{e(d["view"])}"></a>'
            f"<figcaption>{e(Path(p).name)}</figcaption></figure>"
            for p in d.get("plots", [])
            if Path(p).parent == path.parent
        )
        sections.append(f'<section id="{e(d["view"])}"><h2>{e(d["view"])}</h2><p>{e(helps.get(d["view"], ""))}</p>'
                        f"{images}</section>")  # fmt: skip
    notes = "".join(f"<li><b>{e(s['view'])}</b>: {e(s['why'])}</li>" for s in skipped)
    links = " · ".join(f'<a href="#{e(d["view"])}">{e(d["view"])}</a>' for d in done)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(run.path.name)}: inspect</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:80em}}img{{max-width:100%;border:1px solid #ccc}}
figure{{display:inline-block;margin:.5em;max-width:48em;vertical-align:top}}figcaption{{font-size:.8em;color:#555}}
h2{{border-bottom:1px solid #ddd}}</style></head><body>
<h1>{e(run.path.name)}</h1>
<p>{e(info["task"])} · {e(info["model"]["name"])} · {info["model"].get("parameters", 0):,} parameters</p>
<nav>{links}</nav>
{"".join(sections)}
{f"<h2>Not drawn</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""
    atomic_write(path, lambda tmp: tmp.write_text(page))
    return path
