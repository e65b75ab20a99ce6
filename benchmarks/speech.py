"""Speech recognition on synthesized multi-voice speech (synth-speech), on this machine's CPU.

    python -m benchmarks.speech                                  # the default recipe, 30 minutes
    python -m benchmarks.speech --recipes joint,ctc,las,las-pyramid --budget 1500
    python -m benchmarks.speech --recipes joint --budget 1800 --lm-budget 300 --decode

Each recipe is trained by its own `lamina train transcribe ... --json` process (the wall clock is
the whole command, corpus loading and final evaluation included), then scored by `lamina evaluate
RUN --json`: word and character error rates (jiwer) of the test split, which only voices never heard
in training speak (two held-out accents, three held-out voice variants), at four noise levels.

--decode also scores the first recipe with beam search, and with shallow fusion of a character
language model trained (`lamina train lm`, --lm-budget seconds) on the corpus's lm-train.txt: every
training-bucket sentence of the sentence pool, so no validation or test sentence is in it.

The real-time factor is measured on `lamina transcribe`'s own code path, one file at a time (batch
1): processing seconds over audio seconds, file reading and features included. The feature cache's
saving is the time to compute the training features against the time to read them from the cache.
A snapshot of each attention recipe's best weights at 10 minutes is kept, and its alignment of a test
utterance drawn (`lamina transcribe --show-attention`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy

from benchmarks.common import append_section, command_line, run_lamina, table

EVAL_EVERY = ["--set", "train.eval_every=300"]  # validation every 300 steps: the time-to-WER figures
RECIPES = {
    "joint": ["--model", "joint", *EVAL_EVERY],
    "ctc": ["--model", "ctc", *EVAL_EVERY],
    "las": ["--model", "las", *EVAL_EVERY],
    "las-pyramid": ["--model", "las", "--set", "model.frontend=pyramid", *EVAL_EVERY],
    "joint-pyramid": ["--model", "joint", "--set", "model.frontend=pyramid", *EVAL_EVERY],
}
TARGETS = (0.50, 0.20, 0.10)  # validation WER milestones
RTF_FILES = 40  # test files transcribed one at a time for the real-time factor
SNAPSHOT_AT = 600  # seconds: the attention plot after 10 minutes
# A human voice saying "front center", ...: alsa-utils' recordings, which `./run peers` puts there.
REAL_SPEECH = Path(os.environ.get("LAMINA_HOME") or Path.home() / ".cache" / "lamina") / "real-speech"


def time_to(run: Path, target: float, key: str = "val_wer") -> float | None:
    """Seconds of training until validation WER first reached `target` (validation: seen voices)."""
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get(key) is not None and row[key] <= target:
            return row["time"]
    return None


def real_time_factor(run: Path, files: list[Path], **decoding) -> dict:
    import lamina
    from lamina.data import audio

    loaded = lamina.load(run, device="cpu")
    loaded.transcribe(files[:2], **decoding)  # warm-up: first calls allocate and pick kernels
    rtfs = []
    for f in files:
        started = time.perf_counter()
        r = loaded.transcribe([f], **decoding)["results"][0]
        rtfs.append((time.perf_counter() - started) / r["audio_seconds"])
    return {
        "rtf_median": statistics.median(rtfs),
        "rtf_p95": float(numpy.percentile(rtfs, 95)),
        "audio_median_s": statistics.median(audio.file_seconds(f) for f in files),
    }


def snapshot_later(run: Path, dest: Path, after: float) -> threading.Thread:
    """Copy the run's weights (the best so far) `after` seconds from now, while it trains."""

    def copy():
        time.sleep(after)
        if (run / "model.safetensors").is_file():
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("lamina.json", "model.safetensors"):
                shutil.copy2(run / name, dest / name)

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def feature_cache_saving(corpus: Path) -> dict:
    """Seconds to compute the training features afresh (into a new cache) and to read them cached."""
    import tempfile

    from lamina.data import speech

    examples = speech.synth_splits(corpus)["train"]
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        speech.load_features(examples, "training", Path(cache))
        computed = time.perf_counter() - started
        started = time.perf_counter()
        feats, _ = speech.load_features(examples, "training", Path(cache))
        sum(int(f.shape[0]) for f in feats)
        read = time.perf_counter() - started
    return {"compute_s": computed, "cached_s": read, "utterances": len(examples)}


def real_recordings(run: Path, **decoding) -> list[dict]:
    """Transcripts of the human recordings alsa-utils ships (what each says is its file name)."""
    import lamina

    files = sorted(f for f in REAL_SPEECH.glob("*.wav") if f.stem != "Noise")
    if not files:
        return []
    done = lamina.load(run, device="cpu").transcribe(files, **decoding)["results"]
    return [
        {
            "file": f"`{f.name}`",
            "says": f.stem.replace("_", " ").lower(),
            "transcript": r.get("transcript", r.get("error", "")),
            "seconds of audio": f"{r.get('audio_seconds', 0):.2f}",
        }
        for f, r in zip(files, done)
    ]


def scores(m: dict) -> dict:
    noise = m["by_noise"]
    return {
        "WER clean": f"{noise['clean']['wer']:.2%}",
        "CER clean": f"{noise['clean']['cer']:.2%}",
        "WER 20 dB": f"{noise['20 dB']['wer']:.2%}",
        "WER 10 dB": f"{noise['10 dB']['wer']:.2%}",
        "WER 5 dB": f"{noise['5 dB']['wer']:.2%}",
        "WER all": f"{m['wer']:.2%}",
        **{f"WER new {g}": f"{v['wer']:.2%}" for g, v in m["by_voice"].items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="joint", help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--budget", type=float, default=1800, help="seconds per training run")
    p.add_argument("--out", default="runs/bench-speech", help="folder of the runs (kept for inspection)")
    p.add_argument("--extra", default="", help="more train arguments for every recipe")
    p.add_argument("--decode", action="store_true", help="also beam search and LM fusion for the first recipe")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--lm", default="", help="an lm run to fuse (default: train one for --lm-budget seconds)")
    p.add_argument("--lm-budget", type=float, default=300)
    p.add_argument("--lm-weights", default="0.2,0.4", help="LM weights tried on validation; the best is tested")
    a = p.parse_args()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, decode_rows, corpus, plots = [], [], None, []
    for name in a.recipes.split(","):
        out = out_dir / name
        args = ["train", "transcribe", *RECIPES[name], "--time-budget", f"{a.budget:g}", *a.extra.split()]
        if name != "ctc" and a.budget > SNAPSHOT_AT:
            snapshot_later(out, out_dir / f"{name}-10min", SNAPSHOT_AT + 30)  # + the corpus and features
        summary = run_lamina([*args, "--out", str(out), "--json", "--quiet"], log=out_dir / f"{name}.log")
        evaluated = run_lamina(["evaluate", str(out), "--json"])
        info = json.loads((out / "lamina.json").read_text())
        corpus = Path(info["meta"]["data"]["folder"])
        test = [corpus / line.split("\t")[0] for line in (corpus / "test.tsv").read_text().splitlines()[:RTF_FILES]]
        speed = real_time_factor(out, test)
        m = evaluated["metrics"]
        rows.append(
            {
                "recipe": name,
                "command": f"`{command_line(args)}`",
                "parameters": f"{info['model']['parameters']:,}",
                **scores(m),
                "epochs": f"{summary['epochs']:.2f}",
                "train wall s": f"{summary['wall_s']:.0f}",
                **{
                    f"val WER <= {t:.0%} at s": (lambda s: f"{s:.0f}" if s is not None else "not reached")(
                        time_to(out, t)
                    )
                    for t in TARGETS
                },
                "RTF median (p95)": f"{speed['rtf_median']:.4f} ({speed['rtf_p95']:.4f})",
                "peak RSS MiB": summary["peak_rss_mib"],
            }
        )
        print(json.dumps({"recipe": name, "metrics": m, "speed": speed, "wall_s": summary["wall_s"]}), flush=True)
        snap = out_dir / f"{name}-10min"
        if (snap / "model.safetensors").is_file():
            plot = out_dir / f"{name}-attention-10min.png"
            run_lamina(["transcribe", str(snap), str(test[0]), "--show-attention", str(plot), "--json"])
            plots.append(f"{name}: `{plot}` (weights at {SNAPSHOT_AT // 60} minutes)")
        if a.decode and not decode_rows:
            decode_rows = decode_figures(a, out, out_dir, corpus, test, m)
    c = json.loads((corpus / "corpus.json").read_text())
    cache = feature_cache_saving(corpus)
    body = (
        f"Corpus: synth-speech {c['key']}, {c['utterances']:,} utterances (train {c['sizes']['train']:,} / val "
        f"{c['sizes']['val']:,} / test {c['sizes']['test']:,}), {c['audio_hours']:.1f} h of 16 kHz audio, "
        f"synthesized in {c['generation_seconds']:.0f} s ({c['utterances_per_s']:.0f} utterances/s, all cores; "
        f"{c['espeak'].split(' Data')[0]}). Test voices: accents {', '.join(c['test_accents'])} and variants "
        f"{', '.join(c['test_variants'])} never heard in training; test sentences never trained on.\n\n"
        f"Greedy decoding (joint: with its CTC prefix score, weight 0.3). WER/CER by noise level are over the test "
        f"utterances at that level (a quarter each); 'new accent' / 'new variant' / 'new both' split the test "
        f"voices by what is unseen. Validation WER milestones: seconds of training (seen voices). RTF: `lamina "
        f"transcribe`'s code path, batch 1, {RTF_FILES} test files, fp32 on the CPU.\n\n"
        + table(rows, list(rows[0]))
        + f"\n\nFeature cache: the log-mel features of the {cache['utterances']:,} training utterances took "
        f"{cache['compute_s']:.1f} s to compute (2 processes) and {cache['cached_s']:.2f} s to read from the cache "
        f"({cache['compute_s'] / max(cache['cached_s'], 1e-9):.0f}x less).\n"
    )
    if plots:
        body += "\nAttention after 10 minutes: " + "; ".join(plots) + ".\n"
    if decode_rows:
        columns = list(dict.fromkeys(k for row in decode_rows for k in row))
        body += "\nDecoding the first recipe's run (test split):\n\n" + table(decode_rows, columns) + "\n"
    real = real_recordings(out_dir / a.recipes.split(",")[0], beam=a.beam)
    if real:
        body += (
            f"\nReal human recordings (alsa-utils' sounds, in {REAL_SPEECH}; beam {a.beam}) transcribed by the first "
            "recipe's run:\n\n" + table(real, list(real[0])) + "\n"
        )
    append_section(
        "Speech recognition on synth-speech: conv front end, joint decoding, LM fusion",
        f"python -m benchmarks.speech --recipes {a.recipes} --budget {a.budget:g}" + (" --decode" if a.decode else ""),
        body,
    )


def decode_figures(a, run: Path, out_dir: Path, corpus: Path, test: list[Path], greedy: dict) -> list[dict]:
    """Greedy, beam, and beam with the LM at the weight that does best on validation, on the test split."""
    lm = a.lm
    if not lm:
        lm_args = ["train", "lm", "--data", str(corpus / "lm-train.txt"), "--time-budget", f"{a.lm_budget:g}"]
        from lamina.data import speech

        speech.lm_text(corpus)
        summary = run_lamina([*lm_args, "--out", str(out_dir / "lm"), "--json", "--quiet"], log=out_dir / "lm.log")
        lm = summary["run"]
        print(json.dumps({"lm": lm, "metrics": summary.get("metrics")}), flush=True)
    rows = [{"decoding": "greedy", **scores(greedy)}]
    beam = run_lamina(["evaluate", str(run), "--beam", str(a.beam), "--json"])
    rows.append({"decoding": f"beam {a.beam}", **scores(beam["metrics"])})
    tried = {}
    for w in a.lm_weights.split(","):
        val = run_lamina(
            ["evaluate", str(run), "--split", "val", "--beam", str(a.beam), "--lm", lm, "--lm-weight", w, "--json"]
        )
        tried[w] = val["metrics"]["wer"]
    best = min(tried, key=tried.get)
    fused = run_lamina(["evaluate", str(run), "--beam", str(a.beam), "--lm", lm, "--lm-weight", best, "--json"])
    speed = real_time_factor(run, test, beam=a.beam, lm=lm, lm_weight=float(best))
    weights = ", ".join(f"{w}: val {v:.2%}" for w, v in tried.items())
    rows.append(
        {
            "decoding": f"beam {a.beam} + LM (weight {best}, of {weights})",
            **scores(fused["metrics"]),
            "RTF median": f"{speed['rtf_median']:.4f}",
        }
    )
    print(json.dumps({"decode": rows}), flush=True)
    return rows


if __name__ == "__main__":
    main()
