"""Training in several processes with torchrun (PyTorch DDP, gloo on the CPU): the same results as one
process with the same global batch, runs that save, reload and predict, evaluation that counts every
sample once, and an interrupted run that resumes exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import lamina
from conftest import CPU, make_folder
from lamina.cli import main

pytestmark = pytest.mark.slow


def torchrun(*args, processes: int = 2, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        *map(str, args),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return path


SGD = ["train.quiet=true", "train.amp=off", "optim.schedule=constant", "optim.momentum=0", "optim.weight_decay=0"]


def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    job = script(
        tmp_path,
        f"""
        import sys
        import torch, torch.nn.functional as F
        from lamina import config
        from lamina.data.images import ImageBatches, ImageSet
        from lamina.engine.device import Precision
        from lamina.engine.distributed import Distributed
        from lamina.engine.loop import StepOutput, Trainer
        from lamina.models import get_model

        out, per_process, accumulate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        dist = Distributed.from_environment()
        dist.start(torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        data = ImageSet(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g),
                        torch.randint(0, 3, (64,), generator=g), ["a", "b", "c"], [str(i) for i in range(64)])
        stream = ImageBatches(data, per_process * dist.world, torch.device("cpu"), train=True, seed=0)
        sets = {[*SGD, "train.epochs=2", "optim.lr=0.5"]!r} + [f"train.accumulate={{accumulate}}"]
        cfg = config.resolve({{}}, sets=sets)
        torch.manual_seed(dist.seed(0))
        model = get_model("classify", "mlp", in_channels=1, num_classes=3, image_size=8, hidden=[16], dropout=0.0)

        def step(m, batch):
            x, y = batch
            return StepOutput(F.cross_entropy(m(x), y), len(y))

        trainer = Trainer(model, step, stream, None, cfg, out, Precision(None, torch.device("cpu")), dist=dist)
        result = trainer.fit()
        if dist.main:
            torch.save({{"weights": model.state_dict(), "steps": result.state.step}}, out + "/weights.pt")
        dist.stop()
    """,
    )
    two, accumulated, one = tmp_path / "two", tmp_path / "accumulated", tmp_path / "one"
    done = torchrun(job, two, 8, 1)  # 2 processes x 8
    assert done.returncode == 0, done.stderr[-3000:]
    done = torchrun(job, accumulated, 4, 2)  # 2 processes x 4, two batches a step
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, job, one, "16", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [torch.load(path / "weights.pt") for path in (two, accumulated, one)]
    assert [r["steps"] for r in runs] == [8, 8, 8]  # 64 images / 16 a step, 2 epochs
    for k in runs[2]["weights"]:
        for r in runs[:2]:
            torch.testing.assert_close(r["weights"][k], runs[2]["weights"][k], rtol=1e-5, atol=1e-6)


def test_torchrun_trains_classify_and_the_run_reloads_and_predicts(tmp_path, capsys):
    data = make_folder(tmp_path / "shapes", per_class=16)
    out = tmp_path / "run"
    done = torchrun(
        "-m",
        "lamina",
        "train",
        "classify",
        "--data",
        data,
        "--epochs",
        3,
        "--batch-size",
        4,
        "--out",
        out,
        "--json",
        *[a for s in ["data.image_size=16", *CPU] for a in ("--set", s)],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # one summary: rank 0's
    assert len(done.stdout.strip().splitlines()) == 1 and summary["processes"] == 2 and summary["status"] == "complete"
    info = json.loads((out / "lamina.json").read_text())
    assert info["processes"] == 2 and 0 <= info["metrics"]["val"]["accuracy"] <= 1
    code = main(["predict", str(out), str(next((data / "bars").iterdir())), "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and len(result["results"][0]["predictions"]) == 3


def test_torchrun_trains_a_language_model_that_generates(tmp_path):
    text = tmp_path / "verse.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. " * 60)
    out = tmp_path / "lm"
    tiny = ["model.hidden=32", "model.embed=16", "data.seq_len=16", *CPU]
    done = torchrun(
        "-m",
        "lamina",
        "train",
        "lm",
        "--data",
        text,
        "--epochs",
        2,
        "--batch-size",
        4,
        "--out",
        out,
        "--quiet",
        *[a for s in tiny for a in ("--set", s)],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run saved in" in done.stdout
    run = lamina.load(out, device="cpu")
    assert run.info["processes"] == 2
    assert len(run.generate("the ", 20, seed=1)["text"]) == 20


def test_evaluation_shared_between_processes_equals_one_process(tmp_path, trained_run):
    text = tmp_path / "verse.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. " * 200)
    lm_run = lamina.train(
        "lm",
        data=str(text),
        epochs=1,
        batch_size=4,
        out=str(tmp_path / "lm"),
        quiet=True,
        sets=["model.hidden=32", "model.embed=16", "data.seq_len=16", *CPU],
    )["run"]
    job = script(
        tmp_path,
        """
        import json, sys
        import torch
        import lamina
        from lamina.data import text
        from lamina.data.vocab import CharVocab
        from lamina.engine.distributed import Distributed

        classify_run, lm_run, out = sys.argv[1:4]
        dist = Distributed.from_environment()
        dist.start(torch.device("cpu"))
        results = {}
        run = lamina.load(classify_run, device="cpu")
        run.task.dist = dist
        test = run.task.eval_split(run.meta, run.config.data.name, "test")
        stream = run.task.batches(test, run.meta)
        stream.batch_size = 5  # several batches, dealt to the processes in turn
        results["classify"] = run.task.evaluate(run.model, stream)
        run = lamina.load(lm_run, device="cpu")
        run.task.dist = dist
        corpus = text.load_corpus(run.config.data.name, "", run.config.data.val_fraction)
        results["lm"] = run.task.evaluate(run.model, run.task.streams(CharVocab(run.meta["vocab"]).encode(corpus.val)))
        if dist.main:
            open(out, "w").write(json.dumps(results))
        dist.stop()
    """,
    )
    shared = tmp_path / "shared.json"
    done = torchrun(job, trained_run, lm_run, shared)
    assert done.returncode == 0, done.stderr[-3000:]
    single = tmp_path / "single.json"
    done = subprocess.run(
        [sys.executable, job, trained_run, lm_run, single], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = json.loads(shared.read_text()), json.loads(single.read_text())
    assert a["classify"] == b["classify"]  # the same batches, put back in order: exactly the same figures
    assert a["lm"]["loss"] == pytest.approx(b["lm"]["loss"], rel=1e-6)  # rows shared: sums in another order


def test_an_interrupted_two_process_run_resumes_exactly(tmp_path):
    data = make_folder(tmp_path / "shapes", per_class=12)
    args = [
        "-m",
        "lamina",
        "train",
        "classify",
        "--data",
        data,
        "--epochs",
        40,
        "--batch-size",
        4,
        "--quiet",
        *[a for s in ["data.image_size=16", *CPU] for a in ("--set", s)],
    ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = torchrun(*args, "--out", full)
    assert done.returncode == 0, done.stderr[-3000:]

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        *map(str, args),
        "--out",
        str(cut),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + 120
    while not (cut / "trainer.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # as Ctrl-C: torchrun passes it to its workers
    _, err = proc.communicate(timeout=120)
    info = json.loads((cut / "lamina.json").read_text())
    assert info["status"] == "interrupted", err[-3000:]
    saved = torch.load(cut / "trainer.pt", weights_only=True)
    assert 0 < saved["state"]["step"] < 40 * 4 and len(saved["ranks"]) == 2  # each process's own state

    done = torchrun("-m", "lamina", "train", "--resume", cut, "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(full / "trainer.pt", weights_only=True)["model"]
    b = torch.load(cut / "trainer.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # ended bit for bit where the uninterrupted run did

    code = main(["train", "--resume", str(cut), "--epochs", "41", "--quiet"])  # one process: refused, with the way
    assert code == 1
