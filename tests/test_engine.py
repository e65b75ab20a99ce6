import json
import math
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lamina import config
from lamina.engine import checkpoint as ckpt
from lamina.engine.device import Precision
from lamina.engine.loop import NonFiniteLoss, StepOutput, Trainer
from lamina.engine.optim import lr_factor


class FixedBatches:
    """The same few batches every epoch (a stand-in for a task's stream)."""

    def __init__(self, batches):
        self.batches = batches
        self.n_samples = sum(len(b[1]) for b in batches)

    def __len__(self):
        return len(self.batches)

    def epoch(self, index, start=0, rank=0, world=1):
        yield from self.batches[start:]


def classify_step(model, batch):
    x, y = batch
    logits = model(x)
    return StepOutput(F.cross_entropy(logits, y), len(y), {"accuracy": (logits.argmax(1) == y).sum()})


def make_cfg(**sets):
    cfg = config.resolve({}, sets=[f"{k}={v}" for k, v in {"train.quiet": True, "train.amp": "off", **sets}.items()])
    return cfg


def test_overfits_one_small_batch(tmp_path):
    """A registered CNN, the classification loss and the engine drive the loss on one batch to ~0."""
    from lamina.models import get_model
    from lamina.tasks.classify import ClassifyTask

    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 4, (16,))
    model = get_model("classify", "vgg-s", in_channels=1, num_classes=4, image_size=16)
    cfg = make_cfg(
        **{
            "train.epochs": 60,
            "optim.name": "adamw",
            "optim.lr": 0.01,
            "optim.weight_decay": 0,
            "optim.schedule": "constant",
        }
    )
    task = ClassifyTask(cfg, torch.device("cpu"), Precision(None, torch.device("cpu")))
    trainer = Trainer(model, task.step, FixedBatches([(x, y)]), None, cfg, tmp_path, task.precision)
    result = trainer.fit()
    assert result.status == "complete" and result.state.step == 60
    model.train()  # batch statistics, as in training
    assert F.cross_entropy(model(x), y).item() < 0.05
    assert result.history[-1]["train_accuracy"] == 1.0


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_schedules_warm_up_and_anneal(schedule):
    f = lr_factor(config.OptimConfig(schedule=schedule, warmup=0.2))
    values = [f(p / 100) for p in range(101)]
    assert max(values) == pytest.approx(1.0)
    if schedule != "constant":
        assert values[0] < 0.1 and values[-1] < 1e-6
        assert values[20] == pytest.approx(1.0)


def _tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    return FixedBatches(batches)


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(10, 32), nn.Dropout(0.2), nn.ReLU(), nn.Linear(32, 3))  # dropout: RNG must resume


def _val(data):
    def evaluate(model):
        model.eval()
        with torch.no_grad():
            losses = [F.cross_entropy(model(x), y) for x, y in data.batches]
        return {"loss": float(torch.stack(losses).mean())}

    return evaluate


@pytest.mark.parametrize("cut_at", [7, 8])  # mid-epoch, and on the last batch of an epoch
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, cut_at):
    data = _tiny_problem()
    cfg = make_cfg(**{"train.epochs": 5})
    cpu = Precision(None, torch.device("cpu"))

    full_model = _model()
    Trainer(full_model, classify_step, data, _val(data), cfg, tmp_path / "full", cpu).fit()

    calls = {"n": 0}

    def interrupting_step(model, batch):
        calls["n"] += 1
        if calls["n"] == cut_at:  # Ctrl-C arrives while this step runs
            signal.raise_signal(signal.SIGINT)
        return classify_step(model, batch)

    first = Trainer(_model(), interrupting_step, data, _val(data), cfg, tmp_path / "cut", cpu)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job (nohup ... &), else Python's own
    result = first.fit()
    assert result.status == "interrupted" and result.state.step == cut_at
    assert signal.getsignal(signal.SIGINT) is before  # what was there is put back

    torch.manual_seed(123)  # whatever the RNG was doing in between must not matter
    resumed_model = _model()
    second = Trainer(resumed_model, classify_step, data, _val(data), cfg, tmp_path / "cut", cpu)
    second.resume_from(ckpt.load_trainer(tmp_path / "cut" / ckpt.TRAINER_FILE))
    result = second.fit()
    assert result.status == "complete" and result.state.step == 20
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    full_log = ckpt.read_jsonl(tmp_path / "full" / ckpt.METRICS_FILE)
    cut_log = ckpt.read_jsonl(tmp_path / "cut" / ckpt.METRICS_FILE)
    timing = ("time", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in full_log] == [
        {k: v for k, v in r.items() if k not in timing} for r in cut_log
    ]


def test_keeps_the_best_weights_and_stops_early(tmp_path):
    data = _tiny_problem()
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.4, 0.3])
    cfg = make_cfg(**{"train.epochs": 6, "train.early_stop": 2})
    model = _model()
    snapshots = []

    def evaluate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"accuracy": next(scores)}

    trainer = Trainer(
        model,
        classify_step,
        data,
        evaluate,
        cfg,
        tmp_path,
        Precision(None, torch.device("cpu")),
        monitor=("accuracy", "max"),
    )
    result = trainer.fit()
    assert result.status == "early-stop" and len(snapshots) == 4
    assert result.best_metrics == {"val_accuracy": 0.9}
    best = ckpt.load_weights(tmp_path / ckpt.WEIGHTS_FILE)
    for k, v in snapshots[1].items():
        assert torch.equal(best[k], v) and torch.equal(model.state_dict()[k], v)  # restored in memory too


class FakeClock:
    """Stands in for the `time` module of the training loop: time moves only when a step "works", so
    step counts under a time budget are exact whatever else runs on the machine."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    perf_counter = monotonic

    def sleep(self, seconds):
        self.now += seconds


def test_time_budget_stops_training_cleanly(tmp_path, monkeypatch):
    from lamina.engine import loop

    clock = FakeClock()
    monkeypatch.setattr(loop, "time", clock)
    data = _tiny_problem()
    started = clock.now

    def slow_step(model, batch):
        assert clock.now - started < 10, "training went on past its budget"  # fail, not hang
        clock.sleep(3 / 32)  # a binary fraction: the simulated elapsed times add up exactly
        return classify_step(model, batch)

    cfg = make_cfg(**{"train.epochs": 0, "train.time_budget": 3})
    result = Trainer(
        _model(), slow_step, data, _val(data), cfg, tmp_path, Precision(None, torch.device("cpu")), started=started
    ).fit()
    assert result.status == "time-budget"
    # Training stops once the budget less what it keeps for finishing (FINISHING_SECONDS and 1% of the
    # budget; nothing for evaluation, as no validation size was given) is spent: 22 steps of 3/32 s.
    kept = loop.FINISHING_SECONDS + 0.01 * 3
    assert result.state.step == math.ceil((3 - kept) * 32 / 3) == 22
    assert clock.now - started == 22 * 3 / 32 <= 3  # the budget holds
    assert (tmp_path / ckpt.WEIGHTS_FILE).is_file() and (tmp_path / ckpt.TRAINER_FILE).is_file()
    assert ckpt.load_trainer(tmp_path / ckpt.TRAINER_FILE)["state"]["step"] == 22
    # Evaluated after each epoch of 4 batches, and once more after the final partial epoch.
    assert [r["step"] for r in result.history] == [4, 8, 12, 16, 20, 22]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = _tiny_problem()
    calls = {"n": 0}

    def exploding_step(model, batch):
        calls["n"] += 1
        out = classify_step(model, batch)
        if calls["n"] == 6:
            out.loss = out.loss * float("nan")
        return out

    cfg = make_cfg(**{"train.epochs": 3})
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 6.*last good checkpoint \(step 4\)"):
        Trainer(_model(), exploding_step, data, _val(data), cfg, tmp_path, Precision(None, torch.device("cpu"))).fit()
    state = ckpt.load_trainer(tmp_path / ckpt.TRAINER_FILE)
    assert state["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt.load_weights(tmp_path / ckpt.WEIGHTS_FILE).values())


def test_gradient_clipping_bounds_the_update(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    x, y = torch.full((2, 4), 100.0), torch.zeros(2, 1)

    def step(m, batch):
        return StepOutput(F.mse_loss(m(batch[0]), batch[1]), 2)

    cfg = make_cfg(
        **{
            "train.epochs": 1,
            "optim.grad_clip": 0.5,
            "optim.momentum": 0,
            "optim.lr": 1.0,
            "optim.weight_decay": 0,
            "optim.schedule": "constant",
        }
    )
    Trainer(model, step, FixedBatches([(x, y)]), None, cfg, tmp_path, Precision(None, torch.device("cpu"))).fit()
    assert (model.weight.detach() - before).norm().item() == pytest.approx(0.5, rel=1e-4)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "lamina.json"
    ckpt.write_json(target, {"a": 1})

    def failing(tmp):
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.atomic_write(target, failing)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["lamina.json"]  # no temporary file left behind


def test_bf16_autocast_step_runs_on_cpu(tmp_path):
    data = _tiny_problem()
    cfg = make_cfg(**{"train.epochs": 1, "train.amp": "bf16"})
    model = _model()
    seen = []  # (layer, output dtype) of every Linear forward pass in training mode
    for i, layer in enumerate(m for m in model if isinstance(m, nn.Linear)):
        layer.register_forward_hook(lambda m, args, out, i=i: seen.append((i, out.dtype)) if m.training else None)
    bf16 = Precision(torch.bfloat16, torch.device("cpu"))
    result = Trainer(model, classify_step, data, None, cfg, tmp_path, bf16).fit()
    assert result.precision == "bf16" and result.state.step == 4 and math.isfinite(result.history[-1]["train_loss"])
    # Both Linear layers of all 4 steps computed in bf16 under autocast...
    assert seen == [(i, torch.bfloat16) for _ in range(4) for i in (0, 1)]
    # ...while the weights the optimizer updates, and those saved, stay fp32.
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {v.dtype for v in ckpt.load_weights(tmp_path / ckpt.WEIGHTS_FILE).values()} == {torch.float32}

    # The same hooks see fp32 without autocast: the bf16 above came from the precision setting.
    model, seen = _model(), []
    model[0].register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    fp32 = Precision(None, torch.device("cpu"))
    Trainer(model, classify_step, data, None, make_cfg(**{"train.epochs": 1}), tmp_path / "fp32", fp32).fit()
    assert seen == [torch.float32] * 4


def test_a_budget_spent_before_the_first_step_is_an_error(tmp_path):
    import time

    from lamina.errors import LaminaError

    cfg = make_cfg(**{"train.epochs": 0, "train.time_budget": 5})
    trainer = Trainer(
        _model(),
        classify_step,
        _tiny_problem(),
        None,
        cfg,
        tmp_path,
        Precision(None, torch.device("cpu")),
        started=time.monotonic() - 10,
    )  # as if data loading had taken 10 s
    with pytest.raises(LaminaError, match="ran out before the first training step"):
        trainer.fit()


def test_without_validation_the_latest_weights_are_kept_and_nothing_stops_early(tmp_path):
    data = _tiny_problem()
    cfg = make_cfg(**{"train.epochs": 4, "train.early_stop": 1})
    model = _model()
    result = Trainer(
        model,
        classify_step,
        data,
        None,
        cfg,
        tmp_path,
        Precision(None, torch.device("cpu")),
        monitor=("accuracy", "max"),
    ).fit()
    assert result.status == "complete" and result.state.best is None and result.best_metrics is None
    saved = ckpt.load_weights(tmp_path / ckpt.WEIGHTS_FILE)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_a_slow_final_evaluation_still_leaves_half_the_budget_to_training(tmp_path, monkeypatch):
    from lamina.engine import loop

    clock = FakeClock()
    monkeypatch.setattr(loop, "time", clock)

    cfg = make_cfg(**{"train.epochs": 0, "train.time_budget": 2})
    started = clock.now

    def slow_step(model, batch):
        assert clock.now - started < 10, "training went on past its budget"  # fail, not hang
        clock.sleep(1 / 64)
        return classify_step(model, batch)

    # As if the caller had a test set that takes far longer than the budget to evaluate.
    result = Trainer(
        _model(),
        slow_step,
        _tiny_problem(),
        None,
        cfg,
        tmp_path,
        Precision(None, torch.device("cpu")),
        started=started,
        reserve_passes=10**9,
    ).fit()
    assert result.status == "time-budget"
    # Half of the 2 s budget, 1 s, is 64 steps of 1/64 s: not a single step, and not one step more.
    assert result.state.step == 64
    assert clock.now - started == 1.0
