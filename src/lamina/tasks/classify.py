"""Image classification: Fashion-MNIST or any folder of class sub-folders, MLPs and CNNs, transfer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from lamina import metrics
from lamina.commands import arg
from lamina.config import NON_NEGATIVE, PROBABILITY, DataConfig, setting
from lamina.data import images as img
from lamina.data.sources import FASHION_MNIST
from lamina.engine import checkpoint as ckpt
from lamina.engine.loop import StepOutput
from lamina.errors import LaminaError, UsageError, choices
from lamina.insight import views
from lamina.tasks import register_task
from lamina.tasks.base import ExportSpec, Prepared, Task


@dataclass
class ClassifyData(DataConfig):
    """Images and their augmentation."""

    name: str = setting(
        "fashion-mnist",
        "fashion-mnist, or a folder of class sub-folders of images (optionally split into train/, val/, test/)",
        flag="--data",
        metavar="NAME|PATH",
    )
    val_fraction: float = setting(
        0.1,
        "held out from training (stratified, deterministic) when there is no val/ split",
        check=(lambda v: 0 <= v < 1, "must be in [0, 1)"),
    )
    classes: list[int] | None = setting(None, "keep only these class indices (relabelled 0..k-1), e.g. [5,6,7]")
    per_class: int = setting(0, "at most this many training images per class (0: all)", check=NON_NEGATIVE)
    image_size: int = setting(
        0, "side of the square images fed to the model (0: the dataset's own, at most 64)", check=NON_NEGATIVE
    )
    flip: bool = setting(True, "random horizontal flips in training")
    # Flips only by default: shifted crops pay off in long runs, not in a few minutes.
    crop_padding: int = setting(0, "random crops after zero padding by this many pixels (0: off)", check=NON_NEGATIVE)
    erase: float = setting(0.0, "probability of random erasing per training image (0: off)", check=PROBABILITY)
    tta: bool = setting(True, "average predictions over the image and its mirror (when trained with flips)")


@register_task
class ClassifyTask(Task):
    name = "classify"
    description = "image classification with MLPs and convolutional networks"
    Data = ClassifyData
    monitor = ("accuracy", "max")
    # batch 0: 256 on large data, smaller where 256 would leave too few steps per epoch (settle_batch_size)
    defaults = {"model.name": "vgg-s", "optim.lr": 0.2, "train.label_smoothing": 0.1, "train.batch_size": 0}
    datasets = (FASHION_MNIST.name,)
    data_paths = "a folder of class sub-folders of images"
    data_model_args = ("in_channels", "num_classes", "image_size")
    resume_keys = ("classes", "channels", "image_size")
    transfer = True
    libraries = ("torchmetrics",)
    predict_args = (arg("--top-k", type=int, metavar="K", help="how many of the most likely classes to show"),)
    inputs = "image"
    insights = (views.FILTERS, views.ACTIVATIONS, views.EMBEDDINGS, views.SALIENCY, views.GRADCAM)
    # What a recipe for a few minutes on a CPU can gain from: the network, the step size and its decay,
    # regularisation, and the augmentation that pays off in longer runs.
    search_space = {
        "model.name": ["vgg-s", "vgg-m", "resnet8", "lenet5"],
        "optim.lr": {"low": 0.02, "high": 0.8, "log": True},
        "optim.weight_decay": {"low": 1e-5, "high": 5e-3, "log": True},
        "optim.warmup": {"low": 0.05, "high": 0.4},
        "train.batch_size": [0, 64, 128, 512],  # 0: the task chooses (256 on Fashion-MNIST), as by default
        "train.label_smoothing": {"low": 0.0, "high": 0.2},
        "data.crop_padding": [0, 1, 2],
        "data.erase": {"low": 0.0, "high": 0.5},
    }

    # ----- data ---------------------------------------------------------------------------------
    def load_splits(
        self, name: str, *, channels: int = 0, size: int = 0, only: str | None = None
    ) -> dict[str, img.ImageSet | None]:
        """'train', 'val' and 'test' of a named dataset or a folder (None where there is no such split).

        Without a val/ folder, validation is a stratified hold-out of the training images (data.val_fraction);
        channels and size are the run's when given, otherwise read off the training images. With `only`,
        just that split is decoded (and the training images when validation is carved out of them).
        """
        d = self.cfg.data
        if name == FASHION_MNIST.name:
            splits = {"test": img.fashion_mnist("test") if only in (None, "test") else None}
            if only != "test":
                splits["train"], splits["val"] = img.stratified_split(img.fashion_mnist("train"), d.val_fraction)
            return splits
        path = Path(name).expanduser()
        if not path.exists() and "/" not in name and not name.startswith(("~", ".")):
            raise UsageError(f"unknown dataset {name!r}; choose from: {choices(self.datasets)}, or give a folder path")
        layout = img.folder_layout(path)
        if "train" not in layout:
            raise LaminaError(f"{path} has {', '.join(sorted(layout))}/ but no train/ folder to learn from")
        classes, items = img.scan_folder(layout["train"])
        if not channels:
            channels, auto_size = img.probe_images(items)
            size = d.image_size or auto_size
        wanted = (
            set(layout) if only is None else {only} | ({"train"} if only == "val" and "val" not in layout else set())
        )
        loaded = {s: img.image_folder(layout[s], classes, channels, size, s) for s in wanted if s in layout}
        if "val" not in layout and "train" in loaded:
            loaded["train"], loaded["val"] = img.stratified_split(loaded["train"], d.val_fraction)
        return {s: loaded.get(s) for s in ("train", "val", "test")}

    def _own_classes(self, name: str, data: img.ImageSet | None) -> img.ImageSet | None:
        # data.classes holds class indices of the run's own dataset; other datasets are matched by name.
        if data is None or self.normalise_data(name) != self.cfg.data.name:
            return data
        return img.keep_classes(data, self.cfg.data.classes)

    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        d, t = self.cfg.data, self.cfg.train
        splits = {k: self._own_classes(d.name, v) for k, v in self.load_splits(d.name).items()}
        train = img.limit_per_class(splits["train"], d.per_class)
        if len(train) == 0:
            raise LaminaError(f"no training images left in {d.name} after data.classes / data.per_class")
        self.settle_batch_size(len(train))
        size = d.image_size or train.images.shape[-1]
        train = img.ImageSet(img.resize(train.images, size), train.labels, train.classes, train.keys)
        mean, std = img.channel_stats(train.images)
        # A resumed run keeps its normalisation; a transferred backbone expects its inputs normalised as
        # when it was trained.
        source = previous_meta or (ckpt.read_run(t.init, task=self.name).get("meta", {}) if t.init else {})
        if len(source.get("mean", [])) == len(mean):
            mean, std = source["mean"], source["std"]
        meta = {
            "classes": train.classes,
            "channels": int(train.images.shape[1]),
            "image_size": size,
            "mean": mean,
            "std": std,
            "resize": "shorter side, then centre crop (bilinear)",
        }
        val, test = [align_classes(splits[s], train.classes, size) if splits[s] else None for s in ("val", "test")]
        source = FASHION_MNIST.locate() if d.name == FASHION_MNIST.name else d.name
        meta["data"] = {
            "name": d.name,
            "source": str(source or ""),
            "train": len(train),
            "class_counts": torch.bincount(train.labels, minlength=len(train.classes)).tolist(),
            "val": len(val) if val else 0,
            "test": len(test) if test else 0,
        }
        return Prepared(
            train=self.batches(train, meta, train=True),
            val=self.batches(val, meta) if val else None,
            test=self.batches(test, meta) if test else None,
            meta=meta,
            model_args={"in_channels": meta["channels"], "num_classes": len(meta["classes"]), "image_size": size},
        )

    def eval_split(self, meta: dict[str, Any], name: str, split: str) -> img.ImageSet:
        """A split of any dataset, converted to a trained run's channels, size and class list.

        Another folder is read as it is laid out: its `split`/ sub-folder if it has one, else (no
        train/val/test sub-folders at all) the whole folder.
        """
        path = Path(name).expanduser()
        own = self.normalise_data(name) == self.cfg.data.name
        if not own and path.is_dir():
            layout = img.folder_layout(path)
            folder = layout.get(split, path if layout == {"train": path} else None)
            if folder is None:
                raise LaminaError(f"{name} has no {split} split (it has: {', '.join(sorted(layout))})")
            classes, _ = img.scan_folder(folder)
            data = img.image_folder(folder, classes, meta["channels"], meta["image_size"], split)
        else:
            loaded = self.load_splits(name, channels=meta["channels"], size=meta["image_size"], only=split)
            data = self._own_classes(name, loaded[split])
            if data is None:
                hint = f"expected {name}/{split}/<class>/<image>" if split == "test" else "no validation hold-out"
                raise LaminaError(f"{name} has no {split} split ({hint})")
        return align_classes(data, meta["classes"], meta["image_size"])

    def has_split(self, data: str, split: str) -> bool:
        if data in self.datasets:
            return split in ("train", "val", "test")
        path = Path(data).expanduser()
        return path.is_dir() and split in img.folder_layout(path)

    def batches(self, data: img.ImageSet, meta: dict[str, Any], train: bool = False) -> img.ImageBatches:
        d, t = self.cfg.data, self.cfg.train
        return img.ImageBatches(
            data,
            self.global_batch if train else max(t.batch_size, 512),
            self.device,
            train=train,
            seed=t.seed,
            flip=d.flip and train,
            crop_padding=d.crop_padding if train else 0,
            erase=d.erase if train else 0.0,
            fill=meta["mean"],
            channels_last=t.channels_last,
        )

    def warnings(self, history: list[dict[str, Any]], metrics: dict[str, Any], meta: dict[str, Any]) -> list[str]:
        found = super().warnings(history, metrics, meta)
        # Chance: always answering the most frequent training class; "at chance" leaves a tenth of the way up.
        counts = meta.get("data", {}).get("class_counts") or [1] * len(meta["classes"])
        chance = max(counts) / sum(counts)
        for split in ("test", "val"):
            accuracy = metrics.get(split, {}).get("accuracy")
            if accuracy is not None:
                if accuracy < chance + 0.1 * (1 - chance):
                    found.append(
                        f"{split} accuracy {accuracy:.2%} is at chance level ({chance:.2%}, always the most frequent "
                        "class): the network learnt nothing; try a lower --lr, a smaller --batch-size or more --epochs"
                    )
                break
        return found

    # ----- model --------------------------------------------------------------------------------
    def setup_model(self, model: nn.Module, meta: dict[str, Any], resume: bool) -> None:
        """The training images' normalisation into the model; then transfer: another run's backbone
        (with the normalisation it learned with) into `model`, whose head is sized for the new labels."""
        model.normalize.set(meta["mean"], meta["std"])
        t = self.cfg.train
        if t.init and not resume:
            self.init_from(model, t.init)
        if t.freeze:
            model.freeze_features()  # resuming a frozen transfer run: the weights come from trainer.pt

    def upgrade_state(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Runs saved before models held their normalisation kept it in meta only: put it in."""
        if "normalize.mean" in state or "mean" not in meta:
            return state
        c = len(meta["mean"])
        return {
            "normalize.mean": torch.tensor(meta["mean"]).view(1, c, 1, 1),
            "normalize.std": torch.tensor(meta["std"]).view(1, c, 1, 1),
            **state,
        }

    def init_from(self, model: nn.Module, run_dir: str | Path) -> None:
        info = ckpt.read_run(run_dir, task=self.name)
        state = self.upgrade_state(ckpt.load_weights(Path(run_dir) / ckpt.WEIGHTS_FILE), info.get("meta", {}))
        backbone = {k: v for k, v in state.items() if not k.startswith("head.")}
        try:
            missing, unexpected = model.load_state_dict(backbone, strict=False)
        except RuntimeError as exc:
            detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
            raise LaminaError(
                f"the backbone of {run_dir} ({info['model']['name']}) does not fit this model: {detail}"
            ) from None
        missing = [k for k in missing if not k.startswith("head.")]
        if missing or unexpected:
            raise LaminaError(
                f"the backbone of {run_dir} ({info['model']['name']}) does not fit this model: "
                f"{len(missing)} missing and {len(unexpected)} unexpected weights, e.g. "
                f"{(missing + unexpected)[0]}"
            )

    # ----- loss, metrics, prediction ------------------------------------------------------------
    def step(self, model: nn.Module, batch) -> StepOutput:
        x, y = batch  # (B, C, H, W) uint8, (B,)
        logits = model(x)  # (B, K)
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.train.label_smoothing)
        return StepOutput(loss, len(y), {"accuracy": (logits.argmax(1) == y).sum()})

    def views(self) -> int:
        return 2 if self.cfg.data.tta and self.cfg.data.flip else 1

    @torch.no_grad()
    def probabilities(self, model: nn.Module, x: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """Class probabilities (B, K), averaged with the mirrored image when the run trained with flips."""
        mirrored = self.views() == 2 if tta is None else tta
        with self.precision.autocast():
            p = model(x).float().softmax(1)
            if mirrored:
                p = (p + model(x.flip(-1)).float().softmax(1)) / 2
        return p

    @torch.no_grad()
    def predict_all(
        self, model: nn.Module, batches: img.ImageBatches, tta: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and labels of the whole stream; each process computes its share."""
        model.eval()
        parts = [
            (self.probabilities(model, x, tta).cpu(), y.cpu())
            for x, y in batches.epoch(0, 0, self.dist.rank, self.dist.world)
        ]
        parts = self.dist.gather_batches(parts)
        return torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: img.ImageBatches, tta: bool | None = None) -> dict[str, float]:
        probs, labels = self.predict_all(model, batches, tta)
        return {"loss": metrics.nll(probs, labels), "accuracy": (probs.argmax(1) == labels).float().mean().item()}

    def report(self, model: nn.Module, meta: dict[str, Any], data: str, split: str, out_dir: Path) -> dict[str, Any]:
        """Full evaluation: accuracy, mean loss, per-class precision/recall/F1, confusion.png, errors.png."""
        from lamina.viz.classify import plot_confusion, plot_errors

        data = self.eval_split(meta, data, split)
        probs, labels = self.predict_all(model, self.batches(data, meta))
        pred = probs.argmax(1)
        cm, result = metrics.classification_report(pred, labels, meta["classes"])
        result["loss"] = metrics.nll(probs, labels)
        plots = [plot_confusion(cm, meta["classes"], out_dir / "confusion.png")]
        wrong = torch.nonzero(pred != labels).flatten()
        worst = wrong[probs[wrong].gather(1, labels[wrong, None]).flatten().argsort()][:36]  # lowest p(true) first
        plots.append(
            plot_errors(
                data.images[worst],
                labels[worst],
                pred[worst],
                probs[worst].amax(1),
                meta["classes"],
                out_dir / "errors.png",
            )
        )
        return {"n": len(labels), "metrics": result, "plots": [str(p) for p in plots]}

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list, top_k: int = 5) -> dict[str, Any]:
        """The top-k classes of each image: a file path, a PIL image, an (H, W[, C]) array or a (C, H, W)
        tensor, converted as the training images were. {'results': [{'input', 'predictions':
        [{'label', 'probability'}]}]}; an unreadable image gets {'input', 'error'}, the others go on."""
        names = [str(x) if isinstance(x, (str, Path)) else f"<image {i}>" for i, x in enumerate(inputs)]
        results: list[dict] = [{"input": name} for name in names]
        tensors, ok = [], []
        for i, source in enumerate(inputs):
            try:
                tensors.append(img.load_image(source, meta["channels"], meta["image_size"], names[i]))
                ok.append(i)
            except LaminaError as exc:
                results[i]["error"] = str(exc)
        if tensors:
            data = img.ImageSet(
                torch.stack(tensors),
                torch.zeros(len(tensors), dtype=torch.long),
                meta["classes"],
                [names[i] for i in ok],
            )
            probs, _ = self.predict_all(model, self.batches(data, meta))
            k = max(1, min(top_k, probs.shape[1]))
            top_p, top_i = probs.topk(k, dim=1)
            for row, i in enumerate(ok):
                results[i]["predictions"] = [
                    {"label": meta["classes"][c], "probability": round(float(p), 6)}
                    for p, c in zip(top_p[row].tolist(), top_i[row].tolist())
                ]
        return {"results": results}

    def export_graphs(self, model: nn.Module, meta: dict[str, Any]) -> list[ExportSpec]:
        """uint8 pixels of images already resized to the run's size in; class probabilities out, with
        the normalisation (and the mirrored view, as predict averages it) in the graph."""
        c, s = meta["channels"], meta["image_size"]
        example = torch.randint(0, 256, (2, c, s, s), dtype=torch.uint8)
        mirrored = self.views() == 2
        preprocessing = {
            "image": {
                "channels": c,
                "colour": "grey" if c == 1 else "RGB",
                "size": [s, s],
                "resize": meta.get("resize", "shorter side, then centre crop (bilinear)"),
                "dtype": "uint8, 0-255, (batch, channels, height, width)",
                "normalisation": {"mean": meta["mean"], "std": meta["std"], "applied": "in the graph, after / 255"},
            },
            "labels": meta["classes"],
            "decode": "probabilities[i] is the probability of labels[i]"
            + (" (averaged with the mirrored image, in the graph)" if mirrored else ""),
        }
        return [
            ExportSpec(
                ClassifyGraph(model, mirrored),
                (example,),
                ["image"],
                ["probabilities"],
                {"image": {0: "batch"}, "probabilities": {0: "batch"}},
                preprocessing,
            )
        ]

    # ----- looking inside -------------------------------------------------------------------------
    def probe(self, model: nn.Module, meta: dict[str, Any]):
        """Images as predict reads them, the stages of the backbone, and a class's logit as the score."""
        from lamina.insight.maps import Probe, Target, stage_ends

        c, s = meta["channels"], meta["image_size"]
        example = torch.zeros(1, c, s, s, device=self.device)

        def targets(x: torch.Tensor, wanted: str | None) -> list[Target]:
            logits = model(x)[0].float()
            k = self.class_index(wanted, meta["classes"]) if wanted is not None else int(logits.argmax())
            p = float(logits.detach().softmax(0)[k])
            return [Target(f"{meta['classes'][k]} (p {p:.2f})", logits[k])]

        return Probe(
            load=lambda source: img.load_image(source, c, s).to(self.device).float() / 255,
            forward=model,
            stages=stage_ends(model.features, model.normalize(example), "features."),
            targets=targets,
        )

    @staticmethod
    def class_index(wanted: str, classes: list[str]) -> int:
        if wanted in classes:
            return classes.index(wanted)
        if str(wanted).isdigit() and int(wanted) < len(classes):
            return int(wanted)
        raise UsageError(f"unknown class {wanted!r}; choose a name or index from: {', '.join(classes)}")

    @torch.no_grad()
    def embedding_points(self, model: nn.Module, meta: dict[str, Any], limit: int):
        """The backbone's features (what the last layer classifies) of the first `limit` test images."""
        split = "test" if self.has_split(self.cfg.data.name, "test") else "val"
        data = self.eval_split(meta, self.cfg.data.name, split)
        model.eval()
        points = torch.cat([
            model.forward_features(data.images[i : i + 512].to(self.device)).float().cpu()
            for i in range(0, min(limit, len(data)), 512)
        ])[:limit]  # fmt: skip
        return points, data.labels[:limit], meta["classes"], f"penultimate features ({split})"

    def sample_inputs(self, meta: dict[str, Any], limit: int = 3) -> list:
        """The first test images of `limit` different classes, as uint8 tensors."""
        split = "test" if self.has_split(self.cfg.data.name, "test") else "val"
        try:
            data = self.eval_split(meta, self.cfg.data.name, split)
        except LaminaError:
            return []
        firsts = {}
        for i, label in enumerate(data.labels.tolist()):
            firsts.setdefault(label, i)
            if len(firsts) == limit:
                break
        return [data.images[i] for i in firsts.values()]

    # ----- pushing on it ---------------------------------------------------------------------------
    def attack(
        self, model: nn.Module, meta: dict[str, Any], method: str = "pgd", eps: list[float] | None = None,
        steps: int = 10, step_size: float | None = None, target: str | None = None, limit: int = 1000,
        out_dir: Path | None = None, seed: int = 0,
    ) -> dict[str, Any]:  # fmt: skip
        """Test accuracy (one view, no mirrored average) on adversarial versions of the first `limit`
        test images, for each eps; targeted at the class `target`, also the share turned into it."""
        from lamina import adversarial
        from lamina.viz.attack import plot_attack_curve, plot_examples

        eps = adversarial.check_options(eps if eps is not None else [0.0, 0.02, 0.05, 0.1], steps, step_size, limit)
        split = "test" if self.has_split(self.cfg.data.name, "test") else "val"
        data = self.eval_split(meta, self.cfg.data.name, split)
        x_all, y_all = data.images[:limit].float() / 255, data.labels[:limit]
        goal = self.class_index(target, meta["classes"]) if target is not None else None
        model.eval()
        generator = torch.Generator().manual_seed(seed)
        curve, shown = [], None
        for e in eps:
            right = turned = 0
            for i in range(0, len(y_all), 256):
                x, y = x_all[i : i + 256].to(self.device), y_all[i : i + 256].to(self.device)
                wanted = torch.full_like(y, goal) if goal is not None else y

                def loss(v: torch.Tensor, wanted=wanted) -> torch.Tensor:
                    return F.cross_entropy(model(v).float(), wanted, reduction="sum")

                adv = adversarial.attack(method, loss, x, e, steps, step_size, goal is not None, generator)
                with torch.no_grad():
                    pred = model(adv).argmax(1)
                right += int((pred == y).sum())
                if goal is not None:
                    turned += int(((pred == goal) & (y != goal)).sum())
                if i == 0 and e == eps[-1]:
                    shown = (x[:8].cpu(), adv[:8].cpu(), y[:8].cpu(), pred[:8].cpu())
            point = {"eps": e, "accuracy": right / len(y_all)}
            if goal is not None:
                point["success"] = turned / max(int((y_all != goal).sum()), 1)
            curve.append(point)
        out_dir = Path(out_dir or self.run_dir or ".")
        out_dir.mkdir(parents=True, exist_ok=True)
        what = method.upper() + (f", {steps} steps" if method == "pgd" else "")
        what += f", towards {meta['classes'][goal]}" if goal is not None else ""
        plots = [plot_attack_curve(curve, out_dir / f"attack-{method}.png", what, "accuracy")]
        if shown is not None:
            clean, adv, y, pred = shown
            names = [(meta["classes"][a], meta["classes"][b]) for a, b in zip(y.tolist(), pred.tolist())]
            plots.append(plot_examples(clean, adv, names, out_dir / f"attack-{method}-examples.png", eps[-1]))
        step_size = step_size or (2.5 * eps[-1] / steps if method == "pgd" else eps[-1])  # at the largest eps
        return {"method": method, "steps": steps if method == "pgd" else 1, "step_size": step_size,
                "target": meta["classes"][goal] if goal is not None else None, "split": split, "n": len(y_all),
                "curve": curve, "plots": [str(p) for p in plots]}  # fmt: skip

    def perturb(self, model: nn.Module, batch):
        """PGD (or FGSM) examples of a training batch at train.adversarial_eps, made with the network in
        evaluation mode (so that the attack's passes do not move the batch-norm statistics)."""
        from lamina import adversarial

        t = self.cfg.train
        x, y = batch
        model = getattr(model, "module", model)  # under DDP, the network itself: no gradient sync for the attack
        was_training = model.training
        model.eval()
        try:

            def loss(v: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(model(v).float(), y, reduction="sum")

            adv = adversarial.attack(t.adversarial, loss, x.float() / 255, t.adversarial_eps, t.adversarial_steps)
        finally:
            model.train(was_training)
        return adv, y

    # ----- on a terminal -------------------------------------------------------------------------
    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> str:
        test = metrics.get("test", {})
        return f"test accuracy {test['accuracy']:.2%}" if "accuracy" in test else ""

    @classmethod
    def render_predict(cls, result: dict[str, Any], out: TextIO) -> None:
        for r in result["results"]:
            if "predictions" in r:
                shown = ", ".join(f"{p['label']} {p['probability']:.1%}" for p in r["predictions"])
                print(f"{r['input']}: {shown}", file=out)


class ClassifyGraph(nn.Module):
    """(B, C, S, S) uint8 -> (B, K) class probabilities, as ClassifyTask.probabilities computes them."""

    def __init__(self, model: nn.Module, mirrored: bool):
        super().__init__()
        self.model, self.mirrored = model, mirrored

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p = self.model(image).float().softmax(1)
        if self.mirrored:
            p = (p + self.model(image.flip(-1)).float().softmax(1)) / 2
        return p


def align_classes(data: img.ImageSet, classes: list[str], size: int) -> img.ImageSet:
    """Relabel `data` to the index order of `classes` (by name); drop nothing silently."""
    unknown = sorted(set(data.classes[i] for i in data.labels.unique().tolist()) - set(classes))
    if unknown:
        raise LaminaError(
            f"the data has classes the model does not know: {', '.join(unknown)} "
            f"(the model knows: {', '.join(classes)})"
        )
    keep = [data.classes.index(c) for c in classes if c in data.classes]
    data = img.keep_classes(data, keep) if keep != list(range(len(data.classes))) else data
    mapping = torch.tensor([classes.index(c) for c in data.classes], dtype=torch.long)
    return img.ImageSet(img.resize(data.images, size), mapping[data.labels], list(classes), data.keys)
