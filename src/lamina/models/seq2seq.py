"""Encoder-decoder networks for translation (and any sequence-to-sequence task over token ids).

    seq2seq     LSTM/GRU encoder whose final state starts the decoder: the whole source squeezed into
                one vector (Sutskever, Vinyals & Le 2014), optionally reading the source backwards
    attention   bidirectional encoder; at every target step the decoder scores every encoder state
                and reads their weighted average (additive: Bahdanau, Cho & Bengio 2014; dot and
                general: Luong, Pham & Manning 2015)

The decoder is Luong's: the recurrent layers read the previous target tokens, attention then looks
at the source from the new decoder state, and tanh(W [context; state]) feeds the output layer. The
context is not fed back into the recurrent layers, so teacher-forced training runs the decoder over
the whole target in one fused RNN call and scores every (target, source) position in one batched
product. Interface: ``forward(src, tgt_in, tgt_out=None, label_smoothing=0) -> (logits, loss)``,
``encode(src) -> (memory, state)`` and ``decode_step(tokens, state, memory) -> (log-probs, state,
attention)`` for the search in lamina.models.decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lamina.data.vocab import PAD
from lamina.models.attention import Attention, Memory
from lamina.models.registry import register_variant
from lamina.models.rnn import State, run_rnn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class Seq2Seq(nn.Module):
    def __init__(
        self,
        vocab_size: int = 8000,
        embed: int = 256,
        hidden: int = 512,
        layers: int = 1,
        cell: str = "lstm",
        dropout: float = 0.2,
        attention: str | None = None,
        bidirectional: bool = False,
        reverse_source: bool = False,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, not {cell!r}")
        if min(vocab_size, embed, hidden, layers) < 1:
            raise ValueError("vocab_size, embed, hidden and layers must be at least 1")
        if bidirectional and hidden % 2:
            raise ValueError(
                f"a bidirectional encoder splits hidden={hidden} between its two directions: give an even size"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        self.cell, self.hidden, self.layers = cell, hidden, layers
        self.bidirectional, self.reverse_source = bidirectional, reverse_source
        rnn, between = CELLS[cell], dropout if layers > 1 else 0.0
        self.src_embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        # A bidirectional encoder gives each direction half the size: their states, side by side,
        # have the decoder's size, so the final ones start the decoder as they are.
        self.encoder = rnn(
            embed,
            hidden // 2 if bidirectional else hidden,
            layers,
            batch_first=True,
            dropout=between,
            bidirectional=bidirectional,
        )
        self.decoder = rnn(embed, hidden, layers, batch_first=True, dropout=between)
        self.attention = Attention(attention, hidden) if attention else None
        self.combine = nn.Linear(2 * hidden, hidden) if attention else None
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    # ----- encoder ---------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor) -> tuple[Memory, State]:
        """src: (N, S) ids, right-padded -> memory for attention, and the decoder's first state."""
        mask = src != PAD  # (N, S)
        lengths = mask.sum(1).clamp(min=1)
        if self.reverse_source:  # Sutskever et al.: the first source words end up next to the first target words
            positions = torch.arange(src.shape[1], device=src.device)[None]
            backwards = lengths[:, None] - 1 - positions
            src = src.gather(1, torch.where(backwards >= 0, backwards, positions))
        x = self.drop(self.src_embed(src))  # (N, S, E)
        # Packing keeps padding out of the recurrence: the final state is each sentence's own last
        # step, and a backward direction starts at the last real token, not at the padding.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = run_rnn(self.encoder, packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (N, S, H)
        if self.bidirectional:
            state = tuple(_join_directions(s) for s in state) if isinstance(state, tuple) else _join_directions(state)
        out = self.drop(out)
        keys = self.attention.keys(out) if self.attention is not None else out[:, :0]
        return Memory(out, keys, mask), state

    # ----- decoder ---------------------------------------------------------------------------------
    def attend(self, s: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder states (N, T, H) -> attentional states (N, T, H) and the weights (N, T, S)."""
        if self.attention is None:
            return s, None
        weights = self.attention(s, memory)  # (N, T, S)
        context = memory.read(weights)  # (N, T, H)
        return torch.tanh(self.combine(torch.cat([context, s.to(context.dtype)], dim=-1))), weights

    def decode(
        self, tgt_in: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """Teacher forcing: target inputs (N, T) -> logits (N, T, V), last state, attention (N, T, S)."""
        y = self.drop(self.tgt_embed(tgt_in))  # (N, T, E)
        s, state = run_rnn(self.decoder, y, state)  # (N, T, H)
        h, weights = self.attend(s, memory)
        return self.head(self.drop(h)), state, weights

    def decode_step(
        self, tokens: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """One step of every row: previous tokens (N,) -> log-probabilities (N, V), state, attention (N, S)."""
        logits, state, weights = self.decode(tokens[:, None], state, memory)
        return logits[:, 0].float().log_softmax(-1), state, None if weights is None else weights[:, 0]

    def forward(
        self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor | None = None, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """src (N, S), tgt_in (N, T) -> logits (N, T, V), and the mean cross-entropy per target token
        against tgt_out (N, T) (padding ignored), or None."""
        memory, state = self.encode(src)
        logits, _, _ = self.decode(tgt_in, state, memory)
        loss = None
        if tgt_out is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=PAD, label_smoothing=label_smoothing
            )
        return logits, loss


def _join_directions(h: torch.Tensor) -> torch.Tensor:
    """(layers * 2, N, H/2) final states of a bidirectional RNN -> (layers, N, H), forward then backward."""
    layers2, n, half = h.shape
    return h.view(layers2 // 2, 2, n, half).transpose(1, 2).reshape(layers2 // 2, n, 2 * half)


register_variant(
    "translate",
    "seq2seq",
    "LSTM encoder-decoder without attention, Sutskever et al. 2014",
    Seq2Seq,
    attention=None,
    bidirectional=False,
)
register_variant(
    "translate",
    "attention",
    "bidirectional encoder + attentive decoder, Bahdanau et al. 2014",
    Seq2Seq,
    attention="additive",
    bidirectional=True,
)
