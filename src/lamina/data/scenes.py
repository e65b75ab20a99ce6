"""Synthetic scenes: Fashion-MNIST objects pasted onto real photographs, with exact masks, in COCO format.

Shared by the vision tasks that need objects in context (detection now; scene text and captions later
reuse the photographs and the cache). A scene is made from a seed alone:

    background   a random crop of one photograph (scikit-image and scikit-learn ship them in their
                 wheels), flipped, with its brightness, contrast, saturation and hue changed
    objects      1 to `max_objects` Fashion-MNIST items, each scaled (log-uniform between the size
                 bounds), tinted, and pasted where it leaves every object already there at least
                 MIN_VISIBLE of its area; later objects occlude earlier ones
    annotations  per object its visible mask (from its own pixels), that mask's box and area, where
                 it came from (Fashion-MNIST split and index) and how much of it others hide, in COCO
                 JSON with RLE masks

Splits never share a source: test scenes use Fashion-MNIST's test images on photographs that neither
training nor validation sees; validation uses the last VAL_OBJECTS training images (which training
scenes never use) on photographs of its own.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from lamina.data.batching import seed_for
from lamina.data.sources import lamina_home
from lamina.engine.log import note, working
from lamina.errors import LaminaError

NAME = "synth-scenes"
VERSION = 2  # of the generator: a change of what it makes changes the cache key
MIN_VISIBLE = 0.4  # an object keeps at least this fraction of its own pixels visible
MIN_AREA = 24  # pixels: an object smaller than this after scaling is not pasted
MASK_LEVEL = 24  # Fashion-MNIST pixel value from which a pixel belongs to the object (0-255)
VAL_OBJECTS = 6000  # the last Fashion-MNIST training images, kept for validation scenes

# Photographs by split: none is shared, so test scenes show unseen backgrounds.
PHOTOS = {
    "train": [
        "skimage:astronaut.png",
        "skimage:coffee.png",
        "skimage:chelsea.png",
        "skimage:rocket.jpg",
        "skimage:brick.png",
        "skimage:grass.png",
        "skimage:gravel.png",
        "skimage:camera.png",
        "skimage:moon.png",
        "skimage:hubble_deep_field.jpg",
        "skimage:clock_motion.png",
        "skimage:cell.png",
        "sklearn:china.jpg",
    ],
    "val": ["skimage:coins.png", "skimage:retina.jpg"],
    "test": ["sklearn:flower.jpg", "skimage:motorcycle_left.png", "skimage:motorcycle_right.png", "skimage:ihc.png"],
}


@dataclass(frozen=True)
class SceneSpec:
    """What a set of scenes is made from: the cache key is a hash of it."""

    image_size: int = 192
    train: int = 5000
    val: int = 250
    test: int = 500
    min_size: int = 20  # object side in pixels (the longer side of its 28x28 image, scaled)
    max_size: int = 120
    max_objects: int = 8
    seed: int = 0

    @classmethod
    def for_size(cls, image_size: int, **options) -> SceneSpec:
        """Objects from about 20 to 120 px in a 256 px scene, in proportion in smaller ones (at least 8 px,
        at most 60% of the side)."""
        sizes = {
            "min_size": max(8, round(20 * min(image_size, 256) / 256)),
            "max_size": min(120, round(0.6 * image_size)),
        }
        return cls(image_size=image_size, **{**sizes, **options})

    def key(self) -> str:
        text = json.dumps({**asdict(self), "version": VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def counts(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}


def photo_path(name: str) -> Path:
    """The file of a bundled photograph ('skimage:coffee.png'): read from the installed wheel, never
    fetched (skimage.data's own loaders download the images they do not bundle)."""
    package, file = name.split(":")
    try:
        if package == "skimage":
            import skimage.data

            return Path(skimage.data.__file__).parent / file
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images" / file
    except ImportError:
        raise LaminaError(
            "synth-scenes needs the photographs of scikit-image and scikit-learn: pip install scikit-image "
            "scikit-learn (./run setup does it)"
        ) from None


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8."""
    path = photo_path(name)
    if not path.exists():
        raise LaminaError(f"photograph {name} is not in the installed package ({path})")
    return np.asarray(Image.open(path).convert("RGB"))


@functools.cache  # loaded once by the process that forks the workers, shared by all
def object_pool(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,), Fashion-MNIST indices (N,)) that `split`'s scenes draw from."""
    from lamina.data.images import fashion_mnist

    source = fashion_mnist("test" if split == "test" else "train")
    images, labels = source.images[:, 0].numpy(), source.labels.numpy()
    index = np.arange(len(labels))
    if split == "train":
        keep = slice(0, len(labels) - VAL_OBJECTS)
    elif split == "val":
        keep = slice(len(labels) - VAL_OBJECTS, None)
    else:
        keep = slice(None)
    return images[keep], labels[keep], index[keep]


# ----- composing one scene ------------------------------------------------------------------------------
def background(photo: np.ndarray, size: int, rng: np.random.Generator, hue: bool = True) -> np.ndarray:
    """A random square crop (30-100% of the shorter side), resized to `size`, maybe mirrored, with
    random brightness, contrast, saturation and (unless hue=False: a background a caption names must
    look as named) hue: (size, size, 3) uint8."""
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.3, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    image = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance, low, high in (
        (ImageEnhance.Brightness, 0.6, 1.4),
        (ImageEnhance.Contrast, 0.6, 1.4),
        (ImageEnhance.Color, 0.3, 1.7),
    ):
        image = enhance(image).enhance(rng.uniform(low, high))
    if not hue:
        return np.asarray(image)
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + rng.integers(0, 256)) % 256  # hue rotation
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def scaled_object(item: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 28x28 item scaled so its longer side is `side`, slightly stretched: (intensity float in [0, 1],
    mask bool), both (h, w). The mask is the item's own pixels, thresholded after scaling."""
    aspect = np.exp(rng.uniform(-0.15, 0.15))
    h, w = max(4, round(side * aspect)), max(4, round(side / aspect))
    scale = side / max(h, w)
    h, w = max(4, round(h * scale)), max(4, round(w * scale))
    intensity = np.asarray(Image.fromarray(item).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255
    return intensity, intensity >= MASK_LEVEL / 255


def tint(intensity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An item's shading in a random colour, light or dark: (h, w, 3) float in [0, 255]."""
    colour = rng.uniform(0, 255, 3)
    shade = 0.35 + 0.65 * intensity[..., None]  # (h, w, 1): the item's folds and prints
    if rng.random() < 0.5:  # the shading inverted: dark prints on light cloth as well as light on dark
        shade = 1.35 - shade
    return colour * shade


def place(owner: np.ndarray, areas: list[int], mask: np.ndarray, rng: np.random.Generator,
          tries: int = 10) -> tuple[int, int] | None:  # fmt: skip
    """Where (y, x) to paste `mask` so that every object already in `owner` (the 1-based object each
    pixel shows) keeps MIN_VISIBLE of its full area (`areas`); None after `tries` random spots."""
    S, (h, w) = owner.shape[0], mask.shape
    for _attempt in range(tries):
        y, x = int(rng.integers(0, S - h + 1)), int(rng.integers(0, S - w + 1))
        covered = np.bincount(owner[y : y + h, x : x + w][mask], minlength=len(areas) + 1)[1:]
        visible = np.bincount(owner.ravel(), minlength=len(areas) + 1)[1:] - covered
        if all(v >= MIN_VISIBLE * a for v, a in zip(visible, areas)):
            return y, x
    return None


def compose(
    photo: np.ndarray, pool: tuple[np.ndarray, np.ndarray, np.ndarray], spec: SceneSpec, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """One scene: (image (S, S, 3) uint8, objects [{'label', 'source', 'mask' (S, S) bool}])."""
    S = spec.image_size
    image = background(photo, S, rng).astype(np.float32)
    owner = np.zeros((S, S), np.int16)  # which object (1-based) each pixel shows, 0: background
    areas: list[int] = []  # full area of each pasted object
    placed: list[tuple[int, int]] = []  # (pool index, label)
    images, labels, indices = pool
    largest = min(spec.max_size, int(0.75 * S))
    for _ in range(rng.integers(1, spec.max_objects + 1)):
        k = int(rng.integers(len(labels)))
        side = int(round(np.exp(rng.uniform(np.log(spec.min_size), np.log(max(largest, spec.min_size))))))
        intensity, mask = scaled_object(images[k], side, rng)
        if mask.sum() < MIN_AREA:
            continue
        spot = place(owner, areas, mask, rng)
        if spot is None:
            continue  # nowhere to put it without hiding another object: leave it out
        y, x = spot
        h, w = mask.shape
        region = image[y : y + h, x : x + w]
        region[mask] = tint(intensity, rng)[mask]
        owner[y : y + h, x : x + w][mask] = len(areas) + 1
        areas.append(int(mask.sum()))
        placed.append((k, int(labels[k])))
    objects = []
    for i, (k, label) in enumerate(placed):
        mask = owner == i + 1
        objects.append({"label": label, "source": int(indices[k]), "mask": mask, "hidden": 1 - mask.sum() / areas[i]})
    return image.round().clip(0, 255).astype(np.uint8), objects


# ----- a whole set, in parallel, cached ---------------------------------------------------------------
def _make_chunk(args: tuple) -> list[dict]:
    """Scenes [start, stop) of a split: written as JPEG files, returned as COCO image + annotation dicts."""
    from lamina.data import coco

    spec, split, start, stop, folder = args
    photos = [load_photo(name) for name in PHOTOS[split]]
    pool = object_pool(split)
    made = []
    for i in range(start, stop):
        rng = np.random.default_rng(seed_for(spec.seed, ["train", "val", "test"].index(split), i))
        which = int(rng.integers(len(photos)))
        image, objects = compose(photos[which], pool, spec, rng)
        file_name = f"{i:06d}.jpg"
        Image.fromarray(image).save(folder / file_name, quality=92)
        annotations = [
            {
                **coco.encode_mask(o["mask"]),
                "category_id": o["label"] + 1,
                "iscrowd": 0,
                "fashion_mnist": ["test" if split == "test" else "train", o["source"]],
                "hidden": round(float(o["hidden"]), 4),  # the fraction of the object that others cover
            }
            for o in objects
        ]
        made.append(
            {"image": {"id": i + 1, "file_name": file_name, "width": spec.image_size, "height": spec.image_size,
                       "photo": PHOTOS[split][which]},
             "annotations": annotations}
        )  # fmt: skip
    return made


def build(spec: SceneSpec, processes: int | None = None) -> Path:
    """The folder of `spec`'s scenes under $LAMINA_HOME, made now if it is not there yet:
    <split>/NNNNNN.jpg and annotations/instances_<split>.json, a COCO-format folder."""
    from lamina.data import coco
    from lamina.data.images import FASHION_MNIST_CLASSES

    root = lamina_home() / "data" / NAME / spec.key()
    if (root / "scenes.json").exists():
        return root
    for split, names in PHOTOS.items():  # a missing Fashion-MNIST or photograph is said once, here
        object_pool(split)
        for name in names:
            load_photo(name)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "annotations").mkdir(parents=True)
    processes = processes or min(os.cpu_count() or 1, 8)
    categories = [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    note(f"making {sum(spec.counts().values()):,} synth-scenes ({spec.image_size} px) in {root}")
    for split, count in spec.counts().items():
        (tmp / split).mkdir()
        chunks = [(spec, split, s, min(s + 50, count), tmp / split) for s in range(0, count, 50)]
        made: list[dict] = []
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with context.Pool(processes) as workers:
            for chunk in working(workers.imap(_make_chunk, chunks), f"composing {split} scenes", len(chunks)):
                made.extend(chunk)
        coco.write(tmp / "annotations" / f"instances_{split}.json", made, categories)
    (tmp / "scenes.json").write_text(json.dumps({**asdict(spec), "version": VERSION, "photos": PHOTOS}, indent=1))
    try:
        tmp.rename(root)
    except OSError:  # another process made the same scenes meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return root
