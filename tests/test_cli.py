"""The command line: every documented failure is one line on stderr and a non-zero exit, never a traceback."""

import json
import re
import subprocess
import sys

import pytest

from lamina.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lamina: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_models_lists_names_parameters_and_descriptions(capsys):
    from lamina.models import list_models

    code, out, _ = run_cli(capsys, "models", "classify")
    assert code == 0
    lines = out.splitlines()
    # One line per registered model, in name order: task, name, parameters (thousands separated), description.
    specs = sorted(list_models("classify"), key=lambda spec: spec.name)
    assert [line.split(None, 3)[:2] for line in lines] == [["classify", spec.name] for spec in specs]
    assert [line.split(None, 3)[3] for line in lines] == [spec.description for spec in specs]
    counts = {line.split()[1]: line.split()[2] for line in lines}
    # Known by hand at the default 1x28x28 input and 10 classes: LeNet-5 (conv1 padded to keep 28x28)
    # and the perceptron 784-512-256-10.
    assert counts["lenet5"] == f"{6 * 25 + 6 + 16 * 6 * 25 + 16 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10:,}"
    assert counts["lenet5"] == "61,706" and counts["mlp"] == f"{784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10:,}"
    # The counts are right-aligned in one column: each ends at the same place in its line.
    assert len({re.match(r"\S+ +\S+ +[\d,]+", line).end() for line in lines}) == 1
    code, out, _ = run_cli(capsys, "models", "classify", "--json")
    rows = json.loads(out)
    assert [(r["task"], r["name"], f"{r['parameters']:,}", r["description"]) for r in rows] == [
        tuple(line.split(None, 3)) for line in lines
    ]


@pytest.mark.parametrize(
    "argv, code, fragments",
    [
        (["train", "nosuch"], 2, ["unknown task 'nosuch'", "classify"]),
        (["train", "classify", "--model", "nope"], 2, ["unknown model 'nope'", "resnet18"]),
        (["train", "classify", "--data", "imagenet"], 2, ["unknown dataset 'imagenet'", "fashion-mnist"]),
        (["train", "classify", "--data", "./no/such/folder"], 1, ["does not exist"]),
        (["train", "classify", "--set", "optim.lrr=1"], 2, ["unknown setting 'optim.lrr'"]),
        (["train", "classify", "--epochs", "x"], 2, ["invalid int value"]),
        (["train", "classify", "--resume"], 2, ["--resume needs the run to continue"]),
        (["train"], 2, ["give the task to train"]),
        (["train", "classify", "--reverse"], 2, ["reverse: not a setting of 'classify' runs"]),
        (["translate", "./no/such/run", "hello"], 1, ["does not exist"]),
        (["config", "nosuch"], 2, ["unknown task"]),
        (["evaluate", "./no/such/run"], 1, ["does not exist"]),
        (["predict", "./no/such/run", "a.png"], 1, ["does not exist"]),
        (["models", "nosuch"], 2, ["unknown task"]),
        (["data", "prepare", "nosuch"], 2, ["unknown dataset"]),
    ],
)
def test_usage_and_input_errors(capsys, argv, code, fragments):
    got, _, err = run_cli(capsys, *argv)
    assert got == code
    assert_one_line_error(err, *fragments)


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    code, _, err = run_cli(capsys, "train", "classify", "--data", tmp_path / "empty", "--out", tmp_path / "r")
    assert code == 1
    assert_one_line_error(err, "no class sub-folders with files")


def test_unusable_run_directories(capsys, tmp_path, trained_run):
    (tmp_path / "plain").mkdir()
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "plain")
    assert code == 1
    assert_one_line_error(err, "not a lamina run")

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "lamina.json").write_text(json.dumps({"task": "classify", "model": {"name": "vgg-s", "args": {}}}))
    code, _, err = run_cli(capsys, "predict", incomplete, "x.png")
    assert code == 1
    assert_one_line_error(err, "incomplete", "no model.safetensors")

    other = tmp_path / "other"
    other.mkdir()
    (other / "lamina.json").write_text(json.dumps({"task": "lm", "model": {"name": "lstm", "args": {}}}))
    code, _, err = run_cli(capsys, "train", "classify", "--init", other, "--out", tmp_path / "t")
    assert code == 1
    assert_one_line_error(err, "is a 'lm' run, not a 'classify' run")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "lamina.json").write_text((trained_run / "lamina.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "evaluate", corrupt)
    assert code == 1
    assert_one_line_error(err, "cannot read weights")


def test_existing_run_is_never_overwritten(capsys, trained_run):
    code, _, err = run_cli(capsys, "train", "classify", "--out", trained_run)
    assert code == 1
    assert_one_line_error(err, "already holds a run", "--resume")


def test_predict_reports_bad_files_and_goes_on(capsys, tmp_path, trained_run):
    from PIL import Image

    Image.new("L", (30, 30), 128).save(tmp_path / "grey.png")
    (tmp_path / "notes.txt").write_text("hello")
    code, out, err = run_cli(
        capsys,
        "predict",
        trained_run,
        tmp_path / "grey.png",
        tmp_path / "notes.txt",
        tmp_path / "missing.png",
        "--top-k",
        "2",
        "--device",
        "cpu",
    )
    assert code == 1
    # One line, for the one readable image: its two most likely classes, as the API predicts them.
    import lamina

    [result] = lamina.predict(trained_run, [tmp_path / "grey.png"], top_k=2, device="cpu")["results"]
    shown = ", ".join(f"{p['label']} {p['probability']:.1%}" for p in result["predictions"])
    assert out == f"{tmp_path / 'grey.png'}: {shown}\n" and len(result["predictions"]) == 2
    assert err.count("lamina: error:") == 2 and "not a readable image" in err and "no such file" in err
    assert "Traceback" not in err


def test_evaluate_json_is_one_object(capsys, tmp_path, trained_run):
    import shutil

    import lamina
    from conftest import make_folder

    # `lamina evaluate` writes its plots into the run, and has no option to put them elsewhere: a copy.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = make_folder(tmp_path / "eval", per_class=3)
    code, out, _ = run_cli(capsys, "evaluate", run, "--data", data, "--json", "--device", "cpu")
    assert code == 0
    result = json.loads(out)
    assert result["task"] == "classify" and result["n"] == 9 and result["run"] == str(run)
    assert result["plots"] == [str(run / "confusion.png"), str(run / "errors.png")]
    expected = lamina.evaluate(trained_run, data=str(data), device="cpu", out_dir=tmp_path)
    assert result["metrics"] == expected["metrics"] and set(result) == set(expected)


def test_non_finite_loss_is_a_one_line_error(capsys, tmp_path, image_folder, monkeypatch):
    from lamina.tasks.classify import ClassifyTask

    original = ClassifyTask.step

    def poisoned(self, model, batch):
        out = original(self, model, batch)
        out.loss = out.loss * float("inf")
        return out

    monkeypatch.setattr(ClassifyTask, "step", poisoned)
    code, _, err = run_cli(
        capsys, "train", "classify", "--data", image_folder, "--epochs", "1", "--quiet", "--out", tmp_path / "nan"
    )
    assert code == 1
    assert_one_line_error(err, "loss became", "training stopped")
    assert json.loads((tmp_path / "nan" / "lamina.json").read_text())["status"] == "diverged"


def test_python_dash_m_entry_point_has_no_traceback():
    done = subprocess.run([sys.executable, "-m", "lamina", "train", "nosuch"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("lamina: error: unknown task") and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "lamina", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("lamina ")


def test_data_list_and_prepare(capsys):
    from lamina.data.sources import FASHION_MNIST

    code, out, _ = run_cli(capsys, "data", "list")
    assert code == 0 and "fashion-mnist" in out
    assert ("here:" in out) == (FASHION_MNIST.locate() is not None)
    if FASHION_MNIST.locate() is None:
        code, _, err = run_cli(capsys, "data", "prepare", "fashion-mnist")
        assert code == 1
        assert_one_line_error(err, "apt-get install dataset-fashion-mnist")
    else:
        code, out, _ = run_cli(capsys, "data", "prepare", "fashion-mnist")
        assert code == 0 and "verified" in out


def test_unexpected_exceptions_are_one_line_too(capsys, monkeypatch):
    import lamina.cli as cli

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_models", broken)
    monkeypatch.delenv("LAMINA_DEBUG", raising=False)
    code, _, err = run_cli(capsys, "models")
    assert code == 1
    assert (
        err.strip()
        == "lamina: internal error: ZeroDivisionError: division by zero (set LAMINA_DEBUG=1 for the traceback)"
    )


def test_training_skips_corrupt_files_with_a_warning(capsys, tmp_path, image_folder):
    (image_folder / "bars" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    (image_folder / "dots" / "README.txt").write_text("not an image")
    code, out, err = run_cli(
        capsys,
        "train",
        "classify",
        "--data",
        image_folder,
        "--epochs",
        "1",
        "--quiet",
        "--out",
        tmp_path / "r",
        "--set",
        "data.image_size=16",
    )
    assert code == 0 and out.splitlines()[-1].endswith(f"; run saved in {tmp_path / 'r'}")
    assert "lamina: warning: skipped 2 unreadable file(s)" in err and "Traceback" not in err


def test_init_with_a_backbone_that_does_not_fit(capsys, tmp_path, trained_run):
    from conftest import make_folder

    colour = make_folder(tmp_path / "colour", per_class=4, colour=True)
    code, _, err = run_cli(
        capsys, "train", "classify", "--data", colour, "--init", trained_run, "--out", tmp_path / "t"
    )
    assert code == 1
    assert_one_line_error(err, "does not fit")


def test_ctrl_c_leaves_a_resumable_run_and_says_how_to_continue(capsys, tmp_path, image_folder, monkeypatch):
    import signal

    from lamina.tasks.classify import ClassifyTask

    original, calls = ClassifyTask.step, {"n": 0}

    def interrupted(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)
        return original(self, model, batch)

    monkeypatch.setattr(ClassifyTask, "step", interrupted)
    out_dir = tmp_path / "cut"
    code, _, err = run_cli(
        capsys,
        "train",
        "classify",
        "--data",
        image_folder,
        "--epochs",
        "2",
        "--quiet",
        "--batch-size",
        "4",
        "--out",
        out_dir,
        "--set",
        "data.image_size=16",
    )
    assert code == 130
    assert f"continue with: lamina train --resume {out_dir}" in err
    monkeypatch.setattr(ClassifyTask, "step", original)
    code, out, _ = run_cli(capsys, "train", "--resume", out_dir, "--quiet")  # the task is read from the run
    assert code == 0 and out.splitlines()[-1].endswith(f"; run saved in {out_dir}")
    assert json.loads((out_dir / "lamina.json").read_text())["status"] == "complete"
