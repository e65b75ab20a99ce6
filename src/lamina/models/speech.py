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
lamina.data.audio: 0 is padding (and CTC's blank), 2 and 3 start and end a transcript.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lamina.models import decoding
from lamina.models.decoding import Hypothesis
from lamina.models.registry import register_model
from lamina.models.rnn import run_rnn
from lamina.models.seq2seq import Memory

PAD, BOS, EOS = 0, 2, 3
BLANK = PAD
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


def ctc_loss(logits: torch.Tensor, frames: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
    """Mean CTC loss per target character: logits (N, T, V), frames (N,), transcripts + EOS (N, L)."""
    targets = tgt_out.masked_fill(tgt_out == EOS, PAD)
    target_lengths = (tgt_out != PAD).sum(1) - 1  # the EOS is not spoken
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, N, V)
    return F.ctc_loss(log_probs, targets, frames, target_lengths, blank=BLANK, reduction="mean", zero_infinity=True)


def ctc_greedy(log_probs: torch.Tensor, frames: torch.Tensor) -> list[Hypothesis]:
    """Best path: the most likely symbol per frame, repeats merged, then blanks removed
    ('aa-ab-' -> 'a-ab-' -> 'aab': a blank between two a's keeps both)."""
    best, ids = log_probs.max(-1)  # (N, T)
    out = []
    valid = torch.arange(best.shape[1], device=best.device)[None] < frames[:, None].to(best.device)
    for row, score, n in zip(ids.tolist(), (best * valid).sum(-1).tolist(), frames.tolist()):
        tokens, previous = [], BLANK
        for t in row[:n]:
            if t != previous and t != BLANK:
                tokens.append(t)
            previous = t
        out.append(Hypothesis(tokens, score, None))
    return out


def ctc_beam(log_probs: torch.Tensor, frames: int, beam: int, prune: float = -12.0) -> Hypothesis:
    """CTC prefix beam search of one utterance (T, V): keeps the `beam` most likely prefixes, each
    with the probability of its alignments ending in a blank and in its last symbol, so that
    alignments of the same text are summed rather than competing."""
    lp = log_probs[:frames].float().cpu()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (ends in blank, in symbol)
    for t in range(lp.shape[0]):
        row = lp[t]
        candidates = [int(c) for c in torch.nonzero(row > prune).flatten()] or [int(row.argmax())]
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix, blank=-math.inf, symbol=-math.inf, nxt=nxt):
            b, s = nxt.get(prefix, [-math.inf, -math.inf])
            nxt[prefix] = [_logadd(b, blank), _logadd(s, symbol)]

        for prefix, (pb, ps) in beams.items():
            total = _logadd(pb, ps)
            for c in candidates:
                p = float(row[c])
                if c == BLANK:
                    add(prefix, blank=total + p)
                elif prefix and prefix[-1] == c:
                    add(prefix, symbol=ps + p)  # a repeat without a blank between: the same symbol
                    add(prefix + (c,), symbol=pb + p)  # after a blank: a new occurrence
                else:
                    add(prefix + (c,), symbol=total + p)
        beams = dict(sorted(((k, (v[0], v[1])) for k, v in nxt.items()), key=lambda kv: -_logadd(*kv[1]))[:beam])
    best = max(beams.items(), key=lambda kv: _logadd(*kv[1]))
    return Hypothesis(list(best[0]), _logadd(*best[1]), None)


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


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
        log_probs, frames = logits.float().log_softmax(-1), self.frames_out(lengths)
        if beam <= 1:
            return ctc_greedy(log_probs, frames)
        return [ctc_beam(log_probs[i], int(frames[i]), beam) for i in range(len(frames))]


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
        context = (weights[:, None].to(memory.outputs.dtype) @ memory.outputs)[:, 0]  # (N, H)
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
                ctc = ctc_loss(self.ctc_head(ctc_states), ctc_frames, tgt_out)
                loss = (1 - self.ctc_weight) * loss + self.ctc_weight * ctc
        return logits, loss

    @torch.no_grad()
    def recognize(self, feats, lengths, beam: int = 1) -> list[Hypothesis]:
        memory, state = self.encode(feats, lengths)
        # Speech runs at about 15 characters a second and the listener keeps 100 / 2**levels frames
        # a second: twice the frames (and some) is room for any transcript.
        limit = 2 * memory.outputs.shape[1] * 2 ** max(0, self.levels - 3) + 10
        if beam <= 1:
            return decoding.greedy(self, memory, state, limit, alpha=1.0)
        return decoding.beam_search(self, memory, state, beam, limit, alpha=1.0)


@register_model("transcribe", "las", "pyramidal BiLSTM listener + attentive LSTM speller, Chan et al. 2016")
def las(**kwargs) -> LAS:
    return LAS(**kwargs)


@register_model("transcribe", "joint", "las trained jointly with a CTC head (weight 0.3), Kim et al. 2017")
def joint(**kwargs) -> LAS:
    return LAS(**{"ctc_weight": 0.3, **kwargs})


@register_model("transcribe", "ctc", "conv subsampling + BiGRU + CTC loss, Graves et al. 2006")
def ctc(**kwargs) -> CTCRecognizer:
    return CTCRecognizer(**kwargs)
