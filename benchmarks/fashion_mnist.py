"""Fashion-MNIST: test accuracy reached by lamina's recipes within fixed wall-clock budgets on this machine.

    python -m benchmarks.fashion_mnist                     # the 75 s, 3 min and 10 min recipes
    python -m benchmarks.fashion_mnist --recipes best      # the 60-minute recipe
    python -m benchmarks.fashion_mnist --recipes 75s,3min --repeats 3   # seeds 0, 1, 2; medians

Each recipe runs as its own `lamina train classify ... --json` process; the wall clock is the whole
command (Python start, data loading, training, evaluation, saving) and the peak memory is that
process's maximum resident set.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import append_section, command_line, median, run_lamina, table

# name -> (arguments, target test accuracy, wall-clock limit in seconds)
RECIPES = {
    "75s": (["--time-budget", "74"], 0.916, 75),
    "3min": (["--model", "vgg-m", "--time-budget", "178"], 0.930, 180),
    "10min": (
        ["--model", "vgg-m", "--time-budget", "595", "--set", "data.crop_padding=2", "--set", "data.erase=0.25"],
        0.940,
        600,
    ),
    "best": (
        ["--model", "vgg-l", "--time-budget", "3580", "--set", "data.crop_padding=2", "--set", "data.erase=0.5"],
        0.950,
        3600,
    ),
}
# The peer: PyTorch's examples/mnist CNN (Adadelta, batch 64), unchanged, trained on Fashion-MNIST on this machine.
PEER = "PyTorch examples/mnist: 87.9% after 73 s, 91.0% after 146 s, 91.6% after 220 s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="75s,3min,10min", help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument("--repeats", type=int, default=1, help="runs per recipe (seeds 0, 1, ...); the median is reported")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    a = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.recipes.split(","):
            args, target, limit = RECIPES[name]
            runs = []
            for seed in range(a.repeats):
                out = Path(tmp) / f"{name}-{seed}"
                full = [
                    "train",
                    "classify",
                    "--data",
                    "fashion-mnist",
                    *args,
                    "--seed",
                    str(seed),
                    "--out",
                    str(out),
                    "--json",
                    "--quiet",
                ]
                s = run_lamina(full)
                runs.append(s)
                print(
                    json.dumps(
                        {
                            "recipe": name,
                            "seed": seed,
                            "test_accuracy": s["metrics"]["test"]["accuracy"],
                            "wall_s": s["wall_s"],
                            "epochs": s["epochs"],
                            "peak_rss_mib": s["peak_rss_mib"],
                        }
                    ),
                    flush=True,
                )
            accs = [r["metrics"]["test"]["accuracy"] for r in runs]
            walls = [r["wall_s"] for r in runs]
            rows.append(
                {
                    "recipe": name,
                    "command": f"`{command_line(['train', 'classify', *args])}`",
                    "test accuracy (median)": f"{median(accs):.2%}",
                    "all runs": ", ".join(f"{x:.2%}" for x in accs),
                    "wall s (median)": f"{median(walls):.1f}",
                    "epochs": f"{median([r['epochs'] for r in runs]):.1f}",
                    "peak RSS MiB": max(r["peak_rss_mib"] for r in runs),
                    "target": f">= {target:.1%} in <= {limit} s",
                    "met": "yes" if median(accs) >= target and max(walls) <= limit else "NO",
                }
            )
    body = table(rows, list(rows[0])) + f"\n\nPeer on the same machine (from the issue): {PEER}.\n"
    print(json.dumps({"benchmark": "fashion_mnist", "rows": rows}))
    if not a.no_write:
        append_section(
            "Fashion-MNIST: accuracy within a wall-clock budget",
            f"python -m benchmarks.fashion_mnist --recipes {a.recipes} --repeats {a.repeats}",
            body,
        )


if __name__ == "__main__":
    main()
