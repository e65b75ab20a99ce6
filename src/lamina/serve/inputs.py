"""Uploads and texts checked and decoded before they reach a model, by the kind of input a verb
declares (commands.Arg.input): what a file claims to be is never trusted, only what it decodes to.

Each check raises Refused(status, reason): 400 for what is not what it claims (a text file named
.png, a truncated WAV), 413 for what is too big (an image of too many pixels, too long a recording),
422 for a value out of bounds (too long a text).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from lamina.serve.limits import Limits

# The formats an upload may be: Pillow's other readers (EPS through Ghostscript, FITS, PSD, ...) are
# never reached from a request.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")


class Refused(Exception):
    """A request the server answers with `status` and a one-line `reason`, without running a model."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def image(data: bytes, name: str, limits: Limits) -> Image.Image:
    """A decoded RGB/L/... PIL image. The pixel count is read from the header first: a small file that
    claims a huge image (a decompression bomb) is refused before anything is decoded."""
    if not data:
        raise Refused(400, f"{name}: empty file")
    try:
        picture = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise Refused(413, f"{name}: far more pixels than the limit of {limits.image_pixels:,}") from None
    except Image.UnidentifiedImageError:
        raise Refused(
            400, f"{name}: not an image (not a format Pillow reads: PNG, JPEG, GIF, BMP, TIFF, WebP)"
        ) from None
    except Exception as exc:  # PIL raises many kinds for a header it cannot parse
        raise Refused(400, f"{name}: not a readable image ({_first_line(exc)})") from None
    width, height = picture.size
    if width * height > limits.image_pixels:
        raise Refused(
            413, f"{name}: {width}x{height} = {width * height:,} pixels, more than the limit of {limits.image_pixels:,}"
        )
    if width == 0 or height == 0:
        raise Refused(400, f"{name}: an image of {width}x{height} pixels")
    try:
        picture.load()  # decodes now: a truncated file fails here, not inside a model's preprocessing
        return ImageOps.exif_transpose(picture)
    except Exception as exc:
        raise Refused(400, f"{name}: not a readable image ({_first_line(exc)})") from None


def audio(data: bytes, name: str, limits: Limits) -> tuple[np.ndarray, int]:
    """(waveform (samples, channels) float32, sample rate) of a WAV, FLAC or OGG upload; its length is
    read from the header first."""
    import soundfile

    if not data:
        raise Refused(400, f"{name}: empty file")
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as exc:
        raise Refused(400, f"{name}: not a readable audio file (WAV, FLAC or OGG): {_first_line(exc)}") from None
    seconds = info.frames / max(info.samplerate, 1)
    if seconds > limits.audio_seconds:
        raise Refused(413, f"{name}: {seconds:.1f} s of audio, more than the limit of {limits.audio_seconds:g} s")
    try:
        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise Refused(400, f"{name}: not a readable audio file: {_first_line(exc)}") from None
    if len(wave) == 0:
        raise Refused(400, f"{name}: no audio in the file")
    if not np.isfinite(wave).all():
        raise Refused(400, f"{name}: the audio holds values that are not numbers")
    return wave, rate


def texts(values: Any, what: str, limits: Limits) -> list[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise Refused(422, f"{what}: give a list of texts")
    count(len(values), what, limits)
    for i, text in enumerate(values):
        if len(text) > limits.text_chars:
            raise Refused(422, f"{what}[{i}]: {len(text):,} characters, more than the limit of {limits.text_chars:,}")
    return values


def count(n: int, what: str, limits: Limits) -> None:
    if n == 0:
        raise Refused(422, f"{what}: give at least one")
    if n > limits.inputs:
        raise Refused(413, f"{what}: {n} in one request, more than the limit of {limits.inputs}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


DECODERS = {"image": image, "audio": audio}
