"""Image captioning on synth-captions: show-attend-tell against show-tell at equal wall time and about
equal parameters, after 10 and 20 minutes, and with its encoder transferred from a classify run.

    python -m benchmarks.captioning [--budgets 600,1200] [--baseline-budget 1200]
                                    [--transfer-budget 600] [--classify-budget 120]

1. The scenes are composed first (outside every budget): the default `lamina train caption` data.
2. `lamina train caption --model show-attend-tell --time-budget B` for each budget, and
   `--model show-tell` for the baseline budget, one after the other.
3. With --transfer-budget: a classify ResNet-8 on Fashion-MNIST (outside the clock; its layout is the
   caption encoder's), then show-attend-tell with `--init` that run for the transfer budget, beside the
   scratch run of the same budget.
4. Each run is measured by `lamina evaluate RUN --json` on the 500 test scenes (Fashion-MNIST test items
   on photographs training never sees; half of them compositional): beam 3 for the figures, beam 1
   too for the speed (captions/s) of the longest runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import append_section, command_line, run_lamina, table


def evaluate(run: Path, beam: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "lamina", "evaluate", str(run), "--beam", str(beam), "--json"],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"lamina evaluate {run} failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["metrics"]


def parameters(run: Path) -> int:
    return json.loads((run / "lamina.json").read_text())["model"]["parameters"]


def figures(name: str, args: list[str], s: dict, m: dict, params: int) -> dict:
    by = m.get("by_objects", {})
    kinds = m.get("by_kind", {})
    row = {
        "run": name,
        "params": f"{params / 1e6:.2f} M",
        "steps": s["steps"],
        "epochs": s["epochs"],
        "BLEU-4": f"{m['bleu4']:.3f}",
        "CIDEr": f"{m['cider']:.3f}",
        "METEOR": f"{m['meteor']:.3f}" if "meteor" in m else "",
        "ROUGE-L": f"{m['rouge_l']:.3f}",
        "sacreBLEU": f"{m['sacrebleu']:.1f}",
        **{f"CIDEr {k} obj": f"{v['cider']:.2f}" for k, v in by.items()},
        "CIDEr compositional": f"{m['compositional_cider']:.3f}" if "compositional_cider" in m else "",
        "CIDEr familiar": f"{kinds['familiar']['cider']:.3f}" if "familiar" in kinds else "",
        "grounding ratio": f"{m['grounding_ratio']:.2f}" if "grounding_ratio" in m else "-",
        "captions/s beam 3": f"{m['captions_per_s']:.0f}",
        "command": f"`{command_line(args)}`",
    }
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="600,1200", help="show-attend-tell training budgets, seconds")
    p.add_argument("--baseline-budget", type=float, default=1200, help="show-tell's budget (0: none)")
    p.add_argument("--transfer-budget", type=float, default=600, help="show-attend-tell from a classify run (0: none)")
    p.add_argument("--classify-budget", type=float, default=120)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    budgets = [float(b) for b in a.budgets.split(",") if b]

    from lamina.data import captions
    from lamina.tasks.caption import CaptionData

    d = CaptionData()
    spec = captions.CaptionSpec.for_size(d.image_size, train=d.scenes, val=d.val_scenes, test=d.test_scenes,
                                         max_objects=d.max_objects)  # fmt: skip
    captions.build(spec)  # made before any clock starts
    rows, speed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        plan = [("show-attend-tell", b, "") for b in budgets]
        if a.baseline_budget:
            plan.append(("show-tell", a.baseline_budget, ""))
        init = ""
        if a.transfer_budget:
            init = str(Path(tmp) / "classify")
            run_lamina(["train", "classify", "--data", "fashion-mnist", "--model", "resnet8", "--time-budget",
                        f"{a.classify_budget:g}", "--out", init, "--json", "--quiet"])  # fmt: skip
            plan.append(("show-attend-tell", a.transfer_budget, init))
        for model, budget, start in plan:
            out = Path(tmp) / f"{model}-{budget:g}{'-init' if start else ''}"
            args = ["train", "caption", "--model", model, "--time-budget", f"{budget:g}"]
            args += ["--init", "CLASSIFY_RUN"] if start else []
            real = [*args[:-1], start] if start else args
            s = run_lamina([*real, "--out", str(out), "--json", "--quiet"])
            m = evaluate(out, 3)
            name = f"{model}, {budget / 60:g} min" + (", encoder from classify resnet8" if start else "")
            rows.append(figures(name, args, s, m, parameters(out)))
            print(json.dumps(rows[-1]), flush=True)
            if budget == max(budgets + [a.baseline_budget]) and not start:
                greedy = evaluate(out, 1)
                speed.append({"run": name, "captions/s beam 1": f"{greedy['captions_per_s']:.0f}",
                              "captions/s beam 3": f"{m['captions_per_s']:.0f}",
                              "BLEU-4 greedy": f"{greedy['bleu4']:.3f}",
                              "CIDEr greedy": f"{greedy['cider']:.3f}"})  # fmt: skip
                print(json.dumps(speed[-1]), flush=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    body = [table(rows, columns)]
    body.append(
        f"\nTest: {spec.test} scenes of {spec.image_size} px (Fashion-MNIST test items on photographs no training "
        "scene shows; half of them compositional: a held-out colour-object pair or relation), five references "
        f"each; training: {spec.train} scenes, composed before the clocks start. BLEU, METEOR, ROUGE-L and "
        "CIDEr-D: pycocoevalcap at beam 3 (`lamina evaluate RUN --beam 3`); sacreBLEU: its corpus BLEU on the "
        "same captions, 0-100. Grounding ratio: for each generated word naming an object in the scene, the "
        "attention mass inside that object's box over the share of the image the box covers (1: chance)."
    )
    if speed:
        body.append("\n### Captions per second on the test scenes (batches of 64, fp32)\n")
        body.append(table(speed, list(speed[0])))
    text = "\n".join(body)
    print(json.dumps({"benchmark": "captioning", "rows": rows, "speed": speed}), flush=True)
    if not a.no_write:
        append_section("Image captioning: show-attend-tell against show-tell", "python -m benchmarks.captioning "
                       f"--budgets {a.budgets} --baseline-budget {a.baseline_budget:g} --transfer-budget "
                       f"{a.transfer_budget:g} --classify-budget {a.classify_budget:g}", text)  # fmt: skip


if __name__ == "__main__":
    main()
