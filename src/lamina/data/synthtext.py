"""Synthetic scene text: words rendered onto real photographs (SynthText, Gupta et al. 2016), with
each word's transcript, quadrilateral and character boxes.

A scene is made from a seed alone:

    background  a random crop of one of the detection scenes' photographs (lamina.data.scenes)
    lines       1 to 3 consecutive words of a line of Shakespeare or of an English software message
                (gettext), or a number, date, time, price, percentage or code; in mixed case
    style       a font of the split's families, its size, a colour that contrasts with the background
                under the text (some barely), sometimes an outline and a shadow
    geometry    rotation, a perspective warp and a slight curvature of the line, placed where it
                overlaps no other line
    camera      blur, noise and JPEG artefacts over the whole image

Splits share no font family and no photograph: test scenes use held-out families (and the held-out
photographs of synth-scenes); validation has its own. The folder written is an ICDAR-style folder
(`<split>/NNNNNN.jpg` beside `<split>/gt_NNNNNN.txt`, one `x1,y1,...,x4,y4,transcript` line per
word) plus `<split>.json`, which adds what the text files cannot hold: the character boxes, the font
family and the photograph of every word and scene.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from lamina.data import scenes
from lamina.data.batching import seed_for
from lamina.data.sources import lamina_home
from lamina.engine.log import note, working
from lamina.errors import LaminaError

NAME = "synth-text"
VERSION = 1  # of the generator: a change of what it makes changes the cache key
ALPHABET = "".join(c for c in string.printable if c.isprintable() and not c.isspace())  # 94 ASCII symbols
FONT_DIRS = ("/usr/share/fonts",)
FONT_HINT = "apt-get install fonts-dejavu fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 fonts-noto-core"
# Held out by design, not only by name: clones of one design (Courier: Liberation Mono, Nimbus Mono PS,
# FreeMono) are held out together, so that no test design is seen in training under another name.
SPLIT_FAMILIES = {
    "test": ("URW Gothic", "C059", "Liberation Mono", "Nimbus Mono PS", "FreeMono", "Noto Serif", "Noto Serif Display"),
    "val": ("P052", "URW Bookman"),
}
NOT_TEXT = re.compile(r"Symbol|Dingbat|Math|Music|D050000L|Emoji")  # fonts whose letters are not letters
LATIN_NOTO = re.compile(r"^Noto (Sans|Serif)( Mono| Display)?$")  # the other Noto families repeat these glyphs
COVERAGE = "AaBbGgQqRr0123456789$%&?"


@dataclass(frozen=True)
class TextSpec:
    """What a set of text scenes is made from: the cache key is a hash of it and of the fonts found."""

    image_size: int = 384
    train: int = 4000
    val: int = 200
    test: int = 300
    min_height: int = 12  # text height (font size) in pixels
    max_height: int = 44
    max_lines: int = 7
    seed: int = 0
    fonts: str = ""  # a folder of .ttf/.otf files to use instead of FONT_DIRS

    def counts(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def key(self, fonts: dict[str, dict[str, list[str]]]) -> str:
        text = json.dumps({**asdict(self), "version": VERSION, "fonts": fonts}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# ----- fonts ---------------------------------------------------------------------------------------
def _covers_ascii(font: ImageFont.FreeTypeFont) -> bool:
    """Whether the font draws its own glyphs for letters and digits (not the 'missing' box)."""

    def glyph(c: str) -> bytes:
        return np.asarray(font.getmask(c)).tobytes() + str(font.getbbox(c)).encode()

    missing = glyph("\uffff")
    return all(glyph(c) != missing for c in COVERAGE)


@functools.cache
def find_fonts(fonts_dir: str = "") -> dict[str, dict[str, list[str]]]:
    """{split: {family: [font files]}}: every font under the font folders that draws Latin text,
    grouped by family, the families of each split apart (SPLIT_FAMILIES; by hash where those are
    not installed)."""
    dirs = [Path(fonts_dir).expanduser()] if fonts_dir else [Path(d) for d in FONT_DIRS]
    if fonts_dir and not dirs[0].is_dir():
        raise LaminaError(f"font folder {fonts_dir} does not exist")
    families: dict[str, list[str]] = {}
    for folder in dirs:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf")):
            try:
                font = ImageFont.truetype(str(path), 24)
            except OSError:
                continue
            family = font.getname()[0] or path.stem
            if NOT_TEXT.search(family) or (family.startswith("Noto") and not LATIN_NOTO.match(family)):
                continue
            if _covers_ascii(font):
                families.setdefault(family, []).append(str(path))
    if len(families) < 3:
        where = fonts_dir or ", ".join(FONT_DIRS)
        raise LaminaError(
            f"synth-text needs at least 3 font families with Latin letters; found {len(families)} in {where}: "
            f"{FONT_HINT} (./run setup does it)"
        )
    split = {"train": {}, "val": {}, "test": {}}
    for family, files in sorted(families.items()):
        where = next((s for s, names in SPLIT_FAMILIES.items() if family in names), "train")
        split[where][family] = files
    for held in ("test", "val"):  # fonts other than Debian's: hold out by hash
        if not split[held] and len(split["train"]) > 1:
            family = min(split["train"], key=lambda f: hashlib.sha256(f.encode()).hexdigest())
            split[held][family] = split["train"].pop(family)
    return split


@functools.cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


# ----- words ---------------------------------------------------------------------------------------
@functools.cache
def lexicon() -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]:
    """(lines of words, sources): lines of Shakespeare and English gettext messages, each a tuple of
    words of the alphabet; sources say which were found (either may be absent)."""
    lines, sources = [], []
    try:
        from lamina.data.sources import SHAKESPEARE

        text, _ = SHAKESPEARE.corpus()
        lines += text.splitlines()[::3]  # every third line: the variety is there, the cost is a third
        sources.append("shakespeare")
    except LaminaError:
        pass
    try:
        from lamina.data.parallel import available_languages, read_gettext

        langs = available_languages()
        if langs:
            pairs, _ = read_gettext("fr" if "fr" in langs else langs[0])
            lines += [english for english, _ in pairs]
            sources.append("gettext")
    except LaminaError:
        pass
    allowed = set(ALPHABET)
    words = []
    for line in lines:
        kept = tuple(w for w in line.split() if 0 < len(w) <= 14 and set(w) <= allowed)
        if kept:
            words.append(kept)
    return tuple(words), tuple(sources)


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def made_up(rng: np.random.Generator) -> str:
    """A number, date, time, price, percentage or code."""
    kind = int(rng.integers(8))
    n = int(10 ** rng.uniform(0, 6))
    if kind == 0:
        return f"{n:,}" if rng.random() < 0.5 else str(n)
    if kind == 1:
        return f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1950, 2040)}"
    if kind == 2:
        return f"{rng.integers(1950, 2040)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
    if kind == 3:
        return f"{rng.integers(0, 24)}:{rng.integers(0, 60):02d}"
    if kind == 4:
        return f"${n / 100:,.2f}" if rng.random() < 0.7 else f"{n / 100:.2f}EUR"
    if kind == 5:
        return f"{rng.uniform(0, 100):.{int(rng.integers(0, 2))}f}%"
    if kind == 6:
        return f"{rng.integers(1, 29)}-{MONTHS[rng.integers(12)]}" if rng.random() < 0.5 else MONTHS[rng.integers(12)]
    letters = "".join(rng.choice(list(string.ascii_uppercase), int(rng.integers(1, 4))))
    return f"{letters}-{rng.integers(10, 9999)}"


def phrase(rng: np.random.Generator) -> list[str]:
    """1 to 3 words to render on one line."""
    lines, _ = lexicon()
    if not lines or rng.random() < 0.2:
        return [made_up(rng) for _ in range(int(rng.choice([1, 1, 2])))]
    line = lines[int(rng.integers(len(lines)))]
    n = min(len(line), int(rng.choice([1, 1, 2, 2, 3])))
    start = int(rng.integers(len(line) - n + 1))
    words = list(line[start : start + n])
    case = rng.random()
    if case < 0.15:
        words = [w.upper() for w in words]
    elif case < 0.25:
        words = [w.capitalize() for w in words]
    elif case < 0.3:
        words = [w.lower() for w in words]
    return words


# ----- one line of text ----------------------------------------------------------------------------
@dataclass
class Line:
    """A line of words drawn in its own plane: masks (h, w) float32 in [0, 1] and the box of each
    word's ink and of each of its characters, (x1, y1, x2, y2) in that plane."""

    words: list[str]
    text: np.ndarray  # the letters
    outline: np.ndarray  # letters and their outline (equal to text without one)
    word_boxes: list[tuple[float, float, float, float]]
    char_boxes: list[list[tuple[float, float, float, float]]]
    spans: list[tuple[int, int]] = field(default_factory=list)  # each word's columns in the masks [x1, x2)


def draw_line(words: list[str], font: ImageFont.FreeTypeFont, stroke: int) -> Line:
    """Render `words` separated by spaces. Each word's box is measured from its own ink (the columns
    between the middles of the spaces around it), so that it holds all of it and nothing of the next."""
    line = " ".join(words)
    pad = stroke + 4
    left, top, right, bottom = font.getbbox(line, stroke_width=stroke)
    width, height = int(right - min(left, 0)) + 2 * pad, int(bottom - min(top, 0)) + 2 * pad
    origin = (pad - min(left, 0), pad - min(top, 0))
    masks = []
    for width_of_stroke in (0, stroke) if stroke else (0,):
        image = Image.new("L", (width, height), 0)
        ImageDraw.Draw(image).text(origin, line, font=font, fill=255, stroke_width=width_of_stroke, stroke_fill=255)
        masks.append(np.asarray(image, dtype=np.float32) / 255)
    text, outline = masks[0], masks[-1]
    space = font.getlength(" ")
    word_boxes, char_boxes, spans, start = [], [], [], 0
    for i, word in enumerate(words):
        x_start = origin[0] + font.getlength(line[:start])
        x_end = origin[0] + font.getlength(line[: start + len(word)])
        lo = int(np.floor(x_start - space / 2)) if i else 0
        hi = int(np.ceil(x_end + space / 2)) if i < len(words) - 1 else width
        ink = outline[:, lo:hi] > 0.02
        if not ink.any():  # nothing visible (cannot happen for the alphabet's symbols, but be safe)
            return Line(words, text, outline, [], [], [])
        rows, cols = np.nonzero(ink)
        word_boxes.append((lo + cols.min() - 1.0, rows.min() - 1.0, lo + cols.max() + 2.0, rows.max() + 2.0))
        boxes = []
        for j, c in enumerate(word):
            x = origin[0] + font.getlength(line[: start + j])
            cl, ct, cr, cb = font.getbbox(c, stroke_width=stroke)
            boxes.append((x + cl, origin[1] + ct, x + cr, origin[1] + cb))
        char_boxes.append(boxes)
        spans.append((max(lo, 0), min(hi, width)))
        start += len(word) + 1
    return Line(words, text, outline, word_boxes, char_boxes, spans)


# ----- geometry ------------------------------------------------------------------------------------
def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map that takes the 4 points `src` (4, 2) to `dst` (4, 2)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    h = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


@dataclass
class Warp:
    """Line plane -> image: bend the line (y moves by `bend` * h at its ends, 0 in its middle), then
    the homography `H`."""

    H: np.ndarray
    bend: float
    width: int
    height: int

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) points of the line plane -> (N, 2) image points."""
        x, y = points[:, 0], points[:, 1] + self.offset(points[:, 0])
        p = self.H @ np.stack([x, y, np.ones_like(x)])
        return (p[:2] / p[2]).T

    def offset(self, x: np.ndarray) -> np.ndarray:
        return self.bend * self.height * (2 * x / self.width - 1) ** 2

    def render(self, mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """`mask` of the line plane seen in the image region `box` (x1, y1, x2, y2): (y2-y1, x2-x1)."""
        from scipy.ndimage import map_coordinates

        x1, y1, x2, y2 = box
        u, v = np.meshgrid(np.arange(x1, x2) + 0.0, np.arange(y1, y2) + 0.0)
        p = np.linalg.inv(self.H) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
        x, y = p[0] / p[2], p[1] / p[2]
        y = y - self.offset(x)
        return map_coordinates(mask, [y, x], order=1, cval=0.0).reshape(u.shape)


def box_points(box: tuple[float, float, float, float], per_side: int = 1) -> np.ndarray:
    """Corners of an (x1, y1, x2, y2) box clockwise from the top left, with `per_side` - 1 more points
    along its top and bottom (a bent box's edges are curves)."""
    x1, y1, x2, y2 = box
    xs = np.linspace(x1, x2, per_side + 1)
    return np.array([*[(x, y1) for x in xs], *[(x, y2) for x in xs[::-1]]])


def quad_of(box: tuple[float, float, float, float], warp: Warp) -> np.ndarray:
    """The quadrilateral (4, 2) of a box of the line plane in the image, clockwise from the top left
    of the text: the box's own corners under a plain warp; under a bend, the smallest rotated
    rectangle around its curved edges."""
    if warp.bend == 0:
        return warp(box_points(box))
    from shapely.geometry import MultiPoint

    points = warp(box_points(box, per_side=8))
    rect = np.array(MultiPoint(points).minimum_rotated_rectangle.exterior.coords)[:4]
    corners = warp(box_points(box))
    first = int(np.argmin(((rect - corners[0]) ** 2).sum(1)))  # the text's top left comes first
    rect = np.roll(rect, -first, axis=0)
    a, b = rect[1] - rect[0], rect[2] - rect[1]
    if a[0] * b[1] - a[1] * b[0] < 0:  # keep clockwise in image coordinates (y down)
        rect = np.concatenate([rect[:1], rect[1:][::-1]])
    return rect


def luminance(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., :3] @ np.array([0.299, 0.587, 0.114])) / 255


def contrasting(background: np.ndarray, rng: np.random.Generator, weak: bool) -> np.ndarray:
    """An RGB colour whose luminance differs from `background`'s by at least 0.35 (0.08-0.2 when `weak`)."""
    bg = float(luminance(background))
    lo, hi = (0.08, 0.2) if weak else (0.35, 1.0)
    best, best_gap = None, None
    for _ in range(40):
        colour = rng.integers(0, 256, 3)
        gap = abs(float(luminance(colour)) - bg)
        if lo <= gap <= hi:
            return colour
        miss = lo - gap if gap < lo else gap - hi
        if best is None or miss < best_gap:
            best, best_gap = colour, miss
    return best


# ----- one scene -----------------------------------------------------------------------------------
def place_line(
    image: np.ndarray, taken: list, fonts: dict[str, list[str]], spec: TextSpec, rng: np.random.Generator
) -> list[dict]:
    """Render one line of text onto `image` (H, W, 3) float32 in place, where it overlaps none of the
    polygons in `taken`; its words' annotations, or [] when it found no room."""
    from shapely.geometry import Polygon

    family = sorted(fonts)[int(rng.integers(len(fonts)))]
    path = fonts[family][int(rng.integers(len(fonts[family])))]
    size = int(np.exp(rng.uniform(np.log(spec.min_height), np.log(spec.max_height))))
    font = _font(path, size)
    stroke = int(rng.integers(1, max(2, size // 10) + 1)) if rng.random() < 0.2 else 0
    line = draw_line(phrase(rng), font, stroke)
    if not line.word_boxes:
        return []
    h, w = line.text.shape
    side = image.shape[0]
    if w > 0.95 * side:
        return []
    angle = np.deg2rad(np.clip(rng.normal(0, 8), -30, 30) if rng.random() < 0.7 else 0)
    bend = rng.uniform(-0.25, 0.25) if rng.random() < 0.2 else 0.0
    src = np.array([(0, 0), (w, 0), (w, h), (0, h)], dtype=np.float64)
    for _ in range(20):  # tries to find room
        centre = rng.uniform([w / 2, h / 2], [side - w / 2, side - h / 2])
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        dst = (src - (w / 2, h / 2)) @ rot.T + centre
        dst += rng.normal(0, 0.04, (4, 2)) * h * (rng.random() < 0.5)  # perspective: corners pulled apart
        warp = Warp(homography(src, dst), bend, w, h)
        outline = warp(box_points((0, 0, w, h), per_side=8))
        if outline.min() < 1 or outline.max() > side - 2:
            continue
        shape = Polygon(outline).buffer(2)
        if not shape.is_valid or any(shape.intersects(t) for t in taken):
            continue
        break
    else:
        return []
    taken.append(shape)
    x1, y1 = np.floor(outline.min(0)).astype(int)
    x2, y2 = np.ceil(outline.max(0)).astype(int) + 1
    region = image[y1:y2, x1:x2]
    text, ring = warp.render(line.text, (x1, y1, x2, y2)), warp.render(line.outline, (x1, y1, x2, y2))
    under = region[ring > 0.3].mean(0) if (ring > 0.3).any() else region.reshape(-1, 3).mean(0)
    colour = contrasting(under, rng, weak=rng.random() < 0.08).astype(np.float32)
    if rng.random() < 0.15:  # a soft shadow, down and to the right
        dx, dy = rng.integers(1, max(2, size // 12) + 1, 2)
        shadow = np.roll(ring, (dy, dx), axis=(0, 1))
        shadow = np.asarray(Image.fromarray((shadow * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5)))
        region *= 1 - 0.6 * shadow[..., None] / 255
    if stroke:
        edge = contrasting(colour, rng, weak=False).astype(np.float32)
        region[:] = region * (1 - ring[..., None]) + edge * ring[..., None]
    opacity = rng.uniform(0.75, 1.0)
    region[:] = region * (1 - opacity * text[..., None]) + colour * opacity * text[..., None]
    words = []
    for word, box, chars in zip(line.words, line.word_boxes, line.char_boxes):
        words.append(
            {
                "text": word,
                "quad": np.round(quad_of(box, warp), 1).tolist(),
                "chars": [np.round(quad_of(c, warp), 1).tolist() for c in chars],
                "font": family,
            }
        )
    return words


def compose(photo: np.ndarray, fonts: dict[str, list[str]], spec: TextSpec, rng: np.random.Generator):
    """(image (S, S, 3) uint8, words [{'text', 'quad', 'chars', 'font'}], JPEG quality)."""
    image = scenes.background(photo, spec.image_size, rng).astype(np.float32)
    taken, words = [], []
    for _ in range(int(rng.integers(1, spec.max_lines + 1))):
        words += place_line(image, taken, fonts, spec, rng)
    if rng.random() < 0.4:
        image = np.asarray(
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
        ).astype(np.float32)
    if rng.random() < 0.4:
        image += rng.normal(0, rng.uniform(2, 8), image.shape)
    return image.clip(0, 255).astype(np.uint8), words, int(rng.integers(40, 96))


def gt_lines(words: list[dict]) -> str:
    """ICDAR 2015 ground truth: one `x1,y1,x2,y2,x3,y3,x4,y4,transcript` line per word."""
    return "".join(",".join(f"{v:g}" for p in w["quad"] for v in p) + f",{w['text']}\n" for w in words)


def _make_chunk(args: tuple) -> list[dict]:
    spec, fonts, split, start, stop, folder = args
    photos = [scenes.load_photo(name) for name in scenes.PHOTOS[split]]
    made = []
    for i in range(start, stop):
        rng = np.random.default_rng(seed_for(spec.seed, 100 + ["train", "val", "test"].index(split), i))
        which = int(rng.integers(len(photos)))
        image, words, quality = compose(photos[which], fonts[split], spec, rng)
        name = f"{i:06d}"
        Image.fromarray(image).save(folder / f"{name}.jpg", quality=quality)
        (folder / f"gt_{name}.txt").write_text(gt_lines(words))
        made.append({"file_name": f"{name}.jpg", "photo": scenes.PHOTOS[split][which], "words": words})
    return made


def build(spec: TextSpec, processes: int | None = None) -> Path:
    """The folder of `spec`'s scenes under $LAMINA_HOME, made now if it is not there yet."""
    fonts = find_fonts(spec.fonts)
    root = lamina_home() / "data" / NAME / spec.key(fonts)
    if (root / "manifest.json").exists():
        return root
    for names in scenes.PHOTOS.values():
        for name in names:
            scenes.load_photo(name)
    lines, sources = lexicon()  # read once here, shared by the forked workers
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    processes = processes or min(os.cpu_count() or 1, 8)
    note(f"making {sum(spec.counts().values()):,} synth-text scenes ({spec.image_size} px) in {root}")
    words = {}
    for split, count in spec.counts().items():
        (tmp / split).mkdir()
        chunks = [(spec, fonts, split, s, min(s + 25, count), tmp / split) for s in range(0, count, 25)]
        made: list[dict] = []
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with context.Pool(processes) as workers:
            for chunk in working(workers.imap(_make_chunk, chunks), f"rendering {split} text scenes", len(chunks)):
                made.extend(chunk)
        (tmp / f"{split}.json").write_text(json.dumps(made))
        words[split] = sum(len(m["words"]) for m in made)
    manifest = {
        **asdict(spec),
        "version": VERSION,
        "words": words,
        "text_sources": list(sources),
        "lexicon_lines": len(lines),
        "fonts": {s: sorted(f) for s, f in fonts.items()},
        "photos": scenes.PHOTOS,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    try:
        tmp.rename(root)
    except OSError:  # another process made the same scenes meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return root
