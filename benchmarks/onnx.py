"""ONNX export: latency of onnxruntime against PyTorch eager for every exported graph, on this CPU.

    python -m benchmarks.onnx [--reps 50] [--warmup 5] [--threads 2] [--runs DIR]
    python -m benchmarks.onnx --threads 1,2        # each graph at one thread, then at two

Short runs of each exportable task are trained first, at their default model sizes (latency does not
depend on what the weights learned): classify (vgg-s, Fashion-MNIST at 28 px), detect (maskrcnn,
synthetic scenes at 192 px), transcribe (ctc on tones), read (reader: crnn and dbnet, synthetic
text scenes). Each is exported with `lamina.export`; then each graph runs on the same inputs in
PyTorch (the exported module itself, eager, no_grad) and in onnxruntime (one session, CPU), with
the same number of threads, alternating one call of each so that drifts of the shared machine hit
both alike. p50 and p95 of `--reps` calls after `--warmup`; the ratio is PyTorch p50 / onnxruntime
p50 (above 1: onnxruntime is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import wave
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import append_section, table

SPEECH_SECONDS = 3.0


def train_runs(folder: Path) -> dict[str, Path]:
    """One short run per exportable task under `folder` (kept: a second invocation reuses them)."""
    import lamina

    cpu = ["train.device=cpu", "train.amp=off"]
    recipes = {
        "classify": dict(data="fashion-mnist", sets=["data.per_class=50", *cpu]),
        "detect": dict(data="synth-scenes", sets=["data.scenes=32", "data.val_scenes=8", "data.test_scenes=8", *cpu]),
        "read": dict(data="synth-text", sets=["data.scenes=16", "data.val_scenes=4", "data.test_scenes=4", *cpu]),
        "transcribe": dict(data=str(tone_manifest(folder / "tones")), model="ctc", batch_size=8, sets=cpu),
    }
    runs = {}
    for task, options in recipes.items():
        out = folder / task
        if not (out / "model.safetensors").exists():
            lamina.train(task, epochs=1, out=str(out), quiet=True, **options)
        runs[task] = out
    return runs


def tone_manifest(folder: Path) -> Path:
    """Sixteen tones 'saying' four words: a corpus a ctc run trains on in seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(16):
        t = np.arange(int(16000 * (0.5 + 0.1 * (i % 4)))) / 16000
        samples = 0.4 * np.sin(2 * np.pi * (220 + 110 * (i % 4)) * t)
        with wave.open(str(folder / f"{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((samples * 32767).astype("<i2").tobytes())
        lines.append(f"{i}.wav\t{['open', 'close', 'red', 'dog'][i % 4]}")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder / "train.tsv"


def inputs_for(graph: dict, generator: torch.Generator) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(label, {input name: tensor}) to time a graph on, from its declared inputs: batch 1 and a
    larger batch where the graph takes batches."""
    names = [i["name"] for i in graph["inputs"]]
    if names == ["image"] and graph["inputs"][0]["shape"][0] == 3:  # a detector: one image
        return [("1 image 192x192", {"image": torch.randint(0, 256, (3, 192, 192), dtype=torch.uint8)})]
    if names == ["image"] and graph["inputs"][0]["shape"][2] == "height":  # a word-map detector
        return [(f"{b} image 384x512", {"image": torch.randint(0, 256, (b, 3, 384, 512), dtype=torch.uint8)})
                for b in (1, 4)]  # fmt: skip
    if names == ["image"]:
        _, c, h, w = graph["inputs"][0]["shape"]
        return [(f"{b} image {h}x{w}", {"image": torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8)})
                for b in (1, 64)]  # fmt: skip
    if names == ["crops"]:
        return [(f"{b} crop 32x128", {"crops": torch.randint(0, 256, (b, 1, 32, 128), dtype=torch.uint8)})
                for b in (1, 16)]  # fmt: skip
    if names == ["waveform"]:
        return [(f"{SPEECH_SECONDS:g} s waveform", {"waveform": torch.randn(int(16000 * SPEECH_SECONDS)) * 0.1})]
    frames = int(100 * SPEECH_SECONDS)
    return [
        (f"{b} utterance {SPEECH_SECONDS:g} s",
         {"features": torch.randn(b, frames, 80, generator=generator), "lengths": torch.full((b,), frames)})
        for b in (1, 8)
    ]  # fmt: skip


def latency(module, session, feed: dict[str, torch.Tensor], reps: int, warmup: int) -> dict[str, float]:
    arrays = {k: v.numpy() for k, v in feed.items()}
    args = list(feed.values())
    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    calls = {"torch": lambda: module(*args), "onnxruntime": lambda: session.run(None, arrays)}
    with torch.inference_mode():
        for r in range(warmup + reps):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                if r >= warmup:
                    times[name].append(1000 * (time.perf_counter() - started))
    out = {}
    for name, values in times.items():
        out[f"{name}_p50_ms"] = round(statistics.median(values), 2)
        out[f"{name}_p95_ms"] = round(float(np.percentile(values, 95)), 2)
    out["ratio"] = round(out["torch_p50_ms"] / out["onnxruntime_p50_ms"], 2)
    return out


def measure(runs: dict[str, Path], out: Path, reps: int, warmup: int, threads: list[int]) -> list[dict]:
    import onnxruntime

    import lamina

    generator = torch.Generator().manual_seed(0)
    rows = []
    for task, run_dir in runs.items():
        run = lamina.load(run_dir, "cpu")
        result = lamina.export(run, out=out / f"{task}.onnx")
        specs = run.task.export_graphs(run.model, run.meta)  # the modules that were exported, for eager
        for graph, spec in zip(result["graphs"], specs):
            for n in threads:
                torch.set_num_threads(n)
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = n, 1
                session = onnxruntime.InferenceSession(graph["onnx"], options, providers=["CPUExecutionProvider"])
                for label, feed in inputs_for(graph, generator):
                    figures = latency(spec.module.eval(), session, feed, reps, warmup)
                    rows.append({"task": task, "model": run.info["model"]["name"], "graph": graph.get("part", "main"),
                                 "input": label, "exporter": graph["exporter"], "threads": n, **figures})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", default="2", help="torch and onnxruntime intra-op threads, e.g. 1,2 for both")
    p.add_argument("--runs", default="/tmp/lamina-onnx-benchmark", help="where the short runs and graphs go")
    p.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    a = p.parse_args()
    threads = [int(n) for n in a.threads.split(",")]
    folder = Path(a.runs)
    started = time.perf_counter()
    runs = train_runs(folder)
    load_before = os.getloadavg()[0]  # other processes on the machine widen p95, PyTorch's the most
    rows = measure(runs, folder / "onnx", a.reps, a.warmup, threads)
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result = {"benchmark": "onnx", "reps": a.reps, "warmup": a.warmup, "threads": a.threads, "load_average": load,
              "rows": rows, "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    print(json.dumps(result))
    if a.no_write:
        return
    import onnxruntime
    import onnxscript

    import onnx

    columns = ["task", "model", "graph", "input", "exporter", "threads", "torch_p50_ms", "torch_p95_ms",
               "onnxruntime_p50_ms", "onnxruntime_p95_ms", "ratio"]  # fmt: skip
    body = (
        f"- also: onnx {onnx.__version__}, onnxscript {onnxscript.__version__}, onnxruntime {onnxruntime.__version__}"
        f" (CPUExecutionProvider); the same intra-op threads in both, {a.warmup} warm-up calls, then {a.reps}"
        " alternating calls of each on the same inputs; ratio = PyTorch p50 / onnxruntime p50; 1-minute load"
        f" average {load[0]} before the measurements, {load[1]} after (2 cores)\n\n" + table(rows, columns)
    )
    append_section(
        "ONNX export: onnxruntime against PyTorch eager, latency on the CPU",
        f"python -m benchmarks.onnx --reps {a.reps} --warmup {a.warmup} --threads {a.threads}",
        body,
    )


if __name__ == "__main__":
    main()
