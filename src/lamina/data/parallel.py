"""Parallel text for translation: sentence pairs from gettext catalogs or a TSV file, cleaned, split,
tokenized into subwords and batched by length.

    gettext:fr   English -> French messages of every program installed here (/usr/share/locale/fr/...)
    pairs.tsv    source<TAB>target[<TAB>attribution] per line (the Tatoeba / manythings export format)

Software messages are cleaned as a translator would read them: keyboard accelerators (`_File`,
`&File`, `(_F)`) go, multi-line and empty entries are skipped, printf and brace placeholders stay as
they are but must agree between the two sides, plural entries give their singular form, and each
source sentence keeps one translation (the most frequent). A sentence's split (train/val/test =
90/5/5) is decided by a hash of its text, so it can never land in two splits.
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lamina.data.batching import LengthBatches, hash_split, pad
from lamina.data.vocab import BOS, EOS
from lamina.engine.log import working
from lamina.errors import LaminaError, UsageError, warn, warn_skipped_lines

LOCALE_DIR = Path("/usr/share/locale")
SPLITS = {"train": (0, 90), "val": (90, 95), "test": (95, 100)}  # hash buckets out of 100
MAX_CELLS = 64 * 101 * 101  # source x target positions of an evaluation batch: a training batch's worst case

Pair = tuple[str, str]


@dataclass
class ParallelCorpus:
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    source: dict[str, Any] = field(default_factory=dict)  # name, catalogs or file, counts, SHA-256: saved in the run

    def split(self, name: str) -> list[Pair]:
        return getattr(self, name)


# ----- cleaning ----------------------------------------------------------------------------------
# printf conversions (%s, %3$d, %-10.3lf, %'d, %<PRIu64>), Python's %(name)s, and {0} / {name} / {:>8}.
# printf's space flag is left out: in prose '50 % de' is a percentage, not '% d'.
PLACEHOLDER = re.compile(
    r"%(?:\d+\$)?[-+#0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t|I)?[diouxXeEfFgGaAcspn]"
    r"|%<\w+>|%\(\w+\)[-#0 +]*\d*(?:\.\d+)?[sdrifxXeEgGc]|\{\w*(?:![rsa])?(?::[^{}]*)?\}"
)
ACCEL_PAREN = re.compile(r"\s*\((?:_|&)\w\)")  # "ファイル(_F)": CJK catalogs keep the Latin key in brackets
# A marker starts a word (_File, &File) or sits inside one (Op_en, Sa&ve); '&' between two capitals is
# an abbreviation (Q&A, AT&T, R&D), and '&name;' an HTML entity.
ACCEL_MARK = {
    "_": re.compile(r"(?<![_\w])_(?=\w)|(?<=[^\W\d_])_(?=[^\W\d_])"),
    "&": re.compile(r"(?:(?<![A-Z])&(?=\w)|(?<=[A-Z])&(?=[^\W\dA-Z_]))(?!\w+;)"),
}
SPACES = re.compile(r"\s+")
LETTER = re.compile(r"[^\W\d_]{2}")  # a word-like run: two letters in a row


def normalise(text: str) -> str:
    """NFC, one plain space between words (French no-break spaces included), trimmed."""
    return SPACES.sub(" ", unicodedata.normalize("NFC", text).replace("\u00a0", " ").replace("\u202f", " ")).strip()


def placeholders(text: str) -> list[str]:
    """The placeholders in `text`, order-free and with positional indices dropped (%2$s -> %s),
    so a translation that reorders its arguments still agrees with its source."""
    return sorted(re.sub(r"^%\d+\$", "%", p) for p in PLACEHOLDER.findall(text.replace("%%", "")))


def strip_accelerators(source: str, target: str) -> Pair:
    """Remove a keyboard accelerator marked once on each side (or not at all on the target). Strings
    where the marker appears more than once are left alone: there it is more likely part of the text
    (an identifier such as file_name, or 'Q&A')."""
    target = ACCEL_PAREN.sub("", target)
    for mark, pattern in ACCEL_MARK.items():
        ns, nt = len(pattern.findall(source)), len(pattern.findall(target))
        if ns == 1 and source.count(mark) == 1 and nt <= 1 and target.count(mark) == nt:
            identifier = re.search(rf"\w+{re.escape(mark)}\w+", source)
            if identifier and identifier.group(0) in target:  # the same word on both sides: not a marker
                continue
            source, target = pattern.sub("", source), pattern.sub("", target)
    return source, target


def clean_pair(source: str, target: str) -> Pair | str:
    """The cleaned pair, or the reason it is dropped."""
    source, target = source.strip("\n"), target.strip("\n")
    if not source.strip() or not target.strip():
        return "empty"
    if "\n" in source or "\n" in target:
        return "multi-line"
    source, target = strip_accelerators(normalise(source), normalise(target))
    if not LETTER.search(source):
        return "no words"
    if placeholders(source) != placeholders(target):
        return "placeholders differ"
    return source, target


# ----- gettext catalogs ------------------------------------------------------------------------------
def available_languages() -> list[str]:
    from lamina.data.sources import LocaleCatalogs

    return LocaleCatalogs().languages()


def catalog_files(lang: str, catalogs: str = "") -> tuple[Path, list[Path]]:
    """(folder, .mo/.po files) for `lang`: --catalogs DIR if given, else the system locale folder."""
    if catalogs:
        folder = Path(catalogs).expanduser()
        if not folder.is_dir():
            raise LaminaError(f"--catalogs {catalogs}: no such folder")
        files = sorted(p for p in folder.rglob("*") if p.suffix in (".mo", ".po") and p.is_file())
        if not files:
            raise LaminaError(f"--catalogs {catalogs} holds no .mo or .po files")
        return folder, files
    if not lang or not re.fullmatch(r"[A-Za-z]{2,3}(?:_[A-Za-z]{2})?(?:@\w+)?", lang):
        raise UsageError(f"gettext:{lang}: give a language code such as gettext:fr")
    folder = LOCALE_DIR / lang / "LC_MESSAGES"
    files = sorted(folder.glob("*.mo")) if folder.is_dir() else []
    if not files:
        langs = available_languages()
        have = (
            f"languages with catalogs here: {', '.join(langs)}" if langs else f"no catalogs at all under {LOCALE_DIR}"
        )
        raise LaminaError(f"no gettext catalogs for {lang!r} on this machine ({have})")
    return folder, files


def read_catalog(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) of every translated entry of a .mo or .po file: plural entries give their
    singular form, message contexts are dropped (the text is the same), fuzzy and obsolete entries
    (.po) and the header are skipped."""
    import polib

    try:
        catalog = polib.mofile(str(path)) if path.suffix == ".mo" else polib.pofile(str(path))
    except (OSError, ValueError, UnicodeDecodeError, IndexError, LookupError, struct.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warn(f"skipped {path}: not a readable gettext catalog ({reason})")
        return []
    pairs = []
    for entry in catalog:
        if not entry.msgid or entry.obsolete or "fuzzy" in entry.flags:
            continue
        target = entry.msgstr_plural.get(0, "") if entry.msgid_plural else entry.msgstr
        if target:
            pairs.append((entry.msgid, target))
    return pairs


def read_gettext(lang: str, catalogs: str = "") -> tuple[list[Pair], dict[str, Any]]:
    folder, files = catalog_files(lang, catalogs)
    raw: list[Pair] = []
    used: dict[str, int] = {}
    for path in working(files, f"reading {len(files)} gettext catalogs in {folder}"):
        entries = read_catalog(path)
        if entries:
            used[str(path.relative_to(folder))] = len(entries)
            raw += entries
    info = {"source": str(folder), "catalogs": used}
    return raw, info


# ----- TSV pairs -----------------------------------------------------------------------------------
def read_tsv(path: Path) -> list[Pair]:
    """Pairs of a TSV file: `source<TAB>target[<TAB>attribution]`, or Tatoeba's four-column
    `id<TAB>source<TAB>id<TAB>target`. Malformed lines are skipped and reported with their numbers."""
    from lamina.data.text import decode

    if not path.is_file():
        raise LaminaError(f"{path}: no such file")
    text = decode(path.read_bytes(), path)
    pairs, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) == 4 and fields[0].strip().isdigit() and fields[2].strip().isdigit():
            fields = [fields[1], fields[3]]
        if len(fields) not in (2, 3) or not fields[0].strip() or not fields[1].strip():
            bad.append(number)
            continue
        pairs.append((fields[0], fields[1]))
    warn_skipped_lines(bad, path, "source<TAB>target[<TAB>attribution]")
    if not pairs:
        raise LaminaError(f"{path} holds no source<TAB>target pairs")
    return pairs


# ----- the corpus --------------------------------------------------------------------------------
def split_of(source: str) -> str:
    return hash_split(source, SPLITS)


def build_corpus(raw: Sequence[Pair], reverse: bool = False) -> tuple[dict[str, list[Pair]], dict[str, Any]]:
    """Clean, de-duplicate by source (keeping the most frequent translation, the first on a tie) and
    split by hash. Returns the splits and the counts of what was kept and dropped."""
    dropped: Counter[str] = Counter()
    targets: dict[str, Counter[str]] = {}
    for source, target in raw:
        cleaned = clean_pair(source, target)
        if isinstance(cleaned, str):
            dropped[cleaned] += 1
            continue
        if reverse:
            cleaned = cleaned[::-1]
        targets.setdefault(cleaned[0], Counter())[cleaned[1]] += 1  # Counter keeps first-seen order on ties
    duplicates = sum(sum(c.values()) for c in targets.values()) - len(targets)
    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for source in sorted(targets):
        splits[split_of(source)].append((source, targets[source].most_common(1)[0][0]))
    counts = {
        "entries": len(raw),
        "pairs": len(targets),
        "duplicates": duplicates,
        "dropped": dict(sorted(dropped.items())),
    }
    return splits, counts


def corpus_sha256(splits: dict[str, list[Pair]]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        for source, target in splits[name]:
            digest.update(f"{source}\t{target}\n".encode())
    return digest.hexdigest()


def load_parallel(name: str, catalogs: str = "", reverse: bool = False) -> ParallelCorpus:
    """A named corpus (gettext:LANG) or a TSV file, cleaned and split."""
    if name.startswith("gettext:") or (catalogs and name in ("", "gettext")):
        lang = name.partition(":")[2]
        raw, info = read_gettext(lang, catalogs)
        info["language"] = lang
    else:
        path = Path(name).expanduser()
        if not path.exists() and "/" not in name and not name.endswith(".tsv"):
            raise UsageError(f"unknown dataset {name!r}; give gettext:LANG (e.g. gettext:fr) or a .tsv file of pairs")
        raw, info = read_tsv(path), {"source": str(path)}
    splits, counts = build_corpus(raw, reverse)
    source = {
        "name": name,
        **info,
        "reverse": reverse,
        **counts,
        "sha256": corpus_sha256(splits),
        **{split: len(pairs) for split, pairs in splits.items()},
    }
    return ParallelCorpus(splits["train"], splits["val"], splits["test"], source)


def read_pairs(path: Path, reverse: bool = False) -> list[Pair]:
    """Every pair of a TSV file for evaluation: normalised like training data, nothing split off."""
    pairs = []
    for source, target in read_tsv(path):
        source, target = normalise(source), normalise(target)
        pairs.append((target, source) if reverse else (source, target))
    return pairs


# ----- batches ----------------------------------------------------------------------------------
class PairBatches(LengthBatches):
    """Batches of (source, target input, target output), each (B, T) and padded with PAD: sentences
    of similar length in training (length buckets, reproducible on resume), sorted by length for
    evaluation, at most MAX_CELLS source x target positions a batch (attention builds a (batch,
    target, source, hidden) tensor, and a file may hold sentences far longer than any training pair)."""

    def __init__(
        self,
        sources: list[list[int]],
        targets: list[list[int]],
        batch_size: int,
        *,
        train: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        pairs: list[Pair] | None = None,
    ):
        def cells(rows: list[int]) -> int:
            return len(rows) * (len(sources[rows[-1]]) + 1) * (max(len(targets[i]) for i in rows) + 1)

        keys = [(len(s), len(t)) for s, t in zip(sources, targets)]
        super().__init__(keys, batch_size, train=train, seed=seed, cost=cells, budget=MAX_CELLS)
        self.sources, self.targets, self.device = sources, targets, device
        self.pairs = pairs  # the text of each pair, for scores on detokenized output (evaluation)

    def collate(self, rows: list[int], generator=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = pad([[*self.sources[i], EOS] for i in rows], self.device)  # EOS ends every source sentence
        tgt_in = pad([[BOS, *self.targets[i]] for i in rows], self.device)
        tgt_out = pad([[*self.targets[i], EOS] for i in rows], self.device)
        return src, tgt_in, tgt_out
