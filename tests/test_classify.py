"""Image classification end to end on tiny generated folders: train, save, load, evaluate, predict, transfer."""

import json
import math

import pytest
import torch

import lamina
from conftest import CLASSES, CPU, make_folder
from lamina.engine import checkpoint as ckpt
from lamina.errors import LaminaError


def test_run_directory_holds_everything_needed(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"lamina.json", "model.safetensors", "trainer.pt", "metrics.jsonl", "curves.png"} <= names
    info = json.loads((trained_run / "lamina.json").read_text())
    assert info["task"] == "classify" and info["status"] == "complete"
    assert info["model"]["args"] == {"in_channels": 1, "num_classes": 3, "image_size": 16}
    assert info["meta"]["classes"] == sorted(CLASSES)
    assert info["config"]["train"]["epochs"] == 6 and "torch" in info["versions"]
    assert len(ckpt.read_jsonl(trained_run / "metrics.jsonl")) == 6
    saved = torch.load(trained_run / "trainer.pt", weights_only=True)  # no pickled code needed
    assert {"model", "optimizer", "state", "ranks"} <= set(saved) and {"rng", "meter"} <= set(saved["ranks"][0])


def test_the_tiny_model_learned_and_reloads_identically(trained_run, tmp_path):
    info = json.loads((trained_run / "lamina.json").read_text())
    assert info["metrics"]["val"]["accuracy"] >= 0.8  # stripes vs columns vs checks: easy when learning works
    # The reloaded model scores the test split exactly as the trained model did in memory at the end of training.
    reloaded = lamina.evaluate(trained_run, device="cpu", out_dir=tmp_path)  # plots here, not in the shared run
    assert reloaded["split"] == "test" and reloaded["n"] == info["metrics"]["test"]["n"] == 12
    assert reloaded["metrics"]["accuracy"] == info["metrics"]["test"]["accuracy"]
    assert reloaded["metrics"]["loss"] == pytest.approx(info["metrics"]["test"]["loss"], rel=1e-6)


def test_predict_images_of_any_size_and_mode(trained_run, tmp_path):
    import numpy as np
    from PIL import Image

    from conftest import pattern

    big = Image.fromarray(pattern("columns", (48, 40), np.random.default_rng(5))).convert("RGB")
    big.save(tmp_path / "columns.jpg", quality=95)
    results = lamina.predict(trained_run, [tmp_path / "columns.jpg"], top_k=2, device="cpu")["results"]
    assert results[0]["predictions"][0]["label"] == "columns"
    assert len(results[0]["predictions"]) == 2
    everything = lamina.predict(trained_run, [tmp_path / "columns.jpg"], top_k=9, device="cpu")["results"][0][
        "predictions"
    ]
    assert len(everything) == 3 and sum(p["probability"] for p in everything) == pytest.approx(1, abs=1e-4)


def test_evaluate_reports_per_class_metrics_and_plots(trained_run, tmp_path):
    import shutil

    from PIL import Image

    # Five images in each class folder, three of them of another class's pattern: the model tells the
    # patterns apart, so those three are its errors, and precision and recall differ class by class.
    source = make_folder(tmp_path / "patterns", per_class=7, seed=9)
    layout = {"bars": ["bars"] * 5, "columns": ["columns"] * 3 + ["bars"] * 2, "dots": ["dots"] * 4 + ["columns"]}
    data, taken = tmp_path / "more", {c: iter(sorted((source / c).iterdir())) for c in CLASSES}
    for label, patterns in layout.items():
        (data / label).mkdir(parents=True)
        for pattern in patterns:
            f = next(taken[pattern])
            shutil.copy(f, data / label / f.name)
    plots = tmp_path / "plots"
    plots.mkdir()
    result = lamina.evaluate(trained_run, data=str(data), device="cpu", out_dir=plots)
    m = result["metrics"]
    # No test/ in it, so it is evaluated as the default "val" split, whole.
    assert result["split"] == "val" and result["n"] == 15 and list(m["per_class"]) == list(CLASSES)

    # The same images through predict, scored here by hand: every class's probability for each image.
    files = sorted(data.glob("*/*.png"))
    truth = [CLASSES.index(f.parent.name) for f in files]
    predicted = lamina.predict(trained_run, files, top_k=len(CLASSES), device="cpu")["results"]
    probs = [{p["label"]: p["probability"] for p in r["predictions"]} for r in predicted]
    guess = [CLASSES.index(max(p, key=p.get)) for p in probs]
    assert guess == [CLASSES.index(f.name.partition("_")[0]) for f in files]  # the pattern drawn, every time
    cm = torch.zeros(3, 3, dtype=torch.long)  # row: true class, column: predicted
    for t, g in zip(truth, guess):
        cm[t, g] += 1
    assert cm.tolist() == [[5, 0, 0], [2, 3, 0], [0, 1, 4]]
    assert m["accuracy"] == pytest.approx(sum(t == g for t, g in zip(truth, guess)) / 15) == 12 / 15
    p_true = [p[CLASSES[t]] for p, t in zip(probs, truth)]
    # predict rounds probabilities to 6 decimals: -log p is known to within 5e-7 / p for each image.
    slack = sum(5e-7 / (q - 5e-7) for q in p_true) / 15
    assert m["loss"] == pytest.approx(-sum(math.log(q) for q in p_true) / 15, abs=slack)
    for i, c in enumerate(CLASSES):
        tp, predicted_c = int(cm[i, i]), int(cm[:, i].sum())
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / 5
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        got = m["per_class"][c]
        assert got["support"] == 5
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((precision, recall, f1))
    assert m["macro_f1"] == pytest.approx(sum(m["per_class"][c]["f1"] for c in CLASSES) / 3)

    assert result["plots"] == [str(plots / "confusion.png"), str(plots / "errors.png")]
    for plot in result["plots"]:
        with Image.open(plot) as image:
            assert image.format == "PNG" and min(image.size) >= 100
    assert not {"confusion.png", "errors.png"} & {p.name for p in trained_run.iterdir()}


def test_transfer_to_new_labels_with_a_frozen_backbone(trained_run, tmp_path):
    new = tmp_path / "new"
    for kind in ("bars", "columns"):
        (new / f"{kind}-renamed").mkdir(parents=True)
        for f in sorted((make_folder(tmp_path / "src", per_class=6) / kind).iterdir()):
            f.rename(new / f"{kind}-renamed" / f.name)
    summary = lamina.train(
        "classify",
        data=str(new),
        init=str(trained_run),
        freeze=True,
        epochs=2,
        batch_size=4,
        out=str(tmp_path / "transfer"),
        quiet=True,
        sets=["data.image_size=16", *CPU],
    )
    info = json.loads((tmp_path / "transfer" / "lamina.json").read_text())
    source_info = json.loads((trained_run / "lamina.json").read_text())
    assert info["model"]["name"] == "vgg-s" and info["model"]["args"]["num_classes"] == 2
    assert info["meta"]["mean"] == source_info["meta"]["mean"]  # inputs normalised as the backbone learned them
    source = ckpt.load_weights(trained_run / "model.safetensors")
    target = ckpt.load_weights(tmp_path / "transfer" / "model.safetensors")
    frozen = [k for k in source if k.startswith("features.")]
    assert frozen and all(torch.equal(source[k], target[k]) for k in frozen)  # backbone untouched, stats too
    assert summary["status"] == "complete"


def test_init_from_a_backbone_that_does_not_fit(trained_run, tmp_path):
    data = make_folder(tmp_path / "colour", per_class=4, colour=True)
    with pytest.raises(LaminaError, match="does not fit"):
        lamina.train("classify", data=str(data), init=str(trained_run), epochs=1, out=str(tmp_path / "x"), quiet=True)
    with pytest.raises(LaminaError, match="does not fit"):
        lamina.train(
            "classify",
            data=str(data),
            init=str(trained_run),
            model="resnet8",
            epochs=1,
            out=str(tmp_path / "y"),
            quiet=True,
        )


def test_train_resume_through_the_api_continues_the_same_run(image_folder, tmp_path, monkeypatch):
    import signal

    from lamina.tasks.classify import ClassifyTask

    common = dict(
        data=str(image_folder), model="vgg-s", epochs=3, batch_size=8, quiet=True, sets=["data.image_size=16", *CPU]
    )
    lamina.train("classify", out=str(tmp_path / "full"), **common)

    original, calls = ClassifyTask.step, {"n": 0}

    def interrupted(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGINT)
        return original(self, model, batch)

    monkeypatch.setattr(ClassifyTask, "step", interrupted)
    summary = lamina.train("classify", out=str(tmp_path / "cut"), **common)
    assert summary["status"] == "interrupted"
    assert json.loads((tmp_path / "cut" / "lamina.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(ClassifyTask, "step", original)
    summary = lamina.train("classify", out=str(tmp_path / "cut"), resume=True, quiet=True)
    assert summary["status"] == "complete"
    a = ckpt.load_trainer(tmp_path / "full" / "trainer.pt")["model"]
    b = ckpt.load_trainer(tmp_path / "cut" / "trainer.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_class_subset_and_per_class_limit(image_folder, tmp_path):
    summary = lamina.train(
        "classify",
        data=str(image_folder),
        epochs=1,
        batch_size=4,
        quiet=True,
        out=str(tmp_path / "sub"),
        sets=["data.classes=[2, 0]", "data.per_class=5", "data.val_fraction=0", "data.image_size=16"],
    )
    info = json.loads((tmp_path / "sub" / "lamina.json").read_text())
    assert info["meta"]["classes"] == ["dots", "bars"]
    assert info["meta"]["data"]["train"] == 10 and info["meta"]["data"]["val"] == 0
    assert summary["status"] == "complete"


def test_run_directory_rules(image_folder, tmp_path, trained_run):
    common = dict(data=str(image_folder), epochs=1, batch_size=8, quiet=True, sets=["data.image_size=16"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(LaminaError, match="is a file"):
        lamina.train("classify", out=str(tmp_path / "file"), **common)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(LaminaError, match="other files in it"):
        lamina.train("classify", out=str(tmp_path / "busy"), **common)
    # A run that died before its first checkpoint (only lamina.json) is simply started again.
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "lamina.json").write_text(
        json.dumps({"task": "classify", "model": {"name": "vgg-s", "args": {}}, "status": "training"})
    )
    assert lamina.train("classify", out=str(dead), **common)["status"] == "complete"


def test_resume_refuses_changed_data_settings(image_folder, tmp_path):
    out = str(tmp_path / "run")
    lamina.train(
        "classify", data=str(image_folder), epochs=1, batch_size=8, quiet=True, out=out, sets=["data.image_size=16"]
    )
    with pytest.raises(LaminaError, match="cannot change train.batch_size"):
        lamina.train("classify", out=out, resume=True, batch_size=4)
    (image_folder / "bars" / "bars_000.png").unlink()
    with pytest.raises(LaminaError, match="data of .* changed"):
        lamina.train("classify", out=out, resume=True, epochs=2, quiet=True)


def test_a_gpu_fp16_run_loads_on_the_cpu(trained_run, tmp_path):
    import shutil

    copy = tmp_path / "fp16"
    shutil.copytree(trained_run, copy)
    info = json.loads((copy / "lamina.json").read_text())
    info["config"]["train"]["amp"] = "fp16"
    (copy / "lamina.json").write_text(json.dumps(info))
    assert lamina.load(copy, device="cpu").task.precision.dtype in (None, torch.bfloat16)


def test_relative_data_paths_are_saved_absolute(image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(image_folder.parent)
    lamina.train(
        "classify",
        data=image_folder.name,
        epochs=1,
        batch_size=8,
        quiet=True,
        out=str(tmp_path / "r"),
        sets=["data.image_size=16"],
    )
    saved = json.loads((tmp_path / "r" / "lamina.json").read_text())["config"]["data"]["name"]
    assert saved == str(image_folder.resolve())
    # Resuming with the same relative path is the same data...
    assert (
        lamina.train("classify", data=image_folder.name, epochs=2, out=str(tmp_path / "r"), resume=True, quiet=True)[
            "status"
        ]
        == "complete"
    )
    # ...and the run finds its data from another working directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = lamina.evaluate(tmp_path / "r")
    # No test/ in this data: validation is the default, the stratified hold-out of 1 image in 10 of each class.
    assert result["split"] == "val" and result["n"] == 3


def test_evaluate_decodes_only_the_split_it_measures(trained_run, monkeypatch, tmp_path):
    from lamina.data import images

    decoded, original = [], images.image_folder

    def counting(root, classes, channels, size, split_name):
        decoded.append(split_name)
        return original(root, classes, channels, size, split_name)

    monkeypatch.setattr(images, "image_folder", counting)
    lamina.evaluate(trained_run, split="test", device="cpu", out_dir=tmp_path)
    assert decoded == ["test"]


def test_the_default_recipe_learns_a_small_folder_in_a_few_epochs(tmp_path):
    # 3 x 200 images: at the recipe's large-data batch of 256 an epoch would be 2 steps, and the
    # warm-up and peak learning rate of a 50,000-image recipe would blow the network up.
    data = make_folder(tmp_path / "small", per_class=200, sizes=((16, 16),))
    summary = lamina.train("classify", data=str(data), epochs=4, out=str(tmp_path / "run"), quiet=True, sets=CPU)
    info = json.loads((tmp_path / "run" / "lamina.json").read_text())
    assert info["config"]["train"]["batch_size"] == 16  # 540 training images: the smallest auto batch
    assert summary["metrics"]["val"]["accuracy"] >= 0.9
    assert "warnings" not in summary


def test_the_batch_size_chosen_for_the_data():
    from lamina.tasks import get_task

    task = get_task("classify")(lamina.config.resolve({"train.batch_size": 0}), "cpu", None, ".", None)
    chosen = {}
    for n in (200, 1_620, 6_400, 12_800, 54_000):
        task.cfg.train.batch_size = 0
        task.settle_batch_size(n)
        chosen[n] = task.cfg.train.batch_size
    assert chosen == {200: 16, 1_620: 32, 6_400: 128, 12_800: 256, 54_000: 256}
    task.cfg.train.batch_size = 100  # given by the user: kept
    task.settle_batch_size(200)
    assert task.cfg.train.batch_size == 100


def test_warnings_at_chance_level_and_when_the_loss_rose():
    from lamina.tasks import get_task

    task = get_task("classify")(lamina.config.resolve({}), "cpu", None, ".", None)
    meta = {"classes": ["a", "b", "c", "d"], "data": {"class_counts": [50, 20, 20, 10]}}
    falling = [{"train_loss": 2.0}, {"train_loss": 1.0}]
    assert task.warnings(falling, {"val": {"accuracy": 0.9}, "test": {"accuracy": 0.9}}, meta) == []
    # The most frequent class is half the data: 53% is still chance (below 50% + a tenth of the rest).
    (chance,) = task.warnings(falling, {"test": {"accuracy": 0.53}}, meta)
    assert chance.startswith("test accuracy 53.00% is at chance level (50.00%")
    assert task.warnings(falling, {"test": {"accuracy": 0.56}}, meta) == []
    (rose,) = task.warnings([{"train_loss": 2.0}, {"train_loss": 9.5}], {"val": {"accuracy": 0.9}}, meta)
    assert rose.startswith("the training loss rose from 2 to 9.5")


def test_a_foreign_trainer_checkpoint_is_refused_in_one_line(trained_run, tmp_path, capsys):
    import argparse  # a class that weights_only loading refuses to rebuild
    import shutil

    from lamina import cli

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    torch.save({"model": {}, "optimizer": {}, "state": argparse.Namespace(step=1)}, run / "trainer.pt")
    assert cli.main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"lamina: error: cannot read {run / 'trainer.pt'}: not a lamina training")
    torch.save([1, 2, 3], run / "trainer.pt")  # loads safely, but is not a checkpoint
    assert cli.main(["train", "--resume", str(run)]) == 1
    assert capsys.readouterr().err.strip().endswith("(no model and optimizer state)")
