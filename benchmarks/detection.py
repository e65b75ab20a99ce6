"""Detection on synth-scenes: box and mask mAP within wall-clock budgets, beside torchvision's reference recipe.

    python -m benchmarks.detection [--budgets 1800,600] [--models maskrcnn,fcos] [--peer-budgets 1800]
                                   [--transfer-budget 600] [--eval-images 50] [--latency-images 50]

1. The scenes are made first (outside every budget): the default `lamina train detect` data.
2. For each budget, taking turns: each lamina model (`lamina train detect --model M --time-budget B`),
   and at the --peer-budgets the reference recipe (benchmarks/peers/torchvision_detection.py) on the
   same COCO folder. Test figures: lamina's on all test scenes (held-out photographs, Fashion-MNIST test
   objects); for the ratio, lamina's run and the peer both on the first --eval-images test scenes.
3. Transfer: a classify resnet8 on Fashion-MNIST, then `--init` it into Mask R-CNN, against scratch, at
   --transfer-budget (the scratch run is the budget's own maskrcnn run when there is one).
4. Latency of detection at batch 1 (model and post-processing, as `lamina detect` times it): median
   and p95 over --latency-images test scenes, at 192 px and at 256 px.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import append_section, command_line, run_lamina, run_peer, table


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def test_subset(root: Path, n: int, folder: Path) -> Path:
    """The first n test scenes as a COCO folder of their own (for scoring lamina where the peer is scored)."""
    from lamina.data import coco

    test = coco.read_split(root, "test")
    coco.write_set(coco.DetectionSet(test.images[:n], test.targets[:n], test.classes, test.keys[:n]), folder, "test")
    return folder


def training_rate(run: Path) -> float:
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in log if r.get("samples_per_s")]
    return statistics.median(rates) if rates else 0.0


def latency(run: Path, root: Path, n: int, size: int) -> dict:
    """Seconds per image of run.detect at batch 1 on n test scenes resized to `size` px, the model
    set to take that size."""
    from PIL import Image

    import lamina

    r = lamina.load(run, device="cpu")
    r.model.transform.min_size, r.model.transform.max_size = (size,), size * 5 // 3
    files = sorted((root / "test").glob("*.jpg"))[:n]
    images = [Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR) for f in files]
    r.detect(images[:3])  # warm-up
    seconds = [r.detect([im])["results"][0]["seconds"] for im in images]
    return {
        "median_ms": round(1000 * statistics.median(seconds), 1),
        "p95_ms": round(1000 * percentile(seconds, 95), 1),
        "images_per_s": round(len(seconds) / sum(seconds), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="1800,600", help="training budgets in seconds, comma-separated")
    p.add_argument("--models", default="maskrcnn,fcos")
    p.add_argument("--peer-budgets", default="1800", help="budgets at which the reference recipe runs too")
    p.add_argument("--transfer-budget", type=float, default=600, help="0: no transfer comparison")
    p.add_argument("--classifier-budget", type=float, default=75, help="seconds for the classify run to transfer from")
    p.add_argument("--eval-images", type=int, default=50, help="test scenes for the comparison with the peer")
    p.add_argument("--latency-images", type=int, default=50)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    budgets = [float(b) for b in a.budgets.split(",") if b]
    peer_budgets = {float(b) for b in a.peer_budgets.split(",") if b}
    models = [m for m in a.models.split(",") if m]

    from lamina.data import scenes
    from lamina.tasks.detect import DetectData

    d = DetectData()
    spec = scenes.SceneSpec.for_size(d.image_size, train=d.scenes, val=d.val_scenes, test=d.test_scenes)
    root = scenes.build(spec)  # what `lamina train detect` reads, made before any clock starts
    rows, peers, runs, extra = [], [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        subset = test_subset(root, a.eval_images, Path(tmp) / "subset")
        for budget in budgets:
            order = [*models[:1], *(["peer"] if budget in peer_budgets else []), *models[1:]]
            for model in order:
                if model == "peer":
                    peer = run_peer("torchvision_detection", budget, "--data", str(root),
                                    "--eval-images", str(a.eval_images))  # fmt: skip
                    peers.append({**peer, "budget": budget})
                    continue
                out = Path(tmp) / f"{model}-{budget:g}"
                args = ["train", "detect", "--model", model, "--time-budget", f"{budget:g}"]
                s = run_lamina([*args, "--out", str(out), "--json", "--quiet"])
                runs[(model, budget)] = out
                test = s["metrics"]["test"]
                sub = run_lamina(["evaluate", str(out), "--data", str(subset), "--json", "--out", str(Path(tmp) / "e")])
                row = {
                    "model": model,
                    "budget s": f"{budget:g}",
                    "command": f"`{command_line(args)}`",
                    "box mAP@0.5": f"{test['box_map_50']:.3f}",
                    "box mAP": f"{test['box_map']:.3f}",
                    "box mAP@0.75": f"{test['box_map_75']:.3f}",
                    "mask mAP@0.5": f"{test['mask_map_50']:.3f}" if "mask_map" in test else "-",
                    "mask mAP": f"{test['mask_map']:.3f}" if "mask_map" in test else "-",
                    "box AR@100": f"{test['box_mar_100']:.3f}",
                    "steps": s["steps"],
                    "epochs": s["epochs"],
                    "train images/s": f"{training_rate(out):.1f}",
                    "peak RSS MiB": s["peak_rss_mib"],
                    "wall s": s["wall_s"],
                    "_subset": sub["metrics"],
                }
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "_subset"}), flush=True)

        if a.transfer_budget:
            b = a.transfer_budget
            source = Path(tmp) / "classifier"
            classify = ["train", "classify", "--data", "fashion-mnist", "--model", "resnet8", "--time-budget",
                        f"{a.classifier_budget:g}"]  # fmt: skip
            c = run_lamina([*classify, "--out", str(source), "--json", "--quiet"])
            init_args = ["train", "detect", "--init", str(source), "--time-budget", f"{b:g}"]
            t = run_lamina([*init_args, "--out", str(Path(tmp) / "init"), "--json", "--quiet"])
            if ("maskrcnn", b) in runs:  # the budget's own scratch run
                scratch_test = json.loads((runs[("maskrcnn", b)] / "lamina.json").read_text())["metrics"]["test"]
            else:
                s = run_lamina(["train", "detect", "--time-budget", f"{b:g}", "--out", str(Path(tmp) / "scratch"),
                                "--json", "--quiet"])  # fmt: skip
                scratch_test = s["metrics"]["test"]
            extra["transfer"] = {
                "classifier": f"`{command_line(classify)}`: test accuracy {c['metrics']['test']['accuracy']:.2%}",
                "command": f"`{command_line([*init_args[:2], '--init', 'CLASSIFIER', *init_args[4:]])}`",
                "init": t["metrics"]["test"],
                "scratch": scratch_test,
            }
            print(json.dumps({"transfer": extra["transfer"]}), flush=True)

        lat = []
        for model in models:
            longest = max((b for m, b in runs if m == model), default=None)
            if longest is None:
                continue
            for size in (192, 256):
                lat.append({"model": model, "trained s": f"{longest:g}", "image px": size,
                            **latency(runs[(model, longest)], root, a.latency_images, size)})  # fmt: skip
                print(json.dumps(lat[-1]), flush=True)

    body = [
        table([{k: v for k, v in r.items() if k != "_subset"} for r in rows], [k for k in rows[0] if k != "_subset"])
    ]
    body.append(
        f"\nTest: {spec.test} scenes on photographs never used in training, Fashion-MNIST test objects; "
        f"training: {spec.train} scenes of {spec.image_size} px (made before the clocks start)."
    )
    if peers:
        body.append(f"\n### Against torchvision's reference recipe, first {a.eval_images} test scenes\n")
        compare = []
        for peer in peers:
            mine = next((r for r in rows if r["model"] == "maskrcnn" and float(r["budget s"]) == peer["budget"]), None)
            if mine is None:
                continue
            m = mine["_subset"]
            compare.append({
                "budget s": f"{peer['budget']:g}",
                "lamina box mAP@0.5": f"{m['box_map_50']:.3f}", "peer box mAP@0.5": f"{peer['box_map_50']:.3f}",
                "lamina box mAP": f"{m['box_map']:.3f}", "peer box mAP": f"{peer['box_map']:.3f}",
                "lamina mask mAP": f"{m['mask_map']:.3f}", "peer mask mAP": f"{peer['mask_map']:.3f}",
                "ratio box mAP (lamina / peer)": f"{m['box_map'] / peer['box_map']:.1f}x" if peer["box_map"] > 0
                else "peer 0",
                "peer steps": peer["steps"], "peer images/s": peer["images_per_s"],
                "peer peak RSS MiB": peer["peak_rss_mib"], "peer parameters": f"{peer['parameters']:,}",
            })  # fmt: skip
        body.append(table(compare, list(compare[0])) if compare else "(no lamina maskrcnn run at the peer's budget)")
    if "transfer" in extra:
        t = extra["transfer"]
        body.append(f"\n### Transfer from a classifier ({t['classifier']})\n")
        body.append(
            table(
                [
                    {"start": name, **{k: f"{t[key][k]:.3f}" for k in ("box_map_50", "box_map", "mask_map")}}
                    for name, key in (("scratch", "scratch"), ("--init resnet8 classifier", "init"))
                ],
                ["start", "box_map_50", "box_map", "mask_map"],
            )
            + f"\n\nCommand: {t['command']}"
        )
    if lat:
        body.append("\n### Latency at batch 1 (model and post-processing, per image)\n")
        body.append(table(lat, list(lat[0])))
    text = "\n".join(body)
    print(json.dumps({"benchmark": "detection", "rows": [{k: v for k, v in r.items() if k != "_subset"} for r in rows],
                      "peers": peers, "latency": lat, **extra}, default=str))  # fmt: skip
    if not a.no_write:
        append_section(
            "Detection: synth-scenes, lamina's detectors and torchvision's reference Mask R-CNN",
            f"python -m benchmarks.detection --budgets {a.budgets} --models {a.models} --peer-budgets "
            f"{a.peer_budgets} --transfer-budget {a.transfer_budget:g} --eval-images {a.eval_images}",
            text,
        )


if __name__ == "__main__":
    main()
