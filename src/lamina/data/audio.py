"""Audio in, features out: reading sound files, log-mel filterbanks, SpecAugment, transcripts.

read_audio      any WAV/FLAC/OGG file (libsndfile via soundfile), down-mixed to mono and
                resampled to 16 kHz (soxr)
log_mel         80-band log-mel filterbank energies: 25 ms Hann windows every 10 ms, 512-point
                FFT, triangular filters on the HTK mel scale; then per-utterance normalisation
spec_augment    time and frequency masks on a training batch (Park et al. 2019)
normalise_text  transcripts as the recognizers spell them: lower-case letters, apostrophes and
                single spaces, digits spelled out
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from lamina.data.vocab import CharVocab
from lamina.errors import LaminaError

SAMPLE_RATE = 16000
N_MELS = 80
WINDOW = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
N_FFT = 512
MAX_SECONDS = 3600.0  # longer files are refused (a transcript is made in chunks up to this)
SILENCE_RMS = 1e-4  # below this the file holds no speech (about -80 dBFS)


# ----- reading -------------------------------------------------------------------------------------
def read_audio(source) -> np.ndarray:
    """(samples,) float32 mono at SAMPLE_RATE, from a file (WAV, FLAC, OGG) or from memory: a
    (waveform, sample_rate) pair (numpy or torch; (samples,) or (samples, channels)) or a dict with
    'array' and 'sampling_rate' (as Hugging Face datasets hold audio). One-line LaminaError for a
    missing, empty, unreadable or over-long input."""
    import soundfile

    if isinstance(source, dict) and {"array", "sampling_rate"} <= set(source):
        source = (source["array"], source["sampling_rate"])
    if isinstance(source, tuple):
        return _from_memory(*source)
    if not isinstance(source, (str, Path)):
        raise LaminaError(f"cannot read audio from a {type(source).__name__}: give a file path or (waveform, rate)")
    path = Path(source)
    if not path.is_file():
        raise LaminaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise LaminaError(f"{path}: empty file")
    try:
        info = soundfile.info(str(path))
        if info.frames / max(info.samplerate, 1) > MAX_SECONDS:
            raise LaminaError(
                f"{path}: {info.frames / info.samplerate:.0f} s of audio, more than the "
                f"{MAX_SECONDS:.0f} s limit: split the file first"
            )
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    except LaminaError:
        raise
    except (RuntimeError, soundfile.LibsndfileError, ValueError, EOFError) as exc:  # type: ignore[attr-defined]
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LaminaError(f"{path}: not a readable audio file (WAV, FLAC or OGG): {reason}") from None
    if data.shape[0] == 0:
        raise LaminaError(f"{path}: holds no audio samples")
    return resample(data.mean(axis=1), rate)


def _from_memory(wave, rate) -> np.ndarray:
    if hasattr(wave, "detach"):  # a torch tensor
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:  # (samples, channels), or torchaudio's (channels, samples)
        wave = wave.mean(axis=1 if wave.shape[0] > wave.shape[1] else 0)
    if wave.ndim != 1 or wave.size == 0:
        raise LaminaError(f"a waveform must be (samples,) or (samples, channels) with samples, not {wave.shape}")
    if not (isinstance(rate, (int, float)) and rate > 0):
        raise LaminaError(f"the sample rate must be a positive number, not {rate!r}")
    if wave.size / rate > MAX_SECONDS:
        raise LaminaError(f"{wave.size / rate:.0f} s of audio, more than the {MAX_SECONDS:.0f} s limit: split it first")
    return resample(wave, rate)


def resample(wave: np.ndarray, rate: float, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of a mono float signal."""
    if rate == target:
        return np.ascontiguousarray(wave, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(wave, dtype=np.float32), rate, target, quality="HQ").astype(np.float32)


def is_silent(wave: np.ndarray) -> bool:
    return wave.size == 0 or float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) < SILENCE_RMS


def write_flac(path: Path, wave: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    import soundfile

    soundfile.write(str(path), np.clip(wave, -1.0, 1.0), rate, subtype="PCM_16", format="FLAC")


# ----- features ------------------------------------------------------------------------------------
def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters, equally spaced on the HTK mel scale from 0 Hz
    to the Nyquist frequency, each peaking at 1 on its centre frequency."""
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(0, hz_to_mel(rate / 2), n_mels + 2))  # (n_mels + 2,) lower, centre, upper
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32))


def mel_centres(n_mels: int = N_MELS, rate: int = SAMPLE_RATE) -> np.ndarray:
    return mel_to_hz(np.linspace(0, hz_to_mel(rate / 2), n_mels + 2))[1:-1]


def log_mel(wave: np.ndarray | torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """(samples,) at 16 kHz -> (frames, N_MELS) float32, one frame every 10 ms; with `normalise`,
    each band has zero mean and unit variance over the utterance (so loudness and channel do not
    matter)."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    if x.numel() < WINDOW:  # shorter than one window: pad, so every file gives at least one frame
        x = torch.nn.functional.pad(x, (0, WINDOW - x.numel()))
    return _log_mel(normalise)(x)


class LogMel(torch.nn.Module):
    """log_mel of a waveform of at least WINDOW samples, as a module: what `lamina export` traces
    into the front-end graph of a speech recognizer."""

    def __init__(self, normalise: bool = True):
        super().__init__()
        self.normalise = normalise
        self.register_buffer("window", torch.hann_window(WINDOW), persistent=False)
        self.register_buffer("filters", mel_filterbank(), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waveform, N_FFT, HOP, WINDOW, window=self.window, center=True, return_complex=True)
        power = spec.abs().square().T  # (frames, n_fft // 2 + 1)
        feats = torch.log(power @ self.filters + 1e-6)  # (frames, N_MELS)
        if self.normalise:
            feats = (feats - feats.mean(0)) / feats.std(0, unbiased=False).clamp_min(1e-3)
        return feats


@lru_cache(maxsize=2)
def _log_mel(normalise: bool) -> LogMel:
    return LogMel(normalise)


def spec_augment(
    feats: torch.Tensor,
    lengths: torch.Tensor,
    generator: torch.Generator,
    freq_masks: int = 2,
    freq_width: int = 15,
    time_masks: int = 2,
    time_width: int = 40,
    max_time_fraction: float = 0.15,
) -> torch.Tensor:
    """(B, T, F) normalised features -> the same with `freq_masks` bands of up to `freq_width` and
    `time_masks` spans of up to `time_width` frames (at most max_time_fraction of each utterance) set
    to 0, the mean. Masks are drawn per utterance."""
    b, t, f = feats.shape
    out = feats.clone()
    frames = torch.arange(t)[None]
    bands = torch.arange(f)[None]
    for _ in range(freq_masks):
        width = torch.randint(0, freq_width + 1, (b, 1), generator=generator)
        start = (torch.rand((b, 1), generator=generator) * (f - width)).long()
        out.masked_fill_(((bands >= start) & (bands < start + width))[:, None, :].to(out.device), 0.0)
    for _ in range(time_masks):
        cap = (lengths.cpu()[:, None].float() * max_time_fraction).long().clamp(max=time_width)
        width = (torch.rand((b, 1), generator=generator) * (cap + 1)).long()
        start = (torch.rand((b, 1), generator=generator) * (lengths.cpu()[:, None] - width).clamp(min=0)).long()
        out.masked_fill_(((frames >= start) & (frames < start + width))[:, :, None].to(out.device), 0.0)
    return out


# ----- transcripts ---------------------------------------------------------------------------------
ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split()
)
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
QUOTES = {"\u2018": "'", "\u2019": "'", "`": "'", "\u00b4": "'"}


def number_words(n: int) -> str:
    """1984 -> 'one thousand nine hundred eighty four'; beyond the billions, digit by digit."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for size, word in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if size <= n < 1000 * size:
            return number_words(n // size) + " " + word + ("" if n % size == 0 else " " + number_words(n % size))
    return " ".join(ONES[int(d)] for d in str(n))


def normalise_text(text: str) -> str:
    """'Don't open 3 files!' -> "don't open three files": lower case, digits spelled out, apostrophes
    inside words kept, everything else a word boundary."""
    for old, new in QUOTES.items():
        text = text.replace(old, new)
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text.lower())
    text = re.sub(r"[^a-z']+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes
    return " ".join(text.split())


CHARS = " '" + "abcdefghijklmnopqrstuvwxyz"
TRANSCRIPTS = CharVocab(CHARS, specials=True)  # PAD (also CTC's blank), UNK, BOS, EOS, then the characters
VOCAB = len(TRANSCRIPTS)
# What the features are, recorded with every run: a run is used only with the features it learned from.
FEATURES = {
    "sample_rate": SAMPLE_RATE,
    "n_mels": N_MELS,
    "window": WINDOW,
    "hop": HOP,
    "n_fft": N_FFT,
    "mel_scale": "htk",
    "log_floor": 1e-6,
    "normalise": "per utterance and band",
}


def encode_text(text: str) -> list[int]:
    return TRANSCRIPTS.encode(text).tolist()


def decode_ids(ids) -> str:
    return TRANSCRIPTS.decode(ids)


def seconds(wave: np.ndarray) -> float:
    return len(wave) / SAMPLE_RATE


def file_seconds(path: str | Path) -> float:
    """Duration of an audio file from its header, without decoding it."""
    import soundfile

    return soundfile.info(str(path)).duration


def split_quiet(wave: np.ndarray, max_seconds: float) -> list[np.ndarray]:
    """Pieces of at most max_seconds, cut at the quietest 10 ms in the last third of each piece, so
    that a long recording is transcribed in chunks the model was trained on without cutting words."""
    limit = int(max_seconds * SAMPLE_RATE)
    pieces, start = [], 0
    while len(wave) - start > limit:
        lo, hi = start + 2 * limit // 3, start + limit
        window = wave[lo:hi]
        energy = np.square(window[: len(window) // HOP * HOP].reshape(-1, HOP)).mean(1)
        cut = lo + int(np.argmin(energy)) * HOP + HOP // 2
        pieces.append(wave[start:cut])
        start = cut
    pieces.append(wave[start:])
    return [p for p in pieces if len(p)]
