"""Object detection: the scene generator, COCO reading and writing, transforms, detectors, the task end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lamina
from conftest import CPU, lamina_home
from lamina.cli import main
from lamina.data import coco, scenes
from lamina.errors import LaminaError

TINY = scenes.SceneSpec(image_size=64, train=24, val=8, test=8, min_size=10, max_size=36, max_objects=6)
TINY_SETS = ["data.image_size=64", *CPU]


def build_in(home: Path, spec: scenes.SceneSpec) -> Path:
    """spec's scenes made under the lamina home `home` (the tests' own is per test)."""
    with lamina_home(home):
        return scenes.build(spec, processes=2)


def annotations(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


# ----- the scene generator ------------------------------------------------------------------------------
def test_boxes_and_areas_are_those_of_the_visible_masks(scene_folder):
    hidden = []
    for split in coco.SPLITS:
        data = annotations(scene_folder, split)
        assert {c["name"] for c in data["categories"]} >= {"T-shirt/top", "Ankle boot"}
        by_image = {}
        for a in data["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for image in data["images"]:
            objects = by_image.get(image["id"], [])
            assert 1 <= len(objects) <= TINY.max_objects
            masks = coco.decode_masks([coco.to_rle(a["segmentation"], 64, 64) for a in objects], 64, 64).bool()
            assert int(masks.sum(0).max()) <= 1  # every pixel shows one object at most: occlusion took it
            for a, mask in zip(objects, masks):
                rows, cols = torch.nonzero(mask, as_tuple=True)
                x, y = int(cols.min()), int(rows.min())
                assert a["bbox"] == [x, y, int(cols.max()) - x + 1, int(rows.max()) - y + 1]
                assert a["area"] == int(mask.sum())
                assert a["iscrowd"] == 0
                assert a["hidden"] <= 1 - scenes.MIN_VISIBLE + 1e-6
                hidden.append(a["hidden"])
    assert max(hidden) > 0.05 and min(hidden) == 0  # some objects are partly covered, some not at all


def test_occlusion_takes_the_covered_pixels_from_the_earlier_object():
    # Two solid squares, the second pasted over the first: the first keeps only what stays visible.
    spec = scenes.SceneSpec(image_size=48, min_size=20, max_size=20, max_objects=8)
    square = np.full((1, 28, 28), 255, np.uint8)
    pool = (square, np.array([3]), np.array([7]))
    photo = np.zeros((64, 64, 3), np.uint8)
    for seed in range(20):
        image, objects = scenes.compose(photo, pool, spec, np.random.default_rng(seed))
        if len(objects) >= 2 and any(o["hidden"] > 0 for o in objects):
            break
    else:
        pytest.fail("no scene with an occluded object in 20 seeds")
    owner = np.zeros((48, 48), int)
    for i, o in enumerate(objects):
        assert not (owner[o["mask"]]).any()  # masks are disjoint
        owner[o["mask"]] = i + 1
        assert o["label"] == 3 and o["source"] == 7
        visible = o["mask"].sum() / (1 - o["hidden"])
        assert visible == pytest.approx(400, rel=0.3)  # a 20 px square, whatever is covered of it
    covered = next(o for o in objects if o["hidden"] > 0)
    assert covered["mask"].sum() < 400 * (1 - 0.9 * covered["hidden"])
    assert (image.reshape(-1, 3)[owner.ravel() > 0] > 0).any(1).all()  # objects are drawn where masks say


def test_scenes_are_deterministic_from_the_seed(tmp_path, scene_folder):
    again = build_in(tmp_path / "home", TINY)
    assert again != scene_folder
    for split in coco.SPLITS:
        assert annotations(again, split) == annotations(scene_folder, split)
    same = [(again / "train" / n).read_bytes() == (scene_folder / "train" / n).read_bytes() for n in ("000000.jpg",)]
    assert all(same)
    other = build_in(tmp_path / "home", scenes.SceneSpec(**{**TINY.__dict__, "seed": 1}))
    assert annotations(other, "train")["annotations"] != annotations(scene_folder, "train")["annotations"]


def test_test_scenes_use_only_test_objects_and_held_out_photographs(scene_folder):
    assert not set(scenes.PHOTOS["test"]) & set(scenes.PHOTOS["train"] + scenes.PHOTOS["val"])
    assert not set(scenes.PHOTOS["val"]) & set(scenes.PHOTOS["train"])
    first_val_object = 60000 - scenes.VAL_OBJECTS
    for split in coco.SPLITS:
        data = annotations(scene_folder, split)
        assert {i["photo"] for i in data["images"]} <= set(scenes.PHOTOS[split])
        sources = [a["fashion_mnist"] for a in data["annotations"]]
        if split == "test":
            assert all(s == "test" for s, _ in sources)
        else:
            assert all(s == "train" for s, _ in sources)
            inside = [(i >= first_val_object) == (split == "val") for _, i in sources]
            assert all(inside)


# ----- COCO files -------------------------------------------------------------------------------------
def test_coco_round_trip_gives_identical_targets(tmp_path, scene_folder):
    data = coco.read_split(scene_folder, "val")
    coco.write_set(data, tmp_path / "copy", "val")
    again = coco.read_split(tmp_path / "copy", "val")
    assert again.classes == data.classes and len(again) == len(data)
    for i in range(len(data)):
        assert torch.equal(again.images[i], data.images[i])
        assert torch.equal(again.targets[i]["boxes"], data.targets[i]["boxes"])
        assert torch.equal(again.targets[i]["labels"], data.targets[i]["labels"])
        assert torch.equal(again.masks(i), data.masks(i))


def make_coco(root: Path, images: list[np.ndarray], annotations: list[dict], categories=None) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    entries = []
    for i, array in enumerate(images):
        Image.fromarray(array).save(root / "train" / f"{i}.png")
        entries.append({"id": i + 1, "file_name": f"{i}.png", "height": array.shape[0], "width": array.shape[1]})
    categories = categories or [{"id": 5, "name": "Bag"}, {"id": 9, "name": "Coat"}]
    (root / "annotations" / "instances_train.json").write_text(
        json.dumps({"images": entries, "annotations": annotations, "categories": categories})
    )
    return root


def test_malformed_annotations_are_skipped_with_a_warning_naming_the_image(tmp_path, capsys):
    grey = np.full((40, 50), 128, np.uint8)
    good = {"id": 1, "image_id": 1, "category_id": 9, "bbox": [5, 5, 10, 20], "iscrowd": 0,
            "segmentation": [[5, 5, 15, 5, 15, 25, 5, 25]]}  # fmt: skip
    bad = [
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [45, 5, 30, 10], "segmentation": [[45, 5, 49, 5, 49, 9]]},
        {"id": 3, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5], "segmentation": []},
        {"id": 4, "image_id": 2, "category_id": 77, "bbox": [1, 1, 5, 5]},
    ]
    root = make_coco(tmp_path / "c", [grey, np.stack([grey] * 3, -1)], [good, *bad])
    (root / "train" / "broken.png").write_bytes(b"not a png")
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    data["images"].append({"id": 3, "file_name": "broken.png", "height": 4, "width": 4})
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    found = coco.read_split(root, "train")
    err = capsys.readouterr().err
    assert "image 0.png, annotation 2 has a box" in err and "outside the 50x40 image" in err
    assert "image 1.png, annotation 3 has an empty segmentation" in err
    assert "image 1.png, annotation 4 has unknown category id 77" in err
    assert "image broken.png cannot be decoded" in err
    assert found.classes == ["__background__", "Bag", "Coat"]
    assert len(found) == 2  # the negative image (all its annotations skipped) stays, the broken one goes
    assert found.targets[0]["labels"].tolist() == [2]
    assert found.targets[0]["boxes"].tolist() == [[5, 5, 15, 25]]
    assert len(found.targets[1]["labels"]) == 0
    assert found.images[0].shape == (3, 40, 50)


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "is not a readable COCO JSON file"), ('{"images": [], "categories": []}', "lists no images")],
)
def test_bad_coco_files_get_one_line(tmp_path, capsys, content, message):
    (tmp_path / "d" / "annotations").mkdir(parents=True)
    (tmp_path / "d" / "annotations" / "instances_train.json").write_text(content)
    code = main(["train", "detect", "--data", str(tmp_path / "d"), "--epochs", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["train", "detect", "--data", str(tmp_path / "empty"), "--epochs", "1"]) == 1
    assert "holds no COCO annotations" in capsys.readouterr().err


def test_single_json_is_split_by_hash(tmp_path):
    arrays = [np.full((20, 20, 3), i, np.uint8) for i in range(40)]
    root = make_coco(tmp_path / "c", arrays, [])
    (root / "annotations" / "instances_train.json").rename(root / "annotations" / "all.json")
    (root / "train").rename(root / "images")  # one folder of images beside one annotation file
    sizes = {s: len(coco.read_split(root, s)) for s in coco.SPLITS}
    assert sum(sizes.values()) == 40 and sizes["train"] > sizes["val"]
    keys = [set(coco.read_split(root, s).keys) for s in coco.SPLITS]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2])


# ----- batches and transforms -------------------------------------------------------------------------
def test_training_transforms_move_boxes_and_masks_with_the_pixels(scene_folder):
    data = coco.read_split(scene_folder, "train")
    stream = coco.DetectionBatches(data, 4, torch.device("cpu"), train=True, seed=3, size=64, scale=(0.6, 1.4))
    for images, targets in stream.epoch(0):
        for image, target in zip(images, targets):
            assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
            masks = target["masks"].bool()
            assert len(masks) == len(target["boxes"]) == len(target["labels"])
            for mask, box in zip(masks, target["boxes"].tolist()):
                rows, cols = torch.nonzero(mask, as_tuple=True)
                assert box == [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]
    again = coco.DetectionBatches(data, 4, torch.device("cpu"), train=True, seed=3, size=64, scale=(0.6, 1.4))
    first, second = next(stream.epoch(1, 2)), next(again.epoch(1, 2))  # any batch comes again from its seed
    assert all(torch.equal(a, b) for a, b in zip(first[0], second[0]))
    assert all(torch.equal(a["masks"], b["masks"]) for a, b in zip(first[1], second[1]))

    flips = coco.DetectionBatches(data, 1, torch.device("cpu"), train=True, seed=0, size=64, scale=(1.0, 1.0))
    mirrored = 0
    for b, (images, targets) in enumerate(flips.epoch(0)):
        i = torch.randperm(len(data), generator=torch.Generator().manual_seed(scenes.seed_for(0, 0)))[b]
        original = data.images[i]
        if torch.equal(images[0], original.flip(-1)) and not torch.equal(images[0], original):
            mirrored += 1
            assert torch.equal(targets[0]["masks"], data.masks(i).flip(-1))
            x1, y1, x2, y2 = data.targets[i]["boxes"].unbind(1)
            assert torch.equal(targets[0]["boxes"], torch.stack([64 - x2, y1, 64 - x1, y2], 1))
        else:
            assert torch.equal(images[0], original) and torch.equal(targets[0]["masks"], data.masks(i))
    assert 0 < mirrored < len(data)


# ----- detectors --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("model", ["maskrcnn", "fcos"])
def test_each_detector_overfits_a_few_images(tmp_path, scene_folder, model):
    few = coco.read_split(scene_folder, "train")
    few = coco.DetectionSet(few.images[:4], few.targets[:4], few.classes, few.keys[:4])
    for split in coco.SPLITS:
        coco.write_set(few, tmp_path / "few", split)
    summary = lamina.train(
        "detect",
        data=str(tmp_path / "few"),
        model=model,
        epochs=100,
        batch_size=4,
        optimizer="sgd",  # SGD at a high rate memorises fastest; AdamW is the recipe for generalising
        lr=0.02,
        out=str(tmp_path / "run"),
        quiet=True,
        sets=[
            *TINY_SETS,
            "data.flip=false",
            "data.jitter=0",
            "train.eval_every=50",
            "optim.warmup=0.2",
            "optim.weight_decay=1e-4",
        ],  # fmt: skip
    )
    log = [json.loads(line) for line in (Path(summary["run"]) / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[1]["train_loss"] < 0.6 * log[0]["train_loss"]  # steps 1-50, then 51-100
    test = summary["metrics"]["test"]
    assert test["box_map_50"] > 0.9, test
    if model == "maskrcnn":
        assert test["mask_map_50"] > 0.8, test


def test_transfer_from_a_classifier_backbone(tmp_path):
    from lamina.models.detection import load_classifier_backbone
    from lamina.models.registry import get_model

    classifier = get_model("classify", "resnet8", in_channels=1, num_classes=10)
    detector = get_model("detect", "maskrcnn", num_classes=3, image_size=64)
    loaded = load_classifier_backbone(detector, classifier.state_dict())
    assert "features.3.0.conv2.weight" in loaded and not any(k.startswith("head") for k in loaded)
    stem = classifier.state_dict()["features.0.0.weight"]
    assert torch.equal(detector.backbone.features[0][0].weight, stem.repeat(1, 3, 1, 1) / 3)
    assert torch.equal(detector.backbone.features[3][0].conv2.weight, classifier.features[3][0].conv2.weight)
    with pytest.raises(ValueError, match=r"features.0.0.weight is \(16, 3, 3, 3\) there and \(32, 3, 3, 3\) here"):
        load_classifier_backbone(detector, get_model("classify", "resnet20", in_channels=1).state_dict())
    with pytest.raises(ValueError, match="features.2.0.weight has no counterpart here"):
        load_classifier_backbone(detector, get_model("classify", "vgg-s").state_dict())
    with pytest.raises(ValueError, match="no convolutional stem"):
        load_classifier_backbone(detector, {"head.weight": torch.zeros(3, 3)})


# ----- the task end to end ----------------------------------------------------------------------------
def test_train_save_load_detect_evaluate(tmp_path, detect_run, scene_folder):
    info = json.loads((detect_run / "lamina.json").read_text())
    assert info["task"] == "detect" and info["meta"]["classes"][0] == "T-shirt/top"
    assert set(info["metrics"]["test"]) >= {"box_map", "box_map_50", "mask_map", "n"}
    run = lamina.load(detect_run, device="cpu")
    image = Path(scene_folder) / "test" / "000000.jpg"
    blank = np.zeros((50, 70, 3), np.uint8)
    out = run.detect([str(image), Image.open(image), blank, torch.zeros(3, 30, 30)], threshold=0.0, out=tmp_path / "d")
    r = out["results"]
    assert [x["width"] for x in r] == [64, 64, 70, 30]
    assert r[0]["objects"] == r[1]["objects"]  # a path and the same image in memory give the same objects
    assert all({"label", "score", "box", "mask", "area"} <= set(o) for x in r for o in x["objects"])
    assert Path(r[0]["drawn"]).is_file() and Image.open(r[0]["drawn"]).size == (64, 64)
    again = lamina.load(detect_run, device="cpu").detect([str(image)], threshold=0.0)["results"][0]
    assert again["objects"] == r[0]["objects"]  # a reloaded model gives identical outputs

    result = run.evaluate(out_dir=tmp_path / "eval")
    assert result["split"] == "test" and result["n"] == TINY.test
    m = result["metrics"]
    assert {"box_map", "box_map_50", "box_map_75", "box_map_small", "box_mar_100", "mask_map", "mask_map_50"} <= set(m)
    assert set(m["per_class"]) <= set(info["meta"]["classes"])
    assert (tmp_path / "eval" / "gallery.png").is_file() and (tmp_path / "eval" / "precision-recall.png").is_file()


def test_detect_cli(tmp_path, capsys, detect_run, scene_folder, trained_run):
    image = str(Path(scene_folder) / "test" / "000001.jpg")
    code = main(["detect", str(detect_run), image, str(tmp_path / "missing.jpg"), "--threshold", "0", "--json"])
    captured = capsys.readouterr()
    assert code == 1 and "missing.jpg: no such file" in captured.err
    result = json.loads(captured.out)
    assert result["results"][0]["input"] == image and "error" in result["results"][1]
    assert main(["detect", str(detect_run), image, "--threshold", "1.5"]) == 2
    assert "--threshold must be in [0, 1]" in capsys.readouterr().err
    assert main(["detect", str(trained_run), image]) != 0
    assert "does not detect" in capsys.readouterr().err
    assert main(["evaluate", str(detect_run), "--json", "--out", str(tmp_path / "e")]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["box_map"] >= 0


def test_images_without_objects_train_and_predict(tmp_path):
    grey = np.full((48, 48, 3), 90, np.uint8)
    square = grey.copy()
    square[10:30, 10:30] = 250
    annotation = {"id": 1, "image_id": 2, "category_id": 9, "bbox": [10, 10, 20, 20], "iscrowd": 0,
                  "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}  # fmt: skip
    root = make_coco(tmp_path / "c", [grey, square, grey, square], [annotation, {**annotation, "id": 2, "image_id": 4}])
    for model in ("maskrcnn", "fcos"):
        summary = lamina.train(
            "detect", data=str(root), model=model, epochs=1, out=str(tmp_path / model), quiet=True,
            sets=["data.image_size=48", *CPU],
        )  # fmt: skip
        result = lamina.load(summary["run"]).detect([grey], threshold=0.99)
        assert result["results"][0]["objects"] == []


def test_init_must_be_a_fitting_classifier(tmp_path, capsys, trained_run, scene_folder):
    code = main(["train", "detect", "--data", str(scene_folder), "--init", str(trained_run), "--epochs", "1",
                 "--out", str(tmp_path / "r"), *sum((["--set", s] for s in TINY_SETS), [])])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "does not fit maskrcnn" in err[0]
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "lamina.json").write_text(json.dumps({"task": "lm", "model": {"name": "lstm", "args": {}}}))
    assert main(["train", "detect", "--data", str(scene_folder), "--init", str(lm), "--epochs", "1"]) == 1
    assert "is a 'lm' run, not a 'detect' or 'classify' run" in capsys.readouterr().err


def test_missing_data_folder_is_one_line(tmp_path, capsys):
    assert main(["train", "detect", "--data", str(tmp_path / "nowhere"), "--epochs", "1"]) == 1
    assert "no such data folder" in capsys.readouterr().err


def test_read_image_refuses_what_is_not_an_image(tmp_path):
    from lamina.tasks.detect import read_image

    (tmp_path / "x.png").write_text("text")
    with pytest.raises(LaminaError, match="not a readable image"):
        read_image(str(tmp_path / "x.png"), "x.png")


def test_mask_boxes_are_torchvisions_with_pixel_edges():
    from torchvision.ops import masks_to_boxes

    masks = torch.rand(40, 30, 50, generator=torch.Generator().manual_seed(0)) > 0.99
    masks = masks[masks.flatten(1).any(1)]
    assert torch.equal(coco.mask_boxes(masks), masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert coco.mask_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


def test_detect_resumes_exactly(tmp_path, monkeypatch, scene_folder):
    """Mask R-CNN with flips and scale jitter (transforms.v2 under seeded draws), cut mid-epoch."""
    from lamina.tasks.detect import DetectTask
    from test_resume import assert_resumed_exactly, train_interrupted_and_resumed

    common = dict(data=str(scene_folder), epochs=2, quiet=True, sets=[*TINY_SETS, "train.eval_every=4"])
    train_interrupted_and_resumed("detect", DetectTask, common, 6, tmp_path, monkeypatch)
    assert_resumed_exactly(tmp_path / "full", tmp_path / "cut")
