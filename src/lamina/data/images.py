"""Image classification data: Fashion-MNIST and folders of class sub-folders, held in memory as tensors.

Small datasets fit in memory (Fashion-MNIST is 47 MB as uint8), so images are decoded once, kept as
one (N, C, H, W) uint8 tensor on the training device, and augmented a whole batch at a time with
tensor operations: no per-sample Python or PIL work in the training loop.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from lamina.data.sources import FASHION_MNIST
from lamina.errors import LaminaError, warn

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# What PIL raises for files that are not (complete, sane) images; DecompressionBombError is not an OSError.
UNREADABLE = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
    struct.error,
    IndexError,
)  # the last two from malformed headers some decoders do not catch
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
MAX_AUTO_SIZE = 64


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    keys: list[str]  # a stable identity per image (file path, or index), for splitting and reports

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: torch.Tensor | list[int]) -> ImageSet:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.classes, [self.keys[i] for i in index.tolist()])


# ----- Fashion-MNIST ---------------------------------------------------------------------------
def read_idx(data: bytes) -> torch.Tensor:
    """Parse an IDX file (the MNIST format): magic, dimension sizes (big-endian int32), then uint8 data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise LaminaError("not an unsigned-byte IDX file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4).tolist()
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise LaminaError("IDX file is truncated")
    return torch.from_numpy(array.reshape(dims).copy())


@functools.lru_cache(maxsize=2)
def fashion_mnist(split: str) -> ImageSet:
    """The 'train' (60,000) or 'test' (10,000) split; cached per process (callers never modify an ImageSet)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(FASHION_MNIST.read(f"{prefix}-images-idx3-ubyte.gz")).unsqueeze(1)  # (N, 1, 28, 28)
    labels = read_idx(FASHION_MNIST.read(f"{prefix}-labels-idx1-ubyte.gz")).long()
    return ImageSet(images, labels, list(FASHION_MNIST_CLASSES), [f"{split}/{i}" for i in range(len(labels))])


# ----- folders of images -----------------------------------------------------------------------
def load_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """Decode one image, convert to the model's channels, resize the shorter side and centre-crop: (C, S, S)."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert("L" if channels == 1 else "RGB")
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise LaminaError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LaminaError(f"{path}: is a folder, not an image") from None
    except UNREADABLE as exc:
        raise LaminaError(f"{path}: not a readable image ({str(exc).splitlines()[0][:120]})") from None
    array = np.asarray(img, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def folder_layout(root: Path) -> dict[str, Path]:
    """The split sub-folders (train/, val/, test/) that exist; a folder with none of them is all 'train'."""
    if not root.exists():
        raise LaminaError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise LaminaError(f"{root} is not a folder of class sub-folders")
    splits = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    return splits or {"train": root}


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folder names) and (file, label) pairs; raises if there is nothing to learn from."""
    classes = [p.name for p in class_folders(root)]
    items = [(f, i) for i, name in enumerate(classes) for f in _files(root / name)]
    if not items:
        raise LaminaError(
            f"data folder {root} has no class sub-folders with files in them "
            "(expected ROOT/<class>/<image> or ROOT/train/<class>/<image>)"
        )
    return classes, items


def probe_images(items: list[tuple[Path, int]]) -> tuple[int, int]:
    """Read headers only: channels (1 if every image is grey, else 3) and a square side (the median
    shorter side, at most 64). Unreadable files are left to image_folder, which skips and reports them."""
    sizes, colour = [], False
    for path, _ in items:
        try:
            with Image.open(path) as img:
                mode, size = img.mode, img.size
        except UNREADABLE:
            continue
        sizes.append(min(size))
        colour |= mode not in GREY_MODES
    if not sizes:
        raise LaminaError(f"no readable images in {items[0][0].parent.parent}")
    return 3 if colour else 1, min(MAX_AUTO_SIZE, int(np.median(sizes)))


def image_folder(root: Path, classes: list[str], channels: int, size: int, split_name: str) -> ImageSet:
    """Decode every image of one split folder (class names fixed by the training split)."""
    found, items = scan_folder(root)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise LaminaError(f"{root} has classes that the training data lacks: {', '.join(unknown)}")
    remap = {found.index(c): classes.index(c) for c in found}
    images, labels, keys, bad = [], [], [], []
    for path, label in items:
        try:
            images.append(load_image(path, channels, size))
        except LaminaError as exc:
            bad.append(str(exc))
            continue
        labels.append(remap[label])
        keys.append(str(path.relative_to(root)))
    if bad:
        warn(f"skipped {len(bad)} unreadable file(s) in {root}, e.g. {bad[0]}")
    if not images:
        raise LaminaError(f"no readable images in {root} ({split_name} split)")
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), classes, keys)


# ----- splits and subsets ----------------------------------------------------------------------
def _members_in_hash_order(data: ImageSet, c: int) -> list[int]:
    """Indices of class c, ordered by a hash of each image's key: a fixed order that does not depend on
    the run's seed or on the order files were listed, so splits and subsets are the same every time."""
    members = torch.nonzero(data.labels == c).flatten().tolist()
    return sorted(members, key=lambda i: hashlib.sha1(data.keys[i].encode("utf-8", "surrogateescape")).hexdigest())


def stratified_split(data: ImageSet, fraction: float) -> tuple[ImageSet, ImageSet | None]:
    """Hold out `fraction` of every class (at least one image, never the last one) for validation."""
    if fraction <= 0:
        return data, None
    train_idx, val_idx = [], []
    for c in range(len(data.classes)):
        members = _members_in_hash_order(data, c)
        n_val = min(max(1, round(fraction * len(members))), len(members) - 1) if len(members) > 1 else 0
        val_idx += members[:n_val]
        train_idx += members[n_val:]
    if not val_idx:
        return data, None
    return data.select(sorted(train_idx)), data.select(sorted(val_idx))


def keep_classes(data: ImageSet, classes: list[int] | None) -> ImageSet:
    """Keep only the given class indices, relabelled 0..k-1 in the order given."""
    if not classes:
        return data
    bad = [c for c in classes if not 0 <= c < len(data.classes)]
    if bad:
        raise LaminaError(f"data.classes: {bad} out of range; the dataset has classes 0..{len(data.classes) - 1}")
    mapping = torch.full((len(data.classes),), -1, dtype=torch.long)
    mapping[torch.tensor(classes)] = torch.arange(len(classes))
    kept = data.select(torch.nonzero(mapping[data.labels] >= 0).flatten())
    return ImageSet(kept.images, mapping[kept.labels], [data.classes[c] for c in classes], kept.keys)


def limit_per_class(data: ImageSet, per_class: int) -> ImageSet:
    """At most `per_class` images of each class (the same ones every time)."""
    if per_class <= 0:
        return data
    chosen = [i for c in range(len(data.classes)) for i in _members_in_hash_order(data, c)[:per_class]]
    return data.select(sorted(chosen))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if size <= 0 or images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


# ----- batches ---------------------------------------------------------------------------------
def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)  # (C, N*H*W)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


def _seed(*parts: int) -> int:
    # A per-(seed, epoch, batch) seed: any batch can be regenerated exactly, e.g. after a resume.
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") & (2**63 - 1)


class ImageBatches:
    """Batches of (normalised float images, labels) from an in-memory ImageSet, on the training device.

    Training streams shuffle per epoch and augment with random flips and padded random crops, drawn
    from a generator seeded by (seed, epoch, batch): the same batches after a resume.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        mean: list[float],
        std: list[float],
        device: torch.device,
        train: bool = False,
        seed: int = 0,
        flip: bool = False,
        crop_padding: int = 0,
        erase: float = 0.0,
        channels_last: bool = False,
    ):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.n_samples = len(data)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.flip, self.pad, self.erase = flip, crop_padding, erase
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        c = self.images.shape[1]
        self.mean = torch.tensor(mean, device=device).view(1, c, 1, 1)
        self.inv_std = 1 / torch.tensor(std, device=device).view(1, c, 1, 1)
        self.fill = torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8, device=device).view(1, c, 1, 1)

    def __len__(self) -> int:
        if self.train and self.n_samples > self.batch_size:
            return self.n_samples // self.batch_size  # drop the ragged last batch: equal steps, stable batch norm
        return -(-self.n_samples // self.batch_size)

    def epoch(self, index: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.train:
            order = torch.randperm(self.n_samples, generator=torch.Generator().manual_seed(_seed(self.seed, index)))
            order = order.to(self.device)
        for b in range(start, len(self)):
            idx = (
                order[b * self.batch_size : (b + 1) * self.batch_size]
                if self.train
                else slice(b * self.batch_size, (b + 1) * self.batch_size)
            )
            x = self.images[idx]
            if self.train:
                x = self.augment(x, torch.Generator().manual_seed(_seed(self.seed, index, b)))
            yield self.normalise(x), self.labels[idx]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() * (1 / 255) - self.mean) * self.inv_std  # (B, C, H, W) float32
        return x.contiguous(memory_format=self.memory_format)

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random flips, padded random crops and random erasing for a whole uint8 batch (B, C, H, W)."""
        B, C, H, W = x.shape
        if self.flip:
            mirror = (torch.rand(B, generator=gen) < 0.5).to(x.device)
            x = torch.where(mirror.view(B, 1, 1, 1), x.flip(-1), x)
        if self.pad:
            p = self.pad
            padded = F.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p)
            dy = torch.randint(0, 2 * p + 1, (B, 1, 1, 1), generator=gen).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (B, 1, 1, 1), generator=gen).to(x.device)
            rows = dy + torch.arange(H, device=x.device).view(1, 1, H, 1)  # (B, 1, H, 1)
            cols = dx + torch.arange(W, device=x.device).view(1, 1, 1, W)  # (B, 1, 1, W)
            batch = torch.arange(B, device=x.device).view(B, 1, 1, 1)
            chans = torch.arange(C, device=x.device).view(1, C, 1, 1)
            x = padded[batch, chans, rows, cols]  # (B, C, H, W): each image shifted by its own (dy, dx)
        if self.erase > 0:
            x = self._random_erase(x, gen)
        return x

    def _random_erase(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random erasing (Zhong et al. 2017): in a fraction of the images, fill a random rectangle
        (2-25% of the area, aspect 0.3-3.3) with the mean colour, so no single region is relied on."""
        B, C, H, W = x.shape
        area = H * W * (0.02 + 0.23 * torch.rand(B, generator=gen))
        aspect = torch.exp(torch.empty(B).uniform_(-1.2, 1.2, generator=gen))
        h = (area * aspect).sqrt().round().clamp(1, H)
        w = (area / aspect).sqrt().round().clamp(1, W)
        y0 = (torch.rand(B, generator=gen) * (H - h + 1)).floor()
        x0 = (torch.rand(B, generator=gen) * (W - w + 1)).floor()
        chosen = torch.rand(B, generator=gen) < self.erase
        box = torch.stack([y0, y0 + h, x0, x0 + w], 1).to(x.device).view(B, 4, 1, 1)
        rows = torch.arange(H, device=x.device).view(1, H, 1)
        cols = torch.arange(W, device=x.device).view(1, 1, W)
        inside = (rows >= box[:, 0]) & (rows < box[:, 1]) & (cols >= box[:, 2]) & (cols < box[:, 3])  # (B, H, W)
        inside &= chosen.to(x.device).view(B, 1, 1)
        return torch.where(inside[:, None], self.fill, x)
