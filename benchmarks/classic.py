"""The classic pipeline against a CNN at equal wall time on Fashion-MNIST: engineered features (HOG, and
HOG with a bag of visual words) and a linear SVM, then `lamina train classify` with the same seconds.

    python -m benchmarks.classic

Each is its own process, timed whole from outside (start-up, data, features, fitting, testing). The
CNN gets the wall time the slower classic pipeline took (its `--time-budget` counts the whole command).
Published for comparison: HOG + a linear SVM at about 92.6% on Fashion-MNIST's test set (the
benchmark table of the Fashion-MNIST repository lists such entries; its settings differ from ours).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks.common import append_section, run_lamina, table


def run_classic(features: str) -> dict:
    start = time.perf_counter()
    command = [sys.executable, "-m", "lamina", "explain", "classic", "--features", features, "--json"]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="hog,hog+bovw", help="comma-separated: hog, hog+bovw")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    a = p.parse_args()
    rows = []
    walls = []
    for features in a.features.split(","):
        r = run_classic(features)
        walls.append(r["wall_s"])
        command = f"`lamina explain classic --features {features}`"
        rows.append({"pipeline": f"{features} + LinearSVC", "command": command,
                     "learned": "the classifier only", "test accuracy": f"{r['test_accuracy']:.2%}",
                     "wall s": f"{r['wall_s']:.1f}",
                     "where the time went": ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())})  # fmt: skip
    budget = max(walls)
    args = ["train", "classify", "--time-budget", f"{budget - 1:.0f}", "--quiet", "--json"]
    s = run_lamina(args)
    rows.append({"pipeline": "CNN (vgg-s, the default recipe)", "command": f"`lamina {' '.join(args[:-2])}`",
                 "learned": "features and classifier, from pixels",
                 "test accuracy": f"{s['metrics']['test']['accuracy']:.2%}", "wall s": f"{s['wall_s']:.1f}",
                 "where the time went": f"{s['epochs']:.1f} epochs"})  # fmt: skip
    body = table(rows, list(rows[0])) + "\n\nThe CNN's budget is the slower classic pipeline's wall time.\n"
    print(body)
    if not a.no_write:
        append_section("Classic features and a linear SVM against a CNN at equal wall time",
                       "python -m benchmarks.classic", body)  # fmt: skip


if __name__ == "__main__":
    main()
