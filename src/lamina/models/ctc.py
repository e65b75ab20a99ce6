"""Connectionist Temporal Classification (Graves et al. 2006): a label or a blank for every frame,
trained by summing over every alignment of the transcript to the frames.

    ctc_loss    torch's CTC loss from right-padded transcripts that end in EOS (as decoders train)
    greedy      best path: the most likely symbol per frame, repeats merged, blanks removed
    beam        prefix beam search, summing the alignments of each prefix

Speech recognition uses it now and scene-text recognition next. The blank is id 0, lamina's PAD
(lamina.data.vocab), which no transcript contains.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lamina.data.vocab import EOS, PAD
from lamina.models.decoding import Hypothesis

BLANK = PAD


def ctc_loss(logits: torch.Tensor, frames: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
    """Mean CTC loss per target symbol: logits (N, T, V), frames (N,), transcripts + EOS (N, L)."""
    targets = tgt_out.masked_fill(tgt_out == EOS, PAD)
    target_lengths = (tgt_out != PAD).sum(1) - 1  # the EOS is not spoken
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, N, V)
    return F.ctc_loss(log_probs, targets, frames, target_lengths, blank=BLANK, reduction="mean", zero_infinity=True)


def greedy(log_probs: torch.Tensor, frames: torch.Tensor) -> list[Hypothesis]:
    """Best path of each row of (N, T, V): the most likely symbol per frame, repeats merged, then
    blanks removed ('aa-ab-' -> 'a-ab-' -> 'aab': a blank between two a's keeps both)."""
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


def beam(log_probs: torch.Tensor, frames: int, width: int, prune: float = -12.0) -> Hypothesis:
    """Prefix beam search of one utterance (T, V): keeps the `width` most likely prefixes, each with
    the probability of its alignments ending in a blank and in its last symbol, so that alignments
    of the same text are summed rather than competing. Symbols below exp(prune) at a frame are not
    extended (they cannot win and would cost a Python loop each)."""
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
        ranked = sorted(((k, (v[0], v[1])) for k, v in nxt.items()), key=lambda kv: -_logadd(*kv[1]))
        beams = dict(ranked[:width])
    best = max(beams.items(), key=lambda kv: _logadd(*kv[1]))
    return Hypothesis(list(best[0]), _logadd(*best[1]), None)


def decode(log_probs: torch.Tensor, frames: torch.Tensor, width: int = 1) -> list[Hypothesis]:
    """Greedy for width 1, else prefix beam search, for every row of (N, T, V)."""
    if width <= 1:
        return greedy(log_probs, frames)
    return [beam(log_probs[i], int(frames[i]), width) for i in range(len(frames))]


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))
