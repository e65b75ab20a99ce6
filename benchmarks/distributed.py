"""Training in 1 and N processes (torchrun, PyTorch DDP): throughput and accuracy at the same global batch.

    python -m benchmarks.distributed                          # CPU: 1 process vs 2 (gloo), 75 s each
    python -m benchmarks.distributed --device cuda --processes 1,2,4,8 --budget 120   # on a machine with GPUs

Every configuration trains the default classify recipe on Fashion-MNIST for the same wall-clock budget
and the same global batch (--global-batch, split evenly between the processes), as
`torchrun --standalone --nproc-per-node N -m lamina train classify ...`; one process runs without
torchrun. The figures: training samples/s over every process (the median of the per-evaluation
rates in metrics.jsonl), epochs done, test accuracy, wall time; and the speed-up against 1 process,
measured in the same invocation. On the CPU the processes share the machine's cores (torchrun gives
each one thread), so N processes cannot beat one that already uses every core: the CPU figure shows
the cost of the machinery; GPUs are where the processes add compute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import append_section, command_line, run_lamina, table
from lamina.engine.checkpoint import read_jsonl


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", default="1,2", help="comma-separated process counts")
    p.add_argument("--budget", type=float, default=75, help="seconds of wall clock per run")
    p.add_argument("--global-batch", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="vgg-s")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()

    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in a.processes.split(",")]:
            out = Path(tmp) / f"p{n}"
            args = [
                "train",
                "classify",
                "--data",
                "fashion-mnist",
                "--model",
                a.model,
                "--time-budget",
                f"{a.budget:g}",
                "--batch-size",
                str(a.global_batch // n),
                "--device",
                a.device,
                "--out",
                str(out),
                "--json",
                "--quiet",
            ]
            s = run_lamina(args, processes=n)
            rates = [r["samples_per_s"] for r in read_jsonl(out / "metrics.jsonl") if r.get("samples_per_s")]
            speed = statistics.median(rates) if rates else 0.0
            base = base or speed
            row = {
                "processes": n,
                "batch per process": a.global_batch // n,
                "samples/s (median)": f"{speed:,.0f}",
                "speed-up": f"{speed / base:.2f}x",
                "epochs": f"{s['epochs']:.2f}",
                "test accuracy": f"{s['metrics']['test']['accuracy']:.2%}",
                "wall s": f"{s['wall_s']:.1f}",
                "command": f"`{('torchrun --standalone --nproc-per-node ' + str(n) + ' -m ') if n > 1 else ''}"
                f"{command_line(args[:-4])}`",
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    body = table(rows, list(rows[0])) + (
        f"\n\nSame global batch ({a.global_batch}) and budget ({a.budget:g} s, the whole command) for every row, "
        f"model {a.model} on {a.device}; samples/s counts every process's samples.\n"
    )
    print(json.dumps({"benchmark": "distributed", "rows": rows}))
    if not a.no_write:
        append_section(
            f"Multi-process training (torchrun, DDP) on {a.device}: 1 vs {a.processes.split(',')[-1]} processes",
            f"python -m benchmarks.distributed --processes {a.processes} --budget {a.budget:g} --device {a.device}",
            body,
        )


if __name__ == "__main__":
    main()
