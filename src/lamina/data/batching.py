"""How samples become batches, for every task: one place for what the data families share.

    seed_for          a seed per (seed, epoch, batch, ...): any batch can be made again exactly (resume)
    hash_bucket       a stable bucket of 100 from an item's text: deterministic splits, whatever the order
    hash_order        items in the order of a hash of their keys: deterministic hold-outs and subsets
    pad               rows of ids -> one right-padded (B, T) tensor
    pack_by_length    sorted items -> consecutive batches within a cost budget (long inputs, fewer a batch)
    length_buckets    training order: shuffled pools sorted by length, cut into batches, shuffled again
    LengthBatches     a BatchStream of variable-length items (sentences, utterances) built on the above

lamina keeps these rather than torch.utils.data's samplers because a batch here is a function of
(seed, epoch, index) alone, which is what exact resume mid-epoch and sharding between processes
need; a DataLoader's sampler state and worker RNG give neither without extra machinery.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from lamina.data.vocab import PAD
from lamina.engine.distributed import train_rows

POOL = 50  # batches per pool of length bucketing: similar lengths in a batch, yet a shuffled order


def seed_for(*parts: int) -> int:
    """A 63-bit seed from any integers, e.g. (seed, epoch, batch)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def hash_bucket(text: str, buckets: int = 100) -> int:
    """A bucket in [0, buckets) from the SHA-256 of `text`: the same item always lands in the same split."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:8], "big") % buckets


def hash_split(text: str, splits: dict[str, tuple[int, int]]) -> str:
    """The split whose [lo, hi) range of buckets (out of 100) holds `text`'s bucket."""
    bucket = hash_bucket(text)
    return next(name for name, (lo, hi) in splits.items() if lo <= bucket < hi)


def hash_order(keys: Sequence[str]) -> list[int]:
    """Indices of `keys` sorted by a hash of each: a fixed order that depends neither on the seed nor
    on the order items were listed, for stratified hold-outs and subsets that are the same every time."""
    return sorted(range(len(keys)), key=lambda i: hashlib.sha1(keys[i].encode("utf-8", "surrogateescape")).hexdigest())


def pad(rows: Sequence[Sequence[int]], device: torch.device | str = "cpu", value: int = PAD) -> torch.Tensor:
    """(B, T) long tensor of the rows, right-padded with `value`."""
    width = max(1, max((len(r) for r in rows), default=1))
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out.to(device)


def pack_by_length(ids: list[int], batch_size: int, cost: Callable[[list[int]], int], budget: float) -> list[list[int]]:
    """Cut `ids` (sorted by length, shortest first) into consecutive batches of at most batch_size whose
    cost(batch) stays within budget; a single item over the budget gets a batch of its own."""
    batches: list[list[int]] = []
    for i in ids:
        if batches and len(batches[-1]) < batch_size and cost([*batches[-1], i]) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def length_buckets(keys: Sequence[Any], batch_size: int, rng: random.Random, pool: int = POOL) -> list[list[int]]:
    """Training batches of items of similar length (fewer pad positions to compute): the shuffled
    items are cut into pools of `pool` batches, each pool sorted by its items' length keys and cut
    into batches, and the batches shuffled again."""
    ids = list(range(len(keys)))
    rng.shuffle(ids)
    batches = []
    for p in range(0, len(ids), pool * batch_size):
        chunk = sorted(ids[p : p + pool * batch_size], key=lambda i: keys[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class LengthBatches:
    """A BatchStream of variable-length items: `keys[i]` orders item i by length, `collate(rows,
    generator)` makes a batch of the rows (generator: seeded per batch in training, for augmentation).

    Training batches come from length_buckets, in an order fixed by (seed, epoch); evaluation batches
    are sorted by length, at most batch_size items and `cost` within `budget` each. Under torchrun a
    training batch is cut into one part per process (engine.distributed.train_rows); evaluation
    batches are dealt round-robin.
    """

    def __init__(
        self,
        keys: Sequence[Any],
        batch_size: int,
        *,
        train: bool = False,
        seed: int = 0,
        cost: Callable[[list[int]], int] = len,
        budget: float = float("inf"),
    ):
        self.keys, self.batch_size, self.train, self.seed = keys, batch_size, train, seed
        self.cost, self.budget = cost, budget
        self.n_samples = len(keys)
        self._eval_order: list[list[int]] | None = None  # an evaluation stream's batches, made once

    def order(self, index: int) -> list[list[int]]:
        if self.train:
            return length_buckets(self.keys, self.batch_size, random.Random(seed_for(self.seed, index)))
        if self._eval_order is None:
            ids = sorted(range(self.n_samples), key=lambda i: self.keys[i])
            self._eval_order = pack_by_length(ids, self.batch_size, self.cost, self.budget)
        return self._eval_order

    def __len__(self) -> int:
        return -(-self.n_samples // self.batch_size) if self.train else len(self.order(0))

    def epoch(self, index: int = 0, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Any]:
        for b, rows in enumerate(self.order(index)[start:], start):
            if world > 1 and not self.train and b % world != rank:
                continue
            generator = None
            if self.train:  # augmentation drawn per (epoch, batch), and per process: its rows are its own
                generator = torch.Generator().manual_seed(seed_for(self.seed, index, b, *([rank] if world > 1 else [])))
                rows = [rows[i] for i in train_rows(len(rows), rank, world)] if world > 1 else rows
            yield self.collate(rows, generator)

    def collate(self, rows: list[int], generator: torch.Generator | None) -> Any:
        raise NotImplementedError
