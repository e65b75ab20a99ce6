"""Attention: how a decoder reads a variable-length memory, one query at a time.

Memory             what a decoder attends over: encoder states, their projections, a mask
Attention          content-based scores: additive (Bahdanau, Cho & Bengio 2014), dot and
                   general (Luong, Pham & Manning 2015); translation
LocationAttention  content plus where the previous step looked (Chorowski et al. 2015), which
                   moves along the audio monotonically; listen-attend-spell
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SCORES = ("additive", "dot", "general")


@dataclass
class Memory:
    """What the decoder reads from the encoder, one row per sequence (or per beam hypothesis)."""

    outputs: torch.Tensor  # (N, S, H) encoder states, zero at padding
    keys: torch.Tensor  # (N, S, A) the states as attention scores need them (projected once per sequence)
    mask: torch.Tensor  # (N, S) True at real positions

    def select(self, rows: torch.Tensor) -> Memory:
        return Memory(self.outputs[rows], self.keys[rows], self.mask[rows])

    def read(self, weights: torch.Tensor) -> torch.Tensor:
        """Weights (N, T, S) over the memory -> context vectors (N, T, H)."""
        return weights.to(self.outputs.dtype) @ self.outputs


class Attention(nn.Module):
    """Scores e(s_t, h_j) of a decoder state against every encoder state.

    additive  v . tanh(W_s s_t + W_h h_j)   (Bahdanau)
    dot       s_t . h_j                     (Luong)
    general   s_t . W h_j                   (Luong)
    """

    def __init__(self, score: str, hidden: int, dim: int | None = None):
        """`dim`: the size of the additive score's hidden layer (default `hidden`); a smaller one
        is cheaper where the memory is long (an image's grid of cells)."""
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"attention must be one of {', '.join(SCORES)}, not {score!r}")
        self.score = score
        dim = dim if score == "additive" and dim else hidden
        self.key = nn.Identity() if score == "dot" else nn.Linear(hidden, dim, bias=False)
        if score == "additive":
            self.query = nn.Linear(hidden, dim)
            self.v = nn.Linear(dim, 1, bias=False)

    def keys(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.key(outputs)

    def forward(self, s: torch.Tensor, memory: Memory) -> torch.Tensor:
        """s: (N, T, H) decoder states -> weights (N, T, S), zero at padding, each row summing to 1."""
        if self.score == "additive":
            scores = self.v(torch.tanh(self.query(s)[:, :, None] + memory.keys[:, None])).squeeze(-1)  # (N, T, S)
        else:
            scores = s @ memory.keys.transpose(1, 2)
        return scores.float().masked_fill(~memory.mask[:, None, :], float("-inf")).softmax(-1)


class LocationAttention(nn.Module):
    """e_j = v . tanh(W s + V h_j + U (K * a_prev)_j): content plus where the previous step looked."""

    def __init__(self, hidden: int, dim: int, channels: int = 10, kernel: int = 31):
        super().__init__()
        self.query = nn.Linear(hidden, dim)
        self.key = nn.Linear(hidden, dim, bias=False)
        self.conv = nn.Conv1d(1, channels, kernel, padding=kernel // 2, bias=False)
        self.location = nn.Linear(channels, dim, bias=False)
        self.v = nn.Linear(dim, 1, bias=False)

    def forward(self, s: torch.Tensor, memory: Memory, previous: torch.Tensor) -> torch.Tensor:
        """s (N, H), previous weights (N, S) -> weights (N, S)."""
        where = self.location(self.conv(previous[:, None]).transpose(1, 2))  # (N, S, A)
        scores = self.v(torch.tanh(self.query(s)[:, None] + memory.keys + where)).squeeze(-1).float()  # (N, S)
        return scores.masked_fill(~memory.mask, float("-inf")).softmax(-1)
