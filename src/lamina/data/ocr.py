"""Scene-text data: images with their words (ICDAR folders, synth-text), word crops, and the maps
and batches the detector and the recognizer train on.

    read_synth, read_icdar   the images of a split with their words: quadrilateral, transcript,
                    and font family and photograph where synth-text recorded them; '###' words
                    are "do not care" (ICDAR): neither found nor missed
    read_manifest   word crops of a `crop-path<TAB>transcript` manifest
    cut             a word's crop: its quadrilateral, grown a little, mapped onto a 32 px high
                    rectangle, so that the perspective is undone
    db_targets      DBNet's training maps of an image: shrunk word cores, and the threshold map
    polygons_from_map   words from a predicted probability map
    reading_order   words sorted into lines, top to bottom, then left to right
"""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from lamina.data.batching import hash_split, length_buckets, seed_for
from lamina.data.images import UNREADABLE
from lamina.engine.distributed import train_rows
from lamina.errors import LaminaError, warn

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DONT_CARE = "###"
SPLIT_FRACTIONS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}
SHRINK = 0.4  # DBNet's shrink ratio r: a word's core is its polygon moved in by A (1 - r^2) / L
UNCLIP = 1.5  # and a found core is grown back by A * UNCLIP / L
CROP_PAD = (0.12, 0.08)  # a crop reaches this fraction of the word's height beyond its sides, and top and bottom
MAX_CROP_WIDTH = 320


@dataclass
class Word:
    text: str
    quad: np.ndarray  # (4, 2) float: clockwise from the top left of the text
    font: str = ""

    @property
    def ignore(self) -> bool:
        return self.text == DONT_CARE


@dataclass
class TextImage:
    name: str
    data: bytes  # the encoded file, decoded when a batch needs it (a few ms; a thousand scenes stay small)
    words: list[Word]
    photo: str = ""

    def pil(self) -> Image.Image:
        from PIL import ImageOps

        return ImageOps.exif_transpose(Image.open(io.BytesIO(self.data))).convert("RGB")


@dataclass
class TextSet:
    """A split: its images, and the crops of their words (the recognizer's data)."""

    images: list[TextImage]
    crops: list[torch.Tensor] = field(default_factory=list)  # (32, W) uint8
    texts: list[str] = field(default_factory=list)
    groups: list[dict[str, str]] = field(default_factory=list)  # per crop: font and photo, for breakdowns

    @property
    def n_samples(self) -> int:
        return max(len(self.images), len(self.crops))

    def __len__(self) -> int:
        return self.n_samples


# ----- reading ---------------------------------------------------------------------------------------
def parse_gt(text: str, where: str) -> list[Word]:
    """ICDAR 2015 lines `x1,y1,x2,y2,x3,y3,x4,y4,transcript` (the transcript may hold commas)."""
    words = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(",", 8)
        try:
            coords = np.array([float(v) for v in parts[:8]], dtype=np.float64).reshape(4, 2)
        except ValueError:
            raise LaminaError(f"{where}:{n}: not 'x1,y1,...,x4,y4,transcript': {line[:80]!r}") from None
        words.append(Word(parts[8] if len(parts) > 8 else DONT_CARE, coords))
    return words


def _read_bytes(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        return data
    except (OSError, *UNREADABLE):
        return None


def read_synth(root: Path, split: str) -> list[TextImage]:
    folder = root / split
    made = json.loads((root / f"{split}.json").read_text())
    return [
        TextImage(m["file_name"], (folder / m["file_name"]).read_bytes(),
                  [Word(w["text"], np.array(w["quad"]), w["font"]) for w in m["words"]], m["photo"])
        for m in made
    ]  # fmt: skip


SPLIT_WORDS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def _split_of_folder(path: Path, root: Path) -> str:
    """The split a folder's name says (ch4_training_images, test, val_gt ...): a whole word of it."""
    words = {w for p in path.relative_to(root).parts[:-1] for w in re.split(r"[^a-z]+", p.lower())}
    return next((s for s, names in SPLIT_WORDS.items() if words & set(names)), "")


def icdar_layout(root: Path) -> dict[str, list[Path]]:
    """{split: images} of an ICDAR-style folder: subfolders whose names say the split (ch4_training_images,
    test/, ...), or every image in it split 80/10/10 by a hash of its name."""
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise LaminaError(f"{root}: no images found (an ICDAR folder holds images and gt_<image>.txt files)")
    by_folder = {s: [p for p in images if _split_of_folder(p, root) == s] for s in ("train", "val", "test")}
    if sum(map(len, by_folder.values())) == len(images):
        return {s: paths for s, paths in by_folder.items() if paths}
    found: dict[str, list[Path]] = {}
    for path in images:
        found.setdefault(hash_split(path.name, SPLIT_FRACTIONS), []).append(path)
    return found


def read_icdar(root: Path, split: str) -> list[TextImage]:
    """The images of `split` that have ground truth (gt_<stem>.txt anywhere under the folder; under
    a folder of the same split where the folders say the splits). An image without one, or that
    cannot be decoded, is warned about and left out."""
    paths = icdar_layout(root).get(split, [])
    by_folder = all(_split_of_folder(p, root) for p in paths)
    gts: dict[str, Path] = {}
    for gt in sorted(root.rglob("gt_*.txt")):
        if not by_folder or _split_of_folder(gt, root) == split:
            gts.setdefault(gt.stem[3:], gt)
    out, skipped = [], []
    for path in paths:
        gt = gts.get(path.stem)
        data = _read_bytes(path) if gt else None
        if gt is None or data is None:
            skipped.append(f"{path.name} ({'no gt_' + path.stem + '.txt' if gt is None else 'not a readable image'})")
            continue
        out.append(TextImage(path.name, data, parse_gt(gt.read_text(encoding="utf-8-sig", errors="replace"), str(gt))))
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warn(f"{root} ({split}): left out {len(skipped)} image(s): {shown}")
    return out


def read_manifest(path: Path) -> list[tuple[bytes, str, str]]:
    """(image bytes, transcript, name) of each `crop-path<TAB>transcript` line; paths relative to the
    manifest's folder. A bad line or unreadable crop is warned about and left out."""
    if not path.is_file():
        raise LaminaError(f"{path}: no such manifest")
    out, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        file, _, text = line.partition("\t")
        crop = path.parent / Path(file).expanduser()
        data = _read_bytes(crop) if text else None
        if data is None:
            bad.append(f"line {n} ({'no transcript' if not text else 'unreadable ' + file})")
            continue
        out.append((data, text, file))
    if bad:
        warn(f"{path}: left out {len(bad)} line(s): {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""))
    if not out:
        raise LaminaError(f"{path}: no usable crop<TAB>transcript lines")
    return out


# ----- crops ------------------------------------------------------------------------------------------
def quad_size(quad: np.ndarray) -> tuple[float, float]:
    """(width, height) of a quadrilateral: the means of its opposite sides."""
    w = (np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[3])) / 2
    h = (np.linalg.norm(quad[3] - quad[0]) + np.linalg.norm(quad[2] - quad[1])) / 2
    return float(w), float(h)


def cut(
    image: Image.Image, quad: np.ndarray, height: int = 32, jitter: np.random.Generator | None = None
) -> torch.Tensor:
    """(height, W) uint8 grey crop of the quadrilateral, padded by CROP_PAD of its height, perspective
    undone; W follows the word's aspect (at most MAX_CROP_WIDTH, at least 8). `jitter` moves each
    corner by up to 6% of the height, as a detector's words are never exact."""
    q = np.asarray(quad, dtype=np.float64)
    w, h = quad_size(q)
    h = max(h, 1.0)
    along = (q[1] - q[0] + q[2] - q[3]) / 2
    across = (q[3] - q[0] + q[2] - q[1]) / 2
    along, across = along / (np.linalg.norm(along) + 1e-9), across / (np.linalg.norm(across) + 1e-9)
    px, py = CROP_PAD[0] * h, CROP_PAD[1] * h
    grown = q + np.array([-px * along - py * across, px * along - py * across,
                          px * along + py * across, -px * along + py * across])  # fmt: skip
    if jitter is not None:
        grown = grown + jitter.uniform(-0.06, 0.06, (4, 2)) * h
    out_w = int(np.clip(round(height * (w + 2 * px) / (h + 2 * py)), 8, MAX_CROP_WIDTH))
    # PIL's QUAD takes the source corners as top left, bottom left, bottom right, top right
    data = [*grown[0], *grown[3], *grown[2], *grown[1]]
    crop = image.convert("L").transform((out_w, height), Image.Transform.QUAD, data, Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy())


def crops_of(images: list[TextImage], alphabet: set[str], seed: int | None, split: str) -> TextSet:
    """The split with the crops of its words (not the '###' ones). With a seed, each crop's corners are
    jittered (training; one draw per word, fixed for the run); words with characters outside
    `alphabet` are counted, warned about and kept out of the recognizer's data."""
    out = TextSet(images)
    unknown, chars = 0, set()
    for i, item in enumerate(images):
        pil = item.pil()
        rng = np.random.default_rng(seed_for(seed, i)) if seed is not None else None
        for word in item.words:
            if word.ignore:
                continue
            if not set(word.text) <= alphabet:
                unknown += 1
                chars |= set(word.text) - alphabet
                continue
            out.crops.append(cut(pil, word.quad, jitter=rng))
            out.texts.append(word.text)
            out.groups.append({"font": word.font, "photo": item.photo, "image": i})
    if unknown:
        shown = "".join(sorted(chars))[:20]
        warn(f"{split}: {unknown} word(s) have characters outside the recognizer's alphabet ({shown!r}); "
             "left out of its crops")  # fmt: skip
    return out


def decode_crop(data: bytes | Image.Image, height: int = 32) -> torch.Tensor:
    """A crop (file bytes or a PIL image) as the recognizer takes it: grey, `height` px high, its aspect kept."""
    img = (data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))).convert("L")
    w = int(np.clip(round(img.width * height / max(img.height, 1)), 8, MAX_CROP_WIDTH))
    return torch.from_numpy(np.asarray(img.resize((w, height), Image.Resampling.BILINEAR), dtype=np.uint8).copy())


# ----- the detector's maps ----------------------------------------------------------------------------
def _offset(polygon, distance: float):
    """The polygon moved out (distance > 0) or in, with mitred corners (a rectangle stays one)."""
    return polygon.buffer(distance, join_style="mitre", mitre_limit=4.0)


def db_targets(words: list[Word], height: int, width: int, stride: int) -> dict[str, np.ndarray]:
    """DBNet's maps at 1/stride: 'prob' (shrunk cores, 0/1), 'prob_mask' (0 over '###' words and
    words too small to shrink), 'thresh' (0.3 far from a border to 0.7 on it) and 'thresh_mask'."""
    from shapely.geometry import Polygon

    h, w = height // stride, width // stride
    prob, mask = Image.new("L", (w, h), 0), Image.new("L", (w, h), 1)
    thresh, t_mask = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    draw_prob, draw_mask = ImageDraw.Draw(prob), ImageDraw.Draw(mask)
    for word in words:
        quad = word.quad / stride
        polygon = Polygon(quad)
        if word.ignore or not polygon.is_valid or polygon.area < 1 or min(quad_size(quad)) < 2:
            draw_mask.polygon([tuple(p) for p in quad], fill=0)
            continue
        d = polygon.area * (1 - SHRINK**2) / polygon.length
        core = _offset(polygon, -d)
        if core.is_empty or core.geom_type != "Polygon":
            draw_mask.polygon([tuple(p) for p in quad], fill=0)
            continue
        draw_prob.polygon([tuple(p) for p in np.asarray(core.exterior.coords)], fill=1)
        grown = np.asarray(_offset(polygon, d).exterior.coords)
        x1, y1 = np.floor(grown.min(0)).astype(int).clip(0)
        x2, y2 = np.ceil(grown.max(0)).astype(int) + 1
        x2, y2 = min(x2, w), min(y2, h)
        if x2 <= x1 or y2 <= y1:
            continue
        yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float64)
        distance = np.full(yy.shape, np.inf)
        for a, b in zip(quad, np.roll(quad, -1, axis=0)):  # distance to each side
            ab = b - a
            t = (((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / max(ab @ ab, 1e-9)).clip(0, 1)
            distance = np.minimum(distance, np.hypot(xx - a[0] - t * ab[0], yy - a[1] - t * ab[1]))
        closeness = (1 - distance / d).clip(0, 1).astype(np.float32)
        thresh[y1:y2, x1:x2] = np.maximum(thresh[y1:y2, x1:x2], closeness)
        ring = Image.new("L", (x2 - x1, y2 - y1), 0)
        ImageDraw.Draw(ring).polygon([tuple(p) for p in grown - (x1, y1)], fill=1)
        t_mask[y1:y2, x1:x2] = np.maximum(t_mask[y1:y2, x1:x2], np.asarray(ring, np.float32))
    return {
        "prob": np.asarray(prob, np.float32),
        "prob_mask": np.asarray(mask, np.float32),
        "thresh": thresh * 0.4 + 0.3,
        "thresh_mask": t_mask,
    }


def polygons_from_map(prob: np.ndarray, stride: int, threshold: float = 0.3, min_score: float = 0.5,
                      min_side: float = 3.0) -> list[tuple[np.ndarray, float]]:  # fmt: skip
    """Words of a probability map (h, w): each connected region above `threshold`, as its smallest
    rotated rectangle grown back by UNCLIP (the shrink undone), in image pixels; with its mean
    probability, kept from `min_score`. (quad (4, 2) clockwise from the top left, score) each."""
    from scipy import ndimage
    from shapely.geometry import MultiPoint

    labels, n = ndimage.label(prob > threshold)
    found = []
    for index, region in enumerate(ndimage.find_objects(labels), 1):
        if region is None:
            continue
        inside = labels[region] == index
        if inside.sum() < 3:
            continue
        score = float(prob[region][inside].mean())
        if score < min_score:
            continue
        ys, xs = np.nonzero(inside)
        # pixel centres, pixel i centred on i as PIL draws the targets (DBNet's unclip ratio is set for
        # the contour through them); a core one pixel thick is a line, given its pixels' thickness
        points = np.stack([xs + region[1].start, ys + region[0].start], 1).astype(np.float64)
        rect = MultiPoint(points).minimum_rotated_rectangle
        if rect.geom_type != "Polygon":
            rect = rect.buffer(0.5, cap_style="square", join_style="mitre").minimum_rotated_rectangle
        if rect.geom_type != "Polygon" or rect.length == 0:
            continue
        grown = _offset(rect, rect.area * UNCLIP / rect.length)
        quad = order_quad(np.asarray(grown.minimum_rotated_rectangle.exterior.coords)[:4]) * stride
        if min(quad_size(quad)) < min_side:
            continue
        found.append((quad, score))
    return found


def order_quad(points: np.ndarray) -> np.ndarray:
    """4 corners clockwise (y down) from the top left of the text. The text runs along the side nearer
    the horizontal (a short word is about as high as wide), unless the other side is more than twice
    as long; then left to right."""
    centre = points.mean(0)
    angles = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])
    p = points[np.argsort(angles)]  # clockwise on screen, since y points down
    lengths = [
        np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[3] - p[2]),
        np.linalg.norm(p[2] - p[1]) + np.linalg.norm(p[0] - p[3]),
    ]
    flat = [abs(p[1, 0] - p[0, 0]) / max(lengths[0] / 2, 1e-9), abs(p[2, 0] - p[1, 0]) / max(lengths[1] / 2, 1e-9)]
    start = 0 if flat[0] >= flat[1] else 1  # p[start] -> p[start+1] runs along the text
    if lengths[1 - start] > 2 * lengths[start]:
        start = 1 - start
    p = np.roll(p, -start, axis=0)
    if p[1, 0] + p[2, 0] < p[0, 0] + p[3, 0]:  # running right to left: turn it round
        p = np.roll(p, 2, axis=0)
    return p


def reading_order(quads: list[np.ndarray]) -> list[int]:
    """Indices of words in reading order: into lines where their vertical extents overlap by half
    the smaller height, lines top to bottom, words left to right."""
    boxes = [(q[:, 1].min(), q[:, 1].max(), q[:, 0].min()) for q in quads]
    order = sorted(range(len(quads)), key=lambda i: (boxes[i][0] + boxes[i][1]) / 2)
    lines: list[list[int]] = []
    for i in order:
        top, bottom, _ = boxes[i]
        for line in lines:
            lt, lb = min(boxes[j][0] for j in line), max(boxes[j][1] for j in line)
            overlap = min(bottom, lb) - max(top, lt)
            if overlap > 0.5 * min(bottom - top, lb - lt):
                line.append(i)
                break
        else:
            lines.append([i])
    return [i for line in lines for i in sorted(line, key=lambda j: boxes[j][2])]


# ----- batches ----------------------------------------------------------------------------------------
def fit_image(image: Image.Image, size: int) -> tuple[Image.Image, float]:
    """The image scaled so its longer side is at most `size` (never up), and the scale."""
    scale = min(1.0, size / max(image.size))
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)  # fmt: skip
    return image, scale


def pad_to(images: list[torch.Tensor], multiple: int = 32) -> torch.Tensor:
    """(B, 3, H, W) uint8: each (3, h, w) padded right and below to the batch's largest, a multiple of 32."""
    h = max(x.shape[1] for x in images)
    w = max(x.shape[2] for x in images)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    out = torch.zeros(len(images), 3, h, w, dtype=torch.uint8)
    for i, x in enumerate(images):
        out[i, :, : x.shape[1], : x.shape[2]] = x
    return out


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy())


class DetectorBatches:
    """Images and DBNet's maps: (images (B, 3, H, W) uint8, {map: (B, H/s, W/s)}), images at most `size`
    px on their longer side. Training shuffles per (seed, epoch) and zooms into half the images (a
    random 60-100% crop scaled back up; no flips: mirrored text is not text), drawn per (seed, epoch,
    batch, process), so that a resumed run sees the same batches."""

    def __init__(self, data: list[TextImage], batch_size: int, device, *, train: bool = False, seed: int = 0,
                 size: int = 384, crop: int = 0, stride: int = 2):  # fmt: skip
        self.data, self.batch_size, self.device = data, batch_size, device
        self.train, self.seed, self.size, self.crop, self.stride = train, seed, size, crop, stride
        self.n_samples = len(data)

    def __len__(self) -> int:
        return -(-self.n_samples // self.batch_size)

    def order(self, index: int) -> list[int]:
        ids = list(range(self.n_samples))
        if self.train:
            random.Random(seed_for(self.seed, index)).shuffle(ids)
        return ids

    def load(self, i: int, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, list[Word]]:
        item = self.data[i]
        image, scale = fit_image(item.pil(), self.size)
        words = [Word(w.text, w.quad * scale, w.font) for w in item.words]
        if rng is not None and rng.random() < 0.5:  # zoom in: a random crop of 60-100%, scaled back up
            f = rng.uniform(0.6, 1.0)
            cw, ch = max(1, int(image.width * f)), max(1, int(image.height * f))
            x0, y0 = int(rng.integers(0, image.width - cw + 1)), int(rng.integers(0, image.height - ch + 1))
            image = image.crop((x0, y0, x0 + cw, y0 + ch)).resize(
                (image.width, image.height), Image.Resampling.BILINEAR
            )
            sx, sy = image.width / cw, image.height / ch
            words = [Word(w.text, (w.quad - (x0, y0)) * (sx, sy), w.font) for w in words]
            words = [w if self._inside(w.quad, image) else Word(DONT_CARE, w.quad, w.font) for w in words]
        if rng is not None and self.crop and max(image.size) > self.crop:  # a random window: cheaper steps
            cw, ch = min(self.crop, image.width), min(self.crop, image.height)
            x0, y0 = int(rng.integers(0, image.width - cw + 1)), int(rng.integers(0, image.height - ch + 1))
            image = image.crop((x0, y0, x0 + cw, y0 + ch))
            words = [Word(w.text, w.quad - (x0, y0), w.font) for w in words]
            words = [w if self._inside(w.quad, image) else Word(DONT_CARE, w.quad, w.font) for w in words
                     if (w.quad.max(0) > 0).all() and w.quad[:, 0].min() < cw and w.quad[:, 1].min() < ch]  # fmt: skip
        return to_tensor(image), words

    @staticmethod
    def _inside(quad: np.ndarray, image: Image.Image) -> bool:
        return bool((quad.min(0) >= 0).all() and quad[:, 0].max() <= image.width and quad[:, 1].max() <= image.height)

    def collate(self, rows: list[int], rngs: list[np.random.Generator] | None):
        loaded = [self.load(i, rng) for i, rng in zip(rows, rngs or [None] * len(rows))]
        images = pad_to([x for x, _ in loaded])
        h, w = images.shape[-2:]
        maps = [db_targets(words, h, w, self.stride) for _, words in loaded]
        targets = {k: torch.from_numpy(np.stack([m[k] for m in maps])).to(self.device) for k in maps[0]}
        return images.to(self.device), targets

    def batch(self, index: int, b: int, rank: int = 0, world: int = 1):
        order = self.order(index)
        rows = order[b * self.batch_size : (b + 1) * self.batch_size]
        rngs = None
        if self.train:  # one draw per image, by its place in the batch: the same whatever the processes
            places = train_rows(len(rows), rank, world) if world > 1 else list(range(len(rows)))
            rows = [rows[i] for i in places]
            rngs = [np.random.default_rng(seed_for(self.seed, index, b, i)) for i in places]
        return self.collate(rows, rngs)

    def epoch(self, index: int = 0, start: int = 0, rank: int = 0, world: int = 1) -> Iterator:
        for b in range(start, len(self)):
            if world > 1 and not self.train and b % world != rank:
                continue
            yield self.batch(index, b, rank, world)


class CropBatches:
    """Word crops and transcripts: (crops (B, 1, 32, W) float in [0, 1], widths (B,), targets (B, L) ids
    + EOS), crops of similar widths batched together, padded right with their own last column.
    `short_first`: the first training epoch goes from the narrowest crops to the widest (SortaGrad,
    Amodei et al. 2016: CTC aligns short sequences first)."""

    def __init__(self, crops: list[torch.Tensor], targets: list[list[int]], batch_size: int, device, *,
                 train: bool = False, seed: int = 0, short_first: bool = False):  # fmt: skip
        self.crops, self.targets, self.batch_size, self.device = crops, targets, batch_size, device
        self.train, self.seed, self.short_first = train, seed, short_first
        self.n_samples = len(crops)
        self.widths = [c.shape[1] for c in crops]
        self._order: tuple[int, list[list[int]]] | None = None  # the last epoch's batches, made once

    def order(self, index: int) -> list[list[int]]:
        if self._order is not None and self._order[0] == index:
            return self._order[1]
        if self.train:
            batches = length_buckets(self.widths, self.batch_size, random.Random(seed_for(self.seed, index)))
            if self.short_first and index == 0:
                batches.sort(key=lambda rows: sum(self.widths[i] for i in rows) / len(rows))
        else:
            ids = sorted(range(self.n_samples), key=lambda i: self.widths[i])
            batches = [ids[i : i + self.batch_size] for i in range(0, len(ids), self.batch_size)]
        self._order = (index, batches)
        return batches

    def __len__(self) -> int:
        return len(self.order(0)) if not self.train else -(-self.n_samples // self.batch_size)

    def collate(self, rows: list[int]):
        from lamina.data.batching import pad

        width = max(self.widths[i] for i in rows)
        width = -(-width // 4) * 4
        out = torch.empty(len(rows), 1, self.crops[rows[0]].shape[0], width, dtype=torch.uint8)
        for j, i in enumerate(rows):
            c = self.crops[i]
            out[j, 0, :, : c.shape[1]] = c
            out[j, 0, :, c.shape[1] :] = c[:, -1:]  # its own edge, not a black bar the model would read
        widths = torch.tensor([self.widths[i] for i in rows])
        targets = pad([self.targets[i] for i in rows])
        return out.to(self.device).float() / 255, widths.to(self.device), targets.to(self.device)

    def batch(self, index: int, b: int, rank: int = 0, world: int = 1):
        rows = self.order(index)[b]
        if self.train and world > 1:
            rows = [rows[i] for i in train_rows(len(rows), rank, world)]
        return self.collate(rows)

    def epoch(self, index: int = 0, start: int = 0, rank: int = 0, world: int = 1) -> Iterator:
        order = self.order(index)
        for b in range(start, len(order)):
            if world > 1 and not self.train and b % world != rank:
                continue
            yield self.batch(index, b, rank, world)


class ReaderBatches:
    """Both streams at once, for the reader: batch b of epoch e is the detector's batch (e, b) and the
    recognizer's next batch in its own sequence of epochs (its epochs are of another length), so that
    one optimizer step trains both parts and a resumed run draws exactly the same batches."""

    def __init__(self, detector: DetectorBatches, recognizer: CropBatches):
        self.detector, self.recognizer = detector, recognizer
        self.n_samples = detector.n_samples

    def __len__(self) -> int:
        return len(self.detector)

    def epoch(self, index: int = 0, start: int = 0, rank: int = 0, world: int = 1) -> Iterator:
        per_rec = len(self.recognizer)
        for b in range(start, len(self.detector)):
            k = index * len(self.detector) + b
            yield (self.detector.batch(index, b, rank, world),
                   self.recognizer.batch(k // per_rec, k % per_rec, rank, world))  # fmt: skip
