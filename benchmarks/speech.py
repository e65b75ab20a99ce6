"""Speech recognition on synthesized multi-voice speech (synth-speech), on this machine's CPU.

    python -m benchmarks.speech                        # ctc, las and joint, 25 minutes of training each
    python -m benchmarks.speech --models ctc --budget 600

Each model is trained by its own `lamina train transcribe ... --json` process (the wall clock is the
whole command, corpus loading and final evaluation included), then scored by `lamina evaluate RUN
--json`: word and character error rates (jiwer) of greedy transcripts of the test split, which only
voices never heard in training speak (two held-out accents, three held-out voice variants), at four
noise levels. The real-time factor is measured on `lamina transcribe`'s own code path, one file at
a time (batch 1): processing seconds over audio seconds, file reading and features included. The
corpus figures are those recorded when the corpus was synthesized (corpus.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy

from benchmarks.common import append_section, command_line, run_lamina, table

TARGET_WER = 0.10  # on clean held-out voices
TARGET_RTF = 0.05
RTF_FILES = 40  # test files transcribed one at a time for the real-time factor


def time_to_target(run: Path, key: str = "val_wer", target: float = TARGET_WER) -> float | None:
    """Seconds of training until validation WER first reached the target (validation: seen voices)."""
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get(key) is not None and row[key] <= target:
            return row["time"]
    return None


def real_time_factor(run: Path, files: list[Path]) -> dict:
    import lamina
    from lamina.data import audio

    loaded = lamina.load(run, device="cpu")
    loaded.transcribe(files[:2])  # warm-up: first calls allocate and pick kernels
    rtfs, latencies = [], []
    for f in files:
        started = time.perf_counter()
        r = loaded.transcribe([f])["results"][0]
        seconds = time.perf_counter() - started
        rtfs.append(seconds / r["audio_seconds"])
        latencies.append(seconds)
    return {
        "rtf_median": statistics.median(rtfs),
        "rtf_p95": float(numpy.percentile(rtfs, 95)),  # linear interpolation between the closest ranks
        "latency_median_s": statistics.median(latencies),
        "audio_median_s": statistics.median(audio.file_seconds(f) for f in files),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="ctc,las,joint")
    p.add_argument("--budget", type=float, default=1500, help="seconds per training run, evaluation included")
    p.add_argument("--out", default="runs/bench-speech", help="folder of the runs (kept for inspection)")
    p.add_argument(
        "--extra", default="", help="more train arguments for every model, e.g. '--set data.utterances=5000'"
    )
    a = p.parse_args()
    rows, corpus = [], None
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for name in a.models.split(","):
        out = Path(a.out) / name
        args = [
            "train",
            "transcribe",
            "--model",
            name,
            "--time-budget",
            f"{a.budget:g}",
            *a.extra.split(),
            "--out",
            str(out),
            "--json",
            "--quiet",
        ]
        summary = run_lamina(args, log=Path(a.out) / f"{name}.log")
        evaluated = run_lamina(["evaluate", str(out), "--json"])
        info = json.loads((out / "lamina.json").read_text())
        corpus = info["meta"]["data"]
        test = [
            Path(corpus["folder"]) / line.split("\t")[0]
            for line in (Path(corpus["folder"]) / "test.tsv").read_text().splitlines()[:RTF_FILES]
        ]
        speed = real_time_factor(out, test)
        m = evaluated["metrics"]
        row = {
            "model": name,
            "command": f"`{command_line(args[:-4])}`",
            "parameters": f"{info['model']['parameters']:,}",
            "WER clean": f"{m['by_noise']['clean']['wer']:.2%}",
            "CER clean": f"{m['by_noise']['clean']['cer']:.2%}",
            "WER 10 dB": f"{m['by_noise']['10 dB']['wer']:.2%}",
            "CER 10 dB": f"{m['by_noise']['10 dB']['cer']:.2%}",
            "WER all": f"{m['wer']:.2%}",
            "CER all": f"{m['cer']:.2%}",
            **{f"WER new {g}": f"{v['wer']:.2%}" for g, v in m["by_voice"].items()},
            "epochs": f"{summary['epochs']:.2f}",
            "train wall s": f"{summary['wall_s']:.0f}",
            "val WER <= 10% at s": (lambda t: f"{t:.0f}" if t is not None else "not reached")(time_to_target(out)),
            "RTF median (p95)": f"{speed['rtf_median']:.4f} ({speed['rtf_p95']:.4f})",
            "peak RSS MiB": summary["peak_rss_mib"],
        }
        rows.append(row)
        print(
            json.dumps(
                {"model": name, "metrics": m, "speed": speed, "wall_s": summary["wall_s"], "epochs": summary["epochs"]}
            ),
            flush=True,
        )
    c = json.loads((Path(corpus["folder"]) / "corpus.json").read_text())
    body = (
        f"Corpus: synth-speech {c['key']}, {c['utterances']:,} utterances (train {c['sizes']['train']:,} / val "
        f"{c['sizes']['val']:,} / test {c['sizes']['test']:,}), {c['audio_hours']:.1f} h of 16 kHz audio, "
        f"{c['bytes'] / 1e6:,.0f} MB of FLAC on disk, synthesized in {c['generation_seconds']:.0f} s "
        f"({c['utterances_per_s']:.0f} utterances/s, {c['audio_hours'] * 3600 / c['generation_seconds']:.0f}x real "
        f"time, all cores; {c['espeak'].split(' Data')[0]}). Test voices: accents {', '.join(c['test_accents'])} "
        f"and variants {', '.join(c['test_variants'])} never heard in training; test sentences never trained on.\n\n"
        f"Greedy decoding. WER/CER by noise level are over the test utterances at that level (a quarter each); "
        f"'new accent' / 'new variant' / 'new both' split the test voices by what is unseen. RTF: `lamina "
        f"transcribe`'s code path, batch 1, {RTF_FILES} test files, fp32 on the CPU. Targets: WER <= "
        f"{TARGET_WER:.0%} on clean held-out voices, RTF <= {TARGET_RTF}.\n\n"
    ) + table(rows, list(rows[0]))
    append_section(
        "Speech recognition on synth-speech (ctc, las, joint)",
        f"python -m benchmarks.speech --models {a.models} --budget {a.budget:g}",
        body,
    )


if __name__ == "__main__":
    main()
