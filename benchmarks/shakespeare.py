"""Shakespeare: character-level language models, and a Transformer peer, within wall-clock budgets on this machine.

    python -m benchmarks.shakespeare                          # the default LSTM recipe (129 s), peer beside it, 3 times
    python -m benchmarks.shakespeare --recipes best --repeats 1   # the 15-minute recipe, with a sample
    python -m benchmarks.shakespeare --recipes cells          # RNN vs LSTM vs GRU vs the peer, equal time
    python -m benchmarks.shakespeare --generation RUN...      # generation speed of trained runs, 3 times each

Each run is its own `lamina train lm ... --json` process: the wall clock is the whole command. The loss
reported is on the test text (the final 5% of the corpus, whole plays, never used to choose anything);
checkpoints are chosen on the validation text (the 5% before it). The peer
(benchmarks/peers/nanogpt.py: nanoGPT's README CPU configuration, a 4-layer Transformer) runs as its
own process with the same budget, on the same text and split, in turn with lamina's runs.
Generation speed is `lamina generate RUN --length 500 --json` on the CPU, batch 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import append_section, command_line, run_lamina, run_peer, table

# name -> (arguments, target validation loss, wall-clock limit in seconds); 129s is the default LSTM recipe,
# best any registered model (earlier best attempts with 2-layer LSTMs are kept in RESULTS.md)
RECIPES = {
    "129s": (["--time-budget", "128"], 1.60, 129),
    "best": (
        ["--time-budget", "895", "--model", "gru", "--set", "model.layers=2", "--set", "model.dropout=0.2"],
        1.42,
        900,
    ),
}
PEER_COMMAND = "python -m benchmarks.peers.nanogpt --budget SECONDS"
PEER_NOTE = (
    f"Peer: `{PEER_COMMAND}` (benchmarks/peers/nanogpt.py), nanoGPT's README CPU configuration (4 layers, 4 heads, "
    "128 wide, context 64, batch 12, 2,000 steps of its learning-rate schedule, or fewer when the budget runs out), "
    "on the same training text, its weights chosen on the same validation text, scored on the same test text "
    "(every character once, with 32 to 63 characters of context); run in turn with lamina's runs."
)


def nanogpt(budget: float, seed: int = 0) -> dict:
    # seed 0 is nanoGPT's own 1337; the repeats differ in their initial weights and batches
    return run_peer("nanogpt", budget, "--seed", str(1337 + seed))


LSTM_HIDDEN = 512  # the default; the other cells get the hidden size that matches its parameter count


def generation_speed(run: str, length: int = 500) -> dict:
    command = [
        sys.executable,
        "-m",
        "lamina",
        "generate",
        run,
        "--prompt",
        "ROMEO:",
        "--length",
        str(length),
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_chars_per_s(run: str) -> float:
    records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = sorted(r["samples_per_s"] for r in records if r.get("samples_per_s"))
    return rates[len(rates) // 2] if rates else 0.0


def matching_hidden(cell: str, target: int) -> int:
    from lamina.models import count_parameters, get_model

    best = min(range(64, 2049, 8), key=lambda h: abs(count_parameters(get_model("lm", cell, hidden=h)) - target))
    return best


def run_recipe(name: str, args: list[str], tmp: str, seed: int = 0) -> dict:
    out = str(Path(tmp) / f"{name}-{seed}")
    summary = run_lamina(
        ["train", "lm", "--data", "shakespeare", *args, "--seed", str(seed), "--out", out, "--json", "--quiet"]
    )
    summary["generation"] = generation_speed(out)
    summary["train_chars_per_s"] = train_chars_per_s(out)
    val, test = summary["metrics"]["val"], summary["metrics"]["test"]
    print(
        json.dumps(
            {
                "recipe": name,
                "seed": seed,
                "test_loss": test["loss"],
                "val_loss": val["loss"],
                "wall_s": summary["wall_s"],
                "epochs": summary["epochs"],
                "train_chars_per_s": summary["train_chars_per_s"],
                "gen_chars_per_s": summary["generation"]["chars_per_s"],
            }
        ),
        flush=True,
    )
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="129s", help="comma-separated, from: 129s, best, cells")
    p.add_argument("--repeats", type=int, default=3, help="runs of a recipe (seeds 0, 1, ...), each beside a peer run")
    p.add_argument("--cells-budget", type=float, default=129, help="seconds per model in the cells table")
    p.add_argument("--no-peer", action="store_true", help="lamina's runs only")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    p.add_argument("--keep", metavar="DIR", help="keep the runs in DIR (default: a temporary folder)")
    p.add_argument("--generation", nargs="+", metavar="RUN", help="only measure generation speed of these runs")
    a = p.parse_args()
    if a.generation:
        return generation_table(a)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = a.keep or tmp
        for name in a.recipes.split(","):
            if name == "cells":
                cells(a, tmp)
                continue
            args, target, limit = RECIPES[name]
            budget = float(args[args.index("--time-budget") + 1])
            runs, peers = [], []
            for seed in range(a.repeats):
                if not a.no_peer:
                    peers.append(nanogpt(budget, seed))
                runs.append(run_recipe(name, args, tmp, seed))
            losses = [r["metrics"]["test"]["loss"] for r in runs]
            middle = sorted(runs, key=lambda r: r["metrics"]["test"]["loss"])[len(runs) // 2]  # the median run
            test, gen = middle["metrics"]["test"], middle["generation"]
            row = {
                "recipe": name,
                "command": f"`{command_line(['train', 'lm', *args])}`",
                "runs": len(runs) if len(runs) > 1 else "1 (single run)",
                "test loss (nats/char, median)": f"{test['loss']:.3f}",
                "all runs": ", ".join(f"{x:.3f}" for x in losses),
                "bits/char": f"{test['bpc']:.3f}",
                "val loss": f"{middle['metrics']['val']['loss']:.3f}",
                "wall s": f"{max(r['wall_s'] for r in runs):.1f}",
                "epochs": f"{middle['epochs']:.2f}",
                "train chars/s": f"{middle['train_chars_per_s']:,.0f}",
                "peak RSS MiB": max(r["peak_rss_mib"] for r in runs),
                "generate chars/s": f"{gen['chars_per_s']:,.0f}",
                "first char ms": f"{1000 * gen['first_char_s']:.1f}",
                "target": f"<= {target} in <= {limit} s",
                "met": "yes" if test["loss"] <= target and max(r["wall_s"] for r in runs) <= limit else "NO",
            }
            body = table([row], list(row))
            if peers:
                body += "\n\n" + table([peer_row(peers, budget, losses)], PEER_COLUMNS) + "\n\n" + PEER_NOTE + "\n"
            if name == "best":
                body += (
                    "\nA sample (`lamina generate RUN --prompt 'ROMEO:' --length 500 --temperature 0.8 "
                    f"--top-k 40 --seed 1`, first 300 characters):\n\n```\nROMEO:{gen['text'][:300]}\n```\n"
                )
            print(json.dumps({"benchmark": "shakespeare", "row": row}))
            if not a.no_write:
                append_section(
                    f"Shakespeare: character-level language model, {name} recipe"
                    + (", beside nanoGPT" if peers else ""),
                    f"python -m benchmarks.shakespeare --recipes {name} --repeats {a.repeats}"
                    + (" --no-peer" if a.no_peer else ""),
                    body,
                )


PEER_COLUMNS = [
    "model",
    "budget s",
    "runs",
    "test loss (nats/char, median)",
    "all runs",
    "bits/char",
    "steps",
    "epochs",
    "parameters",
    "train chars/s",
    "wall s",
    "peer loss / lamina loss",
]


def peer_row(peers: list[dict], budget: float, lamina_losses: list[float] | None = None) -> dict:
    import statistics

    losses = [q["test_loss"] for q in peers]
    loss = statistics.median(losses)
    middle = sorted(peers, key=lambda q: q["test_loss"])[len(peers) // 2]
    row = {
        "model": "nanoGPT (peer)",
        "budget s": f"{budget:g}",
        "runs": len(peers) if len(peers) > 1 else "1 (single run)",
        "test loss (nats/char, median)": f"{loss:.3f}",
        "all runs": ", ".join(f"{x:.3f}" for x in losses),
        "bits/char": f"{middle['test_bpc']:.3f}",
        "steps": f"{middle['steps']:,}",
        "epochs": f"{middle['epochs']:.2f}",
        "parameters": f"{middle['parameters']:,}",
        "train chars/s": f"{middle['train_chars_per_s']:,.0f}",
        "wall s": f"{max(q['wall_s'] for q in peers):.1f}",
    }
    if lamina_losses:
        row["peer loss / lamina loss"] = f"{loss / statistics.median(lamina_losses):.3f}"
    return row


def generation_table(a) -> None:
    import statistics

    rows = []
    for run in a.generation:
        info = json.loads((Path(run) / "lamina.json").read_text())
        m = info["model"]
        runs = [generation_speed(run) for _ in range(3)]
        rows.append(
            {
                "model": m["name"],
                "hidden": m["args"].get("hidden", 512),
                "layers": m["args"].get("layers", 1),
                "parameters": f"{m['parameters']:,}",
                "generate chars/s (median of 3)": f"{statistics.median(r['chars_per_s'] for r in runs):,.0f}",
                "first char ms (median)": f"{1000 * statistics.median(r['first_char_s'] for r in runs):.1f}",
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    body = table(rows, list(rows[0])) + (
        "\n\nEach: `lamina generate RUN --prompt 'ROMEO:' --length 500 --temperature 0.8 --top-k 40 --seed 1 "
        "--device cpu --json`, batch 1, fp32, one process per measurement; the runs are those of the recipes above.\n"
    )
    if not a.no_write:
        append_section(
            "Shakespeare: generation speed, batch 1 on the CPU",
            "python -m benchmarks.shakespeare --generation RUN...",
            body,
        )


def cells(a, tmp: str) -> None:
    from lamina.models import count_parameters, get_model

    target = count_parameters(get_model("lm", "lstm", hidden=LSTM_HIDDEN))
    rows = []
    for cell in ("rnn", "lstm", "gru"):
        hidden = LSTM_HIDDEN if cell == "lstm" else matching_hidden(cell, target)
        args = ["--model", cell, "--time-budget", f"{a.cells_budget:g}", "--set", f"model.hidden={hidden}"]
        s = run_recipe(cell, args, tmp)
        test, gen = s["metrics"]["test"], s["generation"]
        rows.append(
            {
                "model": cell,
                "hidden": hidden,
                "parameters": f"{count_parameters(get_model('lm', cell, hidden=hidden)):,}",
                "test loss (nats/char)": f"{test['loss']:.3f}",
                "bits/char": f"{test['bpc']:.3f}",
                "val loss": f"{s['metrics']['val']['loss']:.3f}",
                "train chars/s": f"{s['train_chars_per_s']:,.0f}",
                "epochs": f"{s['epochs']:.2f}",
                "generate chars/s": f"{gen['chars_per_s']:,.0f}",
                "first char ms": f"{1000 * gen['first_char_s']:.1f}",
                "wall s": f"{s['wall_s']:.1f}",
            }
        )
    if not a.no_peer:  # the Transformer beside them, at the same wall time
        q = peer_row([nanogpt(a.cells_budget)], a.cells_budget)
        rows.append(
            {
                "model": "nanoGPT Transformer (peer)",
                "hidden": "128 (4 layers)",
                "parameters": q["parameters"],
                "test loss (nats/char)": q["test loss (nats/char, median)"],
                "bits/char": q["bits/char"],
                "train chars/s": q["train chars/s"],
                "epochs": q["epochs"],
                "wall s": q["wall s"],
            }
        )
    body = table(rows, list(rows[0])) + (
        f"\n\nSingle runs. Each: `lamina train lm --model CELL --time-budget {a.cells_budget:g} --set model.hidden=H` "
        "(the default recipe otherwise); generation: `lamina generate RUN --prompt 'ROMEO:' --length 500 "
        "--temperature 0.8 --top-k 40 --device cpu --json`, batch 1."
        + ("\n\n" + PEER_NOTE if not a.no_peer else "")
        + "\n"
    )
    print(json.dumps({"benchmark": "shakespeare-cells", "rows": rows}))
    if not a.no_write:
        append_section(
            "Shakespeare: RNN vs LSTM vs GRU (and a Transformer peer) at equal wall time",
            f"python -m benchmarks.shakespeare --recipes cells --cells-budget {a.cells_budget:g}"
            + (" --no-peer" if a.no_peer else ""),
            body,
        )


if __name__ == "__main__":
    main()
