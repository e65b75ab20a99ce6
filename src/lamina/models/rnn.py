"""Character-level recurrent language models: vanilla RNN (tanh), LSTM and GRU.

    embedding -> N recurrent layers -> (projection) -> logits over the vocabulary

One class for the three cells, thin registered builders per cell. The interface every language
model in lamina shares: ``forward(x, targets=None, state=None) -> (logits, loss, state)`` and
``generate(...)``, which yields one token at a time so callers can stream text as it is produced,
and ``decode_step`` for the beam search of lamina.models.decoding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lamina.models.registry import register_variant

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # h, or (h, c) for an LSTM; each (layers, B, H)


class CharRNN(nn.Module):
    def __init__(
        self,
        cell: str = "lstm",
        vocab_size: int = 84,
        embed: int = 64,
        hidden: int = 512,
        layers: int = 1,
        dropout: float = 0.0,
        tie: bool = False,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, not {cell!r}")
        if min(vocab_size, embed, hidden, layers) < 1:
            raise ValueError("vocab_size, embed, hidden and layers must be at least 1")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        self.cell, self.vocab_size, self.hidden, self.layers = cell, vocab_size, hidden, layers
        self.embed = nn.Embedding(vocab_size, embed)
        extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.rnn = CELLS[cell](embed, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0, **extra)
        self.drop = nn.Dropout(dropout)
        # Weight tying (Press & Wolf 2017) shares the embedding with the output layer; a hidden size
        # that differs from the embedding size goes through a projection first.
        self.proj = nn.Linear(hidden, embed) if tie and hidden != embed else None
        self.head = nn.Linear(embed if tie else hidden, vocab_size)
        if tie:
            self.head.weight = self.embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        if self.cell == "lstm":
            # Forget gates start mostly open (bias 1, Jozefowicz et al. 2015): memory is kept by default.
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        p[self.hidden : 2 * self.hidden].fill_(1.0)
                elif name.startswith("bias_hh"):
                    with torch.no_grad():
                        p[self.hidden : 2 * self.hidden].zero_()

    def init_state(self, batch: int, device: torch.device | None = None) -> State:
        h = torch.zeros(self.layers, batch, self.hidden, device=device or self.embed.weight.device)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else h

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        out = self.drop(out)
        if self.proj is not None:
            out = self.proj(out)
        return self.head(out)

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None, state: State | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """x: (B, T) token ids -> logits (B, T, V), mean cross-entropy against targets (B, T) or None, new state."""
        emb = self.drop(self.embed(x))  # (B, T, E)
        out, state = run_rnn(self.rnn, emb, state)  # (B, T, H)
        logits = self.logits(out)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        return logits, loss, state

    def generate(
        self,
        prompt: torch.Tensor,
        length: int,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
        autocast=contextlib.nullcontext,
    ) -> Iterator[int]:
        """Sample `length` tokens after `prompt` (1-D ids, at least one), yielding each as it is drawn.

        `autocast`: a context factory entered around each forward pass only, never across a yield."""
        state, token = None, prompt[None]  # the prompt is read in one pass
        for _ in range(length):
            with torch.no_grad(), autocast(), one_step_kernels():
                logits, _, state = self(token, state=state)
            last = logits[0, -1].float()
            last = (last - last.max()) / temperature  # shifted first: stable for any temperature > 0
            if top_k and top_k < last.numel():
                kth = torch.topk(last, top_k).values[-1]
                last = last.masked_fill(last < kth, float("-inf"))
            token = torch.multinomial(last.softmax(-1), 1, generator=generator)[None]  # (1, 1)
            yield int(token)

    def decode_step(self, tokens: torch.Tensor, state: State | None, memory=None) -> tuple[torch.Tensor, State, None]:
        """One step of every row, for lamina.models.decoding: tokens (N,) -> log-probabilities (N, V)."""
        logits, _, state = self(tokens[:, None], state=state)
        return logits[:, 0].float().log_softmax(-1), state, None


def run_rnn(rnn: nn.RNNBase, x, state: State | None = None):
    """rnn(x, state), in the precision that suits the device. `x`: a (B, T, E) tensor or a PackedSequence."""
    if torch.is_autocast_enabled("cuda") and next(rnn.parameters()).is_cuda:
        # CUDA autocast runs cuDNN RNNs in fp16 whatever dtype it was given, and without a loss
        # scaler their small gradients underflow: keep the recurrent core in fp32 (TF32) there.
        with torch.autocast("cuda", enabled=False):
            x = x.float() if isinstance(x, torch.Tensor) else x._replace(data=x.data.float())
            return rnn(x, _to_float(state))
    return rnn(x, state)  # on the CPU, bf16 autocast runs oneDNN's RNN kernels, about twice as fast as fp32


@contextlib.contextmanager
def one_step_kernels():
    """Kernels for one time step at a time. oneDNN's RNN primitive, fast on whole sequences, ran a
    2-layer LSTM at about 300 steps/s one step at a time on this CPU, against 3,500 with it off."""
    before = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(before)


def detach_state(state: State | None) -> State | None:
    """Truncated back-propagation through time: the state carries over (in fp32), its history does not."""
    if state is None:
        return None
    return _to_float(tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach())


def _to_float(state: State | None) -> State | None:
    if state is None:
        return None
    return tuple(s.float() for s in state) if isinstance(state, tuple) else state.float()  # type: ignore[return-value]


register_variant("lm", "rnn", "vanilla RNN (tanh) character language model, Elman 1990", CharRNN, cell="rnn")
register_variant(
    "lm",
    "lstm",
    "LSTM character language model (gated memory cell), Hochreiter & Schmidhuber 1997",
    CharRNN,
    cell="lstm",
)
register_variant(
    "lm", "gru", "GRU character language model (gated recurrent unit), Cho et al. 2014", CharRNN, cell="gru"
)
