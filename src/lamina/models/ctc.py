"""Connectionist Temporal Classification (Graves et al. 2006): a label or a blank for every frame,
trained by summing over every alignment of the transcript to the frames.

    ctc_loss    torch's CTC loss from right-padded transcripts that end in EOS (as decoders train)
    greedy      best path: the most likely symbol per frame, repeats merged, blanks removed
    beam        prefix beam search, summing the alignments of each prefix

Speech and scene-text recognition use it. The blank is id 0, lamina's PAD
(lamina.data.vocab), which no transcript contains.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lamina.data.vocab import BOS, EOS, PAD
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


def beam(
    log_probs: torch.Tensor, frames: int, width: int, prune: float = -12.0, lm=None, lm_weight: float = 0.0
) -> Hypothesis:
    """Prefix beam search of one utterance (T, V): keeps the `width` most likely prefixes, each with
    the probability of its alignments ending in a blank and in its last symbol, so that alignments
    of the same text are summed rather than competing. Symbols below exp(prune) at a frame are not
    extended (they cannot win and would cost a Python loop each).

    With a language model (a lamina.models.fusion.CharLM), prefixes are ranked by their CTC
    log-probability + lm_weight * the LM's log-probability of the prefix (shallow fusion), and the
    finished transcript by that plus the LM's probability of ending there."""
    lp = log_probs[:frames].float().cpu()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (ends in blank, in symbol)
    scorer = _PrefixLM(lm, lm_weight) if lm is not None and lm_weight else None
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
        bonus = scorer.score if scorer is not None else (lambda prefix: 0.0)
        ranked = sorted(nxt.items(), key=lambda kv: -(_logadd(*kv[1]) + bonus(kv[0])))
        beams = {k: (v[0], v[1]) for k, v in ranked[:width]}
        if scorer is not None:
            scorer.extend(list(beams))

    def final(kv) -> float:
        return _logadd(*kv[1]) + (scorer.score(kv[0]) + scorer.end(kv[0]) if scorer is not None else 0.0)

    best = max(beams.items(), key=final)
    return Hypothesis(list(best[0]), final(best), None)


class _PrefixLM:
    """The weighted LM log-probability of each prefix, with the LM's next-character distribution
    of each prefix in the beam computed once, the new prefixes of a frame in one batch."""

    def __init__(self, lm, weight: float):
        self.lm, self.weight = lm, weight
        logp, state = lm.step(torch.tensor([BOS]), lm.initial_state(1))
        self.next = {(): (logp[0].tolist(), state)}  # prefix -> (log-probs of its next characters, LM state)
        self.scores = {(): 0.0}

    def score(self, prefix: tuple[int, ...]) -> float:
        if prefix not in self.scores:  # a one-character extension of a prefix whose next is known
            self.scores[prefix] = self.scores[prefix[:-1]] + self.weight * self.next[prefix[:-1]][0][prefix[-1]]
        return self.scores[prefix]

    def end(self, prefix: tuple[int, ...]) -> float:
        return self.weight * self.next[prefix][0][EOS]

    def extend(self, prefixes: list[tuple[int, ...]]) -> None:
        new = [p for p in prefixes if p not in self.next]
        if not new:
            return
        parents = [self.next[p[:-1]][1] for p in new]
        state = _cat_states(parents)
        logp, state = self.lm.step(torch.tensor([p[-1] for p in new]), state)
        rows = logp.tolist()
        for i, p in enumerate(new):
            self.next[p] = (rows[i], _row_state(state, i))


def _cat_states(states: list):
    if isinstance(states[0], tuple):
        return tuple(torch.cat([s[k] for s in states], 1) for k in range(len(states[0])))
    return torch.cat(states, 1)


def _row_state(state, i: int):
    return tuple(s[:, i : i + 1] for s in state) if isinstance(state, tuple) else state[:, i : i + 1]


def decode(
    log_probs: torch.Tensor, frames: torch.Tensor, width: int = 1, lm=None, lm_weight: float = 0.0
) -> list[Hypothesis]:
    """Greedy for width 1, else prefix beam search (with a language model, if given), for every row
    of (N, T, V)."""
    if width <= 1:
        return greedy(log_probs, frames)
    return [beam(log_probs[i], int(frames[i]), width, lm=lm, lm_weight=lm_weight) for i in range(len(frames))]


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))
