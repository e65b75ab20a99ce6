"""End-to-end speech transcription: log-mel frames in, characters out, with no pronunciation
dictionary, phonemes or alignment in between.

The error signal is the cross-entropy of each next character given the audio and the true previous
characters (las, with label smoothing), the CTC loss summed over all alignments (ctc), or a weighted
sum of both (joint). Quality is measured as the field does: word and character error rates (jiwer)
of the transcripts against the references, per noise level and per group of unseen voices.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from lamina import metrics
from lamina.commands import Verb, arg
from lamina.config import DataConfig, setting
from lamina.data import audio, speech
from lamina.data.speech import Example, SpeechBatches
from lamina.engine.checkpoint import atomic_write
from lamina.engine.loop import StepOutput
from lamina.errors import LaminaError, UsageError, warn
from lamina.insight import views
from lamina.tasks import register_task
from lamina.tasks.base import ENCODER_DECODER, ExportSpec, Prepared, Task

EVAL_BATCH = 32
DECODE_COST = 3  # a greedy transcript costs about this many loss passes of the same utterance (time budgets)
CHUNK_FACTOR = 1.5  # files longer than this times the longest training utterance are transcribed in chunks


@dataclass
class TranscribeData(DataConfig):
    """Recordings and their transcripts."""

    name: str = setting(
        speech.NAME,
        f"{speech.NAME}, a .tsv manifest of audio-path<TAB>transcript lines, or a folder of train/val/test.tsv",
        flag="--data",
        metavar="NAME|PATH",
    )
    val: str = setting(
        "", "validation manifest (default: 5% of the transcripts, by hash)", flag="--val", metavar="PATH", path=True
    )
    utterances: int = setting(
        20000, f"training utterances synthesized for {speech.NAME}", check=(lambda v: v >= 1, "must be at least 1")
    )
    spec_augment: bool = setting(True, "time and frequency masks on training features")
    sorta_grad: bool = setting(False, "the first epoch sorted from the shortest utterances to the longest")


def load_lm(run: str | None, device: torch.device):
    """A `lamina train lm` run as a CharLM over the transcripts' characters, or None."""
    if not run:
        return None
    from lamina.api import load
    from lamina.models.fusion import CharLM

    loaded = load(run, device=str(device))
    if loaded.task.name != "lm":
        raise UsageError(f"--lm takes a language-model run (lamina train lm), not a {loaded.task.name} run")
    try:
        return CharLM(loaded.model, loaded.meta["vocab"], audio.CHARS, audio.TRANSCRIPTS.offset, audio.VOCAB)
    except LaminaError as exc:
        raise LaminaError(f"{run}: {exc}") from None


LM_WEIGHT = 0.3  # of a language model given without --lm-weight


def decoding_options(beam: int, ctc_weight: float | None, lm: str | None, lm_weight: float | None):
    """recognize's keyword arguments, the usage checked (the LM itself is loaded by the task)."""
    check_beam(beam)
    if ctc_weight is not None and not 0 <= ctc_weight <= 1:
        raise UsageError(f"--ctc-weight must be in [0, 1], not {ctc_weight:g}")
    if lm_weight is not None and not lm:
        raise UsageError("--lm-weight needs --lm RUN (a lamina train lm run)")
    if lm_weight is not None and not lm_weight >= 0:
        raise UsageError(f"--lm-weight must be a number >= 0, not {lm_weight}")
    return {"ctc_weight": ctc_weight, "lm_weight": (LM_WEIGHT if lm_weight is None else lm_weight) if lm else 0.0}


DECODING = (
    arg("--beam", type=int, metavar="N", help="beam width (1: greedy search)"),
    arg(
        "--ctc-weight",
        type=float,
        metavar="L",
        help="joint: weight of the CTC prefix score against the attention decoder's (default 0.3; 0: attention only)",
    ),
    arg("--lm", metavar="RUN", path=True, help="shallow fusion with a character language model (a lamina lm run)"),
    arg("--lm-weight", type=float, metavar="W", help="weight of the language model's log-probabilities"),
)
TRANSCRIBE = Verb(
    "transcribe",
    "transcribe audio files (WAV, FLAC, OGG) with a transcribe run",
    (
        arg("files", nargs="+", metavar="FILE", input="audio"),
        *DECODING,
        arg("--show-attention", metavar="FILE.png", path=True, help="las, joint: draw the alignment of the first file"),
        arg("--attention", action="store_true", help="put the attention weights in each result (what --json prints)"),
    ),
    returns="{results: [{input, transcript, audio_seconds, seconds, real_time_factor}], beam, seconds, "
    "audio_seconds, real_time_factor, plots}",
)


@register_task
class TranscribeTask(Task):
    name = "transcribe"
    description = "speech recognition: listen-attend-spell and CTC on log-mel features, WER and CER"
    Data = TranscribeData
    monitor = ("wer", "min")
    defaults = {
        "model.name": "ctc",
        "optim.name": "adamw",
        "optim.lr": 1e-3,
        "optim.weight_decay": 0.01,
        "optim.schedule": "cosine",
        "optim.warmup": 0.03,
        "optim.grad_clip": 1.0,
        "train.batch_size": 32,
        "train.label_smoothing": 0.1,
        "train.channels_last": False,
    }
    datasets = (speech.NAME,)
    data_paths = "a TSV manifest of audio-path<TAB>transcript lines, or a folder of train/val/test.tsv"
    data_model_args = ("vocab_size", "n_mels")
    resume_keys = ("vocab", "features")
    verbs = (TRANSCRIBE,)
    predict_args = DECODING
    inputs = "audio"
    insights = (views.attention_view("transcribe", "audio", "FILE", lambda run: run.info["model"]["name"] != "ctc"),)
    evaluate_args = DECODING
    libraries = ("jiwer", "soundfile", "soxr")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._splits: dict[str, dict[str, list[Example]]] = {}
        self._root = Path()  # the synth-speech folder, once built or found
        self._lm: dict[str, Any] = {}  # --lm run -> its CharLM, loaded once

    # ----- data ---------------------------------------------------------------------------------
    def splits(self, data: str | None = None) -> dict[str, list[Example]]:
        d, name = self.cfg.data, data or self.cfg.data.name
        if name not in self._splits:
            if name == speech.NAME:
                self._root = speech.build(d.utterances, seed=0)
                speech.lm_text(self._root)  # the text for an honest LM to fuse with (written once)
                self._splits[name] = speech.synth_splits(self._root)
            elif Path(name).expanduser().is_dir():
                self._splits[name] = speech.folder_splits(Path(name).expanduser())
            else:
                path = Path(name).expanduser()
                if not path.exists() and not name.endswith(".tsv"):
                    raise UsageError(
                        f"unknown dataset {name!r}; give {speech.NAME}, a .tsv manifest of "
                        "audio-path<TAB>transcript lines or a folder of train/val/test.tsv"
                    )
                self._splits[name] = speech.manifest_splits(path, d.val if name == self.cfg.data.name else "")
        return self._splits[name]

    def source(self, data: str) -> dict[str, Any]:
        if data == speech.NAME:
            self.splits(data)
            summary = json.loads((self._root / "corpus.json").read_text())
            keys = ("key", "utterances", "audio_hours", "test_accents", "test_variants", "espeak")
            return {"name": data, "folder": str(self._root), **{k: summary[k] for k in keys}}
        return {"name": data}

    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        d, t = self.cfg.data, self.cfg.train
        splits = self.splits()
        feats, train = speech.load_features(splits["train"], "training", self.feature_cache())
        if not train:
            raise LaminaError(f"{d.name} gives no usable training utterances")
        longest = max(f.shape[0] for f in feats) / 100.0
        meta = {
            "data": {**self.source(d.name), **{k: len(v) for k, v in splits.items()}},
            "vocab": audio.CHARS,
            "features": audio.FEATURES,
            "longest_seconds": round(longest, 2),
        }
        train_batches = SpeechBatches(
            feats,
            train,
            self.global_batch,
            train=True,
            seed=t.seed,
            device=self.device,
            augment=d.spec_augment,
            sorta_grad=d.sorta_grad,
        )
        return Prepared(
            train=train_batches,
            val=self.batches(splits["val"], "validation"),
            test=self.batches(splits["test"], "test") if splits["test"] else None,
            meta=meta,
            model_args={"vocab_size": audio.VOCAB, "n_mels": audio.N_MELS},
        )

    def feature_cache(self) -> Path:
        """Where features are kept: beside the synth-speech corpus, else in $LAMINA_HOME/features."""
        from lamina.data.sources import lamina_home

        return self._root / "features" if self._root != Path() else lamina_home() / "features"

    def batches(self, examples: list[Example], what: str) -> SpeechBatches:
        feats, kept = speech.load_features(examples, what, self.feature_cache())
        if not kept:
            raise LaminaError(f"no usable {what} utterances")
        return SpeechBatches(feats, kept, EVAL_BATCH, device=self.device)

    def has_split(self, data: str, split: str) -> bool:
        own = self.normalise_data(data) in ("", self.cfg.data.name) or data == speech.NAME
        return own and (split != "test" or bool(self.splits(data)["test"]))

    def views(self) -> int:
        return DECODE_COST

    def upgrade_state(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        """ctc runs from before the shared front end kept its convolutions and projection at the top."""
        if "subsample.0.weight" not in state:
            return state
        renamed = {
            "subsample.0.": "subsample.convs.0.",
            "subsample.2.": "subsample.convs.2.",
            "project.": "subsample.project.",
        }
        out = {}
        for key, value in state.items():
            old = next((o for o in renamed if key.startswith(o)), None)
            out[renamed[old] + key[len(old) :] if old else key] = value
        return out

    # ----- loss and metrics -----------------------------------------------------------------------
    def step(self, model: nn.Module, batch) -> StepOutput:
        feats, lengths, tgt_in, tgt_out = batch
        _, loss = model(feats, lengths, tgt_in, tgt_out, label_smoothing=self.cfg.train.label_smoothing)
        return StepOutput(loss, feats.shape[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: SpeechBatches, tta: bool | None = None) -> dict[str, float]:
        """The training loss without smoothing, and WER and CER of greedy transcripts."""
        loss, outs = self.decode(model, batches, beam=1)
        refs = [ex.text for ex in batches.examples]
        return {"loss": loss, "wer": metrics.wer(refs, outs), "cer": metrics.cer(refs, outs)}

    def lm(self, run: str | None):
        if run and run not in self._lm:
            self._lm[run] = load_lm(run, self.device)
        return self._lm.get(run) if run else None

    @torch.no_grad()
    def decode(self, model: nn.Module, batches: SpeechBatches, beam: int, **decoding) -> tuple[float, list[str]]:
        """(mean loss, one transcript per utterance) of the whole stream; each process decodes its
        share of the batches. `decoding`: recognize's ctc_weight, lm and lm_weight."""
        model.eval()
        parts = []
        for rows, (feats, lengths, tgt_in, tgt_out) in zip(
            batches.order(0)[self.dist.rank :: self.dist.world], batches.epoch(0, 0, self.dist.rank, self.dist.world)
        ):
            with self.precision.autocast():
                _, loss = model(feats, lengths, tgt_in, tgt_out)
            texts = [transcript(h.tokens) for h in model.recognize(feats, lengths, beam=beam, **decoding)]
            parts.append((float(loss) * len(rows), rows, texts))
        outs = [""] * batches.n_samples
        total = 0.0
        for loss_sum, rows, texts in self.dist.gather_batches(parts):
            total += loss_sum
            for i, t in zip(rows, texts):
                outs[i] = t
        return total / max(batches.n_samples, 1), outs

    def report(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        data: str,
        split: str,
        out_dir: Path,
        beam: int = 1,
        ctc_weight: float | None = None,
        lm: str | None = None,
        lm_weight: float | None = None,
    ) -> dict[str, Any]:
        """WER and CER on a split of the run's corpus (or every line of another manifest), overall, per
        noise level and per group of voices; writes each transcript next to its reference."""
        decoding = {**decoding_options(beam, ctc_weight, lm, lm_weight), "lm": self.lm(lm)}
        own = data == speech.NAME or self.normalise_data(data) == self.cfg.data.name
        if own:
            examples = self.splits(data)[split]
        else:
            examples, split = speech.read_manifest(Path(data).expanduser()), "all"
        if not examples:
            raise LaminaError(f"{data} ({split}) holds no utterances")
        batches = self.batches(examples, split)
        started = time.perf_counter()
        loss, outs = self.decode(model, batches, beam, **decoding)
        seconds = time.perf_counter() - started
        refs = [ex.text for ex in batches.examples]
        result: dict[str, Any] = {"loss": loss, "wer": metrics.wer(refs, outs), "cer": metrics.cer(refs, outs)}
        audio_seconds = sum(f.shape[0] for f in batches.feats) / 100.0
        result["real_time_factor"] = seconds / max(audio_seconds, 1e-9)
        for key, label in (("snr", "by_noise"), ("group", "by_voice")):
            values = [ex.info.get(key, "n/a") for ex in batches.examples]
            if any(v != "n/a" for v in values):
                result[label] = {}
                for value in sorted(set(values), key=lambda v: (v is not None, -(v or 0)) if key == "snr" else str(v)):
                    idx = [i for i, v in enumerate(values) if v == value]
                    name = ("clean" if value is None else f"{value:g} dB") if key == "snr" else str(value)
                    r, o = [refs[i] for i in idx], [outs[i] for i in idx]
                    result[label][name] = {"n": len(idx), "wer": metrics.wer(r, o), "cer": metrics.cer(r, o)}
        table = "".join(f"{ex.path}\t{ex.text}\t{o}\n" for ex, o in zip(batches.examples, outs))
        written = out_dir / f"transcripts-{split}.tsv"
        atomic_write(written, lambda tmp: tmp.write_text("audio\treference\ttranscript\n" + table, encoding="utf-8"))
        return {
            "split": split,
            "n": len(batches.examples),
            "metrics": result,
            "decoding": {
                "search": "beam" if beam > 1 else "greedy",
                "beam": beam,
                "ctc_weight": getattr(model, "decode_ctc_weight", 1.0) if ctc_weight is None else ctc_weight,
                "lm": lm,
                "lm_weight": decoding["lm_weight"],
            },
            "files": [str(written)],
        }

    # ----- transcription of files ------------------------------------------------------------------
    @torch.no_grad()
    def transcribe(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        files: list,
        beam: int = 1,
        ctc_weight: float | None = None,
        lm: str | None = None,
        lm_weight: float | None = None,
        attention: bool = False,
        show_attention: str | None = None,
    ) -> dict[str, Any]:
        """{'results': one {'input', 'transcript', 'audio_seconds', 'seconds', 'real_time_factor'} per
        input, and totals}. An input is a file path, a (waveform, sample_rate) pair or a dict with
        'array' and 'sampling_rate'. With attention=True results also hold 'attention' (characters x
        listener frames) and 'characters'; show_attention=FILE.png draws the first one's. A bad input
        gets {'input', 'error'} and the others go on; inputs longer than the model was trained on are
        transcribed in chunks cut at quiet moments. ctc_weight, lm and lm_weight: as recognize's."""
        check_features(meta)
        decoding = {**decoding_options(beam, ctc_weight, lm, lm_weight), "lm": self.lm(lm)}
        model.eval()
        chunk = max(4.0, CHUNK_FACTOR * float(meta.get("longest_seconds", 10.0)))
        results, plots, started_all = [], [], time.perf_counter()
        for i, source in enumerate(files):
            name = str(source) if isinstance(source, (str, Path)) else f"<audio {i}>"
            started = time.perf_counter()
            try:
                wave = audio.read_audio(source)
            except LaminaError as exc:
                results.append({"input": name, "error": str(exc)})
                continue
            result: dict[str, Any] = {"input": name, "audio_seconds": round(audio.seconds(wave), 3)}
            if audio.is_silent(wave):
                warn(f"{name} is silent: empty transcript")
                pieces = []
            else:
                pieces = [p for p in audio.split_quiet(wave, chunk) if not audio.is_silent(p)]  # pauses say nothing
                if len(pieces) > 1:
                    warn(
                        f"{name} lasts {audio.seconds(wave):.0f} s, longer than the model was trained on: "
                        f"transcribing it in {len(pieces)} chunks"
                    )
            texts, alignment = [], None
            for piece in pieces:
                feats = audio.log_mel(piece)[None].to(self.device)
                frames = torch.tensor([feats.shape[1]], device=self.device)
                h = model.recognize(feats, frames, beam=beam, **decoding)[0]
                texts.append(transcript(h.tokens))
                if alignment is None and h.attention is not None:
                    ended = h.attention.shape[0] == len(h.tokens) + 1
                    characters = [audio.decode_ids([t]) or " " for t in h.tokens] + (["</s>"] if ended else [])
                    alignment = {
                        "characters": characters,
                        "attention": h.attention.tolist(),
                        "seconds_per_frame": audio.seconds(piece) / h.attention.shape[1],
                    }
            seconds = time.perf_counter() - started
            result.update(
                transcript=" ".join(t for t in texts if t),
                seconds=round(seconds, 4),
                real_time_factor=round(seconds / max(result["audio_seconds"], 1e-9), 4),
            )
            if alignment and show_attention and not plots:
                plots.append(self.draw_alignment(alignment, show_attention))
            if alignment and attention:
                result.update(characters=alignment["characters"], attention=alignment["attention"])
            results.append(result)
        if show_attention and not plots and any("transcript" in r for r in results):
            raise LaminaError(f"a {self.cfg.model.name} model has no attention to draw")
        seconds = time.perf_counter() - started_all
        audio_seconds = sum(r.get("audio_seconds", 0.0) for r in results)
        return {
            "results": results,
            "beam": beam,
            "seconds": round(seconds, 4),
            "audio_seconds": round(audio_seconds, 3),
            "real_time_factor": round(seconds / max(audio_seconds, 1e-9), 4),
            "plots": plots,
        }

    def draw_alignment(self, alignment: dict[str, Any], path: str) -> str:
        from lamina.viz.attention import plot_attention

        step = alignment["seconds_per_frame"]
        frames = [f"{i * step:.2f}s" for i in range(len(alignment["attention"][0]))]
        return str(
            plot_attention(
                frames,
                alignment["characters"],
                alignment["attention"],
                path,
                xlabel="audio (listener frames)",
                ylabel="output characters",
            )
        )

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list, **options) -> dict[str, Any]:
        return self.transcribe(model, meta, inputs, **options)

    def export_graphs(self, model: nn.Module, meta: dict[str, Any]) -> list[ExportSpec]:
        """ctc runs: the recognizer (log-mel frames of a padded batch in, per-frame log-probabilities
        out) and the front end as a second graph (one waveform in, its normalised log-mel frames out).
        TorchScript exporter for the recognizer: it maps the packed bidirectional GRU onto ONNX's GRU
        with sequence lengths, where torch.export unrolls it and stops at the dynamic length."""
        from lamina.models.speech import CTCRecognizer

        if not isinstance(model, CTCRecognizer):
            raise UsageError(f"a {self.cfg.model.name} run cannot be exported to ONNX: {ENCODER_DECODER}")
        check_features(meta)
        features = torch.randn(2, 120, audio.N_MELS)
        lengths = torch.tensor([120, 77])
        vocab = {"blank": 0, "first_character_id": audio.TRANSCRIPTS.offset, "characters": audio.CHARS}
        recognizer = ExportSpec(
            CTCGraph(model),
            (features, lengths),
            ["features", "lengths"],
            ["log_probs", "frames"],
            {
                "features": {0: "batch", 1: "time"},
                "lengths": {0: "batch"},
                "log_probs": {0: "batch", 1: "steps"},
                "frames": {0: "batch"},
            },
            {
                "features": {
                    **audio.FEATURES,
                    "dtype": "float32 (batch, time, n_mels), padded after each end",
                    "from": "the features graph, one utterance at a time",
                },
                "lengths": "int64 (batch,): frames of each utterance",
                "vocabulary": vocab,
                "decode": "greedy CTC: per frame t < frames[b] the most likely id, repeats merged, blanks (0) "
                "dropped; id i >= first_character_id is characters[i - first_character_id]; spaces collapsed",
            },
            "torchscript",
        )
        wave = torch.randn(audio.SAMPLE_RATE) * 0.1
        front = ExportSpec(
            audio.LogMel(),
            (wave,),
            ["waveform"],
            ["features"],
            {"waveform": {0: "samples"}, "features": {0: "time"}},
            {
                "waveform": {
                    "sample_rate": audio.SAMPLE_RATE,
                    "dtype": "float32 (samples,), mono, -1 to 1",
                    "at_least": audio.WINDOW,
                },
                "decode": "features (time, n_mels): one utterance's input to the recognizer graph",
            },
            name="features",
        )
        return [recognizer, front]

    # ----- on a terminal -------------------------------------------------------------------------
    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> str:
        test = metrics.get("test", {})
        return f"test WER {test['wer']:.2%} (greedy)" if "wer" in test else ""

    @classmethod
    def render_transcribe(cls, result: dict[str, Any], out: TextIO, named: bool = False) -> None:
        """The transcript of one file; file<TAB>transcript lines for several (or for predict)."""
        named = named or len(result["results"]) > 1
        for r in result["results"]:
            if "transcript" in r:
                print(f"{r['input']}\t{r['transcript']}" if named else r["transcript"], file=out)
        for path in result.get("plots", []):
            print(f"wrote {path}", file=sys.stderr)

    @classmethod
    def render_predict(cls, result: dict[str, Any], out: TextIO) -> None:
        cls.render_transcribe(result, out, named=True)


class CTCGraph(nn.Module):
    """(B, T, F) features, (B,) lengths -> (B, T', V) log-probabilities and (B,) valid frames T'."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = self.model(features, lengths)
        return logits.float().log_softmax(-1), self.model.frames_out(lengths)


def transcript(tokens: list[int]) -> str:
    """The characters of a hypothesis, one space between words (CTC may emit two in a row)."""
    return " ".join(audio.decode_ids(tokens).split())


def check_beam(beam: int) -> None:
    if beam < 1:
        raise UsageError("--beam must be at least 1 (1: greedy search)")


def check_features(meta: dict[str, Any]) -> None:
    """A run is used only with the features it learned from (runs from before features were recorded
    used today's)."""
    recorded = meta.get("features")
    if recorded is not None and recorded != audio.FEATURES:
        differ = sorted(k for k in set(recorded) | set(audio.FEATURES) if recorded.get(k) != audio.FEATURES.get(k))
        raise LaminaError(f"this run learned from other features than this lamina computes ({', '.join(differ)})")
