"""How far back the loss gradient reaches: RNN vs LSTM vs GRU, trained with and without gradient clipping.

    python -m benchmarks.gradient_flow                 # 60 s of training per model, then the measurement
    python -m benchmarks.gradient_flow --budget 0      # untrained networks only (seconds)

The three cells have about the same number of parameters (the LSTM's default 1.2 M). Each is trained
on Shakespeare for the same wall time with `optim.grad_clip=1` and with `optim.grad_clip=0`; then
`lamina inspect RUN gradients` measures ||dL_T / dh_(T-t)|| for t up to 200 on 16 validation windows.
The plot goes to benchmarks/gradient-flow.png.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from benchmarks.common import append_section, command_line, run_lamina, table
from benchmarks.shakespeare import LSTM_HIDDEN, matching_hidden

PLOT = Path(__file__).with_name("gradient-flow.png")
MARKS = (0, 1, 10, 50, 100, 200)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=60, help="training seconds per model (0: untrained)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()

    import torch

    from lamina import api
    from lamina.models import count_parameters, get_model
    from lamina.viz.gradient_flow import gradient_flow, plot_gradient_flow

    target = count_parameters(get_model("lm", "lstm", hidden=LSTM_HIDDEN))
    hidden = {cell: LSTM_HIDDEN if cell == "lstm" else matching_hidden(cell, target) for cell in ("rnn", "lstm", "gru")}
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for cell in hidden:
            if not a.budget:  # untrained: random windows of ids stand in for text
                torch.manual_seed(0)
                model = get_model("lm", cell, hidden=hidden[cell])
                norms = gradient_flow(model, torch.randint(84, (16, a.steps + 2)), a.steps)
                curves[f"{cell} (untrained)"] = norms
                rows.append(_row(cell, hidden[cell], "untrained", None, norms))
                continue
            for clip in (1.0, 0.0):
                out = str(Path(tmp) / f"{cell}-clip{clip:g}")
                args = [
                    "train",
                    "lm",
                    "--model",
                    cell,
                    "--time-budget",
                    f"{a.budget:g}",
                    "--set",
                    f"model.hidden={hidden[cell]}",
                    "--set",
                    f"optim.grad_clip={clip:g}",
                ]
                label = f"clip {clip:g}"
                try:
                    summary = run_lamina([*args, "--out", out, "--json", "--quiet"])
                    loss = summary["metrics"]["val"]["loss"]
                except RuntimeError:  # a loss that became NaN without clipping is a result too; anything else is not
                    info = (
                        json.loads((Path(out) / "lamina.json").read_text())
                        if (Path(out) / "lamina.json").is_file()
                        else {}
                    )
                    if info.get("status") != "diverged":
                        raise
                    loss, label = math.nan, f"clip {clip:g}, diverged (last good checkpoint measured)"
                if not (Path(out) / "model.safetensors").is_file():
                    rows.append(_row(cell, hidden[cell], label, loss, None))
                    continue
                norms = api.inspect(out, "gradients", steps=a.steps, rows=16, out=Path(tmp))["curves"]
                norms = next(iter(norms.values()))
                curves[f"{cell}, {label.split(' (')[0]}"] = norms
                rows.append(_row(cell, hidden[cell], label, loss, norms))
                print(json.dumps(rows[-1]), flush=True)
    plot_gradient_flow(curves, PLOT, "||dL_T/dh_(T-t)||: RNN vs LSTM vs GRU, equal parameters")
    training = ["train", "lm", "--model", "CELL", "--time-budget", f"{a.budget:g}", "--set", "model.hidden=H"]
    training += ["--set", "optim.grad_clip=C"]
    body = table(rows, list(rows[0])) + (
        f"\n\nTraining: `{command_line(training)}`; "
        f"measurement: `lamina inspect RUN gradients --steps {a.steps} --rows 16`. Plot: "
        "[gradient-flow.png](gradient-flow.png). Norms are means over 16 validation windows; t is the "
        "distance in characters from the position whose loss is differentiated.\n"
    )
    print(json.dumps({"benchmark": "gradient_flow", "rows": rows}))
    if not a.no_write:
        append_section(
            "Gradient flow through time: RNN vs LSTM vs GRU",
            f"python -m benchmarks.gradient_flow --budget {a.budget:g} --steps {a.steps}",
            body,
        )


def _row(cell: str, hidden: int, training: str, loss: float | None, norms: list[float] | None) -> dict:
    row = {"model": cell, "hidden": hidden, "training": training, "val loss": "" if loss is None else f"{loss:.3f}"}
    for t in MARKS:
        row[f"t={t}"] = "" if norms is None or t >= len(norms) else f"{norms[t]:.1e}"
    return row


if __name__ == "__main__":
    main()
