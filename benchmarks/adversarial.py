"""Adversarial robustness: the Fashion-MNIST default recipe trained with and without PGD adversarial
training at equal wall time, each measured clean and under FGSM and PGD attacks.

    python -m benchmarks.adversarial                 # 2 runs of 75 s, then the attacks on 2,000 test images

Each run is `lamina train classify --time-budget 74` (the 75-second recipe), the adversarial one with
`--set train.adversarial=pgd` (eps 0.1, 3 steps), as its own process, one after the other. Then
`lamina attack RUN --method pgd --steps 10 --eps 0,0.05,0.1` and `--method fgsm --eps 0.1` on the
first `--limit` test images (one view: no mirrored average, which the attack would have to see too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import append_section, run_lamina, table

BUDGET = 74
EPS = [0.0, 0.05, 0.1]


def attack(run: Path, method: str, eps: list[float], limit: int) -> list[dict]:
    command = [sys.executable, "-m", "lamina", "attack", str(run), "--method", method, "--steps", "10",
               "--eps", ",".join(f"{e:g}" for e in eps), "--limit", str(limit), "--json"]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["curve"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=2000, help="test images attacked (default: 2000)")
    p.add_argument("--out", default="runs/bench-adversarial", help="folder of the runs (kept)")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    a = p.parse_args()
    recipes = {"default": [], "adversarial (PGD-3, eps 0.1)": ["--set", "train.adversarial=pgd"]}
    rows = []
    for i, (name, extra) in enumerate(recipes.items()):
        run = Path(a.out) / f"run-{i}"
        args = ["train", "classify", "--time-budget", str(BUDGET), *extra, "--out", str(run), "--quiet", "--json"]
        summary = run_lamina(args)
        pgd = attack(run, "pgd", EPS, a.limit)
        fgsm = attack(run, "fgsm", [EPS[-1]], a.limit)
        row = {
            "recipe": name,
            "command": f"`lamina {' '.join(args[:-4])}`",
            "wall s": f"{summary['wall_s']:.1f}",
            "epochs": f"{summary['epochs']:.1f}",
            "test accuracy (mirror TTA)": f"{summary['metrics']['test']['accuracy']:.2%}",
            **{f"PGD-10 eps {p['eps']:g}": f"{p['accuracy']:.2%}" for p in pgd},
            f"FGSM eps {EPS[-1]:g}": f"{fgsm[-1]['accuracy']:.2%}",
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    body = (
        table(rows, list(rows[0]))
        + f"\n\nAttacks on the first {a.limit} test images, one view each (PGD eps 0 is the clean accuracy without "
        "the mirrored average); `lamina attack RUN --method pgd --steps 10 --eps 0,0.05,0.1 --limit "
        f"{a.limit}` and `--method fgsm --eps 0.1`.\n"
    )
    print(body)
    if not a.no_write:
        command = "python -m benchmarks.adversarial" + (f" --limit {a.limit}" if a.limit != 2000 else "")
        append_section("Adversarial robustness: Fashion-MNIST, PGD training at equal wall time", command, body)


if __name__ == "__main__":
    main()
