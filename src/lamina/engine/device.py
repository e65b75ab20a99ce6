"""Where and in which precision the work runs."""

from __future__ import annotations

import contextlib

import torch

from lamina.errors import LaminaError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LaminaError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        index = name.partition(":")[2]
        if index.isdigit() and int(index) >= torch.cuda.device_count():
            raise LaminaError(
                f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LaminaError("--device mps: Apple MPS is not available on this machine (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise LaminaError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N or mps)") from None


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def cuda_has_bf16() -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)  # Ampere and newer
    except TypeError:  # older torch: no emulation argument, and no emulation either
        return torch.cuda.is_bf16_supported()


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type == "cpu":
            raise LaminaError("--amp fp16 needs a GPU; use bf16 or off on the CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    # auto: bf16 where the hardware has it, fp16 on older GPUs, fp32 elsewhere.
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_bf16() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


class Precision:
    """Autocast plus, for fp16, a gradient scaler; with dtype None both are no-ops."""

    def __init__(self, dtype: torch.dtype | None, device: torch.device):
        self.dtype, self.device = dtype, device
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
