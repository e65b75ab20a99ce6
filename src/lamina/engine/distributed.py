"""Several processes training one model: PyTorch DDP under torchrun, never a launcher of our own.

    torchrun --standalone --nproc-per-node N -m lamina train TASK ...

torchrun starts N copies of the same command and tells each its RANK, WORLD_SIZE and LOCAL_RANK
(nanoGPT's DDP block reads the same variables). Here each process:

- joins the process group (gloo on the CPU, NCCL on GPUs) and trains on its own device
  (cuda:LOCAL_RANK), its model wrapped in DistributedDataParallel, unwrapped for saving;
- reads its own shard of every epoch's batches: a stream cuts each global batch into WORLD_SIZE
  parts (BatchStream.epoch(index, start, rank, world)), so data order, resume and time budgets
  are those of one process with a WORLD_SIZE times larger batch;
- evaluates its share of the validation and test data, after which every process has the metrics
  of all of it, each sample counted exactly once;
- takes every decision to stop (time budget, Ctrl-C, a non-finite loss) together with the others:
  one small all-reduce per optimizer step, so no process waits for one that has left;
- seeds its random numbers from (seed, rank), so dropout differs between processes while the
  initial weights are rank 0's (DDP broadcasts them);
- prints and writes the run directory only on rank 0.

With one process (no torchrun) every method here is a no-op, and nothing imports torch.distributed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from lamina.errors import LaminaError, UsageError


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """The process's place as torchrun describes it; one process when torchrun did not start it."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise LaminaError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
        return cls(rank, world, local) if world > 1 else cls()

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # ----- the process group ----------------------------------------------------------------
    def start(self, device: torch.device) -> None:
        if not self.active or torch.distributed.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend, timeout=timedelta(minutes=30))
        # The per-step stop flags travel through gloo on the CPU even beside NCCL: reading back a
        # CUDA tensor every step would wait for the GPU, which the loop otherwise avoids.
        self._flags = torch.distributed.new_group(backend="gloo") if backend == "nccl" else None

    def stop(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def device(self, device: torch.device) -> torch.device:
        """Each process on its own GPU: cuda means cuda:LOCAL_RANK under torchrun."""
        if self.active and device.type == "cuda":
            if device.index is not None:
                raise UsageError(
                    f"--device {device}: under torchrun every process takes its own GPU (cuda:LOCAL_RANK); "
                    "give --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES"
                )
            return torch.device("cuda", self.local_rank)
        return device

    def seed(self, seed: int) -> int:
        """Rank 0 keeps the run's seed (its initial weights are everyone's); the others mix in their rank."""
        if self.rank == 0:
            return seed
        digest = hashlib.blake2b(repr((seed, self.rank)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as the training step sees it: gradients averaged over the processes in backward."""
        if not self.active:
            return model
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ----- collectives (identity with one process) -------------------------------------------
    def max(self, *values: float) -> list[float]:
        """The largest of each value over the processes: a stop flag raised anywhere stops everyone."""
        if not self.active:
            return list(values)
        group = getattr(self, "_flags", None)
        t = torch.tensor(values, dtype=torch.float64, device="cpu" if group else self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=group)
        return t.tolist()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return tensor
        t = tensor.detach().to(self._comm_device(), torch.float64)
        torch.distributed.all_reduce(t)
        return t.to(tensor.device)

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order, on every process."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather_batches(self, local: list[Any]) -> list[Any]:
        """Per-batch results of an evaluation shared round-robin (batch b on rank b % world), back in
        the order one process would have produced them: the metrics then come out exactly the same."""
        if not self.active:
            return local
        parts = self.gather(local)
        total = sum(len(p) for p in parts)
        return [parts[b % self.world][b // self.world] for b in range(total)]

    def _comm_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def shard_rows(n: int, rank: int, world: int) -> slice:
    """The rows of a global batch of n that one process reads: equal contiguous parts (the first
    n % world processes take one more), every row in exactly one; with fewer rows than processes,
    some parts are empty (evaluation skips them)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def train_rows(n: int, rank: int, world: int) -> list[int]:
    """The rows of a training batch of n that one process trains on: shard_rows, except that a batch
    with fewer rows than processes gives each process one of them again (as DistributedSampler pads
    by repeating samples), so that no process ever trains on nothing and every batch position is
    trained by all: positions, resume and time budgets stay those of one process."""
    if n >= world:
        return list(range(n))[shard_rows(n, rank, world)]
    return [rank % n]
