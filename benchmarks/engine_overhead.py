"""Engine overhead: samples/s of lamina's training loop against a bare hand-written PyTorch loop.

    python -m benchmarks.engine_overhead [--model vgg-s] [--batches 60] [--repeats 7]

Both loops train the same model (reset to the same initial weights before every measurement) on the
same pre-built batches with the same optimizer, schedule and precision, in the same process,
alternating bare and lamina so that drifts of the shared machine hit both alike. lamina's figure
includes everything its loop does: schedule, bookkeeping, progress, the end-of-epoch checkpoint.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks.common import append_section, median, table
from lamina import config
from lamina.data.images import ImageBatches, fashion_mnist
from lamina.engine.device import Precision, resolve_amp
from lamina.engine.loop import StepOutput, Trainer
from lamina.engine.optim import build_optimizer, lr_factor, set_lr
from lamina.models import get_model


class Batches:
    def __init__(self, batches):
        self.batches, self.n_samples = batches, sum(len(y) for _, y in batches)

    def __len__(self):
        return len(self.batches)

    def epoch(self, index, start=0, rank=0, world=1):
        yield from self.batches[start:]


def step(model, batch):
    x, y = batch
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=0.1)
    return StepOutput(loss, len(y), {"accuracy": (logits.argmax(1) == y).sum()})


def bare_loop(model, batches, cfg, precision) -> float:
    """What one writes by hand: autocast, backward, step, a one-cycle learning rate."""
    optimizer = build_optimizer(model, cfg.optim)
    factor = lr_factor(cfg.optim)
    model.train()
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        set_lr(optimizer, cfg.optim.lr * factor(i / len(batches)))
        with torch.autocast("cpu", dtype=precision.dtype, enabled=precision.dtype is not None):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()
    return time.perf_counter() - start


def lamina_loop(model, batches, cfg, precision, run_dir) -> float:
    start = time.perf_counter()
    Trainer(model, step, Batches(batches), None, cfg, run_dir, precision).fit()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg-s")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()

    torch.manual_seed(0)
    device = torch.device("cpu")
    cfg = config.resolve({}, sets=["train.epochs=1", "train.quiet=true", "optim.lr=0.2"])
    precision = Precision(resolve_amp("auto", device), device)
    data = fashion_mnist("train")
    stream = ImageBatches(data, a.batch_size, device, train=True, flip=True, crop_padding=2, channels_last=True)
    batches = [b for _, b in zip(range(a.batches), stream.epoch(0))]
    n = sum(len(y) for _, y in batches)
    model = get_model("classify", a.model).to(memory_format=torch.channels_last)
    model.normalize.set([0.286], [0.353])  # as lamina train sets it from the training images
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    rates = {"bare": [], "lamina": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats + 1):  # the first round warms up both and is discarded
            for name in ("bare", "lamina") if r % 2 == 0 else ("lamina", "bare"):
                model.load_state_dict(initial)
                seconds = (
                    bare_loop(model, batches, cfg, precision)
                    if name == "bare"
                    else lamina_loop(model, batches, cfg, precision, f"{tmp}/{r}")
                )
                if r:
                    rates[name].append(n / seconds)
    bare, ours = median(rates["bare"]), median(rates["lamina"])
    result = {
        "benchmark": "engine_overhead",
        "model": a.model,
        "precision": precision.name,
        "samples": n,
        "bare_samples_per_s": round(bare),
        "lamina_samples_per_s": round(ours),
        "ratio": round(ours / bare, 3),
        "bare_all": [round(x) for x in rates["bare"]],
        "lamina_all": [round(x) for x in rates["lamina"]],
    }
    print(json.dumps(result))
    if not a.no_write:
        rows = [
            {"loop": "bare PyTorch", "samples/s (median)": round(bare), "runs": result["bare_all"]},
            {"loop": "lamina Trainer", "samples/s (median)": round(ours), "runs": result["lamina_all"]},
        ]
        body = table(rows, ["loop", "samples/s (median)", "runs"]) + (
            f"\n\nRatio lamina / bare: **{ours / bare:.3f}** (target >= 0.97). Model {a.model}, {precision.name}, "
            f"{a.batches} batches of {a.batch_size} per measurement, {a.repeats} alternating measurements each.\n"
        )
        append_section(
            "Engine overhead: lamina's loop against a bare PyTorch loop",
            f"python -m benchmarks.engine_overhead --model {a.model} --repeats {a.repeats}",
            body,
        )


if __name__ == "__main__":
    main()
