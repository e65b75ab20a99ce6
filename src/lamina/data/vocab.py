"""Symbols <-> ids, and the special tokens every sequence task shares, defined once.

PAD, UNK, BOS, EOS = 0, 1, 2, 3   padding (also CTC's blank), unknown, start and end of a sequence
CharVocab     characters; with specials (transcripts: ids 0-3 special, characters from 4) or without
              (a character language model, where every id is a character of its text)
Tokenizer     SentencePiece subwords (translation), with the same four special ids
WordVocab     whole words above a frequency threshold, the rest <unk> (captions)
"""

from __future__ import annotations

import io
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from lamina.engine.log import note
from lamina.errors import LaminaError, warn

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
# Typographic characters and their plain equivalents, for text from outside the vocabulary.
PLAIN = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2026": "...",
    "\u00a0": " ",
    "\t": " ",
    "\r": "",
}


class CharVocab:
    """The characters a model knows; id of chars[i] is i (+ 4 with specials)."""

    def __init__(self, chars: str, specials: bool = False):
        self.chars, self.specials = chars, specials
        self.offset = len(SPECIALS) if specials else 0
        self.index = {c: i + self.offset for i, c in enumerate(chars)}
        codes = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)
        self._order = np.argsort(codes, kind="stable")
        self._sorted = codes[self._order]

    @classmethod
    def build(cls, text: str, specials: bool = False) -> CharVocab:
        """Every character of `text`, in sorted order."""
        return cls("".join(sorted(set(text))), specials)

    def __len__(self) -> int:
        return self.offset + len(self.chars)

    def fold(self, text: str, what: str = "the text") -> str:
        """`text` with characters outside the vocabulary replaced by known look-alikes where there are
        some (curly quotes -> straight, accented -> plain letters, tabs -> spaces) and dropped otherwise;
        warns once, naming them."""
        if all(c in self.index for c in text):
            return text
        out, unknown = [], set()
        for c in text:
            if c in self.index:
                out.append(c)
                continue
            unknown.add(c)
            plain = PLAIN.get(
                c, "".join(ch for ch in unicodedata.normalize("NFKD", c) if not unicodedata.combining(ch))
            )
            if plain.isspace() and plain not in self.index and " " in self.index:
                plain = " "
            out.append("".join(ch for ch in plain if ch in self.index))
        shown = "".join(sorted(unknown))[:20]
        warn(
            f"{what} has {len(unknown)} character(s) the model does not know ({shown!r}); "
            "replaced by known look-alikes where possible, otherwise dropped"
        )
        return "".join(out)

    def encode(self, text: str, what: str = "the text") -> torch.Tensor:
        """Ids (N,) int64, vectorised (corpora run to millions of characters). Unknown characters
        are UNK with specials, and folded into known ones (with a warning) without."""
        # surrogatepass: undecodable bytes from the command line arrive as lone surrogates, then fold away
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        if not len(self.chars):
            return torch.full((len(codes),), UNK if self.specials else 0, dtype=torch.long)
        where = np.searchsorted(self._sorted, codes).clip(0, len(self._sorted) - 1)
        found = self._sorted[where] == codes
        ids = self._order[where].astype(np.int64) + self.offset
        if not found.all():
            if not self.specials:
                return self.encode(self.fold(text, what))
            ids[~found] = UNK
        return torch.from_numpy(ids)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The characters of `ids`; special ids are left out."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.chars[i - self.offset] for i in ids if self.offset <= i < len(self))


class Tokenizer:
    """A SentencePiece subword model (Kudo & Richardson 2018) shared by both languages of a pair.
    Text is normalised by lamina before it gets here, so the model keeps it as it is (decode(encode(x))
    == x); characters never seen in training are spelled out as UTF-8 bytes instead of becoming <unk>."""

    FILE = "tokenizer.model"

    def __init__(self, model: bytes):
        import sentencepiece as spm

        self.model_bytes = model
        self.sp = spm.SentencePieceProcessor(model_proto=model)

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> Tokenizer:
        import sentencepiece as spm

        # The vocabulary holds at least the 4 special ids, 256 bytes and every character seen; a size
        # the text cannot fill is a soft limit (hard_vocab_limit=False), so tiny corpora work too.
        alphabet = len({ch for t in texts for ch in t})
        size = max(vocab_size, len(SPECIALS) + 256 + alphabet + 1)
        out = io.BytesIO()
        note(f"training a {size:,}-piece subword model on {len(texts):,} sentences")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=out,
                vocab_size=size,
                model_type="unigram",
                character_coverage=1.0,
                byte_fallback=True,
                normalization_rule_name="identity",
                pad_id=PAD,
                unk_id=UNK,
                bos_id=BOS,
                eos_id=EOS,
                num_threads=1,
                minloglevel=2,
                hard_vocab_limit=False,
                max_sentence_length=16384,
            )
        except RuntimeError as exc:
            raise LaminaError(f"cannot train the subword tokenizer: {str(exc).splitlines()[0]}") from None
        return cls(out.getvalue())

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        if not path.is_file():
            raise LaminaError(f"{path} is missing: the run's tokenizer is needed to read and write text")
        try:
            return cls(path.read_bytes())
        except (RuntimeError, OSError) as exc:
            raise LaminaError(f"{path} is not a SentencePiece model ({exc})") from None

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids if i > EOS])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def unseen(self, text: str) -> list[str]:
        """Characters of `text` the tokenizer has no piece for (spelled out as UTF-8 bytes)."""
        return sorted(
            ch for ch in set(text) if not ch.isspace() and any(self.sp.is_byte(i) for i in self.sp.encode(ch))
        )


class WordVocab:
    """Words seen at least `min_count` times in the training captions, most frequent first, after
    the four special ids; any other word is <unk> (Karpathy & Fei-Fei 2015 keep words seen 5 times)."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 1) -> WordVocab:
        counts = Counter(w for s in sentences for w in s)
        return cls([w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count])

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.words)

    def encode(self, words: Sequence[str]) -> list[int]:
        return [self.index.get(w, UNK) for w in words]

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The words of `ids`, '<unk>' included; padding, BOS and EOS left out."""
        return [SPECIALS[UNK] if i == UNK else self.words[i - len(SPECIALS)] for i in ids if i == UNK or i > EOS]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.tokens(ids))
