"""The supervised training loop every task shares.

    forward -> loss -> backward (K micro-batches) -> clip -> optimizer step -> learning-rate schedule,
    evaluate every epoch (or every N steps), keep the best weights, stop early, on time, or on Ctrl-C.

The engine knows nothing about tasks: a task hands it a ``step`` function (model, batch) -> StepOutput,
a stream of training batches and an ``evaluate`` function (model) -> metrics. Under torchrun every
process runs this same loop on its shard of each batch (lamina.engine.distributed).
"""

from __future__ import annotations

import contextlib
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
from lamina.engine.distributed import Distributed
from lamina.engine.log import Progress, TensorBoard, format_metrics, format_seconds, say
from lamina.engine.optim import build_optimizer, lr_factor, set_lr
from lamina.errors import LaminaError

FINISHING_SECONDS = 1.0  # kept free at the end of a time budget for saving, plotting and writing the summary


@dataclass
class StepOutput:
    loss: torch.Tensor  # mean loss over the batch, differentiable
    n: int  # samples in the batch
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # additive counts, reported as train_<k> = sum / n


class BatchStream(Protocol):
    n_samples: int  # in the whole stream, over every process

    def __len__(self) -> int: ...  # batches per epoch

    def epoch(self, index: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Any]:
        """Batches `start`, `start` + 1, ... of epoch `index`, the same ones for the same arguments.
        With world > 1, process `rank`'s share of each (training: its rows of every batch) or of
        the batches (evaluation: every world-th, from the rank-th); every sample in exactly one share."""
        ...


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # completed epochs
    batch: int = 0  # next batch within the current epoch
    samples: int = 0  # over every process
    elapsed: float = 0.0  # seconds of the run so far (earlier sessions included), for the time budget
    best: float | None = None  # best validation value of the monitored metric
    best_step: int = 0
    evals_since_best: int = 0
    world: int = 1  # processes that trained it: a run resumes with as many


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
        for k, v in out.sums.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach()

    def reduce(self, dist: Distributed) -> tuple[float, dict[str, float]]:
        """(mean loss, train_<k> means) over every process."""
        keys = sorted(self.sums)
        local = torch.stack(
            [
                self.loss_sum.cpu().double(),
                torch.tensor(float(self.n), dtype=torch.float64),
                *[torch.as_tensor(self.sums[k]).cpu().double() for k in keys],
            ]
        )
        total = dist.sum(local).tolist()
        n = max(total[1], 1)
        return total[0] / n, {f"train_{k}": v / n for k, v in zip(keys, total[2:])}

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
    """The first Ctrl-C (or SIGTERM) asks the loop to stop after the current step and save; a second
    one, a moment later, aborts at once. The same signal again within REPEAT seconds is the same
    request: torchrun forwards the Ctrl-C its workers already received from the terminal.

    A signal the process was told to ignore stays ignored (a shell starts background jobs of a
    script with SIGINT ignored, so that Ctrl-C stops the script and not them; SIGTERM still stops
    them cleanly), and one handled outside Python is left alone; whatever handled a signal before
    is put back after. Signal handlers exist only in the main thread; elsewhere (a server's worker)
    this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT = 1.0

    def __init__(self):
        self.requested, self._first = False, 0.0
        self._active = threading.current_thread() is threading.main_thread()

    def __enter__(self):
        self._previous = {}
        if self._active:
            for s in self.SIGNALS:
                before = signal.getsignal(s)
                if before not in (signal.SIG_IGN, None):
                    self._previous[s] = before
                    signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        now = time.monotonic()
        if not self.requested:
            self.requested, self._first = True, now
        elif now - self._first > self.REPEAT:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@dataclass
class FitResult:
    state: TrainState
    status: str  # complete | time-budget | early-stop | pruned | interrupted
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
        dist: Distributed | None = None,
        on_evaluation: Callable[[dict[str, Any], float], bool] | None = None,
        perturb: Callable[[nn.Module, Any], Any] | None = None,
    ):
        """`reserve_passes`: sample forward passes the caller runs after fit (e.g. the test set, times its
        views), kept out of the time budget; `val_samples`: size of the validation set, to time it;
        `carry`: an object whose state_dict() the step function changes (saved for resume);
        `on_evaluation(record, progress)`: told every evaluation's log line and how far training has
        gone (0..1); True stops training, as a hyper-parameter search prunes a trial that trails;
        `perturb(model, batch)`: the batch the step trains on instead (adversarial training)."""
        self.model, self.step_fn, self.train_data, self.evaluate_fn = model, step_fn, train, evaluate
        self.cfg, self.run_dir, self.precision = cfg, Path(run_dir), precision
        self.dist = dist or Distributed()
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.wrapped = self.dist.wrap(model)  # what the step sees; evaluation and saving use the model itself
        self.monitor_key, self.monitor_mode = monitor
        self.started = time.monotonic() if started is None else started
        self.reserve_passes, self.val_samples, self.carry = reserve_passes, val_samples, carry
        self.on_evaluation, self.perturb = on_evaluation, perturb
        self.optimizer = build_optimizer(model, cfg.optim)
        self.lr_at = lr_factor(cfg.optim)
        self.state = TrainState(world=self.dist.world)
        self.meter = Meter()
        self.elapsed_before = 0.0
        self.train_rate: float | None = None  # training samples/s, measured
        self._eval_rates: list[float] = []  # evaluation samples/s, one per validation pass
        self._interval_start, self._interval_samples = time.perf_counter(), 0
        self._warm = False  # the first step of a session (kernel selection, allocation) is not timed
        self._bad_loss: float | None = None  # a non-finite loss seen here, to stop every process on
        self.history: list[dict[str, Any]] = []
        self.best_metrics: dict[str, float] | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._last_saved_step = 0
        quiet = cfg.train.quiet or not self.dist.main
        self.bar = Progress(enabled=False if quiet else None)
        self.board: TensorBoard | None = None  # opened by fit(), after a resume has set the step

    # ----- the loop -------------------------------------------------------------------------
    def fit(self) -> FitResult:
        t = self.cfg.train
        status = None
        if t.tensorboard and self.dist.main:  # a resumed run's later steps, logged before, are logged anew
            self.board = TensorBoard(self.run_dir / "tensorboard", purge_step=self.state.step + 1)
        with _Interrupt() as interrupt:
            while status is None:
                if t.epochs and self.state.epoch >= t.epochs:
                    status = "complete"
                    break
                self.model.train()
                self.bar.start(self._epoch_label(), len(self.train_data), self.state.batch)
                batches = self.train_data.epoch(self.state.epoch, self.state.batch, self.dist.rank, self.dist.world)
                for group in self._groups(batches):
                    progress, status = self._decide(interrupt)  # together with every other process
                    if status:
                        break
                    set_lr(self.optimizer, self.cfg.optim.lr * self.lr_at(progress))
                    self._optimizer_step(group)
                    if t.eval_every and self.state.step % t.eval_every == 0:
                        status = self._evaluate_and_checkpoint()
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
                self._check_finite(self.meter.reduce(self.dist)[0])  # never checkpoint weights that diverged
                self._save_trainer()
            elif self.meter.steps:  # steps since the last evaluation: the same count in every process
                self._evaluate_and_checkpoint()
        if status != "interrupted" and t.keep == "best" and self.state.best_step not in (0, self.state.step):
            best = self._best_weights or ckpt.load_weights(self.run_dir / ckpt.WEIGHTS_FILE)
            self.model.load_state_dict(best)
        if self.board:
            self.board.close()
        return FitResult(self.state, status, self.best_metrics, self.history, self.precision.name)

    def _groups(self, batches: Iterator[Any]) -> Iterator[list[Any]]:
        """The batches of one optimizer step: train.accumulate of them (fewer at the end of an epoch)."""
        group = []
        for batch in batches:
            group.append(batch)
            if len(group) == self.cfg.train.accumulate:
                yield group
                group = []
        if group:
            yield group

    def _optimizer_step(self, group: list[Any]) -> None:
        """Gradients of every batch of the group (mean over them), synchronised between processes on
        the last one only, then one optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            sync = contextlib.nullcontext() if last or not self.dist.active else self.wrapped.no_sync()
            with sync:
                with self.precision.autocast():
                    if self.perturb is not None:  # the network's own worst case within the ball, found first
                        batch = self.perturb(self.model, batch)
                    out = self.step_fn(self.wrapped, batch)
                self.precision.backward(out.loss / len(group))
            self._count(out, last)
        if self.cfg.optim.grad_clip > 0:
            self.precision.unscale(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.precision.step(self.optimizer)
        self.state.step += 1

    def _decide(self, interrupt: _Interrupt) -> tuple[float, str | None]:
        """(progress, why to stop or None), the same in every process: rank 0's clock, and a Ctrl-C
        or a non-finite loss in any process. One small all-reduce per optimizer step."""
        mine = self.progress() if self.dist.main else 0.0
        progress, stop, bad = self.dist.max(mine, float(interrupt.requested), float(self._bad_loss is not None))
        if bad:
            self._check_finite(self._bad_loss if self._bad_loss is not None else math.nan)
        if stop:
            return progress, "interrupted"
        if progress >= 1:
            return progress, "time-budget" if self.cfg.train.time_budget else "complete"
        return progress, None

    # ----- progress and time ----------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def progress(self) -> float:
        """Fraction of training done: by steps, by the time budget, whichever is further along."""
        t = self.cfg.train
        per_epoch = -(-len(self.train_data) // t.accumulate)
        p = self.state.step / (t.epochs * per_epoch) if t.epochs else 0.0
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
        """Training samples/s (every process's) since the last evaluation, evaluation excluded."""
        if not self._interval_samples:
            return 0.0
        return self._interval_samples / max(time.perf_counter() - self._interval_start, 1e-9)

    def _epoch_label(self) -> str:
        total = f"/{self.cfg.train.epochs}" if self.cfg.train.epochs else ""
        return f"epoch {self.state.epoch + 1}{total}"

    # ----- bookkeeping ----------------------------------------------------------------------
    def _count(self, out: StepOutput, step_done: bool) -> None:
        s, n = self.state, out.n * self.dist.world  # every process trains on an equal share
        s.batch, s.samples = s.batch + 1, s.samples + n
        self.meter.add(out)
        self.meter.steps += step_done
        if self._warm:
            self._interval_samples += n
        else:  # the clock for speed starts after the first batch
            self._warm, self._interval_start = True, time.perf_counter()
        # Reading a value back waits for the device; on the CPU it is free, elsewhere do it now and then.
        if self.model_device().type == "cpu" or s.batch % 25 == 0:
            loss = out.loss.item()
            if not math.isfinite(loss):
                self._bad_loss = loss
            self.bar.update(s.batch, n, loss, s.step + step_done)
            if self.board and step_done:
                self.board.scalars(s.step + 1, {"train/loss": loss, "train/lr": self.optimizer.param_groups[0]["lr"]})

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
        loss, means = self.meter.reduce(self.dist)
        self._check_finite(loss)
        self.train_rate = self._interval_rate() or self.train_rate  # nothing timed yet: keep the last figure
        record: dict[str, Any] = {
            "epoch": round(s.epoch + s.batch / len(self.train_data), 3),
            "step": s.step,
            "train_loss": loss,
            **means,
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
        if self.dist.main:
            ckpt.append_jsonl(self.run_dir / ckpt.METRICS_FILE, record)
        if self.board:  # val/<metric> per evaluation; train/<metric>_mean over the steps since the last one
            means = {
                f"val/{k[4:]}" if k.startswith("val_") else f"train/{k[6:]}_mean": v
                for k, v in record.items()
                if k.startswith(("train_", "val_"))
            }
            self.board.scalars(s.step, means)

        # "Best" means best on validation; without validation data the latest weights are kept.
        improved = bool(val) and self._improves(record.get(f"val_{self.monitor_key}"))
        if improved or t.keep == "last" or not val:
            weights = ckpt.cpu_state_dict(self.model)
            if self.dist.main:
                ckpt.save_weights(self.run_dir / ckpt.WEIGHTS_FILE, weights)
            self._best_weights = weights if improved else self._best_weights
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
            t.quiet or not self.dist.main,
        )
        if t.early_stop and s.evals_since_best >= t.early_stop:
            return "early-stop"
        if self.on_evaluation is not None and self.on_evaluation(record, min(self.progress(), 1.0)):
            return "pruned"
        return None

    def _improves(self, value: float | None) -> bool:
        if value is None:
            return False
        best = self.state.best
        if best is None:
            return True
        return value > best if self.monitor_mode == "max" else value < best

    # ----- checkpoints ----------------------------------------------------------------------
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _save_trainer(self) -> None:
        """trainer.pt: what every process needs to continue exactly (each its own random state,
        carried state and loss sums), gathered and written by rank 0."""
        self.state.elapsed = self.elapsed()
        rng = {"torch": torch.get_rng_state()}
        if self.model_device().type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.model_device())
        own = {
            "rng": rng,
            "meter": self.meter.state_dict(),
            "carry": self.carry.state_dict() if self.carry is not None else {},
        }
        ranks = self.dist.gather(own)
        if self.dist.main:
            ckpt.save_trainer(
                self.run_dir / ckpt.TRAINER_FILE,
                {
                    "model": ckpt.cpu_state_dict(self.model),
                    "optimizer": self.optimizer.state_dict(),
                    "precision": self.precision.state_dict(),
                    "state": asdict(self.state),
                    "ranks": ranks,
                },
            )
        self._last_saved_step = self.state.step

    def resume_from(self, saved: dict[str, Any]) -> None:
        """Continue exactly where a saved run stopped: weights, optimizer, position in the data, RNG."""
        try:
            world = saved["state"].get("world", 1)
            if world != self.dist.world:
                raise LaminaError(
                    f"{self.run_dir} was trained by {world} process(es); resume it with as many "
                    f"(torchrun --nproc-per-node {world}), not {self.dist.world}"
                )
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.precision.load_state_dict(saved.get("precision", {}))
            self.state = TrainState(**saved["state"])
            # trainer.pt of one process written before processes kept their own states: the same, as a list
            ranks = saved.get("ranks") or [{k: saved[k] for k in ("rng", "meter", "carry") if k in saved}]
            mine = ranks[self.dist.rank]
            self.meter.load_state_dict(mine["meter"])
            if self.carry is not None:
                self.carry.load_state_dict(mine.get("carry", {}))
            torch.set_rng_state(mine["rng"]["torch"])
            if "cuda" in mine["rng"] and self.model_device().type == "cuda":
                torch.cuda.set_rng_state(mine["rng"]["cuda"], self.model_device())
        except LaminaError:
            raise
        except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as exc:
            raise LaminaError(
                f"cannot resume from {self.run_dir / ckpt.TRAINER_FILE}: {str(exc).splitlines()[0]}"
            ) from None
        self.elapsed_before = self.state.elapsed
        self._last_saved_step = self.state.step
        # Evaluations logged after the checkpoint (a crash between the two writes) would repeat: drop them.
        self.history = [
            r for r in ckpt.read_jsonl(self.run_dir / ckpt.METRICS_FILE) if r.get("step", 0) <= self.state.step
        ]
        if self.dist.main:
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
