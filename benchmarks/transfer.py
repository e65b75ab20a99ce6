"""Transfer: a network trained on Fashion-MNIST classes 0-4 adapted to classes 5-9 from 50 labels per class.

    python -m benchmarks.transfer [--model vgg-m] [--source-budget 120] [--repeats 3]

1. Source: train on every training image of classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat).
2. Target: classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) with 50 labelled images per class
   and no validation split, trained three ways with the same recipe:
   from scratch; from the source backbone with a new head (fine-tuning all weights); and from the
   source backbone frozen, training only the head.
Test accuracy is measured on all 5,000 test images of classes 5-9; the median over seeds is reported.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import append_section, command_line, median, run_lamina, table

SOURCE = ["--set", "data.classes=[0,1,2,3,4]"]
TARGET = [
    "--set",
    "data.classes=[5,6,7,8,9]",
    "--set",
    "data.per_class=50",
    "--set",
    "data.val_fraction=0",
    "--epochs",
    "40",
    "--batch-size",
    "25",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg-m")
    p.add_argument("--source-budget", type=float, default=120)
    p.add_argument("--lr", default="0.05", help="peak learning rate of the target runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source_dir = Path(tmp) / "source"
        source_args = [
            "train",
            "classify",
            "--data",
            "fashion-mnist",
            "--model",
            a.model,
            *SOURCE,
            "--time-budget",
            f"{a.source_budget:g}",
        ]
        source = run_lamina([*source_args, "--out", str(source_dir), "--json", "--quiet"])
        print(json.dumps({"source_test_accuracy": source["metrics"]["test"]["accuracy"]}), flush=True)
        target = ["train", "classify", "--data", "fashion-mnist", *TARGET, "--lr", a.lr]
        variants = {
            "from scratch": ["--model", a.model],
            "transfer, fine-tune all": ["--init", "SOURCE"],
            "transfer, frozen backbone": ["--init", "SOURCE", "--freeze"],
        }
        rows = []
        for name, extra in variants.items():
            accs, walls, rss = [], [], []
            for seed in range(a.repeats):
                args = [*target, *[str(source_dir) if x == "SOURCE" else x for x in extra], "--seed", str(seed)]
                s = run_lamina(
                    [
                        *args,
                        "--out",
                        str(Path(tmp) / f"{name}-{seed}".replace(" ", "_").replace(",", "")),
                        "--json",
                        "--quiet",
                    ]
                )
                accs.append(s["metrics"]["test"]["accuracy"])
                walls.append(s["wall_s"])
                rss.append(s["peak_rss_mib"])
                print(json.dumps({"variant": name, "seed": seed, "test_accuracy": accs[-1]}), flush=True)
            rows.append(
                {
                    "target run": name,
                    "command": f"`{command_line([*target, *extra])}`",
                    "test accuracy, classes 5-9 (median)": f"{median(accs):.2%}",
                    "all seeds": ", ".join(f"{x:.2%}" for x in accs),
                    "wall s": f"{median(walls):.1f}",
                    "peak RSS MiB": max(rss),
                }
            )
    body = (
        f"Source run: `{command_line(source_args)}` — test accuracy on classes 0-4: "
        f"{source['metrics']['test']['accuracy']:.2%} "
        f"({source['wall_s']:.0f} s, peak RSS {source['peak_rss_mib']} MiB).\n\n"
        + table(rows, list(rows[0]))
        + "\n\nTarget data: 50 labelled training images per class (250 in all), no validation split; "
        "test: the 5,000 test images of classes 5-9.\n"
    )
    print(json.dumps({"benchmark": "transfer", "rows": rows}))
    if not a.no_write:
        append_section(
            "Transfer: Fashion-MNIST classes 0-4 -> 5-9 with 50 labels per class",
            f"python -m benchmarks.transfer --model {a.model} --repeats {a.repeats}",
            body,
        )


if __name__ == "__main__":
    main()
