"""Every registered classifier on Fashion-MNIST: parameters, training speed, test accuracy after a fixed budget.

    python -m benchmarks.models [--budget 60] [--models mlp,lenet5,...]

Each model trains with the default recipe (one-cycle SGD, bf16 where the CPU has it) under the same
wall-clock budget, as its own process; the table shows what each family buys per second of CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import append_section, median, run_lamina, table
from lamina.engine.checkpoint import read_jsonl
from lamina.models import count_parameters, get_model, list_models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=60)
    p.add_argument("--models", default=",".join(s.name for s in list_models("classify")))
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            out = Path(tmp) / name
            s = run_lamina(
                [
                    "train",
                    "classify",
                    "--data",
                    "fashion-mnist",
                    "--model",
                    name,
                    "--time-budget",
                    str(a.budget),
                    "--out",
                    str(out),
                    "--json",
                    "--quiet",
                ]
            )
            speeds = [r["samples_per_s"] for r in read_jsonl(out / "metrics.jsonl")]
            row = {
                "model": name,
                "parameters": f"{count_parameters(get_model('classify', name)):,}",
                "train samples/s": f"{median(speeds):,.0f}",
                "epochs": f"{s['epochs']:.2f}",
                "test accuracy": f"{s['metrics']['test']['accuracy']:.2%}",
                "wall s": s["wall_s"],
                "peak RSS MiB": s["peak_rss_mib"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"benchmark": "models", "budget_s": a.budget, "rows": rows}))
    if not a.no_write:
        body = (
            table(rows, list(rows[0]))
            + f"\n\nEvery model: `lamina train classify --model NAME --time-budget {a.budget:g}`.\n"
        )
        append_section(
            f"Every registered classifier, {a.budget:g} s each",
            f"python -m benchmarks.models --budget {a.budget:g}",
            body,
        )


if __name__ == "__main__":
    main()
