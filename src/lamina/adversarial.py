"""Adversarial examples: small changes to an input, chosen by the network's own gradient, that change
its answer (Szegedy et al. 2014; Goodfellow et al. 2015).

Both attacks work in pixel space, x in [0, 1], within an L-infinity ball of radius eps around the
clean input, and need only `loss(x)`: a differentiable loss of the network on x (per batch, summed).

- FGSM: one step of size eps along the sign of the gradient;
- PGD (Madry et al. 2018): `steps` such steps of size `step_size`, each projected back into the ball
  and into [0, 1], from a random start in the ball (or from x itself, `random_start=False`).

Untargeted attacks climb the loss of the true answer; targeted ones descend the loss of the answer
the attacker wants (the caller passes that loss and `targeted=True`).

`lamina attack RUN` measures a run against them (``Task.attack``), and `--set train.adversarial=pgd`
trains on them (``Task.perturb``, called in the engine's step: Madry's min-max, the inner
maximisation by PGD).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Loss = Callable[[torch.Tensor], torch.Tensor]


def _gradient(loss: Loss, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss(x), x)
    return grad


def fgsm(loss: Loss, x: torch.Tensor, eps: float, targeted: bool = False) -> torch.Tensor:
    if eps == 0:
        return x.detach().clone()
    direction = -1.0 if targeted else 1.0
    return (x.detach() + direction * eps * _gradient(loss, x).sign()).clamp(0, 1)


def pgd(
    loss: Loss,
    x: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    targeted: bool = False,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    if eps == 0 or steps == 0:
        return x.detach().clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size  # Madry et al.: 2.5 eps / steps
    direction = -1.0 if targeted else 1.0
    clean = x.detach()
    adv = clean.clone()
    if random_start:
        noise = torch.rand(clean.shape, generator=generator, device="cpu").to(clean.device, clean.dtype)
        adv = (clean + (2 * noise - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv = adv + direction * step_size * _gradient(loss, adv).sign()
        adv = torch.min(torch.max(adv, clean - eps), clean + eps).clamp(0, 1)  # back into the ball and the image
    return adv.detach()


def check_options(eps: list[float], steps: int, step_size: float | None, limit: int) -> list[float]:
    """The sizes to try, sorted; a one-line refusal for what cannot be an attack."""
    from lamina.errors import UsageError

    if not eps or min(eps) < 0 or max(eps) > 1:
        raise UsageError("--eps takes sizes in [0, 1], e.g. 0,0.05,0.1")
    if steps < 1 or limit < 1 or (step_size is not None and step_size <= 0):
        raise UsageError("--steps, --limit and --step-size must be positive")
    return sorted(set(eps))


def attack(
    method: str, loss: Loss, x: torch.Tensor, eps: float, steps: int = 10, step_size: float | None = None,
    targeted: bool = False, generator: torch.Generator | None = None,
) -> torch.Tensor:  # fmt: skip
    if method == "fgsm":
        return fgsm(loss, x, eps, targeted)
    if method == "pgd":
        return pgd(loss, x, eps, steps, step_size, targeted, generator=generator)
    from lamina.errors import UsageError

    raise UsageError(f"unknown attack {method!r}; choose from: fgsm, pgd")
