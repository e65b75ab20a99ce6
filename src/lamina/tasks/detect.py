"""Object detection with boxes and instance masks: synthetic scenes or any COCO-format folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from lamina import metrics
from lamina.commands import Verb, arg
from lamina.config import POSITIVE, DataConfig, setting
from lamina.data import coco, scenes
from lamina.data.images import load_image
from lamina.engine import checkpoint as ckpt
from lamina.engine.loop import StepOutput
from lamina.errors import LaminaError, UsageError
from lamina.insight import views
from lamina.tasks import register_task
from lamina.tasks.base import ExportSpec, Prepared, Task

QUICK_VAL = 100  # validation images scored at each evaluation during training; all of them at the end
GALLERY_SCORE = 0.5  # the gallery draws detections scored at least this (the metrics count every one)

DETECT = Verb(
    "detect",
    "find the objects in images with a detect run: class, score, box and mask of each",
    (
        arg("images", nargs="+", metavar="IMAGE", input="image"),
        arg("--threshold", type=float, metavar="P", help="keep objects scored at least P (0 to 1)"),
        arg("--out", metavar="DIR", path=True, help="write each image with its objects drawn on it into DIR"),
    ),
    returns="{results: [{input, width, height, objects: [{label, score, box: [x1, y1, x2, y2], area, "
    "mask: COCO RLE}], drawn, seconds}], threshold, seconds}",
)


@dataclass
class DetectData(DataConfig):
    """Scenes and their augmentation."""

    name: str = setting(
        scenes.NAME,
        "synth-scenes, or a COCO-format folder (annotations/instances_<split>.json beside the images)",
        flag="--data",
        metavar="NAME|PATH",
    )
    image_size: int = setting(192, "side of synthetic scenes; shorter side images are resized to", check=POSITIVE)
    scenes: int = setting(5000, "synthetic training scenes", check=POSITIVE)
    val_scenes: int = setting(250, "synthetic validation scenes", check=POSITIVE)
    test_scenes: int = setting(500, "synthetic test scenes (objects and photographs never seen in training)",
                               check=POSITIVE)  # fmt: skip
    max_objects: int = setting(8, "at most this many objects in a synthetic scene", check=POSITIVE)
    flip: bool = setting(True, "random horizontal flips in training")
    jitter: float = setting(
        0.4, "scale jitter in training: images scaled by 1 +- jitter, then cropped or padded back",
        check=(lambda v: 0 <= v < 1, "must be in [0, 1)"),
    )  # fmt: skip


@register_task
class DetectTask(Task):
    name = "detect"
    description = "object detection: class, box and mask of every object (Mask R-CNN, FCOS)"
    Data = DetectData
    monitor = ("box_map", "max")
    # AdamW: from scratch, in minutes, it learns several times faster than the reference recipe's SGD
    # (momentum 0.9, weight decay 1e-4): 0.105 against 0.033 validation box mAP@0.5 after 400 steps of
    # 300 s runs (SGD at lr 0.02; AdamW at 2e-3 gave 0.079). A cosine schedule with a short warm-up.
    defaults = {
        "model.name": "maskrcnn",
        "optim.name": "adamw",
        "optim.lr": 1e-3,
        "optim.weight_decay": 0.05,
        "optim.schedule": "cosine",
        "optim.warmup": 0.05,
        "optim.grad_clip": 10.0,
        "train.batch_size": 4,
        "train.eval_every": 400,
        "train.channels_last": False,
    }
    datasets = (scenes.NAME,)
    data_paths = "a COCO-format folder"
    data_model_args = ("num_classes", "image_size")
    resume_keys = ("classes", "image_size")
    transfer = True
    transfer_from = ("classify",)
    libraries = ("torchmetrics", "pycocotools")
    verbs = (DETECT,)
    predict_args = DETECT.args[1:]
    inputs = "image"
    insights = (views.FILTERS, views.ACTIVATIONS, views.SALIENCY, views.GRADCAM)

    # ----- data ---------------------------------------------------------------------------------
    def spec(self) -> scenes.SceneSpec:
        d = self.cfg.data
        return scenes.SceneSpec.for_size(
            d.image_size,
            train=d.scenes,
            val=d.val_scenes,
            test=d.test_scenes,
            max_objects=d.max_objects,
            seed=self.cfg.train.seed,
        )

    def root(self, name: str) -> Path:
        if name == scenes.NAME:
            return scenes.build(self.spec())
        path = Path(name).expanduser()
        if not path.exists() and "/" not in name and not name.startswith(("~", ".")):
            raise UsageError(f"unknown dataset {name!r}; choose from: {', '.join(self.datasets)}, or give a folder")
        return path

    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        d, t = self.cfg.data, self.cfg.train
        root = self.root(d.name)
        classes = ["__background__", *previous_meta["classes"]] if previous_meta else None
        train = coco.read_split(root, "train", classes)
        if len(train.classes) < 2:
            raise LaminaError(f"{d.name}: the training annotations name no object categories")
        val = coco.read_split(root, "val", train.classes) if self.has_split(d.name, "val") else None
        test = coco.read_split(root, "test", train.classes) if self.has_split(d.name, "test") else None
        meta: dict[str, Any] = {"classes": train.classes[1:], "image_size": d.image_size}
        counts = torch.bincount(torch.cat([x["labels"] for x in train.targets]), minlength=len(train.classes))
        meta["data"] = {
            "name": d.name,
            "source": str(root),
            "train": len(train),
            "val": len(val) if val else 0,
            "test": len(test) if test else 0,
            "objects": int(counts.sum()),
            "class_counts": counts[1:].tolist(),
        }
        model_args: dict[str, Any] = {"num_classes": len(train.classes), "image_size": d.image_size}
        if t.init:  # a transferred backbone expects its inputs normalised as when it was trained
            source = ckpt.read_run(t.init).get("meta", {})
            if source.get("mean"):
                c = len(source["mean"])
                model_args["image_mean"] = list(source["mean"]) * (3 // c)
                model_args["image_std"] = list(source["std"]) * (3 // c)
        quick = (
            coco.DetectionSet(val.images[:QUICK_VAL], val.targets[:QUICK_VAL], val.classes, val.keys) if val else None
        )
        return Prepared(
            train=self.batches(train, train=True),
            val=self.batches(quick) if quick else None,
            test=self.batches(test) if test else None,
            final_val=self.batches(val) if val and len(val) > QUICK_VAL else None,
            meta=meta,
            model_args=model_args,
        )

    def batches(self, data: coco.DetectionSet, train: bool = False) -> coco.DetectionBatches:
        d, t = self.cfg.data, self.cfg.train
        return coco.DetectionBatches(
            data,
            self.global_batch if train else max(t.batch_size, 4),
            self.device,
            train=train,
            seed=t.seed,
            size=d.image_size,
            flip=d.flip,
            scale=(1 - d.jitter, 1 + d.jitter),
        )

    def has_split(self, data: str, split: str) -> bool:
        if data == scenes.NAME:
            return split in coco.SPLITS
        try:
            found = coco.layout(Path(data).expanduser())
        except LaminaError:
            return False
        return split in found or "all" in found

    # ----- model --------------------------------------------------------------------------------
    def setup_model(self, model: nn.Module, meta: dict[str, Any], resume: bool) -> None:
        t = self.cfg.train
        if t.init and not resume:
            self.init_from(model, t.init)
        if t.freeze:
            model.backbone.features.requires_grad_(False)  # the pyramid and the heads still learn

    def init_from(self, model: nn.Module, run_dir: str | Path) -> None:
        """The backbone of a classify ResNet (or of another detect run) into `model`."""
        from lamina.models.detection import load_classifier_backbone

        info = ckpt.read_run(run_dir)
        if info["task"] not in (self.name, *self.transfer_from):
            raise LaminaError(f"--init {run_dir}: a {info['task']!r} run has no backbone a detector can start from")
        state = ckpt.load_weights(Path(run_dir) / ckpt.WEIGHTS_FILE)
        if info["task"] == self.name:
            state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.features.")}
        try:
            load_classifier_backbone(model, state)
        except ValueError as exc:
            raise LaminaError(
                f"the backbone of {run_dir} ({info['model']['name']}) does not fit {self.cfg.model.name}: {exc}"
            ) from None

    # ----- loss, metrics ------------------------------------------------------------------------
    def step(self, model: nn.Module, batch) -> StepOutput:
        images, targets = batch  # [(3, H, W) uint8], [{'boxes', 'labels', 'masks'}]
        losses = model([x.float() / 255 for x in images], targets)  # {name: mean loss}
        n = len(images)
        return StepOutput(sum(losses.values()), n, {k.removeprefix("loss_"): v.detach() * n for k, v in losses.items()})

    @staticmethod
    def has_masks(model: nn.Module) -> bool:
        return getattr(getattr(model, "roi_heads", None), "has_mask", lambda: False)()

    @torch.no_grad()
    def detect_batch(self, model: nn.Module, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections of a list of (3, H, W) uint8 images (or float in [0, 1]), on the CPU, masks (N, H, W)
        bool at 0.5."""
        model.eval()
        with self.precision.autocast():
            out = model([x.float() if x.is_floating_point() else x.float() / 255 for x in images])
        found = []
        for o in out:
            r = {k: o[k].float().cpu() if k != "labels" else o[k].cpu() for k in ("boxes", "scores", "labels")}
            if "masks" in o:
                r["masks"] = o["masks"][:, 0].cpu() >= 0.5  # (N, H, W): torchvision pastes soft masks
            found.append(r)
        return found

    def detections(self, model: nn.Module, batches: coco.DetectionBatches) -> tuple[list, list, list]:
        """(images, predictions, targets) of a whole stream; each process detects its share."""
        parts = []
        for images, targets in batches.epoch(0, 0, self.dist.rank, self.dist.world):
            preds = self.detect_batch(model, images)
            truth = [{"boxes": t["boxes"].cpu(), "labels": t["labels"].cpu(), "masks": t["masks"].cpu().bool()}
                     for t in targets]  # fmt: skip
            parts.append((images, preds, truth))
        parts = self.dist.gather_batches(parts)
        return [x for p in parts for x in p[0]], [x for p in parts for x in p[1]], [x for p in parts for x in p[2]]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: coco.DetectionBatches, tta: bool | None = None) -> dict[str, float]:
        _, preds, targets = self.detections(model, batches)
        masks = self.has_masks(model)
        if not masks:
            preds = [{k: v for k, v in p.items() if k != "masks"} for p in preds]
        found = metrics.detection_map(preds, targets, batches.data.classes, masks=masks)
        keys = ["box_map", "box_map_50", "box_map_75", "box_mar_100"]
        keys += ["mask_map", "mask_map_50", "mask_map_75", "mask_mar_100"] if masks else []
        return {k: found[k] for k in keys}

    def warnings(self, history: list[dict[str, Any]], metrics: dict[str, Any], meta: dict[str, Any]) -> list[str]:
        found = super().warnings(history, metrics, meta)
        for split in ("test", "val"):
            value = metrics.get(split, {}).get("box_map_50")
            if value is not None:
                if value < 0.05:
                    found.append(
                        f"{split} box mAP@0.5 is {value:.3f}: the detector finds almost nothing; train longer "
                        "(--time-budget), or try a lower --lr"
                    )
                break
        return found

    # ----- using a trained run ------------------------------------------------------------------
    def report(self, model: nn.Module, meta: dict[str, Any], data: str, split: str, out_dir: Path) -> dict[str, Any]:
        """COCO metrics for boxes and masks, per class and by object size; gallery.png (the first eight
        images, their detections scored at least GALLERY_SCORE beside the truth) and precision-recall.png."""
        from lamina.viz.detect import plot_gallery, plot_precision_recall

        classes = ["__background__", *meta["classes"]]
        root = self.root(data)
        if not self.has_split(data, split):
            raise LaminaError(f"{data} has no {split} split")
        dataset = coco.read_split(root, split, classes)
        images, preds, targets = self.detections(model, self.batches(dataset))
        masks = self.has_masks(model)
        if not masks:
            preds = [{k: v for k, v in p.items() if k != "masks"} for p in preds]
        found = metrics.detection_map(preds, targets, classes, masks=masks, curves=True)
        curves = {k: found.pop(f"{k}_precision") for k in ("box", "mask") if f"{k}_precision" in found}
        out_dir.mkdir(parents=True, exist_ok=True)
        shown = [{k: v[p["scores"] >= GALLERY_SCORE] for k, v in p.items()} for p in preds[:8]]
        plots = [
            plot_gallery(images[:8], shown, targets[:8], classes, out_dir / "gallery.png", GALLERY_SCORE),
            plot_precision_recall(curves, out_dir / "precision-recall.png"),
        ]
        return {"n": len(images), "metrics": found, "plots": [str(p) for p in plots]}

    def detect(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        images: list,
        threshold: float = 0.5,
        out: str | None = None,
    ) -> dict[str, Any]:
        """Objects in each image (a path, a PIL image, an (H, W[, C]) array or a (3, H, W) tensor):
        {'results': [{'input', 'width', 'height', 'objects': [{'label', 'score', 'box', 'area',
        'mask'}], 'seconds'[, 'drawn']}]}. A mask is COCO's RLE ({'size', 'counts'}); with `out`, each
        image is written there with its objects drawn. A bad image gets {'input', 'error'}."""
        from lamina.viz.detect import draw, save_image

        if not 0 <= threshold <= 1:
            raise UsageError(f"--threshold must be in [0, 1], not {threshold:g}")
        classes = ["__background__", *meta["classes"]]
        started, results = time.perf_counter(), []
        for i, source in enumerate(images):
            name = str(source) if isinstance(source, (str, Path)) else f"<image {i}>"
            try:
                image = read_image(source, name)
            except LaminaError as exc:
                results.append({"input": name, "error": str(exc)})
                continue
            t0 = time.perf_counter()
            found = self.detect_batch(model, [image.to(self.device)])[0]
            seconds = time.perf_counter() - t0
            keep = found["scores"] >= threshold
            found = {k: v[keep] for k, v in found.items()}
            objects = []
            for j in range(len(found["labels"])):
                obj = {
                    "label": classes[int(found["labels"][j])],
                    "score": round(float(found["scores"][j]), 4),
                    "box": [round(float(v), 1) for v in found["boxes"][j]],
                }
                if "masks" in found:
                    encoded = coco.encode_mask(found["masks"][j].numpy()) if found["masks"][j].any() else None
                    obj["area"] = encoded["area"] if encoded else 0
                    obj["mask"] = encoded["segmentation"] if encoded else None
                objects.append(obj)
            result = {"input": name, "width": image.shape[-1], "height": image.shape[-2], "objects": objects,
                      "seconds": round(seconds, 4)}  # fmt: skip
            if out:
                stem = Path(name).stem if isinstance(source, (str, Path)) else f"image-{i}"
                drawn = draw(image, found, classes)
                result["drawn"] = str(save_image(drawn, Path(out) / f"{stem}.detections.png"))
            results.append(result)
        return {"results": results, "threshold": threshold, "seconds": round(time.perf_counter() - started, 3)}

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list, **options) -> dict[str, Any]:
        return self.detect(model, meta, inputs, **options)

    def export_graphs(self, model: nn.Module, meta: dict[str, Any]) -> list[ExportSpec]:
        """One image of any size in (uint8 pixels); its objects out, resizing, normalisation, NMS and
        mask pasting in the graph. One image per call: torchvision's detectors loop over the images
        of a batch in Python, which tracing unrolls into a fixed batch size. TorchScript exporter, as
        torchvision's own ONNX tests: torch.export stops at the data-dependent number of boxes."""
        masks = self.has_masks(model)
        outputs = ["boxes", "labels", "scores", *(["masks"] if masks else [])]
        dynamic = {"image": {1: "height", 2: "width"}, **{name: {0: "objects"} for name in outputs}}
        if masks:
            dynamic["masks"] = {0: "objects", 1: "height", 2: "width"}
        size = meta["image_size"]
        preprocessing = {
            "image": {
                "dtype": "uint8, 0-255, (3, height, width) RGB, any size: one image per call",
                "resize": f"in the graph (shorter side to {size} px, longer at most {size * 5 // 3})",
                "normalisation": "in the graph",
            },
            "classes": ["__background__", *meta["classes"]],
            "decode": "object i: classes[labels[i]], scores[i], boxes[i] = [x1, y1, x2, y2] in the image's "
            "pixels, sorted by score; objects scored under "
            f"{self.score_floor(model):g} are left out (lamina detect shows those from 0.5)"
            + ("; masks[i] (height, width) in [0, 1], the object's pixels from 0.5" if masks else ""),
        }
        example = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
        return [ExportSpec(DetectGraph(model), (example,), ["image"], outputs, dynamic, preprocessing, "torchscript")]

    # ----- pushing on it ---------------------------------------------------------------------------
    def attack(
        self, model: nn.Module, meta: dict[str, Any], method: str = "pgd", eps: list[float] | None = None,
        steps: int = 10, step_size: float | None = None, target: str | None = None, limit: int = 50,
        out_dir: Path | None = None, seed: int = 0,
    ) -> dict[str, Any]:  # fmt: skip
        """Box (and mask) mAP on adversarial versions of the first `limit` test scenes, for each eps: each
        image moved to raise the detector's own training loss on its true objects (every head's)."""
        from lamina.adversarial import check_options
        from lamina.viz.attack import plot_attack_curve

        if target is not None:
            raise UsageError("--target applies to classify runs; a detector is attacked untargeted")
        eps = check_options(eps if eps is not None else [0.0, 0.005, 0.01, 0.02], steps, step_size, limit)
        classes = ["__background__", *meta["classes"]]
        dataset = coco.read_split(self.root(self.cfg.data.name), "test", classes)
        dataset = coco.DetectionSet(dataset.images[:limit], dataset.targets[:limit], classes, dataset.keys[:limit])
        with torch.random.fork_rng(devices=[]):  # the heads' region sampling in training mode, from --seed
            torch.manual_seed(seed)
            try:
                curve = [self._attacked_map(model, dataset, method, e, steps, step_size, seed) for e in eps]
            finally:
                model.eval()
        out_dir = Path(out_dir or self.run_dir or ".")
        out_dir.mkdir(parents=True, exist_ok=True)
        what = method.upper() + (f", {steps} steps" if method == "pgd" else "")
        plot = plot_attack_curve(curve, out_dir / f"attack-{method}.png", what, "box_map_50")
        return {"method": method, "steps": steps if method == "pgd" else 1,
                "step_size": step_size or (2.5 * max(eps) / steps if method == "pgd" else max(eps)), "target": None,
                "split": "test", "n": len(dataset), "curve": curve, "plots": [str(plot)]}  # fmt: skip

    def _attacked_map(self, model, dataset, method, eps, steps, step_size, seed) -> dict[str, float]:
        from lamina import adversarial

        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        generator = torch.Generator().manual_seed(seed)
        masks = self.has_masks(model)
        preds, truth = [], []
        for images, targets in self.batches(dataset).epoch(0):
            adv = []
            for x, t in zip(images, targets):
                goal = {k: t[k] for k in ("boxes", "labels", "masks") if k in t}

                def loss(v: torch.Tensor, goal=goal) -> torch.Tensor:
                    model.train()
                    for m in norms:  # training-mode losses, evaluation-mode statistics
                        m.eval()
                    return sum(model([v[0]], [goal]).values())

                adv.append(adversarial.attack(method, loss, x[None].float() / 255, eps, steps, step_size,
                                              generator=generator)[0])  # fmt: skip
            preds += self.detect_batch(model, adv)
            truth += [{"boxes": t["boxes"].cpu(), "labels": t["labels"].cpu(), "masks": t["masks"].cpu().bool()}
                      for t in targets]  # fmt: skip
        if not masks:
            preds = [{k: v for k, v in p.items() if k != "masks"} for p in preds]
        found = metrics.detection_map(preds, truth, dataset.classes, masks=masks)
        return {"eps": eps, **{k: found[k] for k in ("box_map", "box_map_50", "mask_map") if k in found}}

    # ----- looking inside -------------------------------------------------------------------------
    def probe(self, model: nn.Module, meta: dict[str, Any], threshold: float = 0.5, most: int = 6):
        """Images at their own size; the backbone's stem and stages; as scores, each detected object's
        (at least `threshold`, at most `most`, else the best three), differentiable through torchvision's
        box selection."""
        from lamina.insight.maps import Probe, Target

        features = model.backbone.features
        classes = meta["classes"]

        def targets(x: torch.Tensor, wanted: str | None) -> list[Target]:
            model.eval()
            found = model([x[0]])[0]
            keep = [i for i, label in enumerate(found["labels"].tolist())
                    if wanted is None or classes[label - 1] == wanted or str(label - 1) == str(wanted)]  # fmt: skip
            if wanted is not None and wanted not in classes and not str(wanted).isdigit():
                raise UsageError(f"unknown class {wanted!r}; choose a name or index from: {', '.join(classes)}")
            scores = found["scores"].detach()
            sure = [i for i in keep if float(scores[i]) >= threshold][:most] or keep[:3]
            return [
                Target(f"{classes[int(found['labels'][i]) - 1]} {float(scores[i]):.2f}", found["scores"][i],
                       [round(v, 1) for v in found["boxes"][i].tolist()])
                for i in sure
            ]  # fmt: skip

        return Probe(
            load=lambda source: load_image(source, 3, 0).to(self.device).float() / 255,
            forward=lambda x: model([x[0]]),
            stages=[("stem", features[0]), *((f"stage {i}", s) for i, s in enumerate(features[1:], 1))],
            targets=targets,
        )

    def sample_inputs(self, meta: dict[str, Any], limit: int = 2) -> list:
        """The first test scenes of the run's data."""
        try:
            root = self.root(self.cfg.data.name)
            dataset = coco.read_split(root, "test", ["__background__", *meta["classes"]])
        except (LaminaError, OSError):
            return []
        return dataset.images[:limit]

    @staticmethod
    def score_floor(model: nn.Module) -> float:
        heads = getattr(model, "roi_heads", model)  # Mask R-CNN's box head, or FCOS itself
        return float(getattr(heads, "score_thresh", 0.0))

    # ----- on a terminal -------------------------------------------------------------------------
    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> str:
        test = metrics.get("test", {})
        if "box_map_50" not in test:
            return ""
        mask = f", mask mAP {test['mask_map']:.3f}" if "mask_map" in test else ""
        return f"test box mAP@0.5 {test['box_map_50']:.3f}, box mAP {test['box_map']:.3f}{mask}"

    @classmethod
    def render_detect(cls, result: dict[str, Any], out: TextIO) -> None:
        for r in result["results"]:
            if "objects" not in r:
                continue
            shown = ", ".join(f"{o['label']} {o['score']:.2f} [{', '.join(f'{v:g}' for v in o['box'])}]"
                              for o in r["objects"])  # fmt: skip
            print(f"{r['input']}: {len(r['objects'])} object{'s' * (len(r['objects']) != 1)}"
                  + (f": {shown}" if shown else ""), file=out)  # fmt: skip
            if "drawn" in r:
                print(f"wrote {r['drawn']}", file=out)

    render_predict = render_detect


class DetectGraph(nn.Module):
    """(3, H, W) uint8 -> boxes (N, 4), labels (N,), scores (N,)[, masks (N, H, W) in [0, 1]] of one image.

    An image without objects gives N = 0, whichever image the graph was traced on: torchvision
    scripts the branches on the number of boxes (its batched NMS returns early on none) when it is
    traced, so tracing does not bake in the example's count (tests/test_export.py checks both ways)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found = self.model([image.float() / 255])[0]
        out = (found["boxes"], found["labels"], found["scores"])
        return (*out, found["masks"][:, 0]) if "masks" in found else out


def read_image(source, name: str) -> torch.Tensor:
    """(3, H, W) uint8 of a path, PIL image, array or tensor, any size and mode (classify's reader, unresized)."""
    return load_image(source, 3, 0, name)
