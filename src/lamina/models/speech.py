"""End-to-end speech recognizers: log-mel frames in, characters out.

    las     Listen, Attend and Spell (Chan et al. 2016). The listener: a convolutional front end
            (two stride-2 3x3 convolutions over time and mel bands, ESPnet's Conv2dSubsampling and
            the VGG front ends: 100 -> 25 frames a second), bidirectional LSTMs at 25 frames a
            second, then pyramidal ones, each halving the time resolution by joining neighbouring
            frames (model.frontend=pyramid: pyramidal LSTMs from the 100 frames a second up, as in
            the paper). The speller: an LSTM over the previous character and the previous
            attentional vector (input feeding) with location-aware attention (Chorowski et al. 2015),
            which sees where it looked at the previous step and so moves along the audio monotonically.
    joint   las plus a CTC head on the listener, trained on a weighted sum of both losses
            (Kim, Hori & Watanabe 2017, as in ESPnet); the CTC loss makes alignments monotonic early,
            and decoding adds the CTC prefix score of each hypothesis (Watanabe et al. 2017).
    ctc     the same convolutional front end and a bidirectional LSTM or GRU whose every output
            frame predicts a character or the blank; Connectionist Temporal Classification
            (Graves et al. 2006) sums over every alignment of the transcript to the frames.

Interface: ``forward(feats (N, T, F), lengths (N,), tgt_in=None, tgt_out=None, label_smoothing=0)
-> (logits, loss)`` and ``recognize(feats, lengths, beam=1, ctc_weight=None, lm=None, lm_weight=0)
-> [Hypothesis]`` (lm: a lamina.models.fusion.CharLM). Character ids follow lamina.data.vocab: 0 is
padding (and CTC's blank), 2 and 3 start and end a transcript.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lamina.data.vocab import PAD
from lamina.errors import UsageError
from lamina.models import decoding
from lamina.models.attention import LocationAttention, Memory
from lamina.models.ctc import ctc_loss
from lamina.models.ctc import decode as ctc_decode
from lamina.models.decoding import Hypothesis
from lamina.models.fusion import CharLM, CTCPrefixScorer, Fused
from lamina.models.registry import register_variant
from lamina.models.rnn import run_rnn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
FRONTENDS = ("conv", "pyramid")
# The joint model's CTC head reads the listener at 25 frames a second (after the convolutions, or
# after two pyramidal halvings), not its top (12.5): CTC needs a frame per character plus a blank
# between doubled letters, and fast speech says up to about 20 characters a second; too few frames
# make the loss infinite (zeroed).
CTC_LEVEL = 2


def valid(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(N, t) True at the frames of each utterance, False at padding."""
    return torch.arange(t, device=lengths.device)[None] < lengths[:, None]


class ConvSubsampling(nn.Module):
    """(N, T, n_mels) -> (N, ceil(T / 4), out): two stride-2 3x3 convolutions with ReLU over (time,
    mel), then a linear map of the channels x remaining bands. Frames past each utterance's end are
    zeroed before, between and after the convolutions, so an utterance gives the same output alone
    or padded in a batch with longer ones."""

    def __init__(self, n_mels: int, channels: int, out: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.project = nn.Linear(channels * ((n_mels + 3) // 4), out)

    @staticmethod
    def frames_out(lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(2):  # each stride-2 convolution (kernel 3, padding 1)
            lengths = (lengths - 1) // 2 + 1
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x * valid(lengths, x.shape[1])[..., None])[:, None]  # (N, 1, T, F)
        for conv in (self.convs[0], self.convs[2]):
            lengths = (lengths - 1) // 2 + 1
            x = torch.relu(conv(x))
            x = x * valid(lengths, x.shape[2])[:, None, :, None]
        x = self.project(x.transpose(1, 2).flatten(2))  # (N, T/4, out)
        return x * valid(lengths, x.shape[1])[..., None], lengths


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
        self.subsample = ConvSubsampling(n_mels, channels, hidden)
        self.rnn = CELLS[cell](
            hidden, hidden // 2, layers, batch_first=True, bidirectional=True, dropout=dropout if layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    frames_out = staticmethod(ConvSubsampling.frames_out)

    def forward(self, feats, lengths, tgt_in=None, tgt_out=None, label_smoothing: float = 0.0):
        x, frames = self.subsample(feats, lengths)  # (N, T', H)
        logits = self.head(self.drop(_run_packed(self.rnn, self.drop(x), frames)))  # (N, T', V)
        loss = ctc_loss(logits, frames, tgt_out) if tgt_out is not None else None
        return logits, loss

    @torch.no_grad()
    def recognize(
        self, feats, lengths, beam: int = 1, ctc_weight=None, lm: CharLM | None = None, lm_weight: float = 0.0
    ) -> list[Hypothesis]:
        """Best path (beam 1) or prefix beam search, with the language model's score of each prefix
        added (lm_weight) in the beam."""
        if ctc_weight not in (None, 1.0):
            raise UsageError("a ctc model decodes with its CTC head alone: --ctc-weight applies to joint models")
        if lm is not None and beam <= 1:
            raise UsageError("language-model fusion with a ctc model needs a beam: give --beam 2 or more")
        logits, _ = self.forward(feats, lengths)
        return ctc_decode(logits.float().log_softmax(-1), self.frames_out(lengths), beam, lm, lm_weight)


# ----- Listen, Attend and Spell ---------------------------------------------------------------------
class Listener(nn.Module):
    """(N, T, F) -> (N, T / 2**levels / 4, H) with the conv front end, or (N, T / 2**levels, H)
    without: `bottom` bidirectional LSTM layers at the front end's rate, then `levels` pyramidal ones,
    each reading pairs of consecutive outputs of the level below."""

    def __init__(
        self,
        n_mels: int,
        hidden: int,
        levels: int,
        dropout: float,
        frontend: str = "conv",
        bottom: int = 1,
        channels: int = 32,
    ):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"hidden={hidden} is split between two directions: give an even size")
        if frontend not in FRONTENDS:
            raise ValueError(f"frontend must be one of {', '.join(FRONTENDS)}, not {frontend!r}")
        self.frontend = ConvSubsampling(n_mels, channels, hidden) if frontend == "conv" else None
        first = hidden if self.frontend is not None else n_mels
        self.rnns = nn.ModuleList(
            nn.LSTM(
                first if i == 0 else 2 * hidden,
                hidden // 2,
                bottom if i == 0 else 1,
                batch_first=True,
                bidirectional=True,
                dropout=dropout if i == 0 and bottom > 1 else 0.0,
            )
            for i in range(levels + 1)
        )
        self.drop = nn.Dropout(dropout)

    def frames_out(self, lengths: torch.Tensor) -> torch.Tensor:
        if self.frontend is not None:
            lengths = ConvSubsampling.frames_out(lengths)
        for _ in range(len(self.rnns) - 1):
            lengths = (lengths // 2).clamp(min=1)
        return lengths

    @staticmethod
    def reduce(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, H) -> (N, T // 2, 2H): neighbouring frames side by side (an odd last frame is dropped)."""
        n, t, h = x.shape
        return x[:, : t // 2 * 2].reshape(n, t // 2, 2 * h), (lengths // 2).clamp(min=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The outputs and lengths of every level, finest first; the last is the listener's output."""
        if self.frontend is not None:
            x, lengths = self.frontend(x, lengths)
        x = F.pad(x, (0, 0, 0, max(0, 2 ** (len(self.rnns) - 1) - x.shape[1])))  # >= 1 frame at the top
        levels = []
        for i, rnn in enumerate(self.rnns):
            if i > 0:
                x, lengths = self.reduce(x, lengths)
            x = self.drop(_run_packed(rnn, x, lengths))
            levels.append((x * valid(lengths, x.shape[1])[..., None], lengths))  # zero at padding
        return levels


def off_diagonal(weights: torch.Tensor, tgt_out: torch.Tensor, frames: torch.Tensor, width: float = 0.2):
    """The guided-attention loss (Tachibana et al. 2018): the mean attention mass far from the
    diagonal, each weight of character l on frame s counted by 1 - exp(-(s/S - l/L)^2 / 2 width^2).
    Speech is read at a roughly steady pace, so the diagonal is where the alignment lies, give or take
    `width` of the utterance; the penalty finds it in a few hundred steps instead of thousands."""
    lengths = (tgt_out != PAD).sum(1).clamp(min=1)  # (N,) characters with the end
    said = torch.arange(weights.shape[1], device=weights.device)[None] / lengths[:, None]  # (N, L)
    heard = torch.arange(weights.shape[2], device=weights.device)[None] / frames[:, None].clamp(min=1)  # (N, S)
    far = 1 - torch.exp(-((heard[:, None, :] - said[:, :, None]) ** 2) / (2 * width**2))  # (N, L, S)
    real = (tgt_out != PAD)[..., None].float()
    return (weights.float() * far * real).sum() / real.sum().clamp(min=1)


class LAS(nn.Module):
    def __init__(
        self,
        vocab_size: int = 32,
        n_mels: int = 80,
        hidden: int = 256,
        levels: int | None = None,
        embed: int = 64,
        attention_dim: int = 128,
        dropout: float = 0.2,
        ctc_weight: float = 0.0,
        frontend: str = "conv",
        bottom: int = 2,
        decode_ctc_weight: float = 0.3,
        guided_attention: float = 1.0,
    ):
        super().__init__()
        if not 0 <= ctc_weight <= 1:
            raise ValueError(f"ctc_weight must be in [0, 1], not {ctc_weight}")
        # 8x fewer frames than the features (12.5 a second) at the top by default, as in the paper:
        # the convolutions' 4x and one pyramidal level, or three pyramidal levels.
        levels = (1 if frontend == "conv" else 3) if levels is None else levels
        self.hidden, self.levels, self.ctc_weight = hidden, levels, ctc_weight
        self.decode_ctc_weight = decode_ctc_weight if ctc_weight > 0 else 0.0
        self.guided_attention = guided_attention
        self.listener = Listener(n_mels, hidden, levels, dropout, frontend, bottom if frontend == "conv" else 1)
        self.ctc_level = 0 if frontend == "conv" else min(CTC_LEVEL, levels)
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.cell = nn.LSTMCell(embed + hidden, hidden)
        self.attention = LocationAttention(hidden, attention_dim)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)
        self.ctc_head = nn.Linear(hidden, vocab_size) if ctc_weight > 0 else None

    def frames_out(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.listener.frames_out(lengths)

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
        steps, attention = [], []
        for t in range(tgt_in.shape[1]):  # teacher forcing: the true previous character at every step
            logits, state, weights = self._step(tgt_in[:, t], state, memory)
            steps.append(logits)
            attention.append(weights)
        logits = torch.stack(steps, 1)  # (N, L, V)
        loss = None
        if tgt_out is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=PAD, label_smoothing=label_smoothing
            )
            if self.ctc_head is not None:
                ctc_states, ctc_frames = levels[self.ctc_level]
                aligned = ctc_loss(self.ctc_head(ctc_states), ctc_frames, tgt_out)
                loss = (1 - self.ctc_weight) * loss + self.ctc_weight * aligned
            if self.guided_attention > 0:
                loss = loss + self.guided_attention * off_diagonal(torch.stack(attention, 1), tgt_out, levels[-1][1])
        return logits, loss

    @torch.no_grad()
    def recognize(
        self, feats, lengths, beam: int = 1, ctc_weight=None, lm: CharLM | None = None, lm_weight: float = 0.0
    ) -> list[Hypothesis]:
        """Greedy or beam search of the speller, its scores joined with the CTC head's prefix scores
        (ctc_weight; default: the model's decode_ctc_weight, 0 without a CTC head) and a language
        model's (lm_weight)."""
        weight = self.decode_ctc_weight if ctc_weight is None else float(ctc_weight)
        if not 0 <= weight <= 1:
            raise UsageError(f"--ctc-weight must be in [0, 1], not {weight:g}")
        if weight > 0 and self.ctc_head is None:
            raise UsageError("--ctc-weight needs a model with a CTC head (joint); this las model has none")
        levels = self.listener(feats, lengths)
        memory, state = self._memory(*levels[-1])
        # Speech runs at about 15 characters a second: 25 a second of audio (and some) is room for any
        # transcript.
        limit = int(25 * memory.outputs.shape[1] / self.frames_per_second()) + 10
        if weight == 0 and lm is None:
            return decoding.search(self, memory, state, beam, limit, alpha=1.0)
        ctc = None
        if weight > 0:
            states, frames = levels[self.ctc_level]
            ctc = CTCPrefixScorer(self.ctc_head(states).float().log_softmax(-1), frames)
        fused = Fused(self, ctc, weight, lm, lm_weight)
        memory, state = fused.start(memory, state)
        return decoding.search(fused, memory, state, beam, limit, alpha=1.0)

    def frames_per_second(self) -> float:
        """Of the listener's output, from 100 feature frames a second."""
        return 100 / 4 / 2**self.levels if self.listener.frontend is not None else 100 / 2**self.levels


register_variant(
    "transcribe", "las", "conv front end + (pyramidal) BiLSTM listener + attentive LSTM speller, Chan et al. 2016", LAS
)
register_variant(
    "transcribe",
    "joint",
    "las trained with a CTC head (weight 0.3) and decoded with its prefix scores, Kim et al. 2017",
    LAS,
    ctc_weight=0.3,
)
register_variant("transcribe", "ctc", "conv subsampling + BiGRU + CTC loss, Graves et al. 2006", CTCRecognizer)
