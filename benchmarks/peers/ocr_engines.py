"""The OCR engines people use, run as a user would on lamina's test scenes: Tesseract (Debian's
tesseract-ocr through pytesseract) and RapidOCR (rapidocr-onnxruntime, PP-OCR models inside its wheel).

    python -m benchmarks.peers.ocr_engines --engine tesseract|rapidocr --data FOLDER [--split test]
                                           [--images N] [--budget SECONDS]

Whole images are read with each engine's defaults (detection + recognition); word crops (the same
crops lamina's recognizer is scored on) with recognition alone: Tesseract as one line of text
(--psm 7), RapidOCR without its detector. RapidOCR reports lines of text: a line is cut into words at
its spaces, each word's quadrilateral the share of the line's its characters take, so that it is
scored word by word as lamina is. Prints one JSON object: the figures of lamina.metrics, seconds per
image and crops per second. --budget stops reading whole images once that many seconds have passed
(0: no limit; the crops are all read).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from lamina import metrics
from lamina.data import ocr, synthtext


def tesseract_image(image) -> list[tuple[np.ndarray, str]]:
    import pytesseract

    d = pytesseract.image_to_data(image, output_type=pytesseract.Output.DICT)
    words = []
    for text, conf, x, y, w, h in zip(d["text"], d["conf"], d["left"], d["top"], d["width"], d["height"]):
        if text.strip() and float(conf) >= 0:
            words.append((np.array([(x, y), (x + w, y), (x + w, y + h), (x, y + h)], float), text.strip()))
    return words


def tesseract_crop(crop) -> str:
    import pytesseract

    return pytesseract.image_to_string(crop, config="--psm 7").strip().replace(" ", "")


def split_line(quad: np.ndarray, text: str) -> list[tuple[np.ndarray, str]]:
    """A line's quadrilateral cut into one per word, in proportion to characters (spaces included)."""
    words, out, start = text.split(), [], 0
    n = max(len(text), 1)
    for word in words:
        at = text.index(word, start)
        a, b = at / n, (at + len(word)) / n
        top = quad[0] + (quad[1] - quad[0]) * np.array([[a], [b]])
        bottom = quad[3] + (quad[2] - quad[3]) * np.array([[a], [b]])
        out.append((np.array([top[0], top[1], bottom[1], bottom[0]]), word))
        start = at + len(word)
    return out


class Rapid:
    def __init__(self):
        from rapidocr_onnxruntime import RapidOCR

        self.engine = RapidOCR()

    def image(self, image) -> list[tuple[np.ndarray, str]]:
        result, _ = self.engine(np.asarray(image))
        words = []
        for quad, text, _score in result or []:
            words += split_line(np.array(quad, float), text)
        return words

    def crop(self, crop) -> str:
        result, _ = self.engine(np.asarray(crop.convert("RGB")), use_det=False, use_cls=False, use_rec=True)
        return "".join(r[0] for r in result or []).replace(" ", "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=("tesseract", "rapidocr"), required=True)
    p.add_argument("--data", required=True, help="a synth-text (or ICDAR-style) folder")
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, default=0, help="the first N images (0: all)")
    p.add_argument("--budget", type=float, default=0)
    a = p.parse_args()
    from PIL import Image

    root = Path(a.data)
    images = ocr.read_synth(root, a.split) if (root / f"{a.split}.json").exists() else ocr.read_icdar(root, a.split)
    images = images[: a.images] if a.images else images
    data = ocr.crops_of(images, set(synthtext.ALPHABET), None, a.split)
    if a.engine == "tesseract":
        read_image, read_crop = tesseract_image, tesseract_crop
    else:
        rapid = Rapid()
        read_image, read_crop = rapid.image, rapid.crop
    started = time.perf_counter()
    found, seconds = [], []
    for item in images:
        if a.budget and time.perf_counter() - started > a.budget:
            break
        t0 = time.perf_counter()
        found.append(read_image(item.pil()))
        seconds.append(time.perf_counter() - t0)
    truth = [[(w.quad, w.text) for w in item.words] for item in images[: len(found)]]
    t0 = time.perf_counter()
    texts = [read_crop(Image.fromarray(c.numpy())) for c in data.crops]
    crop_seconds = time.perf_counter() - t0
    out = {
        "engine": a.engine,
        "images": len(found),
        **metrics.text_spotting(found, truth),
        **metrics.word_accuracy(data.texts, texts),
        "crops": len(texts),
        "seconds_per_image": round(float(np.median(seconds)), 3) if seconds else None,
        "crops_per_s": round(len(texts) / max(crop_seconds, 1e-9), 1),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
