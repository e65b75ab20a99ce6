"""A search's trials: a table (TSV) and a plot of each trial's value, with the best so far."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lamina.viz.plot import pyplot, save


def write_table(rows: list[dict[str, Any]], key: str, path: Path) -> Path:
    from lamina.engine.checkpoint import atomic_write

    params = list(dict.fromkeys(p for r in rows for p in r["params"]))
    header = ["trial", "state", f"val_{key}", f"test_{key}", "seconds", *params]
    lines = ["\t".join(header)]
    for r in rows:
        cells = [r["trial"], r["state"], r["value"], r[f"test_{key}"], r["seconds"]]
        cells += [r["params"].get(p) for p in params]
        lines.append("\t".join("" if c is None else f"{c:.6g}" if isinstance(c, float) else str(c) for c in cells))
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return path


def plot_trials(rows: list[dict[str, Any]], key: str, mode: str, path: Path, log: set[str] = frozenset()) -> Path:
    """Left: the value of every trial in order (pruned ones at their last report) and the best so far.
    Right: the value against each numeric setting searched, up to four of them (`log`: on a log scale)."""
    plt = pyplot()
    numeric = [
        p for p in dict.fromkeys(p for r in rows for p in r["params"])
        if all(isinstance(r["params"].get(p), (int, float)) and not isinstance(r["params"].get(p), bool)
               for r in rows if p in r["params"])
    ][:4]  # fmt: skip
    fig, axes = plt.subplots(1, 1 + len(numeric), figsize=(5 + 3 * len(numeric), 3.6), squeeze=False)
    ax = axes[0][0]
    styles = {"complete": ("o", "tab:blue"), "pruned": ("x", "tab:grey"), "fail": ("v", "tab:red"),
              "interrupted": ("s", "tab:purple")}  # fmt: skip
    for state, (marker, colour) in styles.items():
        shown = [r for r in rows if r["state"] == state and r["value"] is not None and math.isfinite(r["value"])]
        ax.scatter([r["trial"] for r in shown], [r["value"] for r in shown], marker=marker, c=colour, label=state, s=22)
    best, line = None, []
    for r in sorted(rows, key=lambda r: r["trial"]):
        if r["state"] == "complete" and r["value"] is not None:
            better = best is None or (r["value"] > best if mode == "max" else r["value"] < best)
            best = r["value"] if better else best
        line.append((r["trial"], best))
    ax.step([t for t, b in line if b is not None], [b for _, b in line if b is not None], where="post",
            c="tab:orange", label="best so far")  # fmt: skip
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {key}")
    ax.legend(fontsize=7)
    count = {s: sum(r["state"] == s for r in rows) for s in styles}
    ax.set_title(f"{count['complete']} complete, {count['pruned']} pruned")
    for ax, p in zip(axes[0][1:], numeric):
        shown = [r for r in rows if p in r["params"] and r["value"] is not None]
        shown = [r for r in shown if r["state"] in ("complete", "pruned")]
        ax.scatter([r["params"][p] for r in shown], [r["value"] for r in shown],
                   c=["tab:blue" if r["state"] == "complete" else "tab:grey" for r in shown], s=18)  # fmt: skip
        if p in log:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: the minor labels overlap
        ax.set_xlabel(p)
    fig.tight_layout()
    return save(fig, path)
