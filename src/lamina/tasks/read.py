"""Scene text: find the words in a photograph and read them.

Two parts, one error signal each: the detector (dbnet) learns per-pixel maps of where words are
(balanced cross-entropy, dice and threshold losses), the recognizer (crnn) learns to read a word's
crop (CTC over characters). `--model reader` trains both in the same steps, each on its own batch of
the same scenes (the crops are cut from the training scenes with their perspective undone), so the
time budget is shared; `--model crnn` or `--model dbnet` trains one part. A reader can start from
the parts of earlier runs: `--init RUN` (a reader, dbnet or crnn run) and `--init-recognizer RUN`.

Quality is measured as ICDAR 2015 does: detection precision, recall and H-mean at IoU 0.5, word
accuracy and character error rate of the crops read, and end-to-end F (a word found and read right).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from lamina import metrics
from lamina.commands import Verb, arg
from lamina.config import POSITIVE, DataConfig, setting
from lamina.data import ocr, synthtext
from lamina.data.batching import hash_split
from lamina.data.images import load_image, to_pil
from lamina.data.vocab import EOS, CharVocab
from lamina.engine import checkpoint as ckpt
from lamina.engine.loop import StepOutput
from lamina.errors import LaminaError, UsageError
from lamina.insight import views
from lamina.models import ctc
from lamina.tasks import register_task
from lamina.tasks.base import ExportSpec, Prepared, Task

QUICK_VAL = 100  # validation images (and their words) measured at each evaluation during training
MAX_SIDE = 1024  # images are read at their own size up to this longer side, scaled down beyond
GALLERY = 8  # test images drawn by `lamina evaluate`
PARTS = {"crnn": ("recognizer",), "dbnet": ("detector",)}  # any other model (the reader) has both

READ = Verb(
    "read",
    "find and read the words in images with a read run (a recognizer-only run reads word crops)",
    (
        arg("images", nargs="+", metavar="IMAGE", input="image"),
        arg("--beam", type=int, metavar="N", help="prefix beam width of the recognizer (1: best path)"),
        arg("--out", metavar="DIR", path=True, help="write each image with its words drawn on it into DIR"),
    ),
    returns="{results: [{input, width, height, words: [{polygon: [[x, y] x 4], text, confidence, "
    "detection_score}], text, seconds, drawn}], seconds}; a recognizer-only run: [{input, text, confidence}]",
)


@dataclass
class ReadData(DataConfig):
    """Scenes with words, or word crops."""

    name: str = setting(
        synthtext.NAME,
        "synth-text, an ICDAR-style folder (images with gt_<image>.txt), or a crop-path<TAB>transcript "
        "manifest (.tsv, or a folder of train/val/test.tsv) for a recognizer",
        flag="--data",
        metavar="NAME|PATH",
    )
    image_size: int = setting(384, "side of synthetic scenes; the detector trains on images scaled to at most this",
                              check=POSITIVE)  # fmt: skip
    crop_size: int = setting(256, "side of the random windows the detector trains on", check=POSITIVE)
    scenes: int = setting(4000, "synthetic training scenes", check=POSITIVE)
    val_scenes: int = setting(200, "synthetic validation scenes (their own fonts and photographs)", check=POSITIVE)
    test_scenes: int = setting(300, "synthetic test scenes (fonts and photographs never seen in training)",
                               check=POSITIVE)  # fmt: skip
    fonts: str = setting("", "a folder of .ttf/.otf fonts for synth-text (default: the system's)", path=True)
    crops_per_step: int = setting(64, "reader: word crops the recognizer trains on in each step", check=POSITIVE)
    init_recognizer: str = setting(
        "", "reader: start its recognizer from this crnn or reader run", flag="--init-recognizer",
        metavar="RUN", path=True,
    )  # fmt: skip


@register_task
class ReadTask(Task):
    name = "read"
    description = "scene text: find words in photographs (DBNet) and read them (CRNN + CTC)"
    Data = ReadData
    # The validation loss (the parts' losses summed) picks checkpoints: it improves from the first
    # steps, where word accuracy and end-to-end F sit at 0 until the recognizer's CTC leaves its
    # all-blank plateau, and ties there would keep the first checkpoint.
    monitor = ("loss", "min")
    # AdamW at 2e-3: the recognizer's CTC left its plateau sooner than at 1e-3 (training loss 1.47
    # against 2.37 after 400 steps of 64 crops, word accuracy 14.5% against 5.4%).
    defaults = {
        "model.name": "reader",
        "optim.name": "adamw",
        "optim.lr": 2e-3,
        "optim.weight_decay": 0.01,
        "optim.schedule": "cosine",
        "optim.warmup": 0.03,
        "optim.grad_clip": 5.0,
        "train.batch_size": 0,
        "train.eval_every": 300,
        "train.channels_last": False,
    }
    datasets = (synthtext.NAME,)
    data_paths = "an ICDAR-style folder (images and gt_*.txt), or a crop<TAB>transcript manifest"
    data_model_args = ("vocab_size",)
    resume_keys = ("alphabet",)
    transfer = True
    libraries = ("shapely", "jiwer")
    verbs = (READ,)
    predict_args = READ.args[1:]
    inputs = "image"
    insights = (
        views.FILTERS,
        dataclasses.replace(views.ACTIVATIONS, applies=lambda run: ReadTask.detector_of(run.model) is not None),
    )
    evaluate_args = (READ.args[1],)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vocab = CharVocab(synthtext.ALPHABET, specials=True)
        self.parts = PARTS.get(self.cfg.model.name, ("detector", "recognizer"))

    # ----- data ---------------------------------------------------------------------------------
    def spec(self) -> synthtext.TextSpec:
        d = self.cfg.data
        return synthtext.TextSpec(
            image_size=d.image_size, train=d.scenes, val=d.val_scenes, test=d.test_scenes, fonts=d.fonts
        )

    def kind(self, name: str) -> str:
        """'synth', 'icdar' or 'manifest'."""
        if name == synthtext.NAME:
            return "synth"
        path = Path(name).expanduser()
        if not path.exists():
            if "/" not in name and not name.startswith(("~", ".")):
                raise UsageError(f"unknown dataset {name!r}; choose from: {synthtext.NAME}, or give a folder or .tsv")
            raise LaminaError(f"{name}: no such file or folder")
        if path.is_file():
            if path.suffix.lower() != ".tsv":
                raise UsageError(f"{name}: give a folder of images with gt_*.txt files, or a .tsv manifest of crops")
            return "manifest"
        return "manifest" if any((path / f"{s}.tsv").is_file() for s in ocr.SPLIT_FRACTIONS) else "icdar"

    def load_split(self, name: str, split: str, train: bool = False) -> ocr.TextSet:
        kind = self.kind(name)
        path = Path(name).expanduser()
        if kind == "manifest":
            file = path / f"{split}.tsv" if path.is_dir() else path
            if path.is_dir() and not file.is_file():
                return ocr.TextSet([])
            rows = ocr.read_manifest(file)
            if path.is_file():
                rows = [r for r in rows if hash_split(r[2], ocr.SPLIT_FRACTIONS) == split]
            allowed = set(self.vocab.chars)
            rows = [r for r in rows if set(r[1]) <= allowed] if train else rows
            return ocr.TextSet([], [ocr.decode_crop(r[0]) for r in rows], [r[1] for r in rows], [{}] * len(rows))
        if kind == "synth":
            images = ocr.read_synth(synthtext.build(self.spec()), split)
        elif (path / "manifest.json").is_file() and (path / f"{split}.json").is_file():  # a synth-text folder
            images = ocr.read_synth(path, split)
        else:
            images = ocr.read_icdar(path, split)
        if "recognizer" not in self.parts:
            return ocr.TextSet(images)
        return ocr.crops_of(images, set(self.vocab.chars), self.cfg.train.seed if train else None, split)

    def has_split(self, data: str, split: str) -> bool:
        kind = self.kind(data)
        if kind == "synth":
            return True
        path = Path(data).expanduser()
        if kind == "manifest":
            return path.is_file() or (path / f"{split}.tsv").is_file()
        try:
            return bool(ocr.icdar_layout(path).get(split))
        except LaminaError:
            return False

    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        d, t = self.cfg.data, self.cfg.train
        if self.kind(d.name) == "manifest" and self.parts != ("recognizer",):
            raise UsageError(f"{d.name} holds word crops, which train a recognizer only: add --model crnn")
        if not t.batch_size:
            t.batch_size = 64 if self.parts == ("recognizer",) else 8
        train = self.load_split(d.name, "train", train=True)
        if not (train.crops if self.parts == ("recognizer",) else train.images):
            raise LaminaError(
                f"{d.name} has no usable training {'crops' if self.parts == ('recognizer',) else 'images'}"
            )
        splits = {s: self.load_split(d.name, s) if self.has_split(d.name, s) else None for s in ("val", "test")}
        val, test = splits["val"], splits["test"]
        quick = val
        if val is not None and len(val.images) > QUICK_VAL:  # the first images and the crops of their words
            quick = ocr.crops_of(val.images[:QUICK_VAL], set(self.vocab.chars), None, "val")
        meta: dict[str, Any] = {
            "alphabet": self.vocab.chars,
            "image_size": d.image_size,
            "parts": list(self.parts),
            "data": {"name": d.name, "train_images": len(train.images), "train_crops": len(train.crops),
                     **{f"{s}_images": len(v.images) if v else 0 for s, v in splits.items()}},
        }  # fmt: skip
        if self.kind(d.name) == "synth":
            import json

            manifest = json.loads((synthtext.build(self.spec()) / "manifest.json").read_text())
            meta["data"].update({k: manifest[k] for k in ("fonts", "text_sources", "words")})
        return Prepared(
            train=self.train_batches(train),
            val=quick,
            test=test,
            final_val=val if quick is not val else None,
            meta=meta,
            model_args={"vocab_size": len(self.vocab)} if "recognizer" in self.parts else {},
        )

    def train_batches(self, train: ocr.TextSet):
        d, t = self.cfg.data, self.cfg.train
        crops = None
        if "recognizer" in self.parts:
            targets = [self.vocab.encode(text).tolist() + [EOS] for text in train.texts]
            size = self.global_batch if self.parts == ("recognizer",) else d.crops_per_step * self.dist.world
            crops = ocr.CropBatches(train.crops, targets, size, self.device, train=True, seed=t.seed, short_first=True)
            if self.parts == ("recognizer",):
                return crops
        # synth-text scenes train at their own size; other images at the size they are read at
        size = d.image_size if self.kind(d.name) == "synth" else MAX_SIDE
        images = ocr.DetectorBatches(train.images, self.global_batch, self.device, train=True, seed=t.seed,
                                     size=size, crop=d.crop_size)  # fmt: skip
        return images if crops is None else ocr.ReaderBatches(images, crops)

    def views(self) -> int:
        return 2

    # ----- model --------------------------------------------------------------------------------
    @staticmethod
    def part(model: nn.Module, name: str) -> nn.Module | None:
        from lamina.models.text import CRNN, DBNet

        kind = CRNN if name == "recognizer" else DBNet
        model = getattr(model, "module", model)  # under DistributedDataParallel, the model it wraps
        return model if isinstance(model, kind) else getattr(model, name, None)

    def setup_model(self, model: nn.Module, meta: dict[str, Any], resume: bool) -> None:
        t, d = self.cfg.train, self.cfg.data
        if t.freeze:
            raise UsageError("read runs do not support --freeze")
        if resume:
            return
        if t.init:
            self.init_from(model, t.init)
        if d.init_recognizer:
            if "recognizer" not in self.parts or "detector" not in self.parts:
                raise UsageError("--init-recognizer is for a reader (--model reader); use --init for one part")
            self.init_from(model, d.init_recognizer, only="recognizer")

    def init_from(self, model: nn.Module, run_dir: str | Path, only: str = "") -> None:
        """The parts of an earlier read run (a reader, dbnet or crnn run) that `model` has."""
        info = ckpt.read_run(run_dir)
        if info["task"] != self.name:
            raise LaminaError(f"{run_dir} is a {info['task']!r} run, not a 'read' run")
        state = ckpt.load_weights(Path(run_dir) / ckpt.WEIGHTS_FILE)
        theirs = PARTS.get(info["model"]["name"], ("detector", "recognizer"))
        loaded = []
        for name in ("detector", "recognizer"):
            target = self.part(model, name)
            if target is None or name not in theirs or (only and name != only):
                continue
            prefix = f"{name}." if len(theirs) == 2 else ""
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                target.load_state_dict(part)
            except RuntimeError as exc:
                raise LaminaError(
                    f"the {name} of {run_dir} does not fit this one: {str(exc).splitlines()[0]}"
                ) from None
            loaded.append(name)
        if not loaded:
            raise LaminaError(
                f"{run_dir} ({info['model']['name']}) has no {only or ' or '.join(self.parts)} to start from"
            )

    # ----- loss ---------------------------------------------------------------------------------
    def step(self, model: nn.Module, batch) -> StepOutput:
        # The parts are called through `model` itself, which may be DistributedDataParallel's wrapper.
        detector, recognizer = self.part(model, "detector"), self.part(model, "recognizer")
        sums: dict[str, torch.Tensor] = {}
        with self.precision.autocast():
            if detector is not None and recognizer is not None:
                (x, maps), (c, widths, y) = batch
                out, (_, ctc_loss) = model(x.float() / 255, c, widths, y)
            elif detector is not None:
                x, maps = batch
                out, ctc_loss = model(x.float() / 255), None
            else:
                c, widths, y = batch
                out, (_, ctc_loss) = None, model(c, widths, y)
        total = torch.zeros((), device=self.device)
        n = len(x) if out is not None else len(c)
        if out is not None:
            losses = detector.loss(out, maps)
            total = total + sum(losses.values())
            sums.update({k: v.detach() * n for k, v in losses.items()})
        if ctc_loss is not None:
            total = total + ctc_loss
            sums["ctc"] = ctc_loss.detach() * n
        return StepOutput(total, n, sums)

    # ----- reading ------------------------------------------------------------------------------
    @torch.no_grad()
    def recognize(
        self, recognizer: nn.Module, crops: list[torch.Tensor], beam: int = 1, texts: list[str] | None = None
    ) -> tuple[list[tuple[str, float]], float]:
        """((transcript, confidence) of each (32, W) uint8 crop, mean CTC loss against `texts` (0 without)).
        The confidence is the geometric mean over its columns of the best path's probability."""
        if not crops:
            return [], 0.0
        recognizer.eval()
        targets = [self.vocab.encode(t).tolist() + [EOS] for t in texts] if texts else [[EOS]] * len(crops)
        batches = ocr.CropBatches(crops, targets, 128, self.device)
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        loss = 0.0
        for rows in batches.order(0):
            x, widths, y = batches.collate(rows)
            with self.precision.autocast():
                logits, batch_loss = recognizer(x, widths, y if texts else None)
            frames = recognizer.frames(widths).clamp(min=1, max=logits.shape[1])
            hyps = ctc.decode(logits.float().log_softmax(-1), frames.cpu(), beam)
            loss += float(batch_loss) * len(rows) if texts else 0.0
            for i, h, f in zip(rows, hyps, frames.tolist()):
                out[i] = (self.vocab.decode(h.tokens), float(np.exp(min(h.score, 0.0) / f)))
        return out, loss / len(crops)

    @torch.no_grad()
    def find(
        self, detector: nn.Module, image: torch.Tensor, words: list[ocr.Word] | None = None
    ) -> tuple[list[tuple[np.ndarray, float]], float]:
        """(words (quad, score) of one (3, H, W) uint8 image in its own pixels, the detector's loss
        against the true `words` (0 without))."""
        from lamina.models.text import DB_STRIDE

        detector.eval()
        pil = to_pil(image)
        fitted, scale = ocr.fit_image(pil, MAX_SIDE)
        x = ocr.pad_to([ocr.to_tensor(fitted)]).to(self.device).float() / 255
        with self.precision.autocast():
            out = detector(x, thresh=words is not None)
        loss = 0.0
        if words is not None:
            scaled = [ocr.Word(w.text, w.quad * scale) for w in words]
            maps = ocr.db_targets(scaled, x.shape[-2], x.shape[-1], DB_STRIDE)
            targets = {k: torch.from_numpy(v)[None].to(self.device) for k, v in maps.items()}
            loss = float(sum(detector.loss(out, targets).values()))
        prob = out["prob"][0].float().cpu().numpy()
        h, w = fitted.height // DB_STRIDE, fitted.width // DB_STRIDE
        return [(q / scale, s) for q, s in ocr.polygons_from_map(prob[:h, :w], DB_STRIDE)], loss

    def read_image(self, model: nn.Module, image: torch.Tensor, beam: int = 1, found=None) -> list[dict[str, Any]]:
        """The words of one image in reading order: {'polygon', 'text', 'confidence', 'detection_score'}
        (`found`: the detector's words, when they are known already)."""
        detector, recognizer = self.part(model, "detector"), self.part(model, "recognizer")
        if found is None:
            found, _ = self.find(detector, image)
        order = ocr.reading_order([q for q, _ in found])
        found = [found[i] for i in order]
        words = [{"polygon": np.round(q, 1).tolist(), "detection_score": round(s, 4)} for q, s in found]
        if recognizer is not None and found:
            pil = to_pil(image)
            read, _ = self.recognize(recognizer, [ocr.cut(pil, q) for q, _ in found], beam)
            for w, (text, confidence) in zip(words, read):
                w["text"], w["confidence"] = text, round(confidence * w["detection_score"], 4)
        return words

    # ----- metrics ------------------------------------------------------------------------------
    def measure(self, model: nn.Module, data: ocr.TextSet, beam: int = 1) -> dict[str, Any]:
        """Everything the run's parts can measure on `data`, with the raw results for reports:
        {'metrics', 'crops': [transcripts], 'found': [[(quad, text)] per image]}. 'loss' (which picks
        checkpoints) is the sum of the parts' mean validation losses. Each process measures its share;
        every one returns the whole."""
        detector, recognizer = self.part(model, "detector"), self.part(model, "recognizer")
        rank, world = self.dist.rank, self.dist.world
        out: dict[str, Any] = {"metrics": {"loss": 0.0}, "crops": None, "found": None}
        if recognizer is not None and data.crops:
            mine = list(range(rank, len(data.crops), world))
            read, loss = self.recognize(recognizer, [data.crops[i] for i in mine], beam, [data.texts[i] for i in mine])
            share = [(loss * len(mine), [(i, text) for i, (text, _) in zip(mine, read)])]
            texts = [""] * len(data.crops)
            total = 0.0
            for part_loss, part in self.dist.gather_batches(share) if world > 1 else share:
                total += part_loss
                for i, text in part:
                    texts[i] = text
            out["crops"] = texts
            out["metrics"]["loss"] += total / len(data.crops)
            out["metrics"].update(metrics.word_accuracy(data.texts, texts))
        if detector is not None and data.images:
            found, total = [], 0.0
            for i in range(rank, len(data.images), world):
                item = data.images[i]
                image = ocr.to_tensor(item.pil())
                quads, loss = self.find(detector, image, item.words)
                total += loss
                if recognizer is not None:
                    words = self.read_image(model, image, beam, quads)
                    found.append((i, [(np.array(w["polygon"]), w["text"]) for w in words]))
                else:
                    found.append((i, [(q, None) for q, _ in quads]))
            share = [(total, found)]
            every: list = [None] * len(data.images)
            total = 0.0
            for part_loss, part in self.dist.gather_batches(share) if world > 1 else share:
                total += part_loss
                for i, words in part:
                    every[i] = words
            truth = [[(w.quad, w.text) for w in item.words] for item in data.images]
            spotted = metrics.text_spotting(every, truth)
            keys = ["precision", "recall", "hmean"] + (["e2e_precision", "e2e_recall", "e2e_f"] if recognizer else [])
            out["metrics"]["loss"] += total / len(data.images)
            out["metrics"].update({k: spotted[k] for k in keys})
            out["found"] = every
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: ocr.TextSet, tta: bool | None = None) -> dict[str, float]:
        return self.measure(model, batches)["metrics"]

    def warnings(self, history: list[dict[str, Any]], metrics: dict[str, Any], meta: dict[str, Any]) -> list[str]:
        found = super().warnings(history, metrics, meta)
        test = metrics.get("test", metrics.get("val", {}))
        if test.get("word_accuracy", 1) < 0.05:
            found.append("the recognizer reads almost no word right: train longer (--time-budget)")
        if test.get("hmean", 1) < 0.05:
            found.append("the detector finds almost no word: train longer (--time-budget), or try a lower --lr")
        return found

    # ----- using a trained run ------------------------------------------------------------------
    def report(self, model: nn.Module, meta: dict[str, Any], data: str, split: str, out_dir: Path,
               beam: int | None = None) -> dict[str, Any]:  # fmt: skip
        """The metrics, by font family and by photograph where the data records them; predictions.tsv
        (each crop's truth and reading) and gallery.png (the first test images with their words)."""
        from lamina.viz.read import draw_words, gallery

        if not self.has_split(data, split):
            raise LaminaError(f"{data} has no {split} split")
        beam = beam or 1
        if beam < 1:
            raise UsageError(f"--beam must be at least 1, not {beam}")
        self.vocab = CharVocab(meta.get("alphabet", synthtext.ALPHABET), specials=True)
        dataset = self.load_split(data, split)
        if not (dataset.images or dataset.crops):
            raise LaminaError(f"the {split} split of {data} holds no words to measure")
        if self.part(model, "detector") is None:
            dataset = ocr.TextSet([], dataset.crops, dataset.texts, dataset.groups)
        measured = self.measure(model, dataset, beam)
        found = dict(measured["metrics"])
        out_dir.mkdir(parents=True, exist_ok=True)
        files, plots = [], []
        if measured["crops"] is not None:
            for key in ("font", "photo"):
                groups: dict[str, list[int]] = {}
                for i, g in enumerate(dataset.groups):
                    if g.get(key):
                        groups.setdefault(g[key], []).append(i)
                if groups:
                    found[f"by_{'background' if key == 'photo' else key}"] = {
                        name: {**metrics.word_accuracy([dataset.texts[i] for i in rows],
                                                       [measured["crops"][i] for i in rows]), "n": len(rows)}
                        for name, rows in sorted(groups.items())
                    }  # fmt: skip
            lines = ["truth\tread\tfont\tphoto"] + [
                f"{t}\t{r}\t{g.get('font', '')}\t{g.get('photo', '')}"
                for t, r, g in zip(dataset.texts, measured["crops"], dataset.groups)
            ]
            path = out_dir / "predictions.tsv"
            ckpt.atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
            files.append(str(path))
        if measured["found"] is not None:
            by_photo: dict[str, list[int]] = {}
            for i, item in enumerate(dataset.images):
                if item.photo:
                    by_photo.setdefault(item.photo, []).append(i)
            for photo, rows in by_photo.items():
                spotted = metrics.text_spotting(
                    [measured["found"][i] for i in rows],
                    [[(w.quad, w.text) for w in dataset.images[i].words] for i in rows],
                )
                row = found.setdefault("by_background", {}).setdefault(photo, {})
                row.update({"hmean": spotted["hmean"], **({"e2e_f": spotted["e2e_f"]} if "e2e_f" in found else {}),
                            "images": len(rows)})  # fmt: skip
            pictures = []
            for item, words in zip(dataset.images[:GALLERY], measured["found"][:GALLERY]):
                drawn = [{"polygon": q.tolist(), "text": t} for q, t in words]
                pictures.append(draw_words(item.pil(), drawn, [{"polygon": w.quad.tolist()} for w in item.words]))
            if pictures:
                plots.append(str(gallery(pictures, out_dir / "gallery.png")))
        return {"n": len(dataset.images) or len(dataset.crops), "metrics": found, "plots": plots, "files": files,
                "decoding": {"beam": beam}}  # fmt: skip

    def read(self, model: nn.Module, meta: dict[str, Any], images: list, beam: int | None = None,
             out: str | None = None) -> dict[str, Any]:  # fmt: skip
        """The words of each image (a path, PIL image, array or tensor) in reading order. A
        recognizer-only run reads each image as one word crop. A bad image gets {'input', 'error'}."""
        from lamina.viz.read import draw_words, save_png

        beam = beam or 1
        if beam < 1:
            raise UsageError(f"--beam must be at least 1, not {beam}")
        self.vocab = CharVocab(meta.get("alphabet", synthtext.ALPHABET), specials=True)
        detector, recognizer = self.part(model, "detector"), self.part(model, "recognizer")
        started, results = time.perf_counter(), []
        for i, source in enumerate(images):
            name = str(source) if isinstance(source, (str, Path)) else f"<image {i}>"
            try:
                image = load_image(source, 3, 0, name)  # any size and mode, as detect reads
            except LaminaError as exc:
                results.append({"input": name, "error": str(exc)})
                continue
            t0 = time.perf_counter()
            if detector is None:
                crop = ocr.decode_crop(to_pil(image))
                text, confidence = self.recognize(recognizer, [crop], beam)[0][0]
                results.append({"input": name, "text": text, "confidence": round(confidence, 4),
                                "seconds": round(time.perf_counter() - t0, 4)})  # fmt: skip
                continue
            words = self.read_image(model, image, beam)
            result = {"input": name, "width": image.shape[-1], "height": image.shape[-2], "words": words,
                      "seconds": round(time.perf_counter() - t0, 4)}  # fmt: skip
            if recognizer is not None:
                result["text"] = " ".join(w["text"] for w in words)
            if out:
                stem = Path(name).stem if isinstance(source, (str, Path)) else f"image-{i}"
                picture = draw_words(to_pil(image), words)
                result["drawn"] = str(save_png(picture, Path(out) / f"{stem}.words.png"))
            results.append(result)
        return {"results": results, "seconds": round(time.perf_counter() - started, 3)}

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list, **options) -> dict[str, Any]:
        return self.read(model, meta, inputs, **options)

    def export_graphs(self, model: nn.Module, meta: dict[str, Any]) -> list[ExportSpec]:
        """The recognizer (word crops in, per-column log-probabilities out) and the detector (images
        in, the word probability map out) of the parts the run has; finding words in the map, cutting
        and straightening the crops stay outside (lamina.data.ocr, described in the JSON)."""
        specs = []
        recognizer, detector = self.part(model, "recognizer"), self.part(model, "detector")
        if recognizer is not None:
            specs.append(self.recognizer_graph(recognizer, meta))
        if detector is not None:
            specs.append(self.detector_graph(detector, name="detector" if specs else ""))
        return specs

    def recognizer_graph(self, recognizer: nn.Module, meta: dict[str, Any]) -> ExportSpec:
        """TorchScript exporter: torch.export unrolls the LSTM and stops at the dynamic width."""
        from lamina.models.text import CROP_HEIGHT

        alphabet = meta.get("alphabet", synthtext.ALPHABET)
        preprocessing = {
            "crops": {
                "dtype": f"uint8, 0-255, (batch, 1, {CROP_HEIGHT}, width) grey, width a multiple of 4",
                "cut": f"the word's quadrilateral, perspective undone, grown by {ocr.CROP_PAD[0]:g} (sides) and "
                f"{ocr.CROP_PAD[1]:g} (top, bottom) of its height, scaled to height {CROP_HEIGHT} "
                f"(width at most {ocr.MAX_CROP_WIDTH})",
                "padding": "each crop padded on the right with its own last column to the batch's width",
                "normalisation": "in the graph",
            },
            "vocabulary": {"blank": 0, "first_character_id": CharVocab(alphabet, True).offset, "characters": alphabet},
            "decode": "greedy CTC over the first width // 4 columns of each crop: the most likely id per column, "
            "repeats merged, blanks (0) dropped; id i >= first_character_id is characters[i - first_character_id]",
        }
        example = torch.randint(0, 256, (2, 1, CROP_HEIGHT, 96), dtype=torch.uint8)
        dynamic = {"crops": {0: "batch", 3: "width"}, "log_probs": {0: "batch", 1: "columns"}}
        return ExportSpec(CRNNGraph(recognizer), (example,), ["crops"], ["log_probs"], dynamic, preprocessing,
                          "torchscript")  # fmt: skip

    def detector_graph(self, detector: nn.Module, name: str) -> ExportSpec:
        from lamina.models.text import DB_STRIDE

        preprocessing = {
            "image": {
                "dtype": "uint8, 0-255, (batch, 3, height, width) RGB, height and width multiples of 32",
                "resize": f"longer side at most {MAX_SIDE} (bilinear, never up), then zeros right and below",
                "normalisation": "in the graph",
            },
            "decode": f"prob (batch, height / {DB_STRIDE}, width / {DB_STRIDE}): probability that a pixel lies in "
            "a word's shrunk core; a word is a connected region of prob > 0.3 whose mean prob is at least 0.5, "
            f"as its smallest rotated rectangle grown by area * {ocr.UNCLIP:g} / perimeter, times {DB_STRIDE} "
            "(lamina.data.ocr.polygons_from_map)",
        }
        example = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
        dynamic = {"image": {0: "batch", 2: "height", 3: "width"}, "prob": {0: "batch", 1: "rows", 2: "columns"}}
        return ExportSpec(DBNetGraph(detector), (example,), ["image"], ["prob"], dynamic, preprocessing, name=name)

    # ----- on a terminal -------------------------------------------------------------------------
    # ----- looking inside -------------------------------------------------------------------------
    @staticmethod
    def detector_of(model: nn.Module) -> nn.Module | None:
        from lamina.models.text import DBNet

        return model if isinstance(model, DBNet) else getattr(model, "detector", None)

    def sample_inputs(self, meta: dict[str, Any], limit: int = 2) -> list:
        """The first test scenes (a reader or detector run); a recognizer's crops are no scenes."""
        try:
            return [image.pil() for image in self.load_split(self.cfg.data.name, "test").images[:limit]]
        except (LaminaError, OSError):
            return []

    def probe(self, model: nn.Module, meta: dict[str, Any]):
        """Images at their own size, padded to a multiple of 32 as the detector takes them; the stem and
        stages of the detector's backbone."""
        import torch.nn.functional as F

        from lamina.insight.maps import Probe

        detector = self.detector_of(model)
        if detector is None:
            raise UsageError("a recognizer-only run has no detector to look inside; the views that do: filters")

        def load(source) -> torch.Tensor:
            x = load_image(source, 3, 0).to(self.device).float() / 255
            h, w = x.shape[-2:]
            return F.pad(x, (0, -w % 32, 0, -h % 32))

        features = detector.backbone.features
        return Probe(
            load=load,
            forward=detector,
            stages=[("stem", features[0]), *((f"stage {i}", s) for i, s in enumerate(features[1:], 1))],
        )

    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> str:
        test = metrics.get("test", {})
        shown = [(k, label) for k, label in (("e2e_f", "end-to-end F"), ("hmean", "detection H-mean"),
                                             ("word_accuracy", "word accuracy")) if k in test]  # fmt: skip
        return ", ".join(f"test {label} {test[k]:.2%}" for k, label in shown)

    @classmethod
    def render_read(cls, result: dict[str, Any], out: TextIO) -> None:
        for r in result["results"]:
            if "error" in r:
                continue
            if "words" not in r:
                print(f"{r['input']}: {r['text']} ({r['confidence']:.2f})", file=out)
                continue
            n = len(r["words"])
            shown = r.get("text", f"{n} word region{'s' * (n != 1)}")
            print(f"{r['input']}: {n} word{'s' * (n != 1)}" + (f": {shown}" if n else ""), file=out)
            if "drawn" in r:
                print(f"wrote {r['drawn']}", file=out)

    render_predict = render_read


class CRNNGraph(nn.Module):
    """(B, 1, 32, W) uint8 crops -> (B, W / 4, V) log-probabilities, CTC's blank at id 0."""

    def __init__(self, recognizer: nn.Module):
        super().__init__()
        self.recognizer = recognizer

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        logits, _ = self.recognizer(crops.float() / 255)
        return logits.float().log_softmax(-1)


class DBNetGraph(nn.Module):
    """(B, 3, H, W) uint8 images -> (B, H / 2, W / 2) word-core probabilities."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.detector(image.float() / 255)["prob"].float()
