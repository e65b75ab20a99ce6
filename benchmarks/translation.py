"""English -> French translation on this machine's gettext catalogs (gettext:fr).

    python -m benchmarks.translation --recipes compare   # seq2seq vs attention: equal parameters, equal time
    python -m benchmarks.translation --recipes peer      # attention vs the PyTorch tutorial's recipe, equal time
    python -m benchmarks.translation --recipes best      # the attention model within 30 minutes
    python -m benchmarks.translation --speed RUN         # beam 1 vs 5: BLEU, sentences/s, latency p50/p95

Each training run is its own `lamina train translate ... --json` process (the wall clock is the whole
command) and is then scored by `lamina evaluate RUN --beam 5 --json`: corpus BLEU and chrF
(sacrebleu) of the detokenized test translations, overall and by source length in words. The test
split is the 5% of source sentences whose SHA-256 falls in the last buckets: never seen in training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import append_section, command_line, run_lamina, run_peer, table

DATA = ["--data", "gettext:fr"]
RECIPES = {  # name -> (train arguments, target test BLEU or None, wall-clock limit in seconds)
    "best": (["--model", "attention", "--time-budget", "1795"], 30.0, 1800),
}
COMPARE_BUDGET = 600  # seconds of training (and evaluation) per model in the comparison
VOCAB = 8000  # the default subword vocabulary, for matching parameter counts
PLOT = Path(__file__).with_name("bleu-by-length.png")
SHORT = "Open the file"  # the sentence whose latency is measured
BOOTSTRAP = 1000  # resamples of the paired bootstrap test


def evaluate(run: str, beam: int = 5) -> dict:
    return run_lamina(["evaluate", run, "--beam", str(beam), "--device", "cpu", "--json"])


def train(name: str, args: list[str], tmp: str) -> tuple[dict, dict]:
    out = str(Path(tmp) / name)
    summary = run_lamina(["train", "translate", *DATA, *args, "--out", out, "--json", "--quiet"])
    evaluated = evaluate(out)
    info = json.loads((Path(out) / "lamina.json").read_text())
    summary.update(parameters=info["model"]["parameters"], corpus=info["meta"]["data"])
    m = evaluated["metrics"]
    print(
        json.dumps(
            {
                "run": name,
                "bleu": m["bleu"],
                "chrf": m["chrf"],
                "greedy_bleu": summary["metrics"]["test"]["bleu"],
                "wall_s": summary["wall_s"],
                "epochs": summary["epochs"],
            }
        ),
        flush=True,
    )
    return summary, evaluated


def matching_hidden(target: int) -> int:
    from lamina.models import count_parameters, get_model

    return min(
        range(256, 1025, 8),
        key=lambda h: abs(count_parameters(get_model("translate", "seq2seq", vocab_size=VOCAB, hidden=h)) - target),
    )


def corpus_line(corpus: dict) -> str:
    return (
        f"Corpus: {corpus['name']}, {len(corpus['catalogs'])} catalogs, {corpus['pairs']:,} pairs "
        f"(train {corpus['train']:,} / val {corpus['val']:,} / test {corpus['test']:,}), "
        f"SHA-256 {corpus['sha256']}."
    )


def row_of(name: str, args: list[str], s: dict, e: dict) -> dict:
    m = e["metrics"]
    return {
        "model": name,
        "command": f"`{command_line(['train', 'translate', *DATA, *args])}`",
        "parameters": f"{s['parameters']:,}",
        "test BLEU (beam 5)": f"{m['bleu']:.2f}",
        "chrF": f"{m['chrf']:.2f}",
        "BLEU greedy": f"{s['metrics']['test']['bleu']:.2f}",
        "val loss": f"{s['metrics']['val']['loss']:.3f}",
        **{f"BLEU {k} words (n)": f"{v['bleu']:.2f} ({v['n']})" for k, v in m["by_length"].items()},
        "epochs": f"{s['epochs']:.2f}",
        "wall s": f"{s['wall_s']:.1f}",
        "peak RSS MiB": s["peak_rss_mib"],
    }


def compare(a, tmp: str) -> None:
    from lamina.models import count_parameters, get_model

    target = count_parameters(get_model("translate", "attention", vocab_size=VOCAB))
    hidden = matching_hidden(target)
    budget = ["--time-budget", f"{a.budget:g}"]
    runs = {
        "seq2seq": ["--model", "seq2seq", *budget, "--set", f"model.hidden={hidden}"],
        "attention": ["--model", "attention", *budget],
    }
    rows, buckets = [], {}
    for name, args in runs.items():
        s, e = train(name, args, tmp)
        rows.append(row_of(name, args, s, e))
        buckets[name] = e["metrics"]["by_length"]
    plot(buckets, PLOT)
    gains = gain_by_length({name: Path(tmp) / name / "translations-test.tsv" for name in runs})
    body = (
        table(rows, list(rows[0]))
        + "\n\n"
        + table(gains, list(gains[0]))
        + (
            f"\n\n{corpus_line(s['corpus'])} Test BLEU and chrF: `lamina evaluate RUN --beam 5 --json` (sacrebleu, "
            "detokenized); 'BLEU greedy' is the figure `lamina train` prints at its end. seq2seq's hidden size is the "
            "one whose parameter count is closest to the attention model's. "
            f"Plot: benchmarks/{PLOT.name}. Second table: "
            f"BLEU per bucket with the 95% interval of sacrebleu's paired bootstrap ({BOOTSTRAP} resamples of the "
            "bucket's sentences); p: its p-value for the difference between the two.\n"
        )
    )
    print(json.dumps({"benchmark": "translation-compare", "rows": rows, "gains": gains}))
    if not a.no_write:
        append_section(
            f"Translation en->fr: seq2seq vs attention, equal parameters, {a.budget:g} s each",
            f"python -m benchmarks.translation --recipes compare --budget {a.budget:g}",
            body,
        )


PEER_NOTE = (
    "Peer: `python -m benchmarks.peers.translation_tutorial --budget SECONDS` (benchmarks/peers/"
    "translation_tutorial.py): the PyTorch tutorial 'NLP From Scratch: Translation with a Sequence to Sequence "
    "Network and Attention' (GRU encoder, GRU decoder with additive attention, hidden 128, dropout 0.1, Adam "
    "lr 0.001, batches of 32, teacher forcing, greedy decoding), on the same pairs, tokens and splits, its weights "
    "chosen on the same validation pairs, scored by the same sacrebleu calls on the same test sentences; it ran "
    "first, then lamina, each as its own process with the same wall-clock budget."
)


def against_peer(a, tmp: str) -> None:
    """lamina's attention model and the tutorial's recipe, the same wall time each: single runs."""
    peer = run_peer("translation_tutorial", a.budget)
    args = ["--model", "attention", "--time-budget", f"{a.budget:g}"]
    s, e = train("attention", args, tmp)
    m = e["metrics"]
    rows = [
        {
            "model": "attention (lamina)",
            "command": f"`{command_line(['train', 'translate', *DATA, *args])}`",
            "parameters": f"{s['parameters']:,}",
            "test BLEU greedy": f"{s['metrics']['test']['bleu']:.2f}",
            "test BLEU beam 5": f"{m['bleu']:.2f}",
            "chrF (beam 5)": f"{m['chrf']:.2f}",
            "epochs": f"{s['epochs']:.2f}",
            "wall s": f"{s['wall_s']:.1f}",
        },
        {
            "model": "PyTorch tutorial seq2seq + attention (peer)",
            "command": f"`python -m benchmarks.peers.translation_tutorial --budget {a.budget:g}`",
            "parameters": f"{peer['parameters']:,}",
            "test BLEU greedy": f"{peer['bleu']:.2f}",
            "test BLEU beam 5": "- (greedy only)",
            "chrF (beam 5)": f"{peer['chrf']:.2f} (greedy)",
            "epochs": f"{peer['epochs']:.2f}",
            "wall s": f"{peer['wall_s']:.1f}",
        },
    ]
    greedy = s["metrics"]["test"]["bleu"]
    body = (
        table(rows, list(rows[0]))
        + f"\n\nSingle runs. BLEU ratio lamina / peer, both greedy: **{greedy / max(peer['bleu'], 1e-9):.2f}x** "
        f"({greedy:.2f} against {peer['bleu']:.2f}); lamina with beam 5: {m['bleu'] / max(peer['bleu'], 1e-9):.2f}x."
        f"\n\n{corpus_line(s['corpus'])} {PEER_NOTE}\n"
    )
    print(json.dumps({"benchmark": "translation-peer", "rows": rows}))
    if not a.no_write:
        append_section(
            f"Translation en->fr: lamina's attention model beside the PyTorch tutorial's recipe, {a.budget:g} s each",
            f"python -m benchmarks.translation --recipes peer --budget {a.budget:g}",
            body,
        )


def p_value(p: float) -> str:
    """A bootstrap's p-value; at its floor (no resample reversed the difference) written as <= 1/resamples."""
    return f"<= {1 / BOOTSTRAP:g}" if p <= 1 / BOOTSTRAP else f"{p:.4f}"


def gain_by_length(translations: dict[str, Path]) -> list[dict]:
    """attention against seq2seq on the same test sentences, per source-length bucket: BLEU with
    bootstrap intervals, the gain (absolute and relative) and the paired bootstrap p-value."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    from lamina.metrics import LENGTH_BUCKETS

    tables = {
        name: [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
        for name, path in translations.items()
    }
    (base, base_rows), (model, model_rows) = tables.items()
    assert [r[:2] for r in base_rows] == [r[:2] for r in model_rows], "the two runs were scored on different sentences"
    rows = []
    for lo, hi in LENGTH_BUCKETS:
        chosen = [
            i for i, r in enumerate(base_rows) if lo <= len(r[0].split()) and (hi is None or len(r[0].split()) <= hi)
        ]
        name = f"{lo}-{hi}" if hi else f"{lo}+"
        if not chosen:
            rows.append(
                {
                    "source words": name,
                    "sentences": 0,
                    f"{base} BLEU": "-",
                    f"{model} BLEU": "-",
                    "gain": "-",
                    "ratio": "-",
                    "p": "-",
                }
            )
            continue
        refs = [base_rows[i][1] for i in chosen]
        systems = [(base, [base_rows[i][2] for i in chosen]), (model, [model_rows[i][2] for i in chosen])]
        _, scores = PairedTest(systems, {"BLEU": BLEU()}, references=[refs], test_type="bs", n_samples=BOOTSTRAP)()
        b, m = scores["BLEU"]
        rows.append(
            {
                "source words": name,
                "sentences": len(chosen),
                f"{base} BLEU": f"{b.score:.2f} ± {b.ci:.2f}",
                f"{model} BLEU": f"{m.score:.2f} ± {m.ci:.2f}",
                "gain": f"{m.score - b.score:+.2f}",
                "ratio": f"{m.score / max(b.score, 1e-9):.2f}x",
                "p": p_value(m.p_value),
            }
        )
    return rows


def plot(buckets: dict[str, dict], out: Path) -> None:
    from lamina.viz.plot import pyplot, save

    plt = pyplot()
    names = list(next(iter(buckets.values())))
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    width = 0.8 / len(buckets)
    for i, (model, b) in enumerate(buckets.items()):
        xs = [j + (i - (len(buckets) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, [b[k]["bleu"] or 0 for k in names], width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(names)), [f"{k} words\n({next(iter(buckets.values()))[k]['n']} sentences)" for k in names])
    ax.set_ylabel("test BLEU (beam 5)")
    ax.set_title("English -> French (gettext:fr): BLEU by source length")
    ax.legend()
    save(fig, out)


def speed(a) -> None:
    """Beam 1 vs 5 on the test split (median of 3 evaluations each, alternating), and the latency of one
    short sentence at batch 1 (after 5 warm-up translations; 50 timed)."""

    import numpy

    import lamina

    run = lamina.load(a.speed, device="cpu")
    rows = []
    measured: dict[int, list[dict]] = {1: [], 5: []}
    for _ in range(3):
        for beam in (1, 5):
            measured[beam].append(run.evaluate(beam=beam, out_dir=tempfile.mkdtemp()))
    for beam in (1, 5):
        for _ in range(5):
            run.translate([SHORT], beam=beam)
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            [result] = run.translate([SHORT], beam=beam)["results"]
            times.append(1000 * (time.perf_counter() - t0))
        percentiles = numpy.percentile(times, [50, 95])  # linear interpolation between the closest ranks
        m = measured[beam][0]["metrics"]
        speeds = [e["metrics"]["sentences_per_s"] for e in measured[beam]]
        rows.append(
            {
                "beam": beam,
                "test BLEU": f"{m['bleu']:.2f}",
                "chrF": f"{m['chrf']:.2f}",
                "test sentences/s (median of 3)": f"{statistics.median(speeds):.1f}",
                f"latency p50 ms ('{SHORT}')": f"{percentiles[0]:.1f}",
                "latency p95 ms": f"{percentiles[1]:.1f}",
                "output": result["translation"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    info = run.info
    body = table(rows, list(rows[0])) + (
        f"\n\nRun: {info['model']['name']} ({info['model']['parameters']:,} parameters), trained by the 'best' recipe "
        f"above. Test split: {measured[1][0]['n']:,} sentences, batches of 64 sentences sorted by length, fp32 on "
        "the CPU; latency: `Run.translate([sentence])`, batch 1, in the same process.\n"
    )
    if not a.no_write:
        append_section(
            "Translation en->fr: beam 1 vs beam 5, speed and latency on the CPU",
            "python -m benchmarks.translation --speed RUN",
            body,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="compare", help="comma-separated, from: compare, peer, best")
    p.add_argument("--budget", type=float, default=COMPARE_BUDGET, help="seconds per model in the comparison")
    p.add_argument("--speed", metavar="RUN", help="only measure beam 1 vs 5 and latency of this run")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    p.add_argument("--keep", metavar="DIR", help="keep the runs in DIR (default: a temporary folder)")
    a = p.parse_args()
    if a.speed:
        return speed(a)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = a.keep or tmp
        for name in a.recipes.split(","):
            if name == "compare":
                compare(a, tmp)
                continue
            if name == "peer":
                against_peer(a, tmp)
                continue
            args, target, limit = RECIPES[name]
            s, e = train(name, args, tmp)
            row = row_of(name, args, s, e)
            bleu = e["metrics"]["bleu"]
            row["target"] = f"test BLEU >= {target:g} in <= {limit} s"
            row["met"] = "yes" if bleu >= target and s["wall_s"] <= limit else "NO"
            body = table([row], list(row)) + f"\n\n{corpus_line(s['corpus'])}\n"
            print(json.dumps({"benchmark": "translation", "row": row}))
            if not a.no_write:
                append_section(
                    f"Translation en->fr: {name} recipe", f"python -m benchmarks.translation --recipes {name}", body
                )


if __name__ == "__main__":
    main()
