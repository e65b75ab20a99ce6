"""Resume: a run interrupted and continued ends exactly where the uninterrupted run does (weights,
optimizer, random state, the log), and a resumed run may change what does not decide the training."""

import json
import signal

import numpy as np
import torch

import lamina
from conftest import CPU
from lamina.data import audio
from lamina.engine import checkpoint as ckpt
from test_lm import TINY as LM_TINY
from test_lm import VERSE
from test_transcribe import tone, write_wav

TIMING = ("time", "samples_per_s")  # wall-clock figures in metrics.jsonl: the only fields allowed to differ
LETTERS = "abcde"


def interrupt_at(monkeypatch, task_cls, n: int):
    """Ctrl-C during the n-th training step (as a user would press it); returns the undo."""
    original, calls = task_cls.step, {"n": 0}

    def interrupted(self, model, batch):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)
        return original(self, model, batch)

    monkeypatch.setattr(task_cls, "step", interrupted)
    return lambda: monkeypatch.setattr(task_cls, "step", original)


def assert_same(a, b, where: str) -> None:
    """Equal to the bit: tensors by value and dtype, containers element by element."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def train_interrupted_and_resumed(task, task_cls, common, cut, tmp_path, monkeypatch):
    """(uninterrupted summary, resumed summary): the same run trained straight through into full/,
    and into cut/ with a Ctrl-C at step `cut`, then resumed."""
    full = lamina.train(task, out=str(tmp_path / "full"), **common)
    restore = interrupt_at(monkeypatch, task_cls, cut)
    stopped = lamina.train(task, out=str(tmp_path / "cut"), **common)
    restore()
    assert stopped["status"] == "interrupted" and stopped["steps"] == cut
    saved = ckpt.load_trainer(tmp_path / "cut" / ckpt.TRAINER_FILE)
    assert saved["ranks"][0]["meter"]["n"] > 0  # cut between two evaluations: the loss sums must carry over
    logged = ckpt.read_jsonl(tmp_path / "cut" / ckpt.METRICS_FILE)
    assert len(logged) < len(ckpt.read_jsonl(tmp_path / "full" / ckpt.METRICS_FILE))  # lines left to the resume
    resumed = lamina.train(task, out=str(tmp_path / "cut"), resume=True, quiet=True)
    assert full["status"] == resumed["status"] == "complete" and full["steps"] == resumed["steps"] > cut
    return full, resumed


def assert_resumed_exactly(full_dir, cut_dir) -> None:
    a = ckpt.load_trainer(full_dir / ckpt.TRAINER_FILE)
    b = ckpt.load_trainer(cut_dir / ckpt.TRAINER_FILE)
    assert a.keys() == b.keys()
    for key in a:
        if key == "state":  # the run's seconds so far: the one figure that depends on the clock
            a_state = {k: v for k, v in a["state"].items() if k != "elapsed"}
            assert_same(a_state, {k: v for k, v in b["state"].items() if k != "elapsed"}, "state")
        else:  # model, optimizer (moments, step counts, learning rate), precision, RNG, loss sums, carry
            assert_same(a[key], b[key], key)
    assert a["optimizer"]["state"], "the optimizer holds per-parameter state to compare"
    assert_same(
        ckpt.load_weights(full_dir / ckpt.WEIGHTS_FILE), ckpt.load_weights(cut_dir / ckpt.WEIGHTS_FILE), "weights"
    )
    full_log = ckpt.read_jsonl(full_dir / ckpt.METRICS_FILE)
    cut_log = ckpt.read_jsonl(cut_dir / ckpt.METRICS_FILE)
    assert len(full_log) == len(cut_log) >= 2
    for i, (x, y) in enumerate(zip(full_log, cut_log)):
        assert set(TIMING) <= set(x)
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}, i
    full_info = json.loads((full_dir / ckpt.RUN_FILE).read_text())
    cut_info = json.loads((cut_dir / ckpt.RUN_FILE).read_text())
    assert full_info["metrics"] == cut_info["metrics"] and full_info["stopped"] == cut_info["stopped"]


def tone_corpus(root, n_train: int = 24, n_val: int = 4, seed: int = 0):
    """Recordings that spell their transcripts as tones, one pitch per letter: a corpus folder
    (train.tsv, val.tsv) made without a speech synthesizer."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            text = "".join(rng.choice(list(LETTERS), int(rng.integers(2, 7))))
            wave = np.concatenate([tone(300 + 250 * LETTERS.index(c), 0.1) for c in text])
            wave = wave + rng.normal(0, 0.01, wave.shape).astype(np.float32)
            write_wav(root / f"{split}-{i:02d}.wav", wave, audio.SAMPLE_RATE)
            lines.append(f"{split}-{i:02d}.wav\t{text}\n")
        (root / f"{split}.tsv").write_text("".join(lines))
    return root


def test_transcribe_resumes_exactly(tmp_path, monkeypatch):
    """The joint model: dropout, SpecAugment, length-bucketed batches and both losses, cut mid-epoch
    and between two evaluations."""
    from lamina.tasks.transcribe import TranscribeTask

    corpus = tone_corpus(tmp_path / "tones")
    common = dict(
        data=str(corpus),
        model="joint",
        epochs=2,
        batch_size=6,  # 4 steps an epoch, evaluations after steps 3, 6 and 8: the cut falls in epoch 2
        quiet=True,
        sets=["model.hidden=32", "train.eval_every=3", *CPU],
    )
    train_interrupted_and_resumed("transcribe", TranscribeTask, common, 5, tmp_path, monkeypatch)
    assert_resumed_exactly(tmp_path / "full", tmp_path / "cut")


def test_lm_resumes_exactly_with_its_log_and_optimizer(tmp_path, monkeypatch):
    """The carried recurrent state, the optimizer and the log, not only the weights (test_lm checks those)."""
    from lamina.tasks.lm import LanguageModelTask

    verse = tmp_path / "verse.txt"
    verse.write_text(VERSE * 20)
    common = dict(
        data=str(verse), model="gru", epochs=2, batch_size=4, quiet=True, sets=[*LM_TINY, "train.eval_every=10"]
    )
    # 26 steps an epoch, evaluations every 10: the cut at step 33 falls in epoch 2, between two of them
    train_interrupted_and_resumed("lm", LanguageModelTask, common, 33, tmp_path, monkeypatch)
    assert_resumed_exactly(tmp_path / "full", tmp_path / "cut")


def test_a_resumed_run_can_change_its_time_budget(tmp_path, monkeypatch):
    """--time-budget is not fixed on resume: the run continues and stops within the new budget (which
    counts the seconds of the first session too), long before its epochs are done."""
    from lamina.tasks.lm import LanguageModelTask

    verse = tmp_path / "verse.txt"
    verse.write_text(VERSE * 40)
    run = tmp_path / "run"
    restore = interrupt_at(monkeypatch, LanguageModelTask, 3)
    common = dict(data=str(verse), model="gru", epochs=100, batch_size=4, quiet=True, sets=LM_TINY)
    assert lamina.train("lm", out=str(run), **common)["status"] == "interrupted"
    restore()
    before = ckpt.load_trainer(run / ckpt.TRAINER_FILE)["state"]["elapsed"]
    budget = round(before + 4.0, 1)
    summary = lamina.train("lm", out=str(run), resume=True, quiet=True, time_budget=budget)
    assert summary["status"] == "time-budget" and summary["steps"] > 3
    assert summary["seconds"] <= budget + 1.0  # slack for a loaded machine, as the engine's own budget test allows
    info = json.loads((run / ckpt.RUN_FILE).read_text())
    assert info["status"] == "complete" and info["stopped"] == "time-budget"
    assert info["config"]["train"]["time_budget"] == budget and info["config"]["train"]["epochs"] == 100
    assert info["training"]["epochs"] < 100
