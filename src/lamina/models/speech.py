"""End-to-end speech recognizers: log-mel frames in, characters out.

    las     Listen, Attend and Spell (Chan et al. 2016): a pyramidal bidirectional LSTM listener,
            each level of which halves the time resolution by joining neighbouring frames, and a
            speller: an LSTM over the previous character and the previous attentional vector
            (input feeding) with location-aware attention (Chorowski et al. 2015), which sees
            where it looked at the previous step and so moves along the audio monotonically.
    joint   las plus a CTC head on the listener, trained on a weighted sum of both losses
            (Kim, Hori & Watanabe 2017, as in ESPnet); the CTC loss makes alignments monotonic early.
    ctc     convolutional subsampling (4x in time) and a bidirectional LSTM or GRU whose every
            output frame predicts a character or the blank; Connectionist Temporal Classification
            (Graves et al. 2006) sums over every alignment of the transcript to the frames.

Interface: ``forward(feats (N, T, F), lengths (N,), tgt_in=None, tgt_out=None, label_smoothing=0)
-> (logits, loss)`` and ``recognize(feats, lengths, beam=1) -> [Hypothesis]``. Character ids follow
lamina.data.vocab: 0 is padding (and CTC's blank), 2 and 3 start and end a transcript.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lamina.data.vocab import PAD
from lamina.models import decoding
from lamina.models.attention import LocationAttention, Memory
from lamina.models.ctc import ctc_loss
from lamina.models.ctc import decode as ctc_decode
from lamina.models.decoding import Hypothesis
from lamina.models.registry import register_variant
from lamina.models.rnn import run_rnn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
# The joint model's CTC head reads the listener after two halvings (25 frames a second), not its top
# (12.5 at levels=3): CTC needs a frame per character plus a blank between doubled letters, and fast
# speech says up to about 20 characters a second; too few frames make the loss infinite (zeroed).
CTC_LEVEL = 2


def _run_packed(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A (bidirectional) RNN over right-padded (N, T, F): packing keeps padding out of the
    recurrence, so the backward direction starts at each utterance's own last frame."""
    packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
    out, _ = run_rnn(rnn, packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


# ----- CTC -----------------------------------------------------------------------------------------
class CTCRecognizer(nn.Module):
    def __init__(
        self,
        vocab_size: int = 32,
        n_mels: int = 80,
        channels: int = 32,
        hidden: int = 384,
        layers: int = 3,
        cell: str = "gru",
        dropout: float = 0.2,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, not {cell!r}")
        if hidden % 2:
            raise ValueError(f"hidden={hidden} is split between two directions: give an even size")
        self.subsample = nn.Sequential(  # (N, 1, T, F) -> (N, C, T/4, F/4)
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.project = nn.Linear(channels * ((n_mels + 3) // 4), hidden)
        self.rnn = CELLS[cell](
            hidden, hidden // 2, layers, batch_first=True, bidirectional=True, dropout=dropout if layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    @staticmethod
    def frames_out(lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(2):  # each stride-2 convolution (kernel 3, padding 1)
            lengths = (lengths - 1) // 2 + 1
        return lengths

    def forward(self, feats, lengths, tgt_in=None, tgt_out=None, label_smoothing: float = 0.0):
        x = self.subsample(feats[:, None])  # (N, C, T', F')
        x = self.drop(self.project(x.transpose(1, 2).flatten(2)))  # (N, T', H)
        frames = self.frames_out(lengths)
        logits = self.head(self.drop(_run_packed(self.rnn, x, frames)))  # (N, T', V)
        loss = ctc_loss(logits, frames, tgt_out) if tgt_out is not None else None
        return logits, loss

    @torch.no_grad()
    def recognize(self, feats, lengths, beam: int = 1) -> list[Hypothesis]:
        logits, _ = self.forward(feats, lengths)
        return ctc_decode(logits.float().log_softmax(-1), self.frames_out(lengths), beam)


# ----- Listen, Attend and Spell ---------------------------------------------------------------------
class Listener(nn.Module):
    """A bidirectional LSTM over the frames, then `levels` pyramidal ones, each reading pairs of
    consecutive outputs of the level below: (N, T, F) -> (N, T / 2**levels, H)."""

    def __init__(self, n_mels: int, hidden: int, levels: int, dropout: float):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"hidden={hidden} is split between two directions: give an even size")
        self.rnns = nn.ModuleList(
            nn.LSTM(n_mels if i == 0 else 2 * hidden, hidden // 2, batch_first=True, bidirectional=True)
            for i in range(levels + 1)
        )
        self.drop = nn.Dropout(dropout)

    @staticmethod
    def reduce(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, H) -> (N, T // 2, 2H): neighbouring frames side by side (an odd last frame is dropped)."""
        n, t, h = x.shape
        return x[:, : t // 2 * 2].reshape(n, t // 2, 2 * h), (lengths // 2).clamp(min=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The outputs and lengths of every level, finest first; the last is the listener's output."""
        x = F.pad(x, (0, 0, 0, max(0, 2 ** (len(self.rnns) - 1) - x.shape[1])))  # >= 1 frame at the top
        levels = []
        for i, rnn in enumerate(self.rnns):
            if i > 0:
                x, lengths = self.reduce(x, lengths)
            x = self.drop(_run_packed(rnn, x, lengths))
            mask = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
            levels.append((x * mask[..., None], lengths))  # zero at padding
        return levels


class LAS(nn.Module):
    def __init__(
        self,
        vocab_size: int = 32,
        n_mels: int = 80,
        hidden: int = 256,
        levels: int = 3,
        embed: int = 64,
        attention_dim: int = 128,
        dropout: float = 0.2,
        ctc_weight: float = 0.0,
    ):
        super().__init__()
        if not 0 <= ctc_weight <= 1:
            raise ValueError(f"ctc_weight must be in [0, 1], not {ctc_weight}")
        self.hidden, self.levels, self.ctc_weight = hidden, levels, ctc_weight
        self.listener = Listener(n_mels, hidden, levels, dropout)
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.cell = nn.LSTMCell(embed + hidden, hidden)
        self.attention = LocationAttention(hidden, attention_dim)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)
        self.ctc_head = nn.Linear(hidden, vocab_size) if ctc_weight > 0 else None

    def frames_out(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(self.levels):
            lengths = (lengths // 2).clamp(min=1)
        return lengths

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor):
        """-> memory (listener states, their attention keys, mask) and the speller's first state:
        (h, c, previous attentional vector, previous attention weights), each (1, N, ...) so that
        lamina.models.decoding can select hypotheses along dimension 1."""
        return self._memory(*self.listener(feats, lengths)[-1])

    def _memory(self, out: torch.Tensor, frames: torch.Tensor):
        mask = torch.arange(out.shape[1], device=out.device)[None] < frames[:, None]  # (N, S)
        memory = Memory(out, self.attention.key(out), mask)
        n = out.shape[0]
        zeros = out.new_zeros(1, n, self.hidden)
        first = mask.float() / frames[:, None].float()  # uniform: no place looked at yet
        return memory, (zeros, zeros.clone(), zeros.clone(), first[None])

    def decode_step(self, tokens: torch.Tensor, state, memory: Memory):
        """Previous characters (N,) -> log-probabilities (N, V), new state, attention weights (N, S)."""
        logits, state, weights = self._step(tokens, state, memory)
        return logits.float().log_softmax(-1), state, weights

    def _step(self, tokens, state, memory: Memory):
        h, c, feed, previous = (s[0] for s in state)
        h, c = self.cell(torch.cat([self.drop(self.embed(tokens)), feed], -1), (h, c))
        weights = self.attention(h, memory, previous)  # (N, S)
        context = memory.read(weights[:, None])[:, 0]  # (N, H)
        feed = torch.tanh(self.combine(torch.cat([context, h], -1)))
        logits = self.head(self.drop(feed))
        return logits, (h[None], c[None], feed[None], weights[None]), weights

    def forward(self, feats, lengths, tgt_in=None, tgt_out=None, label_smoothing: float = 0.0):
        levels = self.listener(feats, lengths)
        memory, state = self._memory(*levels[-1])
        if tgt_in is None:
            return memory.outputs, None
        steps = []
        for t in range(tgt_in.shape[1]):  # teacher forcing: the true previous character at every step
            logits, state, _ = self._step(tgt_in[:, t], state, memory)
            steps.append(logits)
        logits = torch.stack(steps, 1)  # (N, L, V)
        loss = None
        if tgt_out is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=PAD, label_smoothing=label_smoothing
            )
            if self.ctc_head is not None:
                ctc_states, ctc_frames = levels[min(CTC_LEVEL, self.levels)]
                aligned = ctc_loss(self.ctc_head(ctc_states), ctc_frames, tgt_out)
                loss = (1 - self.ctc_weight) * loss + self.ctc_weight * aligned
        return logits, loss

    @torch.no_grad()
    def recognize(self, feats, lengths, beam: int = 1) -> list[Hypothesis]:
        memory, state = self.encode(feats, lengths)
        # Speech runs at about 15 characters a second and the listener keeps 100 / 2**levels frames
        # a second: twice the frames (and some) is room for any transcript.
        limit = 2 * memory.outputs.shape[1] * 2 ** max(0, self.levels - 3) + 10
        return decoding.search(self, memory, state, beam, limit, alpha=1.0)


register_variant("transcribe", "las", "pyramidal BiLSTM listener + attentive LSTM speller, Chan et al. 2016", LAS)
register_variant(
    "transcribe", "joint", "las trained jointly with a CTC head (weight 0.3), Kim et al. 2017", LAS, ctc_weight=0.3
)
register_variant("transcribe", "ctc", "conv subsampling + BiGRU + CTC loss, Graves et al. 2006", CTCRecognizer)
