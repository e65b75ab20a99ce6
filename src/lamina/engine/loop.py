"""The supervised training loop every task shares.

    forward -> loss -> backward -> clip -> optimizer step -> learning-rate schedule,
    evaluate every epoch (or every N steps), keep the best weights, stop early, on time, or on Ctrl-C.

The engine knows nothing about tasks: a task hands it a ``step`` function (model, batch) -> StepOutput,
a stream of training batches and an ``evaluate`` function (model) -> metrics.
"""

from __future__ import annotations

import json
import math
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lamina.config import RunConfig
from lamina.engine import checkpoint as ckpt
from lamina.engine.device import Precision
from lamina.engine.log import Progress, format_metrics, format_seconds, say
from lamina.engine.optim import build_optimizer, lr_factor, set_lr
from lamina.errors import LaminaError

FINISHING_SECONDS = 1.0  # kept free at the end of a time budget for saving, plotting and writing the summary


@dataclass
class StepOutput:
    loss: torch.Tensor  # mean loss over the batch, differentiable
    n: int  # samples in the batch
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # additive counts, reported as train_<k> = sum / n


class BatchStream(Protocol):
    n_samples: int

    def __len__(self) -> int: ...  # batches per epoch

    def epoch(self, index: int, start: int = 0) -> Iterator[Any]: ...  # same (index, start) -> same batches


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # completed epochs
    batch: int = 0  # next batch within the current epoch
    samples: int = 0
    elapsed: float = 0.0  # seconds of the run so far (earlier sessions included), for the time budget
    best: float | None = None  # best validation value of the monitored metric
    best_step: int = 0
    evals_since_best: int = 0


class NonFiniteLoss(LaminaError):
    pass


class Meter:
    """Training loss and counts summed since the last evaluation; saved with checkpoints, so that a
    resumed run logs exactly what the uninterrupted one would have."""

    def __init__(self):
        self.loss_sum, self.n, self.sums, self.steps = torch.zeros(()), 0, {}, 0

    def add(self, out: StepOutput) -> None:
        loss = out.loss.detach().float()
        self.loss_sum = self.loss_sum.to(loss.device) + loss * out.n  # stays on the device: no sync per step
        self.n += out.n
        self.steps += 1
        for k, v in out.sums.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach()

    def mean_loss(self) -> float:
        return self.loss_sum.item() / max(self.n, 1)

    def means(self) -> dict[str, float]:
        return {f"train_{k}": float(v) / max(self.n, 1) for k, v in self.sums.items()}

    def state_dict(self) -> dict[str, Any]:
        # Tensors as they are (dtype included): the resumed sums continue bit for bit.
        return {
            "loss_sum": self.loss_sum.cpu(),
            "n": self.n,
            "steps": self.steps,
            "sums": {k: torch.as_tensor(v).cpu() for k, v in self.sums.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum, self.n, self.steps = state["loss_sum"], state["n"], state["steps"]
        self.sums = dict(state["sums"])  # 0-dim CPU tensors combine with tensors on any device


class _Interrupt:
    """First Ctrl-C asks the loop to stop after the current step and save; a second one aborts at once.
    Signal handlers exist only in the main thread; elsewhere (a server's worker) this does nothing."""

    def __init__(self):
        self.requested = False
        self._active = threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self._active:
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        if self._active:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class FitResult:
    state: TrainState
    status: str  # complete | time-budget | early-stop | interrupted
    best_metrics: dict[str, float] | None
    history: list[dict[str, Any]]
    precision: str


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        step_fn: Callable[[nn.Module, Any], StepOutput],
        train: BatchStream,
        evaluate: Callable[[nn.Module], dict[str, float]] | None,
        cfg: RunConfig,
        run_dir: Path,
        precision: Precision,
        monitor: tuple[str, str] = ("loss", "min"),
        started: float | None = None,
        reserve_passes: int = 0,
        val_samples: int = 0,
        carry: Any = None,
    ):
        """`reserve_passes`: sample forward passes the caller runs after fit (e.g. the test set, times its
        views), kept out of the time budget; `val_samples`: size of the validation set, to time it;
        `carry`: an object whose state_dict() the step function changes (saved for resume)."""
        self.model, self.step_fn, self.train_data, self.evaluate_fn = model, step_fn, train, evaluate
        self.cfg, self.run_dir, self.precision = cfg, Path(run_dir), precision
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.monitor_key, self.monitor_mode = monitor
        self.started = time.monotonic() if started is None else started
        self.reserve_passes, self.val_samples, self.carry = reserve_passes, val_samples, carry
        self.optimizer = build_optimizer(model, cfg.optim)
        self.lr_at = lr_factor(cfg.optim)
        self.state = TrainState()
        self.meter = Meter()
        self.elapsed_before = 0.0
        self.train_rate: float | None = None  # training samples/s, measured
        self._eval_rates: list[float] = []  # evaluation samples/s, one per validation pass
        self._interval_start, self._interval_samples = time.perf_counter(), 0
        self._warm = False  # the first step of a session (kernel selection, allocation) is not timed
        self.history: list[dict[str, Any]] = []
        self.best_metrics: dict[str, float] | None = None
        self._last_saved_step = 0
        self.bar = Progress(enabled=None if not cfg.train.quiet else False)

    # ----- the loop -------------------------------------------------------------------------
    def fit(self) -> FitResult:
        t, model = self.cfg.train, self.model
        status = None
        with _Interrupt() as interrupt:
            while status is None:
                if interrupt.requested:  # Ctrl-C during an evaluation
                    status = "interrupted"
                    break
                if t.epochs and self.state.epoch >= t.epochs:
                    status = "complete"
                    break
                model.train()
                self.bar.start(self._epoch_label(), len(self.train_data), self.state.batch)
                for batch in self.train_data.epoch(self.state.epoch, start=self.state.batch):
                    progress = self.progress()
                    if progress >= 1:
                        status = "time-budget" if t.time_budget else "complete"
                        break
                    set_lr(self.optimizer, self.cfg.optim.lr * self.lr_at(progress))
                    with self.precision.autocast():
                        out = self.step_fn(model, batch)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.precision.backward(out.loss)
                    if self.cfg.optim.grad_clip > 0:
                        self.precision.unscale(self.optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), self.cfg.optim.grad_clip)
                    self.precision.step(self.optimizer)
                    self._count(out)
                    if t.eval_every and self.state.step % t.eval_every == 0:
                        status = self._evaluate_and_checkpoint()
                    if interrupt.requested:
                        status = "interrupted"
                    if status:
                        break
                else:  # the epoch ran to its end
                    self.state.epoch, self.state.batch = self.state.epoch + 1, 0
                    if not t.eval_every:
                        status = self._evaluate_and_checkpoint()
            self.bar.clear()
            if status == "time-budget" and self.state.step == 0:
                raise LaminaError(
                    f"the time budget ({t.time_budget:g} s) ran out before the first training step "
                    f"({self.elapsed():.1f} s had gone on loading); give a larger --time-budget"
                )
            if status == "interrupted":
                self._check_finite(self.meter.mean_loss())  # never checkpoint weights that already diverged
                self._save_trainer()
            elif self.meter.steps:
                self._evaluate_and_checkpoint()
        if status != "interrupted" and t.keep == "best" and self.state.best_step not in (0, self.state.step):
            model.load_state_dict(ckpt.load_weights(self.run_dir / ckpt.WEIGHTS_FILE, self._device()))
        return FitResult(self.state, status, self.best_metrics, self.history, self.precision.name)

    # ----- progress and time ----------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def progress(self) -> float:
        """Fraction of training done: by steps, by the time budget, whichever is further along."""
        t = self.cfg.train
        p = self.state.step / (t.epochs * len(self.train_data)) if t.epochs else 0.0
        if t.time_budget:
            p = max(p, self.elapsed() / max(t.time_budget - self._reserve(), 1e-9))
        return p

    def _reserve(self) -> float:
        """Seconds to keep for what follows training: the last validation pass, the caller's passes, saving.

        Evaluation speed is the median measured on validation passes; before the first one it is
        guessed as 3x the training speed (a forward pass costs about a third of forward + backward),
        and before training speed is known nothing is kept for it. Training always keeps at least half
        of the budget: a model too slow to evaluate in the other half overruns rather than not train.
        """
        t = self.cfg.train
        train_rate = self.train_rate or self._interval_rate()
        rate = statistics.median(self._eval_rates) if self._eval_rates else 3 * train_rate
        evaluation = (self.reserve_passes + self.val_samples) / rate if rate > 0 else 0.0
        return min(evaluation + FINISHING_SECONDS + 0.01 * t.time_budget, 0.5 * t.time_budget)

    def _interval_rate(self) -> float:
        """Training samples/s since the last evaluation (or this session's first step), evaluation excluded."""
        if not self._interval_samples:
            return 0.0
        return self._interval_samples / max(time.perf_counter() - self._interval_start, 1e-9)

    def _epoch_label(self) -> str:
        total = f"/{self.cfg.train.epochs}" if self.cfg.train.epochs else ""
        return f"epoch {self.state.epoch + 1}{total}"

    # ----- bookkeeping ----------------------------------------------------------------------
    def _count(self, out: StepOutput) -> None:
        s = self.state
        s.step, s.batch, s.samples = s.step + 1, s.batch + 1, s.samples + out.n
        self.meter.add(out)
        if self._warm:
            self._interval_samples += out.n
        else:  # the clock for speed starts after the first step
            self._warm, self._interval_start = True, time.perf_counter()
        # Reading a value back waits for the device; on the CPU it is free, elsewhere do it now and then.
        if self._device().type == "cpu" or s.step % 25 == 0:
            loss = out.loss.item()
            self._check_finite(loss)
            self.bar.update(s.batch, out.n, loss)

    def _check_finite(self, value: float) -> None:
        if math.isfinite(value):
            return
        self.bar.clear()
        kept = (
            f"the last good checkpoint (step {self._last_saved_step}) is kept in {self.run_dir}"
            if self._last_saved_step
            else "no checkpoint had been saved yet"
        )
        raise NonFiniteLoss(
            f"loss became {value} at step {self.state.step} (epoch {self.state.epoch + 1}); training stopped and "
            f"{kept}; try a lower --lr or --set optim.grad_clip=1"
        )

    def _evaluate_and_checkpoint(self) -> str | None:
        """Evaluate, log a line, keep the best weights, write a resumable checkpoint; maybe stop early."""
        s, t = self.state, self.cfg.train
        loss = self.meter.mean_loss()
        self._check_finite(loss)
        self.train_rate = self._interval_rate() or self.train_rate  # nothing timed yet: keep the last figure
        record: dict[str, Any] = {
            "epoch": round(s.epoch + s.batch / len(self.train_data), 3),
            "step": s.step,
            "train_loss": loss,
            **self.meter.means(),
        }
        val = {}
        if self.evaluate_fn is not None:
            t0 = time.perf_counter()
            val = self.evaluate_fn(self.model)
            if self.val_samples:
                self._eval_rates.append(self.val_samples / max(time.perf_counter() - t0, 1e-9))
            self.model.train()
            record.update({f"val_{k}": v for k, v in val.items()})
        record.update(
            {
                "lr": self.optimizer.param_groups[0]["lr"],
                "samples_per_s": round(self.train_rate or 0, 1),
                "time": round(self.elapsed(), 2),
            }
        )
        self.history.append(record)
        ckpt.append_jsonl(self.run_dir / ckpt.METRICS_FILE, record)

        # "Best" means best on validation; without validation data the latest weights are kept.
        improved = bool(val) and self._improves(record.get(f"val_{self.monitor_key}"))
        if improved or t.keep == "last" or not val:
            ckpt.save_weights(self.run_dir / ckpt.WEIGHTS_FILE, ckpt.cpu_state_dict(self.model))
        if improved:
            s.best, s.best_step, s.evals_since_best = record[f"val_{self.monitor_key}"], s.step, 0
            self.best_metrics = {k: v for k, v in record.items() if k.startswith("val_")}
        elif val:
            s.evals_since_best += 1
        self.meter = Meter()
        self._interval_start, self._interval_samples = time.perf_counter(), 0
        self._save_trainer()
        shown = {k: v for k, v in record.items() if k not in ("epoch", "step", "time", "samples_per_s")}
        where = f"epoch {s.epoch}" if s.batch == 0 else f"step {s.step}"
        say(
            f"{where}  {format_metrics(shown)}  {self.train_rate or 0:,.0f} samples/s  {format_seconds(self.elapsed())}"
            + ("  *" if improved else ""),
            t.quiet,
        )
        if t.early_stop and s.evals_since_best >= t.early_stop:
            return "early-stop"
        return None

    def _improves(self, value: float | None) -> bool:
        if value is None:
            return False
        best = self.state.best
        if best is None:
            return True
        return value > best if self.monitor_mode == "max" else value < best

    # ----- checkpoints ----------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _save_trainer(self) -> None:
        self.state.elapsed = self.elapsed()
        rng = {"torch": torch.get_rng_state()}
        if self._device().type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        ckpt.save_trainer(
            self.run_dir / ckpt.TRAINER_FILE,
            {
                "model": ckpt.cpu_state_dict(self.model),
                "optimizer": self.optimizer.state_dict(),
                "precision": self.precision.state_dict(),
                "state": asdict(self.state),
                "meter": self.meter.state_dict(),
                "carry": self.carry.state_dict() if self.carry is not None else {},
                "rng": rng,
            },
        )
        self._last_saved_step = self.state.step

    def resume_from(self, saved: dict[str, Any]) -> None:
        """Continue exactly where a saved run stopped: weights, optimizer, position in the data, RNG."""
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.precision.load_state_dict(saved.get("precision", {}))
            self.state = TrainState(**saved["state"])
            self.meter.load_state_dict(saved["meter"])
            if self.carry is not None:
                self.carry.load_state_dict(saved.get("carry", {}))
            torch.set_rng_state(saved["rng"]["torch"])
            cuda_states = saved["rng"].get("cuda", [])
            for i in range(min(len(cuda_states), torch.cuda.device_count())):
                torch.cuda.set_rng_state(cuda_states[i], i)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise LaminaError(
                f"cannot resume from {self.run_dir / ckpt.TRAINER_FILE}: {str(exc).splitlines()[0]}"
            ) from None
        self.elapsed_before = self.state.elapsed
        self._last_saved_step = self.state.step
        # Evaluations logged after the checkpoint (a crash between the two writes) would repeat: drop them.
        self.history = [
            r for r in ckpt.read_jsonl(self.run_dir / ckpt.METRICS_FILE) if r.get("step", 0) <= self.state.step
        ]
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        ckpt.atomic_write(self.run_dir / ckpt.METRICS_FILE, lambda tmp: tmp.write_text(text))
        if self.state.best is not None:
            self.best_metrics = next(
                (
                    {k: v for k, v in r.items() if k.startswith("val_")}
                    for r in self.history
                    if r.get("step") == self.state.best_step
                ),
                None,
            )
