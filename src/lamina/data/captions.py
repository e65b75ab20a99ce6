"""Images and the sentences that describe them: synthetic scenes with a caption grammar, and the two
common real formats (Flickr8k/30k's captions.txt, COCO captions JSON).

synth-captions scenes are made by the detection scene generator (lamina.data.scenes: Fashion-MNIST
objects on real photographs), with what a caption needs on top:

    colours      each object is painted in a nameable colour (COLOURS), its folds kept as shading
    sizes        an object is 'small' or 'large' when its side is well below or above the middle
    relations    between two objects: one in front of the other when it covers part of it, else
                 to the left of / right of / above / below when their box centres clearly say so
    backgrounds  named where the photograph is simple (grass, a brick wall, gravel), and not
                 hue-rotated (as detection scenes are), so that a named background looks as named
    captions     five references per scene from a grammar (`describe`) that varies word order,
                 synonyms, which object comes first and how much detail is given

Compositional generalisation: some (class, colour) pairs and some (class, relation, class) triples
are HELD_OUT. Training and validation scenes never show them (a scene that would is drawn again);
half of the test scenes are made to show one, and are marked `compositional` in their image entry.
Test scenes also use Fashion-MNIST's test images on photographs no other split sees.

Every split is written as COCO captions JSON (annotations/captions_<split>.json) beside its JPEGs,
with each object's box, class, colour, size and what it covers, so that the same reader loads it and
attention can be measured against the boxes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lamina.data import scenes
from lamina.data.batching import hash_split, length_buckets, pad, seed_for
from lamina.data.sources import lamina_home
from lamina.data.vocab import BOS, EOS
from lamina.engine.distributed import train_rows
from lamina.engine.log import note, working
from lamina.errors import LaminaError, warn

NAME = "synth-captions"
VERSION = 1  # of the generator and grammar: a change of what they make changes the cache key
SPLITS = ("train", "val", "test")
HASH_SPLITS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}  # for data without splits of its own
REFERENCES = 5

COLOURS = {  # RGB at full intensity; an object's shading darkens it in its folds
    "red": (205, 30, 30),
    "green": (40, 165, 50),
    "blue": (40, 75, 215),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
    "black": (28, 28, 28),
    "orange": (245, 135, 20),
    "purple": (135, 45, 175),
}
COLOUR_NAMES = list(COLOURS)
# Per Fashion-MNIST class: its names as (singular, plural); the last word of each names the object.
NOUNS = [
    [("t-shirt", "t-shirts"), ("top", "tops")],
    [("pair of trousers", "pairs of trousers"), ("pair of pants", "pairs of pants")],
    [("pullover", "pullovers"), ("sweater", "sweaters")],
    [("dress", "dresses")],
    [("coat", "coats"), ("jacket", "jackets")],
    [("sandal", "sandals")],
    [("shirt", "shirts")],
    [("sneaker", "sneakers"), ("trainer", "trainers")],
    [("bag", "bags"), ("handbag", "handbags")],
    [("ankle boot", "ankle boots"), ("boot", "boots")],
]
# The word that names an object -> its class (for attention grounding and the grammar's tests).
NOUN_CLASS = {phrase.split()[-1]: c for c, names in enumerate(NOUNS) for pair in names for phrase in pair}
BACKGROUNDS = {  # photographs simple enough to name, and how
    "skimage:grass.png": ["on grass", "on the grass", "lying on the grass"],
    "skimage:brick.png": ["on a brick wall", "against a brick wall", "on bricks"],
    "skimage:gravel.png": ["on gravel", "on the gravel", "lying on gravel"],
}
RELATIONS = {  # relation -> its inverse, and the words for it
    "left": ("right", ["to the left of", "left of"]),
    "right": ("left", ["to the right of", "right of"]),
    "above": ("below", ["above", "over"]),
    "below": ("above", ["below", "under"]),
    "front": ("behind", ["in front of"]),
    "behind": ("front", ["behind"]),
}
NUMBERS = ["a", "one", "two", "three", "four", "five", "six", "seven", "eight"]
HELD_COLOURS = {(c, COLOUR_NAMES[(3 * c + 1) % len(COLOUR_NAMES)]) for c in range(10)}
_HELD = [(8, "above", 7), (3, "left", 5), (4, "front", 0), (9, "above", 2)]  # bag above sneaker, ...
HELD_RELATIONS = {t for a, r, b in _HELD for t in ((a, r, b), (b, RELATIONS[r][0], a))}
OVERLAP = 0.08  # an object covering this share of another's area is in front of it
CLEAR = 1.5  # a direction is named when its offset is this many times the other one's
APART = 0.12  # ... and at least this share of the image side


@dataclass(frozen=True)
class CaptionSpec:
    """What a set of captioned scenes is made from: the cache key is a hash of it."""

    image_size: int = 96
    train: int = 8000
    val: int = 250
    test: int = 500
    min_size: int = 20  # object side in pixels at 96 px, in proportion at other sizes
    max_size: int = 52
    max_objects: int = 4
    seed: int = 0

    @classmethod
    def for_size(cls, image_size: int, **options) -> CaptionSpec:
        scale = image_size / 96
        return cls(image_size=image_size, min_size=max(8, round(20 * scale)), max_size=round(52 * scale), **options)

    def key(self) -> str:
        text = json.dumps({**asdict(self), "version": VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def counts(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def size_word(self, side: int) -> str:
        """'small', 'large' or '' (an object of middling size is not called either)."""
        S = self.image_size
        return "small" if side < 0.3 * S else "large" if side > 0.45 * S else ""


# ----- one scene ----------------------------------------------------------------------------------------
def paint(intensity: np.ndarray, colour: str, rng: np.random.Generator) -> np.ndarray:
    """An item in a named colour, its folds and prints kept as shading: (h, w, 3) float."""
    rgb = np.clip(np.array(COLOURS[colour], np.float32) + rng.normal(0, 10, 3), 0, 255)
    return rgb * (0.5 + 0.5 * intensity[..., None])


def relation(a: dict, b: dict, S: int) -> str:
    """How object a stands to object b: 'front'/'behind' when one covers part of the other, else a
    direction when their box centres clearly give one, else ''."""
    if b["id"] in a["covers"]:
        return "front"
    if a["id"] in b["covers"]:
        return "behind"
    (ax, ay), (bx, by) = box_centre(a["box"]), box_centre(b["box"])
    dx, dy = ax - bx, ay - by
    if abs(dx) >= CLEAR * abs(dy) and abs(dx) >= APART * S:
        return "left" if dx < 0 else "right"
    if abs(dy) >= CLEAR * abs(dx) and abs(dy) >= APART * S:
        return "above" if dy < 0 else "below"
    return ""


def box_centre(box: list[float]) -> tuple[float, float]:
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2


def held_out(objects: list[dict], S: int) -> str:
    """'colour' or 'relation' when the scene shows a held-out combination, else ''."""
    if any((o["label"], o["colour"]) in HELD_COLOURS for o in objects):
        return "colour"
    for a in objects:
        for b in objects:
            if a is not b and (a["label"], relation(a, b, S), b["label"]) in HELD_RELATIONS:
                return "relation"
    return ""


def compose(
    photo: np.ndarray,
    pool,
    spec: CaptionSpec,
    rng: np.random.Generator,
    classes: list[int] | None = None,
    colour: tuple[int, str] | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """One scene: (image (S, S, 3) uint8, objects in the order pasted, each {'id', 'label', 'colour',
    'side', 'box' [x1, y1, x2, y2], 'covers' [ids of the objects it hides part of]}). `classes`: the
    classes of the first objects (a held-out relation's pair); `colour`: (index, colour) forced."""
    S = spec.image_size
    image = scenes.background(photo, S, rng, hue=False).astype(np.float32)
    owner = np.zeros((S, S), np.int16)  # which object (1-based) each pixel shows
    areas: list[int] = []
    images, labels, _ = pool
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    wanted = list(classes or [])
    count = int(rng.integers(max(1, len(wanted)), spec.max_objects + 1))
    objects: list[dict] = []
    for n in range(count):
        c = wanted[n] if n < len(wanted) else int(rng.integers(10))
        k = int(rng.choice(by_class[c]))
        side = int(round(np.exp(rng.uniform(np.log(spec.min_size), np.log(spec.max_size)))))
        intensity, mask = scenes.scaled_object(images[k], side, rng)
        spot = scenes.place(owner, areas, mask, rng)
        if mask.sum() < scenes.MIN_AREA or spot is None:
            continue
        if colour is not None and colour[0] == n:
            name = colour[1]
        else:  # a colour the class may show in this split
            allowed = [k for k in COLOUR_NAMES if (c, k) not in HELD_COLOURS]
            name = allowed[int(rng.integers(len(allowed)))]
        y, x = spot
        h, w = mask.shape
        under = owner[y : y + h, x : x + w][mask]
        hidden = np.bincount(under, minlength=len(areas) + 1)[1:]
        covers = [objects[j]["id"] for j in range(len(objects)) if hidden[j] >= OVERLAP * areas[j]]
        image[y : y + h, x : x + w][mask] = paint(intensity, name, rng)[mask]
        owner[y : y + h, x : x + w][mask] = len(areas) + 1
        areas.append(int(mask.sum()))
        objects.append({"id": len(objects), "label": c, "colour": name, "side": side, "covers": covers,
                        "fashion_mnist": int(k)})  # fmt: skip
    for o in objects:
        ys, xs = np.nonzero(owner == o["id"] + 1)
        o["box"] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return image.round().clip(0, 255).astype(np.uint8), objects


# ----- the grammar ------------------------------------------------------------------------------------
def noun_phrase(o: dict, spec: CaptionSpec, rng: np.random.Generator, detail: str, name: int | None = None) -> str:
    """'a small red dress': article, then (as `detail` asks) size and colour, then one of its names."""
    singular = NOUNS[o["label"]][name if name is not None else int(rng.integers(len(NOUNS[o["label"]])))][0]
    words = []
    if "size" in detail and spec.size_word(o["side"]):
        words.append(spec.size_word(o["side"]))
    if "colour" in detail:
        words.append(o["colour"])
    words.append(singular)
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def listing(objects: list[dict], spec: CaptionSpec, rng: np.random.Generator, detail: str) -> str:
    """'two sneakers and a red bag': the objects grouped by class, counted, in order of first sight."""
    groups: dict[int, list[dict]] = {}
    for o in objects:
        groups.setdefault(o["label"], []).append(o)
    parts = []
    for c, members in groups.items():
        if len(members) == 1:
            parts.append(noun_phrase(members[0], spec, rng, detail))
            continue
        plural = NOUNS[c][int(rng.integers(len(NOUNS[c])))][1]
        colours = {m["colour"] for m in members}
        shown = f"{colours.pop()} {plural}" if "colour" in detail and len(colours) == 1 else plural
        parts.append(f"{NUMBERS[len(members)]} {shown}")
    if rng.random() < 0.5:
        order = rng.permutation(len(parts))
        parts = [parts[i] for i in order]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def described_pair(objects: list[dict], S: int) -> tuple[dict, dict, str] | None:
    """The pair a caption relates: the first two objects pasted that stand in a nameable relation, a
    held-out one first (a compositional test scene is made to be described by it)."""
    pairs = [(a, b, relation(a, b, S)) for i, a in enumerate(objects) for b in objects[i + 1 :]]
    pairs = [p for p in pairs if p[2]]
    pairs.sort(key=lambda p: (p[0]["label"], p[2], p[1]["label"]) not in HELD_RELATIONS)  # stable: held out first
    return pairs[0] if pairs else None


def describe(objects: list[dict], photo: str, spec: CaptionSpec, rng: np.random.Generator) -> list[str]:
    """REFERENCES captions of one scene, each true of it, paraphrasing one another."""
    S = spec.image_size
    where = BACKGROUNDS.get(photo)
    details = ["colour", "colour", "size colour", "", "size"]
    rng.shuffle(details)

    def ground(text: str) -> str:
        return f"{text} {where[int(rng.integers(len(where)))]}" if where and rng.random() < 0.5 else text

    pair = described_pair(objects, S) if len(objects) > 1 else None
    out = []
    for k, detail in enumerate(details):
        if len(objects) == 1:
            o = objects[0]
            opening = ["", "", "there is ", "a picture of ", "a photo of "][int(rng.integers(5))]
            out.append(ground(opening + noun_phrase(o, spec, rng, detail)))
            continue
        if pair is not None and k < 3:  # the relation, said both ways
            a, b, r = pair if k != 1 else (pair[1], pair[0], RELATIONS[pair[2]][0])
            words = RELATIONS[r][1][int(rng.integers(len(RELATIONS[r][1])))]
            text = f"{noun_phrase(a, spec, rng, detail)} {words} {noun_phrase(b, spec, rng, detail)}"
            others = [o for o in objects if o is not a and o is not b]
            if others:
                text += " and " + listing(others, spec, rng, "colour" if "colour" in detail else "")
            out.append(ground(text))
            continue
        listed = listing(objects, spec, rng, detail)
        there = "there is " if listed.startswith(("a ", "an ")) else "there are "
        opening = ["", "", there, "a picture of "][int(rng.integers(4))]
        out.append(ground(opening + listed))
    return out


# ----- a whole set, in parallel, cached -----------------------------------------------------------------
def _make_chunk(args: tuple) -> list[dict]:
    spec, split, start, stop, folder = args
    photos = [scenes.load_photo(name) for name in scenes.PHOTOS[split]]
    pool = scenes.object_pool(split)
    made = []
    for i in range(start, stop):
        rng = np.random.default_rng(seed_for(spec.seed, 10 + SPLITS.index(split), i))
        want = ""
        if split == "test" and i % 2 == 0:
            want = "colour" if i % 4 == 0 else "relation"
        for _attempt in range(200):
            which = int(rng.integers(len(photos)))
            classes, colour = None, None
            if want == "relation":
                a, _, b = sorted(HELD_RELATIONS)[int(rng.integers(len(HELD_RELATIONS)))]
                classes = [a, b]
            elif want == "colour":
                c = int(rng.integers(10))
                classes, colour = [c], (0, next(k for cc, k in sorted(HELD_COLOURS) if cc == c))
            image, objects = compose(photos[which], pool, spec, rng, classes, colour)
            if objects and held_out(objects, spec.image_size) == want:
                break  # (training scenes must show no held-out combination; test ones, the one asked for)
        else:
            raise LaminaError(f"could not compose a {split} scene {i} showing {want or 'no held-out combination'}")
        file_name = f"{i:06d}.jpg"
        Image.fromarray(image).save(folder / file_name, quality=92)
        made.append(
            {"image": {"id": i + 1, "file_name": file_name, "width": spec.image_size, "height": spec.image_size,
                       "photo": scenes.PHOTOS[split][which], "compositional": want},
             "captions": describe(objects, scenes.PHOTOS[split][which], spec, rng),
             "objects": objects}
        )  # fmt: skip
    return made


def build(spec: CaptionSpec, processes: int | None = None) -> Path:
    """The folder of `spec`'s captioned scenes under $LAMINA_HOME, made now if it is not there yet:
    <split>/NNNNNN.jpg and annotations/captions_<split>.json (COCO captions, plus 'objects')."""
    root = lamina_home() / "data" / NAME / spec.key()
    if (root / "captions.json").exists():
        return root
    for split, names in scenes.PHOTOS.items():  # a missing Fashion-MNIST or photograph is said once, here
        scenes.object_pool(split)
        for name in names:
            scenes.load_photo(name)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "annotations").mkdir(parents=True)
    processes = processes or min(os.cpu_count() or 1, 8)
    note(f"making {sum(spec.counts().values()):,} synth-captions scenes ({spec.image_size} px) in {root}")
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    for split, count in spec.counts().items():
        (tmp / split).mkdir()
        chunks = [(spec, split, s, min(s + 100, count), tmp / split) for s in range(0, count, 100)]
        made: list[dict] = []
        with context.Pool(processes) as workers:
            for chunk in working(workers.imap(_make_chunk, chunks), f"composing {split} scenes", len(chunks)):
                made.extend(chunk)
        coco = {
            "info": {"description": f"synth-captions {split}", "version": VERSION},
            "images": [m["image"] for m in made],
            "annotations": [
                {"id": m["image"]["id"] * 10 + j, "image_id": m["image"]["id"], "caption": c}
                for m in made
                for j, c in enumerate(m["captions"])
            ],  # fmt: skip
            "objects": [{**o, "image_id": m["image"]["id"]} for m in made for o in m["objects"]],
            "categories": [{"id": c + 1, "name": n[0][0]} for c, n in enumerate(NOUNS)],
        }
        (tmp / "annotations" / f"captions_{split}.json").write_text(json.dumps(coco))
    held = {"colours": sorted(HELD_COLOURS), "relations": sorted(HELD_RELATIONS)}
    (tmp / "captions.json").write_text(json.dumps({**asdict(spec), "version": VERSION, "held_out": held}, indent=1))
    try:
        tmp.rename(root)
    except OSError:  # another process made the same scenes meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# ----- reading captioned images -------------------------------------------------------------------------
@dataclass
class CaptionSet:
    """Images (N, 3, S, S) uint8 and their reference captions; for synthetic scenes, the objects."""

    images: torch.Tensor
    captions: list[list[str]]
    names: list[str]
    objects: list[list[dict]] | None = None  # per image [{'label', 'colour', 'box', ...}]
    groups: list[dict] = field(default_factory=list)  # per image {'objects': n, 'compositional': ...}

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def n_samples(self) -> int:  # as a stream the engine evaluates (lamina.engine.loop.BatchStream)
        return len(self.captions)


@dataclass
class Listing:
    """What a captions file says before any image is read: image path -> its captions."""

    captions: dict[Path, list[str]]
    skipped: dict[str, int] = field(default_factory=dict)  # why -> how many
    extra: dict[Path, dict] = field(default_factory=dict)  # synthetic: {'objects', 'group'} per image


def clean(caption: str) -> str:
    return " ".join(caption.strip().split())


def words(caption: str) -> list[str]:
    """A caption's words as every metric and the vocabulary see them: lower case, punctuation split
    off and dropped (as the COCO evaluation's PTB tokenizer does), hyphenated words kept whole."""
    return re.findall(r"[a-z0-9]+(?:['\-][a-z0-9]+)*", caption.lower())


def _subfolders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _found_any(listing: Listing, file: Path, folder: Path) -> None:
    """A captions file none of whose images is where it points is one error, not a warning per image."""
    if not listing.captions and listing.skipped.get("missing image"):
        raise LaminaError(f"{file}: none of its images is in {folder} (nor in the folders beside it)")


def _images_folder(root: Path, first: str) -> Path:
    """The folder that holds `first` among the usual places."""
    candidates = [root, root / "Images", root / "images", root / "Flicker8k_Dataset", root / "flickr30k_images"]
    candidates += _subfolders(root)
    fallback = root / "Images" if (root / "Images").is_dir() else root
    return next((c for c in candidates if (c / first).is_file()), fallback)


def read_flickr(path: Path) -> Listing:
    """Flickr8k/30k captions: `captions.txt` of `image,caption` lines (a header line allowed; the
    caption may hold commas), or the original `image#n<TAB>caption` token files; the images beside
    it (in Images/, images/ or the same folder)."""
    file = path
    if path.is_dir():
        names = ("captions.txt", "Flickr8k.token.txt", "results_20130124.token")
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise LaminaError(f"{path}: no captions.txt (image,caption lines) in this folder")
        file = found[0]
    rows = []
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        if "\t" in line:
            image, _, caption = line.partition("\t")
            image = image.split("#")[0]
        else:
            image, _, caption = line.partition(",")
        rows.append((image.strip(), caption))
    if rows and rows[0][0].lower() in ("image", "image_name", "filename"):
        rows = rows[1:]
    if not rows:
        raise LaminaError(f"{file}: no image,caption lines")
    folder = _images_folder(file.parent, rows[0][0])
    out = _listing([(folder / image, caption) for image, caption in rows])
    _found_any(out, file, folder)
    return out


def _listing(rows: list[tuple[Path, str]]) -> Listing:
    out = Listing({})
    exists: dict[Path, bool] = {}
    for image, caption in rows:
        if image not in exists:
            exists[image] = image.is_file()
        if not exists[image]:
            out.skipped["missing image"] = out.skipped.get("missing image", 0) + 1
            continue
        if not clean(caption) or not words(caption):
            out.skipped["empty caption"] = out.skipped.get("empty caption", 0) + 1
            continue
        out.captions.setdefault(image, []).append(clean(caption))
    return out


def coco_files(path: Path) -> dict[str, Path]:
    """split -> captions JSON file: the file given, or the annotations/captions_*.json of a folder
    by the split their names say; a single file is 'all' (split by hash)."""
    if path.is_file():
        return {"all": path}
    found = sorted((path / "annotations").glob("captions_*.json")) + sorted(path.glob("captions_*.json"))
    out: dict[str, Path] = {}
    for f in found:
        out.setdefault(_split_of(f.name) or "all", f)
    if len(out) > 1:
        out.pop("all", None)
    elif out:
        out = {"all": next(iter(out.values()))}
    return out


def _split_of(name: str) -> str:
    return next((s for s in SPLITS if s in name.lower()), "")


def read_coco(file: Path, root: Path) -> Listing:
    """COCO captions JSON ({'images': [{id, file_name}], 'annotations': [{image_id, caption}]});
    the images in a folder beside it (by file_name). lamina's own files also carry 'objects'."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        images = {im["id"]: str(im["file_name"]) for im in data["images"]}
        notes = [(a["image_id"], a.get("caption") or "") for a in data["annotations"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LaminaError(f"{file}: not COCO captions JSON ({type(exc).__name__}: {exc})") from None
    if not images:
        raise LaminaError(f"{file}: lists no images")
    first = next(iter(images.values()))
    split = _split_of(file.name)
    places = [root / split, root, file.parent, file.parent.parent]
    folder = next((p for p in places if (p / first).is_file()), None)
    for base in (root, file.parent.parent):  # COCO's own layout: annotations/ beside train2017/, val2017/
        folder = folder or next((p for p in _subfolders(base) if (p / first).is_file()), None)
    rows = [(folder or root) / images[i] for i, _ in notes if i in images]
    out = _listing(list(zip(rows, [str(c) for i, c in notes if i in images])))
    _found_any(out, file, folder or root)
    if "objects" in data:
        by_image: dict[int, list[dict]] = {}
        for o in data["objects"]:
            by_image.setdefault(o["image_id"], []).append(o)
        for im in data["images"]:
            objects = by_image.get(im["id"], [])
            out.extra[(folder or root) / im["file_name"]] = {
                "objects": objects,
                "group": {"objects": len(objects), "compositional": im.get("compositional", ""),
                          "photo": im.get("photo", "")},
            }  # fmt: skip
    return out


def kind(path: Path) -> str:
    """'coco' or 'flickr' for a path given as --data."""
    if path.is_file():
        return "coco" if path.suffix.lower() == ".json" else "flickr"
    if coco_files(path):
        return "coco"
    return "flickr"


def layout(path: Path) -> dict[str, Listing]:
    """split -> its listing, for any supported folder or file. Data without splits of its own is
    split 80/10/10 by a hash of each image's name."""
    if not path.exists():
        raise LaminaError(f"{path}: no such file or folder")
    if kind(path) == "coco":
        files = coco_files(path)
        if not files:
            raise LaminaError(f"{path}: no captions_*.json")
        root = path.parent if path.is_file() else path
        listings = {s: read_coco(f, root) for s, f in files.items()}
    else:
        listings = {"all": read_flickr(path)}
    if "all" in listings:
        whole = listings.pop("all")
        for split in SPLITS:
            keep = {p: c for p, c in whole.captions.items() if hash_split(p.name, HASH_SPLITS) == split}
            listings[split] = Listing(keep, dict(whole.skipped) if split == "train" else {},
                                      {p: whole.extra[p] for p in keep if p in whole.extra})  # fmt: skip
    return listings


def load(listing: Listing, size: int, what: str, max_words: int = 0) -> CaptionSet:
    """The images of a listing, read and fitted to (3, size, size) (an unreadable one is warned about
    and left out), with their captions (cut to `max_words` words, with a warning)."""
    from concurrent.futures import ThreadPoolExecutor

    from lamina.data.images import load_image

    skipped = dict(listing.skipped)
    paths = list(listing.captions)

    def read(p: Path):
        try:
            return load_image(p, 3, size)
        except LaminaError:
            return None

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        images = list(working(pool.map(read, paths), f"reading {what} images", len(paths)))
    keep = [i for i, x in enumerate(images) if x is not None]
    if len(keep) < len(paths):
        skipped["unreadable image"] = len(paths) - len(keep)
    captions, cut = [], 0
    for i in keep:
        refs = listing.captions[paths[i]]
        if max_words:
            cut += sum(len(words(c)) > max_words for c in refs)
            refs = [" ".join(words(c)[:max_words]) if len(words(c)) > max_words else c for c in refs]
        captions.append(refs)
    if cut:
        warn(f"{what}: {cut} caption(s) longer than {max_words} words cut to their first {max_words} words")
    for why, n in skipped.items():
        warn(f"{what}: skipped {n} caption(s) or image(s): {why}")
    if not keep:
        return CaptionSet(torch.zeros(0, 3, size, size, dtype=torch.uint8), [], [])
    extra = [listing.extra.get(paths[i]) for i in keep]
    objects = [e["objects"] for e in extra] if all(e is not None for e in extra) else None
    groups = [e["group"] for e in extra] if objects is not None else [{} for _ in keep]
    return CaptionSet(torch.stack([images[i] for i in keep]), captions, [paths[i].name for i in keep], objects, groups)


# ----- batches ----------------------------------------------------------------------------------------
class CaptionBatches:
    """Batches of (images (B, 3, S, S) uint8, caption inputs (B, T) from BOS, targets (B, T) to EOS).

    Training: each image with one of its references, drawn by (seed, epoch, image) so that every
    reference is seen across epochs, in batches of captions of similar length (length_buckets: a
    decoder that steps word by word computes no padding; 1.7x the words/s of shuffled batches here).
    Evaluation: each image with its first reference, in order, and every world-th batch per process."""

    def __init__(self, data: CaptionSet, encoded: list[list[list[int]]], batch_size: int, device: torch.device,
                 train: bool = False, seed: int = 0):  # fmt: skip
        self.data, self.encoded, self.batch_size, self.device = data, encoded, batch_size, device
        self.train, self.seed = train, seed
        self.n_samples = len(data)

    def __len__(self) -> int:
        return -(-self.n_samples // self.batch_size)

    def picks(self, index: int) -> list[int]:
        """Which reference of each image epoch `index` trains on (the first when evaluating)."""
        if not self.train:
            return [0] * self.n_samples
        return [seed_for(self.seed, index, i) % len(refs) for i, refs in enumerate(self.encoded)]

    def order(self, index: int, picks: list[int]) -> list[list[int]]:
        if not self.train:
            return [list(range(s, min(s + self.batch_size, self.n_samples))) for s in range(0, self.n_samples,
                                                                                          self.batch_size)]  # fmt: skip
        lengths = [len(self.encoded[i][k]) for i, k in enumerate(picks)]
        return length_buckets(lengths, self.batch_size, random.Random(seed_for(self.seed, index)))

    def epoch(self, index: int = 0, start: int = 0, rank: int = 0, world: int = 1):
        picks = self.picks(index)
        for b, rows in enumerate(self.order(index, picks)[start:], start):
            if world > 1 and not self.train and b % world != rank:
                continue
            if self.train and world > 1:
                rows = [rows[i] for i in train_rows(len(rows), rank, world)]
            yield self.collate(rows, [picks[i] for i in rows])

    def collate(self, rows: list[int], picks: list[int]):
        tokens = [self.encoded[i][k] for i, k in zip(rows, picks)]
        tgt_in = pad([[BOS, *t] for t in tokens], self.device)
        tgt_out = pad([[*t, EOS] for t in tokens], self.device)
        return self.data.images[rows].to(self.device), tgt_in, tgt_out
