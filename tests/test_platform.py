"""The platform: a new task is one module that declares its settings and verbs, and the CLI, the API
and the engine serve it with no edit anywhere else. Also what every task gets: lamina config,
lamina runs, recorded versions, in-memory inputs, TensorBoard, progress lines."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, TextIO

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lamina
from conftest import CPU
from lamina.cli import main
from lamina.commands import Verb, arg
from lamina.config import DataConfig, setting
from lamina.engine.loop import StepOutput
from lamina.errors import UsageError
from lamina.tasks.base import Prepared, Task


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----- a whole new task, defined here -------------------------------------------------------------
@dataclass
class SumData(DataConfig):
    """Pairs of numbers and their sums."""

    name: str = setting("random", "random: pairs drawn uniformly from [-scale, scale]", flag="--data")
    samples: int = setting(512, "training pairs", flag="--samples", check=(lambda v: v >= 8, "must be at least 8"))
    scale: float = setting(1.0, "the numbers' range")


class Pairs:
    """A BatchStream of (x (B, 2), y (B,)), the same for the same (epoch, batch)."""

    def __init__(self, x: torch.Tensor, batch_size: int, train: bool, seed: int = 0):
        self.x, self.y, self.batch_size, self.train, self.seed = x, x.sum(1), batch_size, train, seed
        self.n_samples = len(x)

    def __len__(self) -> int:
        return -(-self.n_samples // self.batch_size)

    def epoch(self, index: int = 0, start: int = 0, rank: int = 0, world: int = 1):
        order = torch.randperm(self.n_samples, generator=torch.Generator().manual_seed(self.seed + index))
        for b in range(start, len(self)):
            rows = (
                order[b * self.batch_size : (b + 1) * self.batch_size]
                if self.train
                else slice(b * self.batch_size, (b + 1) * self.batch_size)
            )
            x, y = self.x[rows], self.y[rows]
            yield x[rank::world], y[rank::world]


class Adder(nn.Module):
    def __init__(self, inputs: int = 2, hidden: int = 0):
        super().__init__()
        self.net = (
            nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            if hidden
            else nn.Linear(inputs, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class SumTask(Task):
    name = "toy-sum"
    description = "learn to add two numbers (a test of the platform)"
    Data = SumData
    defaults = {
        "model.name": "adder",
        "optim.name": "adamw",
        "optim.lr": 0.05,
        "optim.weight_decay": 0.0,
        "optim.schedule": "constant",
        "train.batch_size": 32,
        "train.channels_last": False,
    }
    verbs = (
        Verb(
            "add",
            "add numbers with a toy-sum run",
            (arg("numbers", nargs=2, type=float, metavar="X"), arg("--digits", type=int, help="decimals to round to")),
            returns="{numbers, sum}",
        ),
    )
    data_paths = "nothing else"

    def prepare(self, previous_meta=None) -> Prepared:
        d = self.cfg.data
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(d.samples + 64, 2, generator=g) * 2 - 1) * d.scale
        meta = {"scale": d.scale, "data": {"name": d.name, "train": d.samples, "val": 64}}
        return Prepared(
            Pairs(x[: d.samples], self.cfg.train.batch_size, True, self.cfg.train.seed),
            Pairs(x[d.samples :], 64, False),
            None,
            meta,
            {"inputs": 2},
        )

    def step(self, model, batch) -> StepOutput:
        x, y = batch
        return StepOutput(F.mse_loss(model(x), y), len(y))

    @torch.no_grad()
    def evaluate(self, model, batches, tta=None) -> dict[str, float]:
        model.eval()
        errors = torch.cat([model(x) - y for x, y in batches.epoch()])
        return {"loss": float(errors.square().mean()), "mae": float(errors.abs().mean())}

    def has_split(self, data: str, split: str) -> bool:
        return split == "val"

    def report(self, model, meta, data, split, out_dir) -> dict[str, Any]:
        prepared = self.prepare(meta)
        return {"n": prepared.val.n_samples, "metrics": self.evaluate(model, prepared.val)}

    def predict(self, model, meta, inputs, **options) -> dict[str, Any]:
        results = []
        for text in inputs:
            try:
                a, b = (float(v) for v in str(text).split(","))
            except ValueError:
                results.append({"input": text, "error": f"{text!r} is not two numbers a,b"})
                continue
            results.append({"input": text, **self.add(model, meta, [a, b])})
        return {"results": results}

    @torch.no_grad()
    def add(self, model, meta, numbers: list[float], digits: int = 2) -> dict[str, Any]:
        if digits < 0:
            raise UsageError("--digits must not be negative")
        model.eval()
        return {"numbers": numbers, "sum": round(float(model(torch.tensor([numbers]))[0]), digits)}

    @classmethod
    def render_add(cls, result: dict[str, Any], out: TextIO) -> None:
        print(f"{result['numbers'][0]:g} + {result['numbers'][1]:g} = {result['sum']:g}", file=out)

    @classmethod
    def render_predict(cls, result: dict[str, Any], out: TextIO) -> None:
        for r in result["results"]:
            if "sum" in r:
                cls.render_add(r, out)


@pytest.fixture
def toy_task():
    """SumTask and its model registered through the public API, and taken out again afterwards."""
    from lamina.models import registry
    from lamina.tasks import TASKS, list_tasks

    list_tasks()  # the built-in tasks first, as the CLI sees them
    # ...and the built-in models: they register on first import, which happens once, so a copy taken
    # before it would put back a registry without them (and later tests would find no models).
    registry.list_models()
    tasks, models = dict(TASKS), dict(registry._REGISTRY)
    lamina.register_task(SumTask)
    lamina.register_model("toy-sum", "adder", "a linear unit (or a hidden layer of ReLU units) that adds")(Adder)
    yield SumTask
    TASKS.clear(), TASKS.update(tasks)
    registry._REGISTRY.clear(), registry._REGISTRY.update(models)


def test_a_new_task_is_one_module_and_the_real_cli_serves_it(toy_task, capsys, tmp_path):
    out = tmp_path / "adder"
    code, text, err = run_cli(
        capsys,
        "train",
        "toy-sum",
        "--samples",
        256,
        "--epochs",
        40,
        "--out",
        out,
        "--quiet",
        "--json",
        *[a for s in CPU for a in ("--set", s)],
    )
    assert code == 0, err
    summary = json.loads(text)
    assert summary["status"] == "complete" and summary["metrics"]["val"]["mae"] < 0.05  # it learned to add
    saved = json.loads((out / "lamina.json").read_text())
    assert saved["config"]["data"] == {"name": "random", "samples": 256, "scale": 1.0}  # its own settings, saved

    code, text, _ = run_cli(capsys, "evaluate", out, "--json")
    assert code == 0 and json.loads(text)["metrics"]["mae"] < 0.05
    code, text, err = run_cli(capsys, "predict", out, "0.25,0.5", "x")
    assert code == 1 and "0.25 + 0.5 = 0.75" in text and "'x' is not two numbers" in err  # bad input: the rest goes on
    code, text, _ = run_cli(capsys, "add", out, "0.5", "-0.25", "--digits", "1", "--json")
    assert code == 0 and json.loads(text) == {"numbers": [0.5, -0.25], "sum": 0.2}
    code, text, _ = run_cli(capsys, "add", out, "0.5", "0.25")
    assert code == 0 and text.strip() == "0.5 + 0.25 = 0.75"
    code, _, err = run_cli(capsys, "add", out, "1", "2", "--digits", "-1")
    assert code == 2 and "--digits must not be negative" in err

    code, text, _ = run_cli(capsys, "config", "toy-sum")
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:]}
    assert code == 0 and rows["data.samples"] == ["512", "int", "training", "pairs", "(flag", "--samples)"]
    assert rows["model.hidden"] == ["0", "int", "option", "of", "the", "adder", "model"]  # the model's own option
    parser_help = _help(capsys, "train")
    assert "--samples" in parser_help and "toy-sum: training pairs" in parser_help
    assert "add" in _help(capsys) and "toy-sum" in _help(capsys, "train")

    run = lamina.load(out)  # the Python API: the verb is a method of the run, and a function of lamina
    assert run.add([1.0, 2.0])["sum"] == pytest.approx(3.0, abs=0.15)
    assert lamina.add(out, [1.0, 2.0], digits=0)["sum"] == 3.0
    code, _, err = run_cli(capsys, "train", "toy-sum", "--samples", 4, "--out", tmp_path / "x")
    assert code == 2 and "--samples must be at least 8" in err


def _help(capsys, *command) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


def test_a_verb_belongs_to_its_task(trained_run, capsys):
    run = lamina.load(trained_run, device="cpu")
    with pytest.raises(UsageError, match="a classify run does not translate"):
        run.translate(["hello"])
    with pytest.raises(AttributeError):
        run.fly()
    with pytest.raises(AttributeError):
        _ = lamina.fly


def test_duplicate_tasks_and_verbs_are_refused(toy_task):
    class Again(SumTask):
        name = "toy-sum-2"

    with pytest.raises(ValueError, match="verb 'add' of task 'toy-sum-2' is already declared by task 'toy-sum'"):
        lamina.register_task(Again)
    with pytest.raises(ValueError, match="already registered"):
        lamina.register_task(type("Other", (SumTask,), {"verbs": ()}))


# ----- what every run records and lists -------------------------------------------------------------
def test_lamina_runs_lists_runs_with_their_best_figure(trained_run, capsys):
    info = json.loads((trained_run / "lamina.json").read_text())
    accuracy, seconds = info["metrics"]["test"]["accuracy"], info["training"]["seconds"]
    code, out, _ = run_cli(capsys, "runs", trained_run.parent, "--json")
    [row] = json.loads(out)  # the data folder beside the run is not a run
    assert row == {
        "run": str(trained_run),
        "task": "classify",
        "model": "vgg-s",
        "status": "complete",
        "metric": "test accuracy",  # what picks a classify run's checkpoint, on the test split it has
        "value": accuracy,
        "seconds": seconds,
        "created": info["created"],
    }
    assert accuracy * 12 == round(accuracy * 12)  # a fraction of the 12 test images
    # 6 epochs of 48 tiny images: more than nothing, and far less than the 10 minutes a loaded machine
    # might ever take.
    assert 0.01 < seconds < 600
    code, out, _ = run_cli(capsys, "runs", trained_run.parent)
    header, line = out.splitlines()
    assert header.split() == ["run", "task", "model", "status", "best", "seconds", "created"]
    assert line.split() == [
        str(trained_run)[:32],
        "classify",
        "vgg-s",
        "complete",
        "test",
        "accuracy",
        f"{accuracy:.4f}",
        f"{seconds:,.0f}",
        info["created"],
    ]
    code, out, _ = run_cli(capsys, "runs", trained_run.parent / "nothing-here")
    assert code == 0 and "no runs" in out


def test_every_library_that_affects_results_is_recorded(trained_run):
    versions = json.loads((trained_run / "lamina.json").read_text())["versions"]
    assert {"lamina", "python", "torch", "torchvision", "numpy", "pillow", "safetensors"} <= set(versions)
    from lamina.engine.checkpoint import versions as recorded

    assert {"sacrebleu", "sentencepiece"} <= set(recorded(("sacrebleu", "sentencepiece")))


def test_config_lists_every_setting_with_default_type_and_help(capsys):
    code, out, _ = run_cli(capsys, "config", "classify", "--json")
    rows = {r["key"]: r for r in json.loads(out)}
    assert code == 0 and rows["optim.lr"]["default"] == 0.2 and rows["data.crop_padding"]["type"] == "int"
    assert rows["model.dropout"]["help"].startswith("option of the vgg-s model")
    assert "decided by the data" in rows["model.num_classes"]["help"]
    code, out, _ = run_cli(capsys, "config", "classify", "--model", "mlp")
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()[1:]}
    assert lines["model.hidden"].split(None, 2) == ["[512,", "256]", "tuple      option of the mlp model"]
    assert lines["model.name"].startswith("'mlp' ") and lines["model.name"].endswith("(flag --model)")


# ----- the model holds its preprocessing; the API takes inputs in memory ---------------------------------
def test_image_models_normalise_their_own_input(trained_run, tmp_path):
    from PIL import Image

    from lamina.engine.checkpoint import load_weights

    weights = load_weights(trained_run / "model.safetensors")
    meta = json.loads((trained_run / "lamina.json").read_text())["meta"]
    assert weights["normalize.mean"].flatten().tolist() == pytest.approx(meta["mean"])  # recorded in the weights
    run = lamina.load(trained_run, device="cpu")
    x = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(run.model(x), run.model(x.float() / 255))  # uint8, or float in [0, 1]

    image = Image.new("L", (20, 24), 90)
    image.paste(200, (0, 0, 10, 24))
    image.save(tmp_path / "a.png")
    from_file = run.predict([tmp_path / "a.png"])["results"][0]["predictions"]
    import numpy as np

    for source in (image, np.asarray(image), torch.from_numpy(np.asarray(image).copy())[None]):
        result = run.predict([source])["results"][0]
        assert result["input"] == "<image 0>" and result["predictions"] == from_file


# ----- the engine: accumulation, progress, TensorBoard, signals --------------------------------------------
class FixedBatches:
    def __init__(self, batches):
        self.batches, self.n_samples = batches, sum(len(b[1]) for b in batches)

    def __len__(self):
        return len(self.batches)

    def epoch(self, index, start=0, rank=0, world=1):
        yield from self.batches[start:]


def _engine(tmp_path, batches, **sets):
    from lamina import config
    from lamina.engine.device import Precision
    from lamina.engine.loop import Trainer

    cfg = config.resolve(
        {},
        sets=[
            f"{k}={v}"
            for k, v in {"train.quiet": True, "train.amp": "off", "optim.schedule": "constant", **sets}.items()
        ],
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def step(m, batch):
        x, y = batch
        return StepOutput(F.cross_entropy(m(x), y), len(y))

    trainer = Trainer(model, step, FixedBatches(batches), None, cfg, tmp_path, Precision(None, torch.device("cpu")))
    return trainer, model


def test_accumulated_gradients_equal_one_larger_batch(tmp_path):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    whole, wm = _engine(tmp_path / "whole", [(x, y)], **{"train.epochs": 3})
    halves, hm = _engine(
        tmp_path / "halves", [(x[:16], y[:16]), (x[16:], y[16:])], **{"train.epochs": 3, "train.accumulate": 2}
    )
    assert whole.fit().state.step == halves.fit().state.step == 3
    for a, b in zip(wm.parameters(), hm.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_progress_is_a_plain_line_now_and_then_when_not_on_a_terminal():
    import io

    from lamina.engine.log import Progress

    stream = io.StringIO()  # not a terminal, as under nohup or in CI
    bar = Progress(stream=stream, plain_every=0.0)
    bar.start("epoch 1/3", 10)
    for i in range(1, 4):
        bar.update(i, 32, 0.5, step=i)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("epoch 1/3  step 3  batch 3/10  loss 0.5000") and "samples/s" in lines[-1]
    quiet = io.StringIO()
    Progress(enabled=False, stream=quiet).update(1, 1, 0.1)
    assert quiet.getvalue() == ""


def test_tensorboard_gets_every_step_and_every_evaluation(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    trainer, _ = _engine(tmp_path, batches, **{"train.epochs": 2, "train.tensorboard": True})
    trainer.fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 8 and len(events.Scalars("train/lr")) == 8
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))


def test_an_ignored_sigint_stays_ignored_and_sigterm_stops_gracefully(tmp_path):
    """A background job of a script starts with SIGINT ignored, so that Ctrl-C stops the script
    only: lamina keeps it that way, and still stops cleanly on SIGTERM."""
    import signal

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    trainer, _ = _engine(tmp_path, batches, **{"train.epochs": 5})
    step, calls = trainer.step_fn, {"n": 0}

    def signalled(m, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)  # ignored, as it was before training
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGTERM)  # e.g. `timeout` or a scheduler's notice
        return step(m, batch)

    trainer.step_fn = signalled
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    before_term = signal.getsignal(signal.SIGTERM)
    result = trainer.fit()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is before_term
    assert result.status == "interrupted" and result.state.step == 3 and (tmp_path / "trainer.pt").is_file()


def test_a_repeated_signal_within_a_moment_is_one_request():
    import signal
    import time

    from lamina.engine.loop import _Interrupt

    with _Interrupt() as interrupt:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # torchrun forwarding the Ctrl-C its workers got already
        assert interrupt.requested
        interrupt._first = time.monotonic() - 2 * interrupt.REPEAT
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C later: stop at once
            signal.raise_signal(signal.SIGINT)


def test_streamed_generation_shows_the_prompt_then_the_text(tmp_path):
    from lamina.tasks.lm import LanguageModelTask  # noqa: F401

    path = tmp_path / "t.txt"
    path.write_text("abcabcabc " * 200)
    summary = lamina.train(
        "lm",
        data=str(path),
        epochs=1,
        batch_size=4,
        out=str(tmp_path / "r"),
        quiet=True,
        sets=["model.hidden=16", "model.embed=8", "data.seq_len=16", *CPU],
    )
    pieces = []
    started = time.perf_counter()
    result = lamina.generate(summary["run"], prompt="ab", length=12, seed=3, emit=pieces.append)
    wall = time.perf_counter() - started
    assert pieces[0] == "ab" and "".join(pieces[1:]) == result["text"] and len(result["text"]) == 12
    assert pieces[1:] == list(result["text"])  # streamed one character at a time
    # The rate is 12 characters over the time generation took, which lies within the call's own time
    # (to within the rounding of seconds to 4 decimals and of the rate to 1).
    assert 0 <= result["first_char_s"] <= result["seconds"] <= wall and result["chars_per_s"] >= 12 / wall
    slack = result["chars_per_s"] * 5e-5 + 0.05 * result["seconds"]
    assert result["chars_per_s"] * result["seconds"] == pytest.approx(12, abs=slack)


def test_classification_metrics_by_torchmetrics_on_a_known_case():
    from lamina import metrics

    pred, target = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1])
    cm, report = metrics.classification_report(pred, target, ["a", "b", "c"])
    assert cm.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]  # rows: true class
    assert report["accuracy"] == 0.5
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (0.5, 1.0, 1)
    assert b["precision"] == 1.0 and b["recall"] == pytest.approx(1 / 3) and b["support"] == 3
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)  # predicted once, never right
    assert report["macro_recall"] == pytest.approx((1 + 1 / 3 + 0) / 3)
