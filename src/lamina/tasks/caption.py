"""Image captioning: describe a scene in words, and show where the network looked for each word.

The error signal is the cross-entropy of each next word given the image and the correct caption so
far (teacher forcing; one of an image's references per epoch), plus, for show-attend-tell, its
doubly stochastic attention penalty. Quality is measured as the COCO caption evaluation does
(BLEU-1..4, ROUGE-L, CIDEr-D and, where Java is present, METEOR; pycocoevalcap), with sacrebleu's
corpus BLEU as a second figure; checkpoints are picked by validation CIDEr of greedy captions. On
synthetic scenes `lamina evaluate` also reports the figures by number of objects, on the
compositional test scenes (held-out colour-object pairs and relations) against the familiar ones,
and attention grounding: for each generated word that names an object, the share of its attention
inside that object's box against the share of the image the box covers.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from lamina import metrics
from lamina.commands import SEARCH_ARGS, Verb, arg
from lamina.config import POSITIVE, DataConfig, setting
from lamina.data import captions
from lamina.data.images import channel_stats, load_image
from lamina.data.vocab import BOS, PAD, WordVocab
from lamina.engine import checkpoint as ckpt
from lamina.engine.loop import StepOutput
from lamina.errors import LaminaError, UsageError
from lamina.insight import views
from lamina.models import decoding
from lamina.tasks import register_task
from lamina.tasks.base import ENCODER_DECODER, Prepared, Task

EVAL_BATCH = 64  # images per decoding batch (times the beam width in hypotheses)
GALLERY = 6  # test images drawn with their attention by `lamina evaluate`

CAPTION = Verb(
    "caption",
    "describe images in words with a caption run",
    (
        arg("images", nargs="+", metavar="IMAGE", input="image"),
        *SEARCH_ARGS,
        arg(
            "--show-attention",
            metavar="FILE.png",
            path=True,
            help="draw, for each word, where the model looked (one file per image: FILE.png, FILE-2.png, ...)",
        ),  # fmt: skip
        arg("--attention", action="store_true", help="put the attention weights in each result (what --json prints)"),
    ),
    returns="{results: [{input, caption, score, words, seconds[, attention: [[h x w] per word], plot]}], beam, "
    "seconds, captions_per_s}",
)


@dataclass
class CaptionData(DataConfig):
    """Captioned images."""

    name: str = setting(
        captions.NAME,
        "synth-captions, a Flickr8k/30k-style folder (captions.txt of image,caption lines beside the images) "
        "or a COCO captions JSON file or folder (annotations/captions_<split>.json)",
        flag="--data",
        metavar="NAME|PATH",
    )
    image_size: int = setting(96, "side images are fitted to (synthetic scenes are made at it)", check=POSITIVE)
    scenes: int = setting(8000, "synthetic training scenes", check=POSITIVE)
    val_scenes: int = setting(250, "synthetic validation scenes", check=POSITIVE)
    test_scenes: int = setting(500, "synthetic test scenes (half of them compositional)", check=POSITIVE)
    max_objects: int = setting(4, "at most this many objects in a synthetic scene (2 to 8: relations need two)",
                               check=(lambda v: 2 <= v <= 8, "must be from 2 to 8"))  # fmt: skip
    min_count: int = setting(1, "words seen fewer times than this in the training captions are <unk>",
                             check=POSITIVE)  # fmt: skip
    max_words: int = setting(30, "captions longer than this are cut (with a warning); the decoder's limit",
                             check=POSITIVE)  # fmt: skip


@register_task
class CaptionTask(Task):
    name = "caption"
    description = "image captioning: CNN encoder + LSTM decoder, with and without attention; BLEU, CIDEr, grounding"
    Data = CaptionData
    monitor = ("cider", "max")
    defaults = {
        "model.name": "show-attend-tell",
        "optim.name": "adamw",
        "optim.lr": 2e-3,
        "optim.weight_decay": 0.01,
        "optim.schedule": "cosine",
        "optim.warmup": 0.03,
        "optim.grad_clip": 5.0,
        "train.batch_size": 32,
        "train.eval_every": 300,
    }
    datasets = (captions.NAME,)
    data_paths = "a Flickr-style folder (captions.txt) or COCO captions JSON"
    data_model_args = ("vocab_size",)
    resume_keys = ("words",)
    transfer = True
    transfer_from = ("classify",)
    libraries = ("pycocoevalcap", "sacrebleu")
    not_exported = ENCODER_DECODER
    verbs = (CAPTION,)
    predict_args = CAPTION.args[1:]
    inputs = "image"
    insights = (
        views.FILTERS,
        views.ACTIVATIONS,
        views.attention_view("caption", "image", "IMAGE", views.has_attention),
    )
    evaluate_args = SEARCH_ARGS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vocab: WordVocab | None = None
        self._sets: dict[tuple[str, str], captions.CaptionSet] = {}
        self._layouts: dict[str, dict[str, captions.Listing]] = {}  # each captions file is read once

    def layout(self, name: str) -> dict[str, captions.Listing]:
        if name not in self._layouts:
            self._layouts[name] = captions.layout(self.root(name))
        return self._layouts[name]

    # ----- data ---------------------------------------------------------------------------------
    def spec(self) -> captions.CaptionSpec:
        d = self.cfg.data
        return captions.CaptionSpec.for_size(d.image_size, train=d.scenes, val=d.val_scenes, test=d.test_scenes,
                                             max_objects=d.max_objects, seed=self.cfg.train.seed)  # fmt: skip

    def root(self, name: str) -> Path:
        if name == captions.NAME:
            return captions.build(self.spec())
        path = Path(name).expanduser()
        if not path.exists():
            if "/" not in name and not name.startswith(("~", ".")):
                raise UsageError(f"unknown dataset {name!r}; choose from: {captions.NAME}, or give a folder or file")
            raise LaminaError(f"{name}: no such file or folder")
        return path

    def load_split(self, name: str, split: str) -> captions.CaptionSet:
        key = (name, split)
        if key not in self._sets:
            listing = self.layout(name).get(split)
            if listing is None:
                raise LaminaError(f"{name} has no {split} split")
            d = self.cfg.data
            self._sets[key] = captions.load(listing, d.image_size, f"{split} ({Path(name).name})", d.max_words)
        return self._sets[key]

    def has_split(self, data: str, split: str) -> bool:
        if data == captions.NAME:
            return split in captions.SPLITS
        try:
            return bool(self.layout(data).get(split, captions.Listing({})).captions)
        except LaminaError:
            return False

    def encode(self, data: captions.CaptionSet) -> list[list[list[int]]]:
        return [[self.vocab.encode(captions.words(c)) for c in refs] for refs in data.captions]

    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        d, t = self.cfg.data, self.cfg.train
        train = self.load_split(d.name, "train")
        if not len(train):
            raise LaminaError(f"{d.name} has no usable training images")
        if previous_meta is None:
            self.vocab = WordVocab.build((captions.words(c) for refs in train.captions for c in refs), d.min_count)
        else:
            self.vocab = WordVocab(previous_meta["words"])
        if not self.vocab.words:
            raise LaminaError(f"no word of {d.name} is seen {d.min_count} times: lower --set data.min_count")
        val = self.load_split(d.name, "val") if self.has_split(d.name, "val") else None
        test = self.load_split(d.name, "test") if self.has_split(d.name, "test") else None
        mean, std = channel_stats(train.images[:2000])
        if t.init:  # a transferred backbone expects its inputs normalised as when it was trained
            source = ckpt.read_run(t.init)
            theirs = source.get("model", {}).get("args", {})
            if source.get("meta", {}).get("mean"):  # a classify run
                c = len(source["meta"]["mean"])
                mean, std = list(source["meta"]["mean"]) * (3 // c), list(source["meta"]["std"]) * (3 // c)
            elif theirs.get("image_mean"):  # another caption run
                mean, std = theirs["image_mean"], theirs["image_std"]
        lengths = [len(captions.words(c)) for refs in train.captions for c in refs]
        meta: dict[str, Any] = {
            "words": self.vocab.words,
            "image_size": d.image_size,
            "max_words": d.max_words,
            "longest_caption": max(lengths),
            "data": {"name": d.name, "source": str(self.root(d.name)), "train": len(train),
                     "val": len(val) if val else 0, "test": len(test) if test else 0,
                     "captions": len(lengths), "mean_words": round(float(np.mean(lengths)), 2)},
        }  # fmt: skip
        return Prepared(
            train=captions.CaptionBatches(train, self.encode(train), self.global_batch, self.device, True, t.seed),
            val=val if val and len(val) else None,
            test=test if test and len(test) else None,
            meta=meta,
            model_args={"vocab_size": len(self.vocab), "image_mean": mean, "image_std": std},
        )

    def views(self) -> int:
        return 4  # a greedy caption costs about this many teacher-forced passes

    # ----- model --------------------------------------------------------------------------------
    def setup_model(self, model: nn.Module, meta: dict[str, Any], resume: bool) -> None:
        t = self.cfg.train
        if t.init and not resume:
            self.init_from(model, t.init)
        if t.freeze:
            model.encoder.freeze()

    def init_from(self, model: nn.Module, run_dir: str | Path) -> None:
        """The backbone of a classify ResNet run (or the encoder of another caption run) into `model`."""
        from lamina.models.resnet import load_features

        info = ckpt.read_run(run_dir)
        if info["task"] not in (self.name, *self.transfer_from):
            raise LaminaError(f"--init {run_dir}: a {info['task']!r} run is not an image classifier")
        state = ckpt.load_weights(Path(run_dir) / ckpt.WEIGHTS_FILE)
        if info["task"] == self.name:
            state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.features.")}
        try:
            load_features(model.encoder.features, state)
        except ValueError as exc:
            raise LaminaError(
                f"--init {run_dir}: its backbone ({info['model']['name']}) does not fit the caption encoder: {exc}"
            ) from None

    # ----- loss ---------------------------------------------------------------------------------
    def step(self, model: nn.Module, batch) -> StepOutput:
        images, tgt_in, tgt_out = batch
        with self.precision.autocast():
            _, losses = model(images, tgt_in, tgt_out, label_smoothing=self.cfg.train.label_smoothing)
        n = len(images)
        return StepOutput(sum(losses.values()), n, {k: v.detach() * n for k, v in losses.items()})

    # ----- captioning ---------------------------------------------------------------------------
    @torch.no_grad()
    def describe(self, model: nn.Module, images: torch.Tensor, beam: int = 1, length_penalty: float = 1.0,
                 share: bool = True) -> list[decoding.Hypothesis]:  # fmt: skip
        """The best caption of each (3, S, S) uint8 image, in batches (each process its share when
        `share`). Decoding runs in fp32: it goes one step at a time, where autocast re-casts every weight."""
        model.eval()
        limit = self.cfg.data.max_words + 1
        rank, world = (self.dist.rank, self.dist.world) if share else (0, 1)
        starts = list(range(0, len(images), EVAL_BATCH))
        mine = []
        for s in starts[rank::world]:
            x = images[s : s + EVAL_BATCH].to(self.device)
            memory, state = model.encode(x)
            first = torch.full((len(x),), BOS, dtype=torch.long, device=self.device)
            mine.append(decoding.search(model, memory, state, beam, limit, length_penalty, start=first))
        parts = self.dist.gather_batches(mine) if world > 1 else mine
        return [h for part in parts for h in part]

    def texts(self, hyps: list[decoding.Hypothesis]) -> list[str]:
        return [self.vocab.decode(h.tokens) for h in hyps]

    @torch.no_grad()
    def loss(self, model: nn.Module, data: captions.CaptionSet) -> float:
        """Teacher-forced cross-entropy per word against each image's first reference."""
        model.eval()
        batches = captions.CaptionBatches(data, self.encode(data), EVAL_BATCH, self.device)
        parts = []
        for images, tgt_in, tgt_out in batches.epoch(0, 0, self.dist.rank, self.dist.world):
            with self.precision.autocast():
                logits, _ = model(images, tgt_in)
            real = tgt_out != PAD
            loss = nn.functional.cross_entropy(logits.float()[real], tgt_out[real], reduction="sum")
            parts.append((float(loss), int(real.sum())))
        parts = self.dist.gather_batches(parts) if self.dist.world > 1 else parts
        return sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: captions.CaptionSet, tta: bool | None = None) -> dict[str, float]:
        """The loss, and BLEU-1..4, ROUGE-L, CIDEr of greedy captions (METEOR too at the end of
        training, where Java is present)."""
        hyps = self.describe(model, data.images)
        meteor = tta is None and self.dist.rank == 0  # one Java program, where the results are written
        return {"loss": self.loss(model, data),
                **metrics.caption_scores(self.texts(hyps), data.captions, meteor=meteor)}  # fmt: skip

    def grounding(self, hyps: list[decoding.Hypothesis], data: captions.CaptionSet) -> dict[str, Any]:
        """For each generated word naming an object class the scene holds: the attention mass inside
        the boxes of the objects of that class (each grid cell counted by the share of its pixels
        inside), and the share of the image those boxes cover. grounding_ratio = mean mass / mean
        share (1: no better than looking anywhere). Words naming a class the scene lacks are counted
        apart (hallucinated_nouns)."""
        S = self.cfg.data.image_size
        masses, shares, missing = [], [], 0
        for h, objects in zip(hyps, data.objects or []):
            if h.attention is None:
                return {}
            side = int(round(h.attention.shape[1] ** 0.5))  # a square grid over a square image
            for t, token in enumerate(self.vocab.tokens(h.tokens)):
                c = captions.NOUN_CLASS.get(token)
                if c is None:
                    continue
                boxes = [o["box"] for o in objects if o["label"] == c]
                if not boxes:
                    missing += 1
                    continue
                inside = np.zeros((S, S), np.float32)
                for x1, y1, x2, y2 in boxes:
                    inside[y1:y2, x1:x2] = 1
                cell = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(inside)[None], side)[0]  # (h, w)
                weights = h.attention[t].view(side, side)
                masses.append(float((weights * cell).sum()))
                shares.append(float(inside.mean()))
        if not masses:
            return {}
        return {
            "grounding_ratio": float(np.mean(masses) / max(np.mean(shares), 1e-9)),
            "grounding_mass": float(np.mean(masses)),
            "grounding_share": float(np.mean(shares)),
            "grounded_words": len(masses),
            "hallucinated_nouns": missing / (missing + len(masses)),
        }

    # ----- using a trained run ------------------------------------------------------------------
    def use_meta(self, meta: dict[str, Any]) -> None:
        self.vocab = WordVocab(meta["words"])
        self.cfg.data.image_size = meta.get("image_size", self.cfg.data.image_size)
        self.cfg.data.max_words = meta.get("max_words", self.cfg.data.max_words)

    def report(self, model: nn.Module, meta: dict[str, Any], data: str, split: str, out_dir: Path,
               beam: int = 3, length_penalty: float = 1.0) -> dict[str, Any]:  # fmt: skip
        """The scores on a split (all of it, and on synthetic scenes by number of objects and
        compositional against familiar), attention grounding, captions-<split>.tsv (each caption
        beside its references) and gallery.png (the first images, each word's attention)."""
        decoding.check_search(beam, length_penalty)
        self.use_meta(meta)
        if not self.has_split(data, split):
            raise LaminaError(f"{data} has no {split} split")
        dataset = self.load_split(data, split)
        if not len(dataset):
            raise LaminaError(f"the {split} split of {data} holds no captioned images")
        found: dict[str, Any] = {"loss": self.loss(model, dataset)}
        started = time.perf_counter()
        hyps = self.describe(model, dataset.images, beam, length_penalty)
        seconds = time.perf_counter() - started
        texts = self.texts(hyps)
        found.update(metrics.caption_scores(texts, dataset.captions, meteor=True))
        found["captions_per_s"] = len(texts) / max(seconds, 1e-9)
        found.update(self.grounding(hyps, dataset))
        if dataset.groups and dataset.groups[0].get("objects") is not None:
            found.update(self.breakdowns(texts, dataset))
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = ["image\tcaption\treferences"] + [
            f"{name}\t{text}\t{' | '.join(refs)}" for name, text, refs in zip(dataset.names, texts, dataset.captions)
        ]
        table = out_dir / f"captions-{split}.tsv"
        ckpt.atomic_write(table, lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8"))
        plots = []
        if hyps and hyps[0].attention is not None:
            from lamina.viz.caption import plot_gallery

            shown = [(dataset.images[i], self.vocab.tokens(hyps[i].tokens), hyps[i].attention)
                     for i in range(min(GALLERY, len(hyps)))]  # fmt: skip
            plots.append(str(plot_gallery(shown, out_dir / "gallery.png")))
        return {"n": len(dataset), "metrics": found, "files": [str(table)], "plots": plots,
                "decoding": {"search": "beam" if beam > 1 else "greedy", "beam": beam,
                             "length_penalty": length_penalty}}  # fmt: skip

    def breakdowns(self, texts: list[str], data: captions.CaptionSet) -> dict[str, Any]:
        """BLEU-4 and CIDEr by number of objects, and on compositional against familiar scenes."""

        def scores(rows: list[int]) -> dict[str, Any]:
            s = metrics.caption_scores([texts[i] for i in rows], [data.captions[i] for i in rows])
            return {"bleu4": s["bleu4"], "cider": s["cider"], "n": len(rows)}

        by_objects: dict[str, list[int]] = {}
        kinds: dict[str, list[int]] = {}
        for i, g in enumerate(data.groups):
            by_objects.setdefault(str(g["objects"]), []).append(i)
            kinds.setdefault(g.get("compositional") or "familiar", []).append(i)
        ordered = sorted(by_objects.items(), key=lambda kv: int(kv[0]))
        out: dict[str, Any] = {"by_objects": {k: scores(v) for k, v in ordered}}
        if len(kinds) > 1:
            out["by_kind"] = {k: scores(v) for k, v in sorted(kinds.items())}
            held = [i for i, g in enumerate(data.groups) if g.get("compositional")]
            compositional = scores(held)
            out["compositional_bleu4"], out["compositional_cider"] = compositional["bleu4"], compositional["cider"]
        return out

    def caption(self, model: nn.Module, meta: dict[str, Any], images: list, beam: int = 3,
                length_penalty: float = 1.0, show_attention: str | None = None,
                attention: bool = False) -> dict[str, Any]:  # fmt: skip
        """The caption of each image (a path, PIL image, array or tensor), fitted to the run's size as
        training saw it: {'results': [{'input', 'caption', 'score', 'words', 'seconds'}]}; with
        attention=True each also has the (h x w) weights of each word; show_attention=FILE.png draws
        them. A bad image gets {'input', 'error'} and the others go on."""
        decoding.check_search(beam, length_penalty)
        self.use_meta(meta)
        size = self.cfg.data.image_size
        started, results = time.perf_counter(), []
        drawn = 0
        for i, source in enumerate(images):
            name = str(source) if isinstance(source, (str, Path)) else f"<image {i}>"
            try:
                image = load_image(source, 3, size, name)
            except LaminaError as exc:
                results.append({"input": name, "error": str(exc)})
                continue
            t0 = time.perf_counter()
            h = self.describe(model, image[None], beam, length_penalty, share=False)[0]
            tokens = self.vocab.tokens(h.tokens)
            result: dict[str, Any] = {"input": name, "caption": " ".join(tokens), "score": round(h.score, 4),
                                      "words": tokens, "seconds": round(time.perf_counter() - t0, 4)}  # fmt: skip
            if h.attention is not None and (attention or show_attention):
                side = int(round(h.attention.shape[1] ** 0.5))
                grids = h.attention.view(-1, side, side)
                if attention:
                    result["attention"] = grids.tolist()
                if show_attention:
                    from lamina.viz.caption import plot_words

                    drawn += 1
                    path = Path(show_attention)
                    path = path if drawn == 1 else path.with_name(f"{path.stem}-{drawn}{path.suffix or '.png'}")
                    result["plot"] = str(plot_words(image, tokens, h.attention, path))
            elif show_attention and h.attention is None:
                raise LaminaError(f"a {self.cfg.model.name} model has no attention to draw")
            results.append(result)
        seconds = time.perf_counter() - started
        return {"results": results, "beam": beam, "seconds": round(seconds, 4),
                "captions_per_s": round(len(images) / max(seconds, 1e-9), 2)}  # fmt: skip

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list, **options) -> dict[str, Any]:
        return self.caption(model, meta, inputs, **options)

    def warnings(self, history: list[dict[str, Any]], metrics: dict[str, Any], meta: dict[str, Any]) -> list[str]:
        found = super().warnings(history, metrics, meta)
        test = metrics.get("test", metrics.get("val", {}))
        if test.get("cider", 1.0) < 0.1:
            found.append("the captions barely match their references (CIDEr < 0.1): train longer (--time-budget)")
        return found

    # ----- on a terminal -------------------------------------------------------------------------
    # ----- looking inside -------------------------------------------------------------------------
    def probe(self, model: nn.Module, meta: dict[str, Any]):
        """Images as caption reads them; the encoder's stem and stages."""
        from lamina.insight.maps import Probe

        size = meta.get("image_size", self.cfg.data.image_size)
        features = model.encoder.features
        return Probe(
            load=lambda source: load_image(source, 3, size).to(self.device).float() / 255,
            forward=model.encoder,
            stages=[("stem", features[0]), *((f"stage {i}", s) for i, s in enumerate(features[1:], 1))],
        )

    def sample_inputs(self, meta: dict[str, Any], limit: int = 2) -> list:
        try:
            return list(self.load_split(self.cfg.data.name, "test").images[:limit])
        except (LaminaError, OSError):
            return []

    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> str:
        test = metrics.get("test", {})
        return f"test BLEU-4 {test['bleu4']:.3f}, CIDEr {test['cider']:.3f} (greedy)" if "cider" in test else ""

    @classmethod
    def render_caption(cls, result: dict[str, Any], out: TextIO) -> None:
        for r in result["results"]:
            if "caption" in r:
                print(f"{r['input']}: {r['caption']}", file=out)
            if "plot" in r:
                print(f"wrote {r['plot']}", file=sys.stderr)

    render_predict = render_caption
