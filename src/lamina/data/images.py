"""Image classification data: Fashion-MNIST and folders of class sub-folders, held in memory as tensors.

Small datasets fit in memory (Fashion-MNIST is 47 MB as uint8), so images are decoded once, kept as
one (N, C, H, W) uint8 tensor on the training device, and augmented a whole batch at a time with
tensor operations: no per-sample Python or PIL work in the training loop.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from lamina.data.batching import hash_order, seed_for
from lamina.data.sources import FASHION_MNIST
from lamina.engine.distributed import train_rows
from lamina.engine.log import working
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


# ----- one image, from wherever it comes ---------------------------------------------------------
def load_image(source, channels: int, size: int, name: str | None = None) -> torch.Tensor:
    """One image as the model takes it, (C, S, S) uint8: converted to its channels, the shorter side
    resized to S and centre-cropped (size 0: kept at its own size, (C, H, W)). `source` is a file
    path, a PIL image, an (H, W[, C]) uint8 array or a (C, H, W) tensor (uint8, or float in [0, 1]);
    every source goes through the same PIL steps, so an image in memory gives exactly what the same
    image read from a file gives."""
    name = name or str(source)
    try:
        if isinstance(source, (str, Path)):
            with Image.open(source) as img:
                img = ImageOps.exif_transpose(img)
                return _fit(img, channels, size)
        return _fit(to_pil(source), channels, size)
    except FileNotFoundError:
        raise LaminaError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise LaminaError(f"{name}: is a folder, not an image") from None
    except UNREADABLE as exc:
        raise LaminaError(f"{name}: not a readable image ({str(exc).splitlines()[0][:120]})") from None


def to_pil(source) -> Image.Image:
    """A PIL image of an in-memory image: PIL itself, an (H, W[, C]) array, or a (C, H, W) tensor."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.ndim == 3:
            t = t.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        source = (t.float().clamp(0, 1) * 255).round().byte().numpy() if t.is_floating_point() else t.numpy()
    if isinstance(source, np.ndarray):
        array = source[..., 0] if source.ndim == 3 and source.shape[-1] == 1 else source
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise LaminaError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), not {tuple(source.shape)}")
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array))
    raise LaminaError(
        f"cannot read an image from a {type(source).__name__} (give a path, a PIL image, an array or a tensor)"
    )


def _fit(img: Image.Image, channels: int, size: int) -> torch.Tensor:
    img = img.convert("L" if channels == 1 else "RGB")
    if size:
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


# ----- folders of images -----------------------------------------------------------------------
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
    for path, label in working(items, f"decoding {len(items):,} images in {root}"):
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
    return [members[i] for i in hash_order([data.keys[m] for m in members])]


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


class ImageBatches:
    """Batches of (uint8 images, labels) from an in-memory ImageSet, on the training device; the model
    converts and normalises them itself (ImageClassifier), so every caller feeds it the same thing.

    Training streams shuffle per epoch and augment with random flips, padded random crops and random
    erasing (filled with the data's mean colour), drawn from a generator seeded by (seed, epoch,
    batch): the same batches after a resume. Under torchrun each process takes its rows of every
    training batch, and every world-th evaluation batch.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        device: torch.device,
        train: bool = False,
        seed: int = 0,
        flip: bool = False,
        crop_padding: int = 0,
        erase: float = 0.0,
        fill: list[float] | None = None,
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
        fill = fill if fill is not None else [0.5] * c
        self.fill = torch.tensor([round(255 * m) for m in fill], dtype=torch.uint8, device=device).view(1, c, 1, 1)

    def __len__(self) -> int:
        if self.train and self.n_samples > self.batch_size:
            return self.n_samples // self.batch_size  # drop the ragged last batch: equal steps, stable batch norm
        return -(-self.n_samples // self.batch_size)

    def epoch(
        self, index: int = 0, start: int = 0, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.train:
            order = torch.randperm(self.n_samples, generator=torch.Generator().manual_seed(seed_for(self.seed, index)))
            order = order.to(self.device)
        for b in range(start, len(self)):
            if world > 1 and not self.train and b % world != rank:
                continue
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[rows] if self.train else rows
            x, y = self.images[idx], self.labels[idx]
            if self.train:
                x = self.augment(x, torch.Generator().manual_seed(seed_for(self.seed, index, b)))
                if world > 1:
                    mine = torch.tensor(train_rows(len(y), rank, world), device=y.device)
                    x, y = x[mine], y[mine]
            yield x.contiguous(memory_format=self.memory_format), y

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random flips, padded random crops and random erasing for a whole uint8 batch (B, C, H, W).

        lamina's own rather than torchvision.transforms.v2 because v2 draws one set of random
        parameters per call from the global RNG: a batch would be flipped or cropped all alike, or
        need a Python loop per image, and its draws could not be replayed from (seed, epoch, batch)
        for an exact resume. Here every image gets its own draw from `gen`, on the batch's device."""
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
