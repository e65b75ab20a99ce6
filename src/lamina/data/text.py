"""Text for character-level language models: corpora and stateful batches (the character
vocabulary is lamina.data.vocab.CharVocab).

A corpus is held in memory as one tensor of character ids (Shakespeare: 5 M characters, 40 MB).
Training batches follow char-rnn: the text is cut into B contiguous streams, one per batch row, and
consecutive batches continue each stream, so a recurrent state carried from one batch to the next
has really seen the text before it (truncated back-propagation through time).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lamina.data.batching import seed_for
from lamina.data.sources import SHAKESPEARE
from lamina.engine.distributed import shard_rows, train_rows
from lamina.errors import LaminaError, UsageError, warn

MAX_FILE_BYTES = 1 << 30


@dataclass
class Corpus:
    train: str
    val: str
    test: str = ""  # empty when data.test_fraction is 0
    source: dict[str, Any] = field(default_factory=dict)  # name, files, sizes, SHA-256: saved in the run


# ----- reading text ----------------------------------------------------------------------------
def decode(data: bytes, where: str | Path) -> str:
    """UTF-8 text, or a one-line error for binary or undecodable files."""
    if b"\x00" in data[:65536]:
        raise LaminaError(f"{where} is a binary file, not UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LaminaError(f"{where} is not UTF-8 text (invalid byte at offset {exc.start})") from None


def read_text(path: Path) -> tuple[str, list[str]]:
    """(text, files used) of a text file, or of every file in a folder, sorted by relative path and
    concatenated. In a folder, binary and non-UTF-8 files are skipped with a warning."""
    parts = read_parts(path)
    return "".join(t for _, t in parts), [name for name, _ in parts]


def read_parts(path: Path) -> list[tuple[str, str]]:
    """(file name, text) of a text file, or of every readable text file in a folder, in order."""
    if path.is_file():
        if path.stat().st_size > MAX_FILE_BYTES:
            raise LaminaError(f"{path} is larger than 1 GiB; split it into a folder of files")
        text = decode(path.read_bytes(), path)
        if not text.strip():
            raise LaminaError(f"{path} holds no text")
        return [(path.name, text)]
    if not path.is_dir():
        raise LaminaError(f"{path}: no such file or folder")
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
    )
    parts = []
    for p in files:
        try:
            parts.append((str(p.relative_to(path)), decode(p.read_bytes(), p)))
        except LaminaError as exc:
            warn(f"skipped {exc}")
        except OSError as exc:  # unreadable (permissions, a vanished file): skipped like a binary one
            warn(f"skipped {p}: {exc.strerror or exc}")
    if not "".join(t for _, t in parts).strip():
        raise LaminaError(f"{path} holds no text files" if not files else f"{path} holds no readable text")
    return parts


def load_corpus(name: str, val_path: str = "", val_fraction: float = 0.05, test_fraction: float = 0.05) -> Corpus:
    """A named corpus or a path, in three parts: training text, then validation text (which picks
    checkpoints and recipes), then test text (measured once, for the figures a run reports).
    Validation is `val_path` if given, else the `val_fraction` of the characters before the final
    `test_fraction`. The cuts fall between whole works where the text has several (the files of a
    folder; Shakespeare's plays and poems, in file-name order: validation Troilus and Cressida and
    Twelfth Night, test The Two Gentlemen of Verona and The Winter's Tale), else at a line start."""
    if name == SHAKESPEARE.name:
        whole, names = SHAKESPEARE.corpus()
        lengths = [len(data.decode("utf-8")) for _, data in SHAKESPEARE.files()]
        origin = str(SHAKESPEARE.locate())
    else:
        path = Path(name).expanduser()
        if not path.exists() and "/" not in name and not name.startswith(("~", ".")):
            raise UsageError(
                f"unknown dataset {name!r}; choose from: {SHAKESPEARE.name}, or give a text file or folder"
            )
        parts = read_parts(path)
        whole, names, lengths = "".join(t for _, t in parts), [n for n, _ in parts], [len(t) for _, t in parts]
        origin = str(path)
    digest = hashlib.sha256(whole.encode("utf-8")).hexdigest()
    starts = [sum(lengths[:i]) for i in range(1, len(lengths))]  # where each work after the first begins
    n = len(whole)
    test_cut = cut_point(whole, starts, n - n * test_fraction, n * test_fraction) if test_fraction else n
    if val_path:
        train, val = whole[:test_cut], read_text(Path(val_path).expanduser())[0]
    else:
        val_cut = cut_point(whole, [b for b in starts if b < test_cut], test_cut - n * val_fraction, n * val_fraction)
        train, val = whole[: min(val_cut, test_cut)], whole[min(val_cut, test_cut) : test_cut]
    test = whole[test_cut:]
    if len(val) < 2:
        raise LaminaError(
            f"the validation text of {name} is empty (or one character); give data.val_fraction > 0 "
            "or a validation text with --val PATH"
        )
    if len(train) < 2:
        raise LaminaError(
            f"{name} is too short to split into training, validation and test text ({len(whole)} characters)"
        )
    source = {
        "name": name,
        "source": origin,
        "files": len(names),
        "characters": len(whole),
        "sha256": digest,
        "train": len(train),
        "val": len(val),
        "test": len(test),
    }
    return Corpus(train, val, test, source)


def cut_point(text: str, starts: list[int], ideal: float, piece: float) -> int:
    """Where to cut `text` near character `ideal`, for a piece of about `piece` characters: at the
    nearest start of a work (a file) when one leaves the piece between half and one and a half times
    as long as asked, else at the line start before `ideal` (at `ideal` itself in a text without lines)."""
    ideal = max(1, min(len(text) - 1, round(ideal)))
    near = [b for b in starts if abs(b - ideal) <= piece / 2]
    if near:
        return min(near, key=lambda b: abs(b - ideal))
    line = text.rfind("\n", 0, ideal) + 1
    return line if line > 0 else ideal


# ----- batches ---------------------------------------------------------------------------------
class TextStreams:
    """Batches (x, y, fresh) of `rows` parallel streams of text, `seq_len` characters at a time; y is x
    shifted by one character and fresh (rows,) a CPU bool mask of the rows whose recurrent state must
    start afresh (all of them in an epoch's first batch).

    Contiguous (default): the text is cut into `rows` equal streams. In training each epoch starts at
    a different offset (seeded), so window boundaries move, and each row also starts afresh with
    probability `reset` per batch (seeded): a network that only ever continues a warm state can be
    lost when it starts cold, as generation and evaluation do. With `window`, the streams are instead
    `rows` windows of that many characters spread evenly over the text: a fixed sample, used to
    estimate the validation loss quickly during training.

    Under torchrun each process reads its rows of every batch, in training and in evaluation alike:
    consecutive batches continue each row's stream, so rows, not batches, are what can be shared.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        rows: int,
        seq_len: int,
        *,
        train: bool = False,
        seed: int = 0,
        window: int = 0,
        reset: float = 0.0,
        device: torch.device | str = "cpu",
    ):
        n = len(tokens)
        self.tokens = tokens.to(device)
        self.train, self.seed, self.seq_len, self.reset = train, seed, seq_len, reset
        self.rows = max(1, min(rows, (n - 1) // 2))
        if window:
            self.length = min(window, n - 1)  # self.length: characters per row, in either mode
        else:  # room for the largest epoch offset
            self.length = (n - 1 - (seq_len - 1 if train else 0)) // self.rows
        self.spread = bool(window)
        if self.length < 1:
            raise LaminaError(f"the text ({n} characters) is too short for {rows} streams")
        self.batches = -(-self.length // seq_len) if not train else max(1, self.length // seq_len)
        self.n_samples = self.rows * min(self.length, self.batches * seq_len)

    def __len__(self) -> int:
        return self.batches

    def starts(self, index: int) -> torch.Tensor:
        n = len(self.tokens)
        if self.spread:
            step = (n - 1 - self.length) / max(self.rows - 1, 1)
            return torch.tensor([round(r * step) for r in range(self.rows)], dtype=torch.long)
        offset = 0
        if self.train:
            g = torch.Generator().manual_seed(seed_for(self.seed, index, 0))
            offset = int(torch.randint(self.seq_len, (1,), generator=g))
        return offset + torch.arange(self.rows) * self.length

    def epoch(
        self, index: int = 0, start: int = 0, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        span = min(self.length, self.batches * self.seq_len)
        mine = (
            train_rows(self.rows, rank, world)
            if self.train
            else list(range(self.rows))[shard_rows(self.rows, rank, world)]
        )
        if not mine:  # fewer evaluation streams than processes: this one has none to read
            return
        starts = self.starts(index)[mine].to(self.tokens.device)
        streams = self.tokens[starts[:, None] + torch.arange(span + 1, device=self.tokens.device)]  # (rows, span + 1)
        g = torch.Generator().manual_seed(seed_for(self.seed, index, 1))  # not the offsets' stream
        fresh = (
            torch.rand(self.batches, self.rows, generator=g) < self.reset
            if self.train
            else torch.zeros(self.batches, self.rows, dtype=torch.bool)
        )
        fresh[0] = True
        fresh = fresh[:, mine]
        for i in range(start, self.batches):
            a, b = i * self.seq_len, min((i + 1) * self.seq_len, span)
            yield streams[:, a:b], streams[:, a + 1 : b + 1], fresh[i]
