"""Peer for detection: torchvision's reference Mask R-CNN recipe, within a wall-clock budget.

What it reproduces: pytorch/vision, references/detection (train.py with its defaults, as its README
gives the Mask R-CNN command): `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` (so
every layer trains and batch norm is ordinary BatchNorm2d, as the builder does without weights),
the model's own transform (shorter side resized to 800, longer at most 1333, ImageNet mean and std);
random horizontal flips (`--data-augmentation hflip`); SGD with momentum 0.9 and weight decay 1e-4;
batches of 2 images; the learning rate 0.02 that the reference sets for 8 GPUs x 2 images, scaled
to one process as its help text says (0.02 / 8 = 0.0025); a linear warm-up from 0.001x over the first
min(1000, iterations per epoch - 1) iterations; MultiStepLR at epochs 16 and 22 (never reached here).

What differs, so that the comparison with lamina is on the same data and the same clock:
- the data are lamina's scenes (a COCO folder read through lamina.data.coco, the same images and
  targets lamina trains on), 11 classes with the background;
- it trains for a wall-clock budget counted from the start of the process (imports and data
  included), stopping in the middle of an epoch when the budget runs out (the reference runs 26
  epochs); the data are read in the main process (the reference's 4 loader workers would take the
  cores the training needs on a 2-core machine);
- the test split is then scored once with the last weights, outside the budget (lamina's budget
  includes its own final evaluation), on the first --eval-images scenes, with the same COCO
  evaluation lamina uses (lamina.metrics.detection_map: torchmetrics on pycocotools).

    python -m benchmarks.peers.torchvision_detection --budget 1800 --data FOLDER

The last line of stdout is one JSON object: test metrics, steps, images/s, peak memory, wall time.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget includes Python's start-up and the imports below

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torchvision.models.detection import maskrcnn_resnet50_fpn  # noqa: E402

from lamina import metrics  # noqa: E402
from lamina.data import coco  # noqa: E402

LR_8_GPUS = 0.02  # the reference's default, for 8 GPUs x 2 images
BATCH = 2


def batches(data: coco.DetectionSet, epoch: int, generator: torch.Generator):
    order = torch.randperm(len(data), generator=generator).tolist()
    for b in range(len(order) // BATCH):
        images, targets = [], []
        for i in order[b * BATCH : (b + 1) * BATCH]:
            image, masks = data.images[i].float() / 255, data.masks(i)
            boxes = data.targets[i]["boxes"].clone()
            if torch.rand(1, generator=generator) < 0.5:  # RandomHorizontalFlip, boxes and masks with it
                image, masks = image.flip(-1), masks.flip(-1)
                w = image.shape[-1]
                boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
            images.append(image)
            targets.append({"boxes": boxes, "labels": data.targets[i]["labels"], "masks": masks})
        yield images, targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, required=True, help="wall-clock seconds for training")
    p.add_argument("--data", required=True, help="a COCO folder with train and test splits")
    p.add_argument("--eval-images", type=int, default=100, help="test scenes to score")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    train = coco.read_split(Path(a.data), "train")
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=len(train.classes))
    params = [p for p in model.parameters() if p.requires_grad]
    lr = LR_8_GPUS / 8
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    warmup_iters = min(1000, len(train) // BATCH - 1)
    generator = torch.Generator().manual_seed(a.seed)
    model.train()
    steps, images_seen, epoch, losses = 0, 0, 0, []
    train_started = time.monotonic()
    while time.monotonic() - STARTED < a.budget:
        for images, targets in batches(train, epoch, generator):
            if time.monotonic() - STARTED >= a.budget:
                break
            if epoch == 0 and steps < warmup_iters:  # torch.optim.lr_scheduler.LinearLR(0.001, warmup_iters)
                factor = 0.001 + (1 - 0.001) * steps / warmup_iters
                for group in optimizer.param_groups:
                    group["lr"] = lr * factor
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps, images_seen = steps + 1, images_seen + len(images)
            losses.append(round(loss.item(), 4))
        else:
            epoch += 1
    train_seconds = time.monotonic() - train_started

    test = coco.read_split(Path(a.data), "test", train.classes)
    model.eval()
    preds, truth = [], []
    with torch.no_grad():
        for i in range(min(a.eval_images, len(test))):
            out = model([test.images[i].float() / 255])[0]
            preds.append({"boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"],
                          "masks": out["masks"][:, 0] >= 0.5})  # fmt: skip
            truth.append({"boxes": test.targets[i]["boxes"], "labels": test.targets[i]["labels"],
                          "masks": test.masks(i).bool()})  # fmt: skip
    found = metrics.detection_map(preds, truth, train.classes, masks=True)
    result = {k: round(v, 4) for k, v in found.items() if isinstance(v, float)}
    result.update(
        peer="torchvision references/detection maskrcnn_resnet50_fpn",
        parameters=sum(p.numel() for p in model.parameters()),
        steps=steps,
        epochs=round(images_seen / len(train), 3),
        images_per_s=round(images_seen / train_seconds, 2),
        eval_images=len(preds),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        first_losses=losses[:5],
        last_losses=losses[-5:],
        seconds=round(time.monotonic() - STARTED, 1),
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
