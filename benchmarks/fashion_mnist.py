"""Fashion-MNIST: test accuracy of lamina's recipes and of a peer within the same wall-clock budgets.

    python -m benchmarks.fashion_mnist                     # the 75 s and 3 min recipes, peer beside each, 3 times
    python -m benchmarks.fashion_mnist --recipes 10min --repeats 1
    python -m benchmarks.fashion_mnist --recipes best --repeats 1 --no-peer   # the 60-minute recipe alone

Each recipe runs as its own `lamina train classify ... --json` process; the wall clock is the whole
command (Python start, data loading, training, evaluation, saving) and the peak memory is that
process's maximum resident set. The peer (benchmarks/peers/pytorch_mnist.py: the PyTorch examples
`mnist` recipe) runs as its own process with the same budget, on the same training images, in turn
with lamina's runs (peer, lamina, peer, lamina, ...), so that both see the machine in the same state.

Time to the peer's accuracy: the peer's best validation accuracy within the budget, the seconds it
took to reach it, and the seconds lamina's run took to first reach it on the same validation images
(from its metrics.jsonl); the ratio is peer seconds / lamina seconds, per pair of runs, median.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import append_section, command_line, median, run_lamina, run_peer, table
from lamina.engine import checkpoint as ckpt

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
PEER_COMMAND = "python -m benchmarks.peers.pytorch_mnist --budget SECONDS --seed SEED"


def lamina_curve(run: Path) -> list[list[float]]:
    """[seconds since the command started, validation accuracy] at every evaluation of a run."""
    return [[r["time"], r["val_accuracy"]] for r in ckpt.read_jsonl(run / ckpt.METRICS_FILE) if "val_accuracy" in r]


def first_time(curve: list[list[float]], accuracy: float) -> float | None:
    return next((t for t, a in curve if a >= accuracy), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="75s,3min", help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument("--repeats", type=int, default=3, help="runs per recipe (seeds 0, 1, ...); the median is reported")
    p.add_argument("--no-peer", action="store_true", help="lamina's recipes only")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    a = p.parse_args()

    rows, peer_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.recipes.split(","):
            args, target, limit = RECIPES[name]
            budget = float(args[args.index("--time-budget") + 1])
            runs, peers, curves = [], [], []
            for seed in range(a.repeats):
                if not a.no_peer:  # the peer first, then lamina: alternating, with the same seeds
                    peers.append(run_peer("pytorch_mnist", budget, "--seed", str(seed)))
                out = Path(tmp) / f"{name}-{seed}"
                full = ["train", "classify", "--data", "fashion-mnist", *args, "--seed", str(seed)]
                s = run_lamina([*full, "--out", str(out), "--json", "--quiet"])
                runs.append(s)
                curves.append(lamina_curve(out))
                print(
                    json.dumps(
                        {
                            "recipe": name,
                            "seed": seed,
                            "test_accuracy": s["metrics"]["test"]["accuracy"],
                            "wall_s": s["wall_s"],
                            "epochs": s["epochs"],
                            "peak_rss_mib": s["peak_rss_mib"],
                            "val_curve": curves[-1],
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
            if peers:
                peer_rows.append(peer_row(name, budget, runs, peers, curves))
    body = table(rows, list(rows[0]))
    if peer_rows:
        body += (
            "\n\n"
            + table(peer_rows, list(peer_rows[0]))
            + (
                f"\n\nPeer: `{PEER_COMMAND}` (benchmarks/peers/pytorch_mnist.py), the PyTorch examples `mnist` recipe "
                "on lamina's training split, run in turn with lamina's runs (peer, lamina, ...) with the same budgets "
                "and seeds. Time to the peer's accuracy: the peer's best validation accuracy in the budget, when it "
                "reached it, and when lamina's run first reached it on the same 6,000 validation images; ratio = "
                "peer seconds / lamina seconds, median over the pairs of runs. Seconds count from the start of "
                "each command.\n"
            )
        )
    print(json.dumps({"benchmark": "fashion_mnist", "rows": rows, "peer_rows": peer_rows}))
    if not a.no_write:
        append_section(
            "Fashion-MNIST: accuracy within a wall-clock budget" + (", beside the PyTorch example" * bool(peer_rows)),
            f"python -m benchmarks.fashion_mnist --recipes {a.recipes} --repeats {a.repeats}"
            + (" --no-peer" if a.no_peer else ""),
            body,
        )


def peer_row(name: str, budget: float, runs: list[dict], peers: list[dict], curves: list[list]) -> dict:
    lamina_accs = [r["metrics"]["test"]["accuracy"] for r in runs]
    peer_accs = [q["test_accuracy"] for q in peers]
    ratios, peer_times, lamina_times, bests = [], [], [], []
    for q, curve in zip(peers, curves):
        best_t, best = max(q["val_curve"], key=lambda point: (point[1], -point[0]))
        reached = first_time(curve, best)
        bests.append(best)
        peer_times.append(best_t)
        lamina_times.append(reached)
        if reached is not None:
            ratios.append(best_t / reached)
    reached_all = len(ratios) == len(peers)
    return {
        "budget s": f"{budget:g}",
        "lamina test accuracy (median)": f"{median(lamina_accs):.2%}",
        "peer test accuracy (median)": f"{median(peer_accs):.2%}",
        "peer, all runs": ", ".join(f"{x:.2%}" for x in peer_accs),
        "peer epochs": f"{median([q['epochs'] for q in peers]):.2f}",
        "peer's best val accuracy (median)": f"{median(bests):.2%}",
        "peer s to it": f"{median(peer_times):.1f}",
        "lamina s to it": f"{median(lamina_times):.1f}" if reached_all else f"reached in {len(ratios)} of {len(peers)}",
        "time ratio peer / lamina (median, all)": (
            f"{median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})" if ratios else "not reached"
        ),
    }


if __name__ == "__main__":
    main()
