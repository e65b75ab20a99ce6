"""Decoding with more than the decoder: joint CTC/attention scoring and language-model fusion.

    CTCPrefixScorer  the CTC probability of every one-character extension of each hypothesis, from
                     the forward variables of its prefix (Watanabe et al. 2017, the prefix score of
                     ESPnet's joint decoding), computed for the whole vocabulary at once
    CharLM           a character language model (any `lamina train lm` run) seen through the
                     recognizer's characters: its log-probability of each next character
    Fused            a decoder whose step scores (1 - lambda) * attention + lambda * CTC prefix score
                     + w * language model, for lamina.models.decoding's greedy and beam search

Why joint scoring helps: attention decoding alone may loop ("to the come to the come") or stop
early, since nothing ties its output to the length of the audio; the CTC prefix score of a looping
or truncated hypothesis is tiny, because CTC must account for every frame, monotonically.
"""

from __future__ import annotations

import torch
from torch import nn

from lamina.data.vocab import BOS, EOS, PAD, UNK
from lamina.errors import LaminaError

BLANK = PAD
NEVER = (PAD, UNK, BOS)  # ids no transcript contains
LOG_ZERO = -1e10  # finite: differences of impossible prefixes stay numbers, not NaN


class CTCPrefixScorer:
    """log_probs (N, T, V) of a CTC head and frames (N,) -> prefix scores of hypotheses.

    State of a hypothesis h (kept per beam row by the search): r (T, 2, V), the log-probabilities
    of the frames 1..t having emitted h+c and ending in a non-blank (0) or a blank (1), for every
    next character c, and psi (V,), the log-probability of every alignment that starts with h+c.
    The step for the chosen c reads r[..., c] and psi[c] and extends them by all characters."""

    def __init__(self, log_probs: torch.Tensor, frames: torch.Tensor):
        x = log_probs.float()
        n, t, v = x.shape
        past = torch.arange(t, device=x.device)[None] >= frames.to(x.device)[:, None]  # (N, T)
        # Past an utterance's end every alignment emits blanks with probability 1: the totals at
        # the last (padded) frame are then each utterance's own.
        x = x.masked_fill(past[..., None], LOG_ZERO)
        x[..., BLANK] = x[..., BLANK].masked_fill(past, 0.0)
        self.x, self.vocab = x, v

    def select(self, rows: torch.Tensor) -> CTCPrefixScorer:
        out = CTCPrefixScorer.__new__(CTCPrefixScorer)
        out.x, out.vocab = self.x[rows], self.vocab
        return out

    def initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty hypothesis, as if each of its characters' columns were it: (1, N, T, 2, V), (1, N, V)."""
        n, t, v = self.x.shape
        r = self.x.new_full((n, t, 2), LOG_ZERO)
        r[:, :, 1] = self.x[:, :, BLANK].cumsum(1)  # only blanks so far
        return r[None, ..., None].expand(1, n, t, 2, v).contiguous(), self.x.new_zeros(1, n, v)

    def step(self, tokens: torch.Tensor, state) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """tokens (N,): the last character of each hypothesis (BOS: empty) -> (score increments of
        every next character (N, V), the new state). EOS scores the whole hypothesis as it stands."""
        r_all, psi_all = state
        rows = torch.arange(len(tokens), device=tokens.device)
        r_prev, psi_prev = r_all[0, rows, :, :, tokens], psi_all[0, rows, tokens]  # (N, T, 2), (N,)
        x = self.x
        n, t, v = x.shape
        start = tokens == BOS
        r = x.new_full((n, t, 2, v), LOG_ZERO)
        r[:, 0, 0] = torch.where(start[:, None], x[:, 0], torch.full_like(x[:, 0], LOG_ZERO))
        # phi: the probability of h by frame t, with which c may start at t + 1; a repeated
        # character needs a blank between (else it merges with the last one).
        phi = torch.logaddexp(r_prev[..., 0], r_prev[..., 1])[..., None].expand(n, t, v)
        same = nn.functional.one_hot(tokens, v).bool()[:, None, :]
        phi = torch.where(same & ~start[:, None, None], r_prev[..., 1:2], phi)
        blank = x[:, :, BLANK : BLANK + 1]
        for i in range(1, t):
            r[:, i, 0] = torch.logaddexp(r[:, i - 1, 0], phi[:, i - 1]) + x[:, i]
            r[:, i, 1] = torch.logaddexp(r[:, i - 1, 0], r[:, i - 1, 1]) + blank[:, i]
        psi = torch.logsumexp(torch.cat([r[:, :1, 0], phi[:, :-1] + x[:, 1:]], 1), dim=1)  # (N, V)
        psi[:, EOS] = torch.logaddexp(r_prev[:, -1, 0], r_prev[:, -1, 1])
        psi[:, list(NEVER)] = LOG_ZERO
        psi = psi.clamp_min(LOG_ZERO)
        return psi - psi_prev[:, None], (r[None], psi[None])


class CharLM:
    """A character language model seen through a recognizer's character ids.

    `chars`: the recognizer's characters in id order after the specials (lamina.data.audio.CHARS);
    `lm_chars`: the language model's vocabulary (its run's meta['vocab']). A transcript starts after a
    new line and ends with one (each sentence of the LM's text is a line); an LM without new lines
    scores no end."""

    def __init__(self, model: nn.Module, lm_chars: str, chars: str, offset: int, vocab: int):
        missing = [c for c in chars if c not in lm_chars]
        if missing:
            raise LaminaError(
                f"the language model does not know {len(missing)} of the characters transcripts use "
                f"({''.join(missing)!r}): train it on text of lower-case letters, spaces and apostrophes"
            )
        self.model = model
        device = next(model.parameters()).device
        index = {c: i for i, c in enumerate(lm_chars)}
        self.newline = index.get("\n")
        to_lm = torch.zeros(vocab, dtype=torch.long)
        for i, c in enumerate(chars):
            to_lm[offset + i] = index[c]
        self.to_lm = to_lm.to(device)
        self.chars_at = torch.arange(offset, offset + len(chars), device=device)
        self.start = self.newline if self.newline is not None else index[" "]

    def initial_state(self, n: int):
        return self.model.init_state(n)

    def step(self, tokens: torch.Tensor, state):
        """tokens (N,) recognizer ids (BOS: a transcript starts) -> (log-probs (N, V) of the next
        recognizer character, new state); 0 for the ids that are not characters."""
        tokens = tokens.to(self.to_lm.device)
        lm_tokens = torch.where(tokens == BOS, torch.full_like(tokens, self.start), self.to_lm[tokens])
        logp, state, _ = self.model.decode_step(lm_tokens, state)
        out = logp.new_zeros(len(tokens), len(self.to_lm))
        out[:, self.chars_at] = logp[:, self.to_lm[self.chars_at]]
        if self.newline is not None:
            out[:, EOS] = logp[:, self.newline]
        return out, state


class FusedMemory:
    """The decoder's memory with the CTC scorer's log-probabilities, selected together by the search."""

    def __init__(self, inner, ctc: CTCPrefixScorer | None):
        self.inner, self.ctc = inner, ctc

    @property
    def mask(self) -> torch.Tensor:
        return self.inner.mask

    def select(self, rows: torch.Tensor) -> FusedMemory:
        return FusedMemory(self.inner.select(rows), self.ctc.select(rows) if self.ctc is not None else None)


class Fused:
    """decode_step of `decoder` rescored: (1 - ctc_weight) * its log-probs + ctc_weight * CTC prefix
    score + lm_weight * the language model. The state is one flat tuple (decoder, CTC, LM parts),
    each (layers or 1, N, ...), as lamina.models.decoding selects it."""

    def __init__(self, decoder, ctc: CTCPrefixScorer | None, ctc_weight: float, lm: CharLM | None, lm_weight: float):
        self.decoder, self.ctc, self.ctc_weight, self.lm, self.lm_weight = decoder, ctc, ctc_weight, lm, lm_weight
        self._own = self._ctc = 0  # how many tensors of the flat state are the decoder's, and the CTC scorer's

    def start(self, memory, state) -> tuple[FusedMemory, tuple]:
        """The fused memory and first state from the decoder's own."""
        parts = [_flat(state)]
        if self.ctc is not None:
            parts.append(self.ctc.initial_state())
        if self.lm is not None:
            parts.append(_flat(self.lm.initial_state(memory.mask.shape[0])))
        self._own, self._ctc = len(parts[0]), 2 if self.ctc is not None else 0
        return FusedMemory(memory, self.ctc), tuple(s for p in parts for s in p)

    def decode_step(self, tokens: torch.Tensor, state: tuple, memory: FusedMemory):
        a, b = self._own, self._own + self._ctc
        own, ctc_state, lm_state = state[:a], state[a:b], state[b:]
        logp, own, weights = self.decoder.decode_step(tokens, own if len(own) > 1 else own[0], memory.inner)
        score, new = logp, [*_flat(own)]
        if self.ctc is not None:
            increment, ctc_state = memory.ctc.step(tokens, ctc_state)
            score = (1 - self.ctc_weight) * logp + self.ctc_weight * increment
            new += list(ctc_state)
        if self.lm is not None:
            lm_logp, lm_state = self.lm.step(tokens, lm_state if len(lm_state) > 1 else lm_state[0])
            score = score + self.lm_weight * lm_logp
            new += list(_flat(lm_state))
        return score, tuple(new), weights


def _flat(state) -> tuple:
    return tuple(state) if isinstance(state, tuple) else (state,)
