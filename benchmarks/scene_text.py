"""Scene text on synth-text: lamina's reader after 10 and 30 minutes of training, beside Tesseract and
RapidOCR on the same held-out test scenes.

    python -m benchmarks.scene_text [--budgets 600,1800] [--peers tesseract,rapidocr]
                                    [--test-images 300] [--latency-images 30] [--recognizer-budget 0]

1. The scenes are rendered first (outside every budget): the default `lamina train read` data.
2. For each budget, `lamina train read --time-budget B` (detector and recognizer in the same steps).
   Its test figures: all test scenes (font families and photographs never seen in training): word
   accuracy and CER of the recognizer on the words' crops, detection precision, recall and H-mean at
   IoU 0.5, end-to-end F; peak memory of the training process; the recognizer's crops/s on the test
   crops.
3. Latency of `lamina read` (detection, crops, recognition) on test scenes scaled to 512 px: median
   and p95 at batch 1.
4. The peers on the same test scenes and crops, in this same invocation (benchmarks/peers/ocr_engines.py):
   figures, seconds per image, crops/s.
5. With --recognizer-budget, a recognizer alone (`--model crnn`) trained that long, for its word accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import append_section, command_line, run_lamina, run_peer, table

FIGURES = ("word_accuracy", "word_accuracy_nocase", "cer", "precision", "recall", "hmean", "e2e_f")


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def latency(run: Path, root: Path, n: int, size: int = 512) -> dict:
    """Seconds of run.read per image at batch 1, on n test scenes scaled to `size` px."""
    from PIL import Image

    import lamina

    r = lamina.load(run, device="cpu")
    files = sorted((root / "test").glob("*.jpg"))[:n]
    images = [Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR) for f in files]
    r.read(images[:2])  # warm-up
    seconds = []
    for image in images:
        t0 = time.perf_counter()
        r.read([image])
        seconds.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(seconds), 3), "p95_s": round(percentile(seconds, 95), 3)}


def crops_per_second(run: Path, root: Path) -> float:
    """The recognizer alone on every test crop, batched by width as evaluation does."""
    import lamina
    from lamina.data import ocr, synthtext

    r = lamina.load(run, device="cpu")
    data = ocr.crops_of(ocr.read_synth(root, "test"), set(synthtext.ALPHABET), None, "test")
    recognizer = r.task.part(r.model, "recognizer")
    r.task.recognize(recognizer, data.crops[:64])  # warm-up
    t0 = time.perf_counter()
    r.task.recognize(recognizer, data.crops)
    return round(len(data.crops) / (time.perf_counter() - t0), 1)


def row_of(name: str, m: dict, extra: dict) -> dict:
    return {"system": name, **{k: f"{m[k]:.3f}" for k in FIGURES if k in m}, **extra}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="600,1800", help="training budgets in seconds, comma-separated")
    p.add_argument("--peers", default="tesseract,rapidocr")
    p.add_argument("--test-images", type=int, default=0, help="the peers read the first N test scenes (0: all)")
    p.add_argument("--latency-images", type=int, default=30)
    p.add_argument("--recognizer-budget", type=float, default=0)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    budgets = [float(b) for b in a.budgets.split(",") if b]

    from lamina.data import synthtext
    from lamina.tasks.read import ReadData

    d = ReadData()
    spec = synthtext.TextSpec(image_size=d.image_size, train=d.scenes, val=d.val_scenes, test=d.test_scenes)
    root = synthtext.build(spec)  # what `lamina train read` reads, made before any clock starts
    manifest = json.loads((root / "manifest.json").read_text())
    rows, runs, lat = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            out = Path(tmp) / f"reader-{budget:g}"
            args = ["train", "read", "--time-budget", f"{budget:g}"]
            s = run_lamina([*args, "--out", str(out), "--json", "--quiet"])
            runs[budget] = out
            test = s["metrics"]["test"]
            row = row_of(f"lamina reader, {budget / 60:g} min", test, {
                "command": f"`{command_line(args)}`", "steps": s["steps"], "epochs": s["epochs"],
                "peak RSS MiB": s["peak_rss_mib"], "crops/s": crops_per_second(out, root)})  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
        if a.recognizer_budget:
            out = Path(tmp) / "crnn"
            args = ["train", "read", "--model", "crnn", "--time-budget", f"{a.recognizer_budget:g}"]
            s = run_lamina([*args, "--out", str(out), "--json", "--quiet"])
            rows.append(row_of(f"lamina crnn alone, {a.recognizer_budget / 60:g} min", s["metrics"]["test"], {
                "command": f"`{command_line(args)}`", "steps": s["steps"], "epochs": s["epochs"],
                "peak RSS MiB": s["peak_rss_mib"], "crops/s": crops_per_second(out, root)}))  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        if runs:
            longest = max(runs)
            lat.append({"run": f"reader, {longest / 60:g} min", "image px": 512,
                        **latency(runs[longest], root, a.latency_images)})  # fmt: skip
            print(json.dumps(lat[-1]), flush=True)
    for engine in [e for e in a.peers.split(",") if e]:
        extra = ["--images", str(a.test_images)] if a.test_images else []
        peer = run_peer("ocr_engines", 0, "--engine", engine, "--data", str(root), *extra)
        rows.append(row_of(engine, peer, {"s/image": peer["seconds_per_image"], "crops/s": peer["crops_per_s"],
                                          "images": peer["images"]}))  # fmt: skip

    columns = list(dict.fromkeys(k for r in rows for k in r))
    body = [table(rows, columns)]
    body.append(
        f"\nTest: {spec.test} scenes ({manifest['words']['test']:,} words) of {spec.image_size} px on photographs "
        f"and in font families never used in training ({', '.join(manifest['fonts']['test'])}); training: "
        f"{spec.train} scenes ({manifest['words']['train']:,} words, rendered before the clocks start). Word "
        "accuracy and CER: the recognizer on the test words' crops (for the peers: their recognizer alone on "
        "the same crops); precision, recall, H-mean: detection at IoU 0.5; e2e_f: words found and read right "
        "(case ignored), ICDAR 2015 protocol."
    )
    if lat:
        body.append("\n### `lamina read` latency at batch 1 (test scenes scaled to 512 px)\n")
        body.append(table(lat, list(lat[0])))
    text = "\n".join(body)
    print(json.dumps({"benchmark": "scene_text", "rows": rows, "latency": lat}), flush=True)
    if not a.no_write:
        extra = f" --recognizer-budget {a.recognizer_budget:g}" if a.recognizer_budget else ""
        append_section("Scene text: lamina read beside Tesseract and RapidOCR", "python -m benchmarks.scene_text "
                       f"--budgets {a.budgets}{extra} --peers {a.peers}", text)  # fmt: skip


if __name__ == "__main__":
    main()
