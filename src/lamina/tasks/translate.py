"""Neural machine translation: encoder-decoder networks, with and without attention, on real human
translations (the gettext catalogs of the programs installed here, or a TSV file of pairs).

The error signal is the cross-entropy of each next target subword given the source and the correct
target prefix (teacher forcing), with label smoothing. Quality is measured the way the field does:
corpus BLEU and chrF (sacrebleu) of detokenized output against the reference translations, with
greedy search during training and beam search (`lamina evaluate --beam`, `lamina translate --beam`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from lamina import metrics
from lamina.commands import SEARCH_ARGS, Verb, arg
from lamina.config import DataConfig, setting
from lamina.data import parallel
from lamina.data.batching import pack_by_length, pad
from lamina.data.vocab import EOS, PAD, Tokenizer
from lamina.engine.checkpoint import atomic_write
from lamina.engine.loop import StepOutput
from lamina.errors import LaminaError, warn
from lamina.insight import views
from lamina.models import decoding
from lamina.tasks import register_task
from lamina.tasks.base import ENCODER_DECODER, Prepared, Task

EVAL_BATCH = 64  # sentences per decoding batch (times the beam width in hypotheses)
DECODE_CELLS = EVAL_BATCH * 5 * 101 * 212  # 64 sentences of 100 subwords, beam 5, up to 212 output steps
DECODE_COST = 4  # a greedy translation costs about this many loss passes of the same sentence (for time budgets)
AT_LEAST_ONE = (lambda v: v >= 1, "must be at least 1")


def max_output_tokens(source_tokens: int) -> int:
    """The longest output searched for: twice the source and some, as translations rarely exceed it."""
    return 2 * source_tokens + 10


@dataclass
class TranslateData(DataConfig):
    """Sentence pairs and their subwords."""

    name: str = setting(
        "gettext:fr",
        "gettext:LANG (the catalogs installed here), or a TSV file of source<TAB>target pairs",
        flag="--data",
        metavar="NAME|PATH",
    )
    catalogs: str = setting(
        "",
        "read gettext .mo/.po files from this folder instead of the system's",
        flag="--catalogs",
        metavar="DIR",
        path=True,
    )
    reverse: bool = setting(False, "translate the other way: target -> source", flag="--reverse")
    vocab_size: int = setting(8000, "subword vocabulary, shared by both languages", check=AT_LEAST_ONE)
    max_tokens: int = setting(
        100, "training pairs with a side longer than this many subwords are left out", check=AT_LEAST_ONE
    )


TRANSLATE = Verb(
    "translate",
    "translate sentences with a translate run (the lines of stdin when no TEXT is given)",
    (
        arg("texts", nargs="*", metavar="TEXT", stdin=True, input="text"),
        *SEARCH_ARGS,
        arg("--show-attention", metavar="FILE.png", path=True, help="draw the attention of the first sentence"),
        arg("--attention", action="store_true", help="put the attention weights in each result (what --json prints)"),
    ),
    returns="{results: [{input, translation, score}], beam, length_penalty, seconds, sentences_per_s, plots}",
)


@register_task
class TranslateTask(Task):
    name = "translate"
    description = "neural machine translation: encoder-decoder with and without attention, beam search, BLEU"
    Data = TranslateData
    monitor = ("loss", "min")
    defaults = {
        "model.name": "attention",
        "optim.name": "adamw",
        "optim.lr": 2e-3,
        "optim.weight_decay": 0.01,
        "optim.schedule": "cosine",
        "optim.warmup": 0.02,
        "optim.grad_clip": 1.0,
        "train.batch_size": 64,
        "train.label_smoothing": 0.1,
        "train.channels_last": False,
    }
    datasets = ("gettext:LANG",)
    data_paths = "a TSV file of source<TAB>target pairs"
    data_model_args = ("vocab_size",)
    resume_keys = ("vocab_size",)
    verbs = (TRANSLATE,)
    predict_args = SEARCH_ARGS
    inputs = "text"
    insights = (
        views.attention_view("translate", "text", "TEXT", views.has_attention),
        views.EMBEDDINGS,
    )
    evaluate_args = SEARCH_ARGS
    libraries = ("sacrebleu", "sentencepiece", "polib")
    not_exported = ENCODER_DECODER

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tokenizer: Tokenizer | None = None
        self._corpora: dict[str, parallel.ParallelCorpus] = {}  # read once per command (warnings included)

    @classmethod
    def normalise_data(cls, name: str) -> str:
        return name if name.startswith("gettext:") else super().normalise_data(name)

    # ----- data ---------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            if self.run_dir is None:
                raise LaminaError("no tokenizer: the task has neither trained one nor been given a run directory")
            self._tokenizer = Tokenizer.load(self.run_dir / Tokenizer.FILE)
        return self._tokenizer

    def load_corpus(self, data: str | None = None) -> parallel.ParallelCorpus:
        d, name = self.cfg.data, data or self.cfg.data.name
        if name not in self._corpora:
            self._corpora[name] = parallel.load_parallel(name, d.catalogs, d.reverse)
        return self._corpora[name]

    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        d, t = self.cfg.data, self.cfg.train
        corpus = self.load_corpus()
        for split in ("train", "val"):
            if not corpus.split(split):
                raise LaminaError(
                    f"{d.name} gives no {split} pairs after cleaning ({corpus.source['pairs']} pairs in "
                    "all; about 90/5/5 go to train/val/test): give more pairs"
                )
        if previous_meta is None:  # subwords are learnt from the training split only, both languages together
            self._tokenizer = Tokenizer.train([s for pair in corpus.train for s in pair], d.vocab_size)
        tok = self.tokenizer
        sources, targets = tok.encode([s for s, _ in corpus.train]), tok.encode([t for _, t in corpus.train])
        keep = [i for i in range(len(sources)) if len(sources[i]) <= d.max_tokens and len(targets[i]) <= d.max_tokens]
        if not keep:
            raise LaminaError(f"every training pair is longer than data.max_tokens={d.max_tokens} subwords")
        longest = max(len(sources[i]) for i in keep)
        meta = {
            "data": corpus.source,
            "vocab_size": len(tok),
            "max_tokens": d.max_tokens,
            "longest_source": longest,
            "too_long": len(sources) - len(keep),
            "tokenizer": Tokenizer.FILE,
        }
        train = parallel.PairBatches(
            [sources[i] for i in keep],
            [targets[i] for i in keep],
            self.global_batch,
            train=True,
            seed=t.seed,
            device=self.device,
        )
        return Prepared(
            train=train,
            val=self.batches(corpus.val),
            test=self.batches(corpus.test) if corpus.test else None,
            meta=meta,
            model_args={"vocab_size": len(tok)},
            files={Tokenizer.FILE: tok.model_bytes},
        )

    def batches(self, pairs: list[parallel.Pair]) -> parallel.PairBatches:
        tok = self.tokenizer
        sources, targets = tok.encode([s for s, _ in pairs]), tok.encode([t for _, t in pairs])
        return parallel.PairBatches(sources, targets, EVAL_BATCH, device=self.device, pairs=pairs)

    def has_split(self, data: str, split: str) -> bool:
        own = self.normalise_data(data) in ("", self.cfg.data.name) or data.startswith("gettext:")
        return own and (split != "test" or bool(self.load_corpus(data).test))

    def views(self) -> int:
        return DECODE_COST

    # ----- loss and metrics -----------------------------------------------------------------------
    def step(self, model: nn.Module, batch) -> StepOutput:
        src, tgt_in, tgt_out = batch  # (B, S), (B, T), (B, T)
        _, loss = model(src, tgt_in, tgt_out, label_smoothing=self.cfg.train.label_smoothing)
        return StepOutput(loss, src.shape[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: parallel.PairBatches, tta: bool | None = None) -> dict[str, float]:
        """Cross-entropy per target subword (no smoothing), perplexity and next-subword accuracy under
        teacher forcing; at the end of training (tta=None) also BLEU and chrF of greedy translations.
        Each process measures its share of the batches."""
        model.eval()
        sums = []
        for src, tgt_in, tgt_out in batches.epoch(0, 0, self.dist.rank, self.dist.world):
            with self.precision.autocast():
                logits, _ = model(src, tgt_in)
            real = tgt_out != PAD
            loss = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, reduction="sum")
            sums.append((float(loss), int(((logits.argmax(-1) == tgt_out) & real).sum()), int(real.sum())))
        sums = self.dist.gather_batches(sums)
        total, correct, count = (sum(s[k] for s in sums) for k in range(3))
        loss = total / max(count, 1)
        out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(count, 1)}
        if tta is None and batches.pairs:
            hyps = self.translate_ids(model, batches.sources, beam=1)
            out.update(self.scores(batches.pairs, hyps))
        return out

    def scores(self, pairs: list[parallel.Pair], hyps: list[decoding.Hypothesis]) -> dict[str, Any]:
        outputs = [self.tokenizer.decode(h.tokens) for h in hyps]
        refs = [t for _, t in pairs]
        return {
            "bleu": metrics.bleu(outputs, refs),
            "chrf": metrics.chrf(outputs, refs),
            "bleu_signature": metrics.bleu_signature(),
        }

    def report(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        data: str,
        split: str,
        out_dir: Path,
        beam: int = 5,
        length_penalty: float = 1.0,
    ) -> dict[str, Any]:
        """BLEU and chrF (overall and by source length), loss and perplexity on a split of the run's own
        corpus (or of another gettext language), or on every pair of a TSV file; writes the
        translations next to their references."""
        decoding.check_search(beam, length_penalty)
        if data.startswith("gettext:") or self.normalise_data(data) == self.cfg.data.name:
            pairs = self.load_corpus(data).split(split)
        else:
            pairs, split = parallel.read_pairs(Path(data).expanduser(), self.cfg.data.reverse), "all"
        if not pairs:
            raise LaminaError(f"{data} ({split}) holds no sentence pairs")
        batches = self.batches(pairs)
        result: dict[str, Any] = self.evaluate(model, batches, tta=False)
        started = time.perf_counter()
        hyps = self.translate_ids(model, batches.sources, beam, length_penalty)
        seconds = time.perf_counter() - started
        outputs = [self.tokenizer.decode(h.tokens) for h in hyps]
        result.update(self.scores(pairs, hyps))
        result["by_length"] = metrics.bleu_by_length([s for s, _ in pairs], outputs, [t for _, t in pairs])
        result["sentences_per_s"] = len(pairs) / max(seconds, 1e-9)
        table = "".join(f"{s}\t{t}\t{o}\n" for (s, t), o in zip(pairs, outputs))
        written = out_dir / f"translations-{split}.tsv"
        atomic_write(written, lambda tmp: tmp.write_text("source\treference\ttranslation\n" + table, encoding="utf-8"))
        decoding_settings = {
            "search": "beam" if beam > 1 else "greedy",
            "beam": beam,
            "length_penalty": length_penalty,
            "max_len": "2 * source subwords + 10",
        }
        return {
            "split": split,
            "n": len(pairs),
            "metrics": result,
            "decoding": decoding_settings,
            "files": [str(written)],
        }

    # ----- translation ---------------------------------------------------------------------------
    @torch.no_grad()
    def translate_ids(
        self, model: nn.Module, sources: list[list[int]], beam: int = 1, length_penalty: float = 1.0
    ) -> list[decoding.Hypothesis]:
        """Translations of subword sequences, in batches of similar length (each process decodes its
        share, every world-th batch); greedy for beam 1. Runs in fp32: decoding goes one step at a
        time, where autocast re-casts the weights at every step."""
        model.eval()
        batches = decode_batches(sources, beam)
        mine = []
        for rows in batches[self.dist.rank :: self.dist.world]:
            src = pad([[*sources[i], EOS] for i in rows], self.device)
            memory, state = model.encode(src)
            mine.append(decoding.search(model, memory, state, beam, max_output_tokens(src.shape[1]), length_penalty))
        out: list[decoding.Hypothesis | None] = [None] * len(sources)
        for rows, hyps in zip(batches, self.dist.gather_batches(mine)):
            for i, h in zip(rows, hyps):
                out[i] = h
        return out  # type: ignore[return-value]

    def translate(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        texts: list[str],
        beam: int = 5,
        length_penalty: float = 1.0,
        attention: bool = False,
        show_attention: str | None = None,
    ) -> dict[str, Any]:
        """{'results': one {'input', 'translation', 'score'} per text, and timings}. With attention=True
        each result also has 'source_pieces', 'target_pieces' and the weights (target x source);
        show_attention=FILE.png draws the first sentence's. Empty texts give empty translations;
        texts longer than the model was trained on are cut, with a warning."""
        decoding.check_search(beam, length_penalty)
        started = time.perf_counter()
        tok, limit = self.tokenizer, meta.get("longest_source", meta.get("max_tokens", 100))
        results: list[dict[str, Any]] = [{"input": text, "translation": ""} for text in texts]
        todo, ids, empty, unseen = [], [], [], set()
        for i, text in enumerate(texts):
            clean = parallel.normalise(text)
            if not clean:
                empty.append(i + 1)
                continue
            unseen.update(tok.unseen(clean))
            encoded = tok.encode([clean])[0]
            if len(encoded) > limit:
                warn(
                    f"input {i + 1} has {len(encoded)} subwords, more than the {limit} the model was trained on; "
                    f"translating its first {limit}"
                )
                encoded = encoded[:limit]
            todo.append(i)
            ids.append(encoded)
        if empty:
            many = len(empty) > 1
            shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
            warn(f"input{'s' * many} {shown} {'are' if many else 'is'} empty: empty translation")
        if unseen:
            warn(f"characters never seen in training ({' '.join(sorted(unseen)[:20])}) are read as raw bytes")
        hyps = self.translate_ids(model, ids, beam, length_penalty) if ids else []
        drawn = []
        for i, src, h in zip(todo, ids, hyps):
            results[i].update(translation=tok.decode(h.tokens), score=round(h.score, 4))
            if attention or (show_attention and not drawn):
                weights = {"source_pieces": tok.pieces([*src, EOS]), **self.attention_map(model, src, h)}
                if show_attention and not drawn:
                    drawn.append(self.draw_attention(model, weights, show_attention))
                if attention:
                    results[i].update(weights)
        seconds = time.perf_counter() - started
        return {
            "results": results,
            "beam": beam,
            "length_penalty": length_penalty,
            "seconds": round(seconds, 4),
            "sentences_per_s": round(len(texts) / max(seconds, 1e-9), 2),
            "plots": drawn,
        }

    def draw_attention(self, model: nn.Module, weights: dict[str, Any], path: str) -> str:
        from lamina.viz.attention import plot_attention

        if weights["attention"] is None:
            raise LaminaError(f"a {self.cfg.model.name} model has no attention to draw")
        return str(plot_attention(weights["source_pieces"], weights["target_pieces"], weights["attention"], path))

    def attention_map(self, model: nn.Module, src: list[int], h: decoding.Hypothesis) -> dict[str, Any]:
        """The target pieces and their weights over the source pieces (EOS included on both sides when
        the search produced it), cut to this sentence's own length (a batch pads to its longest) and in
        reading order when the model read the source backwards."""
        if h.attention is None:
            return {"target_pieces": self.tokenizer.pieces([*h.tokens, EOS]), "attention": None}
        ended = h.attention.shape[0] == len(h.tokens) + 1  # one attention row per step, the EOS step included
        target = [*h.tokens, EOS] if ended else h.tokens
        weights = h.attention[:, : len(src) + 1]  # the source fed to the encoder is src + EOS
        if getattr(model, "reverse_source", False):
            weights = weights.flip(1)
        return {"target_pieces": self.tokenizer.pieces(target), "attention": weights.tolist()}

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list, **options) -> dict[str, Any]:
        return self.translate(model, meta, [str(x) for x in inputs], **options)

    # ----- on a terminal -------------------------------------------------------------------------
    # ----- looking inside -------------------------------------------------------------------------
    @torch.no_grad()
    def embedding_points(self, model: nn.Module, meta: dict[str, Any], limit: int):
        """Each test sentence as the encoder sees it (its states averaged over the source), grouped by
        length as evaluation groups them."""
        split = "test" if self.has_split(self.cfg.data.name, "test") else "val"
        pairs = getattr(self.load_corpus(), split)[:limit]
        model.eval()
        points, lengths = [], []
        for i in range(0, len(pairs), 64):
            chunk = pairs[i : i + 64]
            ids = self.tokenizer.encode([source for source, _ in chunk])
            memory, _ = model.encode(pad([[*row, EOS] for row in ids], self.device))
            mask = memory.mask.unsqueeze(-1).float()
            points.append(((memory.outputs.float() * mask).sum(1) / mask.sum(1)).cpu())
            lengths += [len(source.split()) for source, _ in chunk]
        groups = torch.tensor([min((n - 1) // 5, 3) for n in lengths])
        return torch.cat(points), groups, ["1-5 words", "6-10", "11-15", "16+"], f"mean encoder states ({split})"

    def sample_inputs(self, meta: dict[str, Any], limit: int = 3) -> list:
        try:
            return [source for source, _ in self.load_corpus().test[:limit]]
        except (LaminaError, OSError):
            return []

    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> str:
        test = metrics.get("test", {})
        return f"test BLEU {test['bleu']:.2f} (greedy)" if "bleu" in test else ""

    @classmethod
    def render_translate(cls, result: dict[str, Any], out: TextIO) -> None:
        for r in result["results"]:
            print(r["translation"], file=out)
        for path in result.get("plots", []):
            print(f"wrote {path}", file=sys.stderr)

    render_predict = render_translate


def decode_batches(sources: list[list[int]], beam: int) -> list[list[int]]:
    """Indices of `sources` in batches of similar length: at most EVAL_BATCH sentences, and at most
    DECODE_CELLS hypothesis x output step x source positions (the attention a search keeps), so a file
    of very long sentences decodes a few at a time instead of exhausting memory."""
    ids = sorted(range(len(sources)), key=lambda i: len(sources[i]))

    def cells(rows: list[int]) -> int:
        width = len(sources[rows[-1]]) + 1  # the last is the longest
        return len(rows) * beam * width * max_output_tokens(width)

    return pack_by_length(ids, EVAL_BATCH, cells, DECODE_CELLS)
