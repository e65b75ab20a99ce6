"""How far back the error signal reaches in a recurrent network: ||dL_T / dh_(T-t)|| for t = 0..steps.

The loss is taken at the last position T only; back-propagation then delivers its gradient to every
earlier hidden state. In a vanilla RNN it shrinks geometrically with t (or explodes): the vanishing
gradient problem (Bengio et al. 1994). An LSTM's additive cell and a GRU's update gate give the signal a
path that gates can keep open, so it reaches much further back.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lamina.models.rnn import CharRNN


def gradient_flow(model: CharRNN, tokens: torch.Tensor, steps: int) -> list[float]:
    """Mean over the batch of ||dL_T / dh_(T-t)|| for t = 0..steps (h: every layer's hidden state).

    tokens: (B, steps + 2) ids; the model reads the first steps + 1 and the loss is the cross-entropy
    of the last one. Runs in fp32 on the model's device (`lamina inspect` uses the CPU), one position
    at a time so that every hidden state is a tensor whose gradient can be read.
    """
    if tokens.shape[1] < steps + 2:
        raise ValueError(f"need {steps + 2} tokens per row, got {tokens.shape[1]}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the measurement is of the network itself
    try:
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            x = tokens[:, : steps + 1].to(device)  # (B, steps + 1)
            target = tokens[:, steps + 1].to(device)  # (B,)
            emb = model.embed(x)  # (B, T, E)
            state = model.init_state(x.shape[0], device)
            hidden = []
            for t in range(x.shape[1]):
                _, state = model.rnn(emb[:, t : t + 1], state)
                h = state[0] if isinstance(state, tuple) else state  # (layers, B, H)
                h.retain_grad()
                hidden.append(h)
            # The top layer's state is the output; reading it from h itself puts h_T in the graph.
            loss = F.cross_entropy(model.logits(hidden[-1][-1]).float(), target)
            model.zero_grad(set_to_none=True)
            loss.backward()
            norms = [h.grad.float().pow(2).sum(dim=(0, 2)).sqrt().mean().item() for h in hidden]  # per step
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return norms[::-1]  # index t: t steps before the loss


def plot_gradient_flow(curves: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """One line per model: gradient norm against distance from the loss, log scale."""
    from lamina.viz.plot import pyplot, save

    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    for label, norms in curves.items():
        ax.semilogy(range(len(norms)), [max(v, 1e-45) for v in norms], label=label)
    ax.set_xlabel("t: steps back from the loss")
    ax.set_ylabel("||dL_T / dh_(T-t)||")
    ax.set_title(title or "How far back the gradient reaches")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return save(fig, path)
