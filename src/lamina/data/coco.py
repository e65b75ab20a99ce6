"""Detection data in COCO format: read and write annotation files, hold a split in memory, batch it.

A COCO folder is `annotations/instances_<split>*.json` beside the images (in `<split>*/`, `images/`
or the folder itself), or one JSON file that a hash of each file name splits 80/10/10. Masks are
kept as run-length encodings (pycocotools) and decoded per batch; boxes are xyxy in pixel edges
(a one-pixel object at column 5 spans 5 to 6), as torchvision's detection models take them.

Training batches go through torchvision.transforms.v2 with tv_tensors, so that a flip or a scale
jitter moves the boxes and masks with the pixels; each image's random draw comes from a seed made
of (seed, epoch, batch, row), so the same batches come again after a resume.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lamina.data.batching import hash_split, seed_for
from lamina.engine.distributed import train_rows
from lamina.engine.log import working
from lamina.errors import LaminaError, warn

SPLITS = ("train", "val", "test")
HASH_SPLITS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}
MAX_WARNINGS = 10  # lines of warnings per file; then one line with the count of the rest


# ----- masks ------------------------------------------------------------------------------------------
def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A boolean (H, W) mask -> COCO fields: compressed RLE 'segmentation', 'area', 'bbox' [x, y, w, h]."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows, cols = np.nonzero(mask)
    bbox = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
    return {"segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()}, "area": int(mask.sum()),
            "bbox": bbox}  # fmt: skip


def to_rle(segmentation: Any, height: int, width: int) -> dict | None:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) -> one compressed RLE; None when empty."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return None


def decode_masks(rles: list[dict], height: int, width: int) -> torch.Tensor:
    """(N, H, W) uint8."""
    from pycocotools import mask as mask_utils

    if not rles:
        return torch.zeros((0, height, width), dtype=torch.uint8)
    return torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1)))


# ----- writing ----------------------------------------------------------------------------------------
def write(path: Path, made: list[dict], categories: list[dict]) -> None:
    """A COCO instances file from [{'image': {...}, 'annotations': [...]}] (annotation ids are numbered here)."""
    images, annotations = [], []
    for item in made:
        images.append(item["image"])
        for a in item["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": item["image"]["id"], **a})
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def write_set(data: DetectionSet, root: Path, split: str) -> Path:
    """A DetectionSet as a COCO folder split (images as PNG): what `--data PATH` reads back."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    made = []
    for i, (image, target) in enumerate(zip(data.images, data.targets)):
        name = f"{i + 1:06d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / split / name)
        h, w = image.shape[-2:]
        annotations = []
        for rle, label in zip(target["rles"], target["labels"].tolist()):
            mask = decode_masks([rle], h, w)[0].numpy().astype(bool)
            annotations.append({**encode_mask(mask), "category_id": label, "iscrowd": 0})
        made.append({"image": {"id": i + 1, "file_name": name, "width": w, "height": h}, "annotations": annotations})
    categories = [{"id": i, "name": n} for i, n in enumerate(data.classes) if i > 0]
    path = root / "annotations" / f"instances_{split}.json"
    write(path, made, categories)
    return path


# ----- reading ----------------------------------------------------------------------------------------
@dataclass
class DetectionSet:
    """Images with their objects. classes[0] is the background; labels index classes."""

    images: list[torch.Tensor]  # (3, H, W) uint8 each
    targets: list[dict[str, Any]]  # boxes (N, 4) float xyxy, labels (N,) int64, rles [N COCO RLE dicts]
    classes: list[str]
    keys: list[str]  # file names
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def masks(self, i: int) -> torch.Tensor:
        """(N, H, W) uint8 masks of image i."""
        h, w = self.images[i].shape[-2:]
        return decode_masks(self.targets[i]["rles"], h, w)


def layout(root: Path) -> dict[str, Path]:
    """split -> annotation file of a COCO folder; 'all' for a single file to split by hash."""
    if not root.exists():
        raise LaminaError(f"no such data folder: {root}")
    if root.is_file():
        return {"all": root}
    files = sorted((root / "annotations").glob("*.json")) or sorted(root.glob("*.json"))
    if not files:
        raise LaminaError(f"{root} holds no COCO annotations (expected {root}/annotations/instances_train.json)")
    found = {}
    for f in files:
        stem = f.stem.removeprefix("instances_")
        split = next((s for s in SPLITS if stem.startswith(s)), None)
        if split and split not in found:
            found[split] = f
    if not found:
        if len(files) > 1:
            raise LaminaError(f"{root} holds {len(files)} JSON files and none is named instances_train/val/test.json")
        return {"all": files[0]}
    return found


def _image_dirs(root: Path, annotations: Path, split: str) -> list[Path]:
    folder = root if root.is_dir() else root.parent
    stem = annotations.stem.removeprefix("instances_")
    return [folder / stem, folder / split, folder / "images" / stem, folder / "images" / split, folder / "images",
            folder, annotations.parent]  # fmt: skip


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LaminaError(f"{path} is not a readable COCO JSON file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not data["images"]:
        raise LaminaError(f"{path} lists no images (a COCO file has 'images', 'annotations' and 'categories')")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise LaminaError(f"{path} lists no categories")
    return data


class _Warnings:
    """At most MAX_WARNINGS lines about one file, then how many more there were."""

    def __init__(self, path: Path):
        self.path, self.count = path, 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS:
            warn(f"{self.path.name}: {message}; skipped")

    def close(self) -> None:
        if self.count > MAX_WARNINGS:
            warn(f"{self.path.name}: {self.count - MAX_WARNINGS} more problems like these were skipped")


def read_split(root: Path, split: str, classes: list[str] | None = None) -> DetectionSet:
    """One split of a COCO folder. `classes`: the run's class list, matched by name (objects of other
    categories are left out); None takes the file's categories in id order."""
    files = layout(root)
    if split not in files and "all" not in files:
        raise LaminaError(f"{root} has no {split} split (it has: {', '.join(sorted(files))})")
    path = files.get(split) or files["all"]
    data = read_json(path)
    categories = {c["id"]: c["name"] for c in data["categories"] if isinstance(c, dict) and "id" in c and "name" in c}
    if classes is None:
        classes = ["__background__", *[categories[i] for i in sorted(categories)]]
    index = {name: i for i, name in enumerate(classes)}
    by_image: dict[Any, list[dict]] = {}
    for a in data.get("annotations") or []:
        if isinstance(a, dict):
            by_image.setdefault(a.get("image_id"), []).append(a)
    dirs = _image_dirs(root, path, split)
    problems = _Warnings(path)
    images, targets, keys = [], [], []
    entries = [e for e in data["images"] if isinstance(e, dict) and "file_name" in e]
    if "all" in files and split in HASH_SPLITS:
        entries = [e for e in entries if hash_split(str(e["file_name"]), HASH_SPLITS) == split]
    for entry in working(entries, f"reading {split} images", len(entries)):
        name = str(entry["file_name"])
        image = _decode(next((d / name for d in dirs if (d / name).is_file()), None), name, problems)
        if image is None:
            continue
        h, w = image.shape[-2:]
        boxes, labels, rles = [], [], []
        for a in by_image.get(entry.get("id"), []):
            what = f"image {name}, annotation {a.get('id')}"
            if a.get("iscrowd"):
                continue  # crowd regions are neither objects to find nor errors (as in the COCO evaluation)
            cat = a.get("category_id")
            if cat not in categories:
                problems(f"{what} has unknown category id {cat!r}")
                continue
            if categories[cat] not in index:
                continue  # a category the run does not know: not one of its objects
            box = a.get("bbox")
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                problems(f"{what} has no valid bbox")
                continue
            x, y, bw, bh = box
            if bw <= 0 or bh <= 0 or x < -1 or y < -1 or x + bw > w + 1 or y + bh > h + 1:
                problems(f"{what} has a box {box} outside the {w}x{h} image")
                continue
            rle = to_rle(a.get("segmentation"), h, w) if a.get("segmentation") else None
            if rle is None:
                if a.get("segmentation") is not None:
                    problems(f"{what} has an empty segmentation")
                    continue
                rle = _box_rle(box, h, w)  # boxes-only data: the box stands for the mask
            boxes.append([max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)])
            labels.append(index[categories[cat]])
            rles.append(rle)
        images.append(image)
        keys.append(name)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "rles": rles,
            }
        )
    problems.close()
    if not images:
        raise LaminaError(f"{path}: no readable images in the {split} split")
    return DetectionSet(images, targets, list(classes), keys, {"annotations": str(path)})


def _decode(path: Path | None, name: str, problems: _Warnings) -> torch.Tensor | None:
    from lamina.data.images import UNREADABLE

    if path is None:
        problems(f"image {name} is not there")
        return None
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).contiguous()
    except UNREADABLE as exc:
        problems(f"image {name} cannot be decoded ({type(exc).__name__})")
        return None


def _box_rle(box: list[float], h: int, w: int) -> dict:
    mask = np.zeros((h, w), bool)
    x, y, bw, bh = (int(round(v)) for v in box)
    mask[max(y, 0) : y + bh, max(x, 0) : x + bw] = True
    return to_rle(encode_mask(mask)["segmentation"], h, w) if mask.any() else to_rle([[0, 0, 1, 0, 1, 1]], h, w)


# ----- batches ----------------------------------------------------------------------------------------
class DetectionBatches:
    """Batches of (images [(3, H, W) uint8], targets [{'boxes', 'labels', 'masks'}]), on the device.

    Training: a shuffled order per epoch, and per image a random flip and scale jitter followed by a
    crop or pad to `size` (torchvision's large-scale-jitter recipe, milder), through transforms.v2 so
    that boxes and masks follow the pixels; boxes are then made again from the masks, so that a box
    is always its mask's visible extent, and objects cut away by the crop are dropped."""

    def __init__(
        self,
        data: DetectionSet,
        batch_size: int,
        device: torch.device,
        train: bool = False,
        seed: int = 0,
        size: int = 0,
        flip: bool = True,
        scale: tuple[float, float] = (1.0, 1.0),
    ):
        self.data, self.batch_size, self.device, self.train, self.seed = data, batch_size, device, train, seed
        self.n_samples = len(data)
        self.size, self.flip, self.scale = size, flip, scale
        self._transform = self._build_transform() if train else None

    def _build_transform(self):
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        steps = [v2.RandomHorizontalFlip()] if self.flip else []
        if self.size and self.scale != (1.0, 1.0):
            steps += [
                v2.ScaleJitter((self.size, self.size), scale_range=self.scale, antialias=True),
                v2.RandomCrop(self.size, pad_if_needed=True, fill={tv_tensors.Image: 114, tv_tensors.Mask: 0}),
            ]
        return v2.Compose(steps) if steps else None

    def __len__(self) -> int:
        if self.train and self.n_samples > self.batch_size:
            return self.n_samples // self.batch_size
        return -(-self.n_samples // self.batch_size)

    def epoch(self, index: int = 0, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[tuple[list, list]]:
        order = list(range(self.n_samples))
        if self.train:
            order = torch.randperm(self.n_samples, generator=torch.Generator().manual_seed(seed_for(self.seed, index)))
            order = order.tolist()
        for b in range(start, len(self)):
            if world > 1 and not self.train and b % world != rank:
                continue
            rows = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.train and world > 1:
                rows = [rows[i] for i in train_rows(len(rows), rank, world)]
            items = [self.item(i, seed_for(self.seed, index, b, i) if self.train else None) for i in rows]
            yield [x for x, _ in items], [t for _, t in items]

    def item(self, i: int, seed: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, t = self.data.images[i], self.data.targets[i]
        target = {"boxes": t["boxes"], "labels": t["labels"], "masks": self.data.masks(i)}
        if seed is not None and self._transform is not None:
            image, target = self.augment(image, target, seed)
        return image.to(self.device), {k: v.to(self.device) for k, v in target.items()}

    def augment(self, image: torch.Tensor, target: dict, seed: int) -> tuple[torch.Tensor, dict]:
        from torchvision import tv_tensors

        h, w = image.shape[-2:]
        sample = (
            tv_tensors.Image(image),
            {
                "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w)),
                "masks": tv_tensors.Mask(target["masks"]),
                "labels": target["labels"],
            },
        )
        with torch.random.fork_rng(devices=[]):  # v2 draws from the global generator: seed it, then put it back
            torch.manual_seed(seed)
            image, out = self._transform(sample)
        masks = out["masks"].as_subclass(torch.Tensor)
        keep = masks.flatten(1).sum(1) >= 4  # objects the crop left at least 4 pixels of
        masks = masks[keep]
        return image.as_subclass(torch.Tensor), {
            "boxes": mask_boxes(masks),
            "labels": out["labels"][keep],
            "masks": masks,
        }


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-empty masks -> (N, 4) xyxy boxes in pixel edges. From the masks' row and column
    projections: the same boxes as torchvision.ops.masks_to_boxes (+1 on the far edges) at a tenth of
    its time on the CPU, where it builds a coordinate grid per mask."""
    if not len(masks):
        return torch.zeros((0, 4))
    rows, cols = masks.any(2), masks.any(1)  # (N, H), (N, W)
    h, w = rows.shape[1], cols.shape[1]
    y1, x1 = rows.float().argmax(1), cols.float().argmax(1)
    y2, x2 = h - rows.flip(1).float().argmax(1), w - cols.flip(1).float().argmax(1)
    return torch.stack([x1, y1, x2, y2], 1).float()
