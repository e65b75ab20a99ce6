"""End-to-end speech transcription: log-mel frames in, characters out, with no pronunciation
dictionary, phonemes or alignment in between.

The error signal is the cross-entropy of each next character given the audio and the true previous
characters (las, with label smoothing), the CTC loss summed over all alignments (ctc), or a weighted
sum of both (joint). Quality is measured as the field does: word and character error rates (jiwer)
of the transcripts against the references, per noise level and per group of unseen voices.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lamina import metrics
from lamina.data import audio, speech
from lamina.data.speech import Example, SpeechBatches
from lamina.engine.checkpoint import atomic_write
from lamina.engine.loop import StepOutput
from lamina.errors import LaminaError, UsageError, warn
from lamina.tasks.base import Prepared, Task

EVAL_BATCH = 32
DECODE_COST = 3  # a greedy transcript costs about this many loss passes of the same utterance (time budgets)
CHUNK_FACTOR = 1.5  # files longer than this times the longest training utterance are transcribed in chunks


class TranscribeTask(Task):
    name = "transcribe"
    description = "speech recognition: listen-attend-spell and CTC on log-mel features, WER and CER"
    monitor = ("wer", "min")
    defaults = {
        "data.name": speech.NAME,
        "model.name": "las",
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
    datasets = {speech.NAME: "English sentences spoken by espeak-ng in many voices, with noise; unseen voices in test"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._splits: dict[str, dict[str, list[Example]]] = {}
        self._root = Path()  # the synth-speech folder, once built or found

    # ----- data ---------------------------------------------------------------------------------
    def splits(self, data: str | None = None) -> dict[str, list[Example]]:
        d, name = self.cfg.data, data or self.cfg.data.name
        if name not in self._splits:
            if name == speech.NAME:
                self._root = speech.build(d.utterances, seed=0, quiet=self.cfg.train.quiet)
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
            return {
                "name": data,
                "folder": str(self._root),
                **{
                    k: summary[k]
                    for k in ("key", "utterances", "audio_hours", "test_accents", "test_variants", "espeak")
                },
            }
        return {"name": data}

    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        d, t = self.cfg.data, self.cfg.train
        splits = self.splits()
        feats, train = speech.load_features(splits["train"], "training")
        if not train:
            raise LaminaError(f"{d.name} gives no usable training utterances")
        longest = max(f.shape[0] for f in feats) / 100.0
        meta = {
            "data": {**self.source(d.name), **{k: len(v) for k, v in splits.items()}},
            "vocab": audio.CHARS,
            "sample_rate": audio.SAMPLE_RATE,
            "n_mels": audio.N_MELS,
            "longest_seconds": round(longest, 2),
        }
        train_batches = SpeechBatches(
            feats, train, t.batch_size, train=True, seed=t.seed, device=self.device, augment=d.spec_augment
        )
        return Prepared(
            train=train_batches,
            val=self.batches(splits["val"], "validation"),
            test=self.batches(splits["test"], "test") if splits["test"] else None,
            meta=meta,
            model_args={"vocab_size": audio.VOCAB, "n_mels": audio.N_MELS},
        )

    def batches(self, examples: list[Example], what: str) -> SpeechBatches:
        feats, kept = speech.load_features(examples, what)
        if not kept:
            raise LaminaError(f"no usable {what} utterances")
        return SpeechBatches(feats, kept, EVAL_BATCH, device=self.device)

    def has_split(self, data: str, split: str) -> bool:
        own = self.normalise_data(data) in ("", self.cfg.data.name) or data == speech.NAME
        return own and (split != "test" or bool(self.splits(data)["test"]))

    def views(self) -> int:
        return DECODE_COST

    # ----- loss and metrics -----------------------------------------------------------------------
    def step(self, model: nn.Module, batch) -> StepOutput:
        feats, lengths, tgt_in, tgt_out = batch
        _, loss = model(feats, lengths, tgt_in, tgt_out, label_smoothing=self.cfg.train.label_smoothing)
        return StepOutput(loss, feats.shape[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: SpeechBatches, tta: bool | None = None) -> dict[str, float]:
        """The training loss without smoothing, and WER and CER of greedy transcripts."""
        refs, outs = [ex.text for ex in batches.examples], self.transcribe_batches(model, batches, beam=1)
        return {"loss": self.loss(model, batches), "wer": metrics.wer(refs, outs), "cer": metrics.cer(refs, outs)}

    @torch.no_grad()
    def loss(self, model: nn.Module, batches: SpeechBatches) -> float:
        model.eval()
        total = 0.0
        for rows in batches.order(0):
            feats, lengths, tgt_in, tgt_out = batches.collate(rows)
            with self.precision.autocast():
                _, loss = model(feats, lengths, tgt_in, tgt_out)
            total += float(loss) * len(rows)
        return total / max(batches.n_samples, 1)

    def report(
        self, model: nn.Module, meta: dict[str, Any], data: str, split: str, out_dir: Path, beam: int = 1
    ) -> dict[str, Any]:
        """WER and CER on a split of the run's corpus (or every line of another manifest), overall, per
        noise level and per group of voices; writes each transcript next to its reference."""
        check_beam(beam)
        own = data == speech.NAME or self.normalise_data(data) == self.cfg.data.name
        if own:
            examples = self.splits(data)[split]
        else:
            examples, split = speech.read_manifest(Path(data).expanduser()), "all"
        if not examples:
            raise LaminaError(f"{data} ({split}) holds no utterances")
        batches = self.batches(examples, split)
        result: dict[str, Any] = {"loss": self.loss(model, batches)}
        started = time.perf_counter()
        outs = self.transcribe_batches(model, batches, beam)
        seconds = time.perf_counter() - started
        refs = [ex.text for ex in batches.examples]
        result.update(wer=metrics.wer(refs, outs), cer=metrics.cer(refs, outs))
        audio_seconds = sum(f.shape[0] for f in batches.feats) / 100.0
        result["real_time_factor"] = seconds / max(audio_seconds, 1e-9)
        for key, label in (("snr", "by_noise"), ("group", "by_voice")):
            values = [ex.info.get(key, "n/a") for ex in batches.examples]
            if any(v != "n/a" for v in values):
                result[label] = {}
                for value in sorted(set(values), key=lambda v: (v is not None, -(v or 0)) if key == "snr" else str(v)):
                    idx = [i for i, v in enumerate(values) if v == value]
                    name = ("clean" if value is None else f"{value:g} dB") if key == "snr" else str(value)
                    result[label][name] = {
                        "n": len(idx),
                        "wer": metrics.wer([refs[i] for i in idx], [outs[i] for i in idx]),
                        "cer": metrics.cer([refs[i] for i in idx], [outs[i] for i in idx]),
                    }
        table = "".join(f"{ex.path}\t{ex.text}\t{o}\n" for ex, o in zip(batches.examples, outs))
        written = out_dir / f"transcripts-{split}.tsv"
        atomic_write(written, lambda tmp: tmp.write_text("audio\treference\ttranscript\n" + table, encoding="utf-8"))
        return {
            "split": split,
            "n": len(batches.examples),
            "metrics": result,
            "decoding": {"search": "beam" if beam > 1 else "greedy", "beam": beam},
            "files": [str(written)],
        }

    @torch.no_grad()
    def transcribe_batches(self, model: nn.Module, batches: SpeechBatches, beam: int) -> list[str]:
        model.eval()
        outs = [""] * batches.n_samples
        for rows in batches.order(0):
            feats, lengths, _, _ = batches.collate(rows)
            for i, h in zip(rows, model.recognize(feats, lengths, beam=beam)):
                outs[i] = audio.decode_ids(h.tokens)
        return outs

    # ----- transcription of files ------------------------------------------------------------------
    @torch.no_grad()
    def transcribe(
        self, model: nn.Module, meta: dict[str, Any], files: list[str], beam: int = 1, attention: bool = False
    ) -> list[dict[str, Any]]:
        """One result per file: {'file', 'transcript', 'audio_seconds', 'seconds', 'real_time_factor'}
        (+ 'attention' (characters x listener frames) and 'characters' with attention=True), or
        {'file', 'error'}: a bad file is reported and the others go on. Files longer than the model
        was trained on are transcribed in chunks cut at quiet moments."""
        check_beam(beam)
        model.eval()
        chunk = max(4.0, CHUNK_FACTOR * float(meta.get("longest_seconds", 10.0)))
        results = []
        for file in files:
            started = time.perf_counter()
            try:
                wave = audio.read_audio(file)
            except LaminaError as exc:
                results.append({"file": file, "error": str(exc)})
                continue
            result: dict[str, Any] = {"file": file, "audio_seconds": round(audio.seconds(wave), 3)}
            if audio.is_silent(wave):
                warn(f"{file} is silent: empty transcript")
                pieces = []
            else:
                pieces = [p for p in audio.split_quiet(wave, chunk) if not audio.is_silent(p)]  # pauses say nothing
                if len(pieces) > 1:
                    warn(
                        f"{file} lasts {audio.seconds(wave):.0f} s, longer than the model was trained on: "
                        f"transcribing it in {len(pieces)} chunks"
                    )
            texts = []
            for piece in pieces:
                feats = audio.log_mel(piece)[None].to(self.device)
                h = model.recognize(feats, torch.tensor([feats.shape[1]], device=self.device), beam=beam)[0]
                texts.append(audio.decode_ids(h.tokens))
                if attention and h.attention is not None and "attention" not in result:
                    ended = h.attention.shape[0] == len(h.tokens) + 1
                    result["characters"] = [audio.decode_ids([i]) or " " for i in h.tokens] + (
                        ["</s>"] if ended else []
                    )
                    result["attention"] = h.attention.tolist()
            seconds = time.perf_counter() - started
            result.update(
                transcript=" ".join(t for t in texts if t),
                seconds=round(seconds, 4),
                real_time_factor=round(seconds / max(result["audio_seconds"], 1e-9), 4),
            )
            results.append(result)
        return results

    def predict(
        self, model: nn.Module, meta: dict[str, Any], inputs: list[str], top_k: int = 5, **options
    ) -> list[dict]:
        return self.transcribe(model, meta, inputs, **options)


def check_beam(beam: int) -> None:
    if beam < 1:
        raise UsageError("--beam must be at least 1 (1: greedy search)")
