"""lamina attack and adversarial training: eps 0 changes nothing, larger eps never helps, FGSM and PGD
are the Adversarial Robustness Toolbox's to the pixel, and train.adversarial trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lamina
from conftest import CPU
from test_cli import assert_one_line_error, run_cli


def test_eps_zero_changes_nothing_and_larger_eps_never_helps(capsys, trained_run, tmp_path):
    run = lamina.load(trained_run, "cpu")
    test = run.task.eval_split(run.meta, run.config.data.name, "test")
    probs, labels = run.task.predict_all(run.model, run.task.batches(test, run.meta), tta=False)
    clean = float((probs.argmax(1) == labels).float().mean())
    for method in ("fgsm", "pgd"):
        code, out, _ = run_cli(capsys, "attack", trained_run, "--method", method, "--eps", "0,0.02,0.05,0.1,0.3",
                               "--steps", "5", "--out", tmp_path, "--json")  # fmt: skip
        assert code == 0
        result = json.loads(out)
        accuracy = [p["accuracy"] for p in result["curve"]]
        assert accuracy[0] == pytest.approx(clean)
        # On average larger attacks never help; on 12 images one may come back (FGSM overshoots).
        assert all(b <= a + 1 / 12 + 1e-9 for a, b in zip(accuracy, accuracy[1:])), accuracy
        assert accuracy[-1] < accuracy[0] and accuracy[-1] == min(accuracy)
        assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in
                   (f"attack-{method}.png", f"attack-{method}-examples.png"))  # fmt: skip
    result = lamina.attack(trained_run, "pgd", [0.0, 0.3], steps=5, target="dots", out_dir=tmp_path, device="cpu")
    assert result["target"] == "dots" and result["curve"][-1]["success"] > result["curve"][0]["success"]


def test_fgsm_and_pgd_match_the_adversarial_robustness_toolbox(trained_run):
    pytest.importorskip("art")
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    from lamina import adversarial

    run = lamina.load(trained_run, "cpu")
    model = run.model.float().eval()
    data = run.task.eval_split(run.meta, run.config.data.name, "test")
    x, y = data.images.float() / 255, data.labels
    classes = len(run.meta["classes"])
    art_model = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                  nb_classes=classes, clip_values=(0.0, 1.0), device_type="cpu")  # fmt: skip

    def loss(v):
        return F.cross_entropy(model(v), y, reduction="sum")

    eps = 0.05
    ours = adversarial.fgsm(loss, x, eps).numpy()
    theirs = FastGradientMethod(art_model, norm=np.inf, eps=eps).generate(x.numpy(), y=y.numpy())
    assert np.mean(np.abs(ours - theirs) < 1e-6) > 0.999
    ours = adversarial.pgd(loss, x, eps, steps=5, step_size=0.02, random_start=False).numpy()
    attack = ProjectedGradientDescent(art_model, norm=np.inf, eps=eps, eps_step=0.02, max_iter=5, num_random_init=0,
                                      verbose=False)  # fmt: skip
    theirs = attack.generate(x.numpy(), y=y.numpy())
    assert np.mean(np.abs(ours - theirs) < 1e-5) > 0.999
    assert np.abs(ours - x.numpy()).max() <= eps + 1e-6


def test_a_detector_is_attacked_on_its_map(served_runs, tmp_path):
    result = lamina.attack(served_runs / "detect", "fgsm", [0.0, 0.05], limit=2, out_dir=tmp_path, device="cpu")
    assert [p["eps"] for p in result["curve"]] == [0.0, 0.05] and result["n"] == 2
    assert all(0 <= p["box_map_50"] <= 1 for p in result["curve"]) and (tmp_path / "attack-fgsm.png").exists()


def test_adversarial_training_trains_and_other_tasks_refuse(capsys, monkeypatch, served_runs, tmp_path):
    from conftest import make_folder
    from lamina.tasks.classify import ClassifyTask

    perturbed = []
    perturb = ClassifyTask.perturb

    def counting(self, model, batch):
        x, y = perturb(self, model, batch)
        perturbed.append(float((x - batch[0].float() / 255).abs().max()))
        return x, y

    monkeypatch.setattr(ClassifyTask, "perturb", counting)
    make_folder(tmp_path / "shapes" / "train", per_class=8)
    sets = ["data.image_size=16", "train.adversarial=pgd", "train.adversarial_steps=2", *CPU]
    summary = lamina.train("classify", data=str(tmp_path / "shapes"), model="lenet5", epochs=1, batch_size=8,
                           out=str(tmp_path / "run"), quiet=True, sets=sets)  # fmt: skip
    assert summary["status"] == "complete" and summary["steps"] >= 2
    assert len(perturbed) == summary["steps"] and all(0 < d <= 0.1 + 1e-6 for d in perturbed)  # a PGD batch a step
    info = json.loads((tmp_path / "run" / "lamina.json").read_text())
    assert info["config"]["train"]["adversarial"] == "pgd"
    code, _, err = run_cli(capsys, "train", "lm", "--set", "train.adversarial=pgd", "--out", tmp_path / "lm")
    assert code == 2
    assert_one_line_error(err, "train.adversarial applies to image classification")
    code, _, err = run_cli(capsys, "attack", served_runs / "lm", "--out", tmp_path)
    assert code == 2
    assert_one_line_error(err, "a lm run cannot be attacked")
    code, _, err = run_cli(capsys, "attack", served_runs / "classify", "--eps", "0,big", "--out", tmp_path)
    assert code == 2
    assert_one_line_error(err, "--eps takes numbers")
