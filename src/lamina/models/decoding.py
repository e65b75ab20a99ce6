"""Search for the most likely output sequence, a batch of sequences at a time: one search for
every decoder in lamina (translation, listen-attend-spell, the character language model).

Works with any model that has ``decode_step(tokens (N,), state, memory) -> (log-probs (N, V), state,
attention (N, S) or None)``, a recurrent state shaped (layers, N, H) (or a tuple of them) and a
memory with ``select(rows)``, or no memory at all (None: a language model continuing its prompt).

    search        beam search of width `beam`; width 1 is greedy search, run by its own faster loop
    greedy        the most likely token at every step
    beam_search   the K best partial hypotheses at every step; a hypothesis ends at EOS and is
                  scored by its log-probability divided by length ** alpha (alpha = 0: raw sum,
                  which favours short outputs; 1: mean log-probability per token). With eos=None
                  nothing ends early: every hypothesis runs to max_len (a language model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lamina.data.vocab import BOS, EOS
from lamina.models.rnn import State, one_step_kernels


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # log-probability / length ** alpha (length counts the EOS)
    attention: torch.Tensor | None  # (len(tokens) + 1, S) weights over the source, EOS step included


def check_search(beam: int, length_penalty: float) -> None:
    """A usage error for a beam width or length penalty the search cannot take."""
    import math

    from lamina.errors import UsageError

    if beam < 1:
        raise UsageError("--beam must be at least 1 (1: greedy search)")
    if not math.isfinite(length_penalty) or length_penalty < 0:
        raise UsageError("--length-penalty must be a number >= 0 (0: none; 1: mean log-probability per token)")


def _select(state: State, rows: torch.Tensor) -> State:
    return tuple(s[:, rows] for s in state) if isinstance(state, tuple) else state[:, rows]  # type: ignore[return-value]


def _first(memory, start: torch.Tensor | None) -> torch.Tensor:
    """The first input token of every row: `start`, or BOS for every row of the memory."""
    if start is not None:
        return start
    return torch.full((memory.mask.shape[0],), BOS, dtype=torch.long, device=memory.mask.device)


def search(
    model,
    memory,
    state: State,
    beam: int = 1,
    max_len: int = 100,
    alpha: float = 1.0,
    start: torch.Tensor | None = None,
    eos: int | None = EOS,
) -> list[Hypothesis]:
    """The best hypothesis of every row: greedy search for beam 1 (exactly what beam_search of width
    1 returns, tested, at a fraction of its cost), beam search otherwise."""
    if beam <= 1:
        return greedy(model, memory, state, max_len, alpha, start, eos)
    return beam_search(model, memory, state, beam, max_len, alpha, start, eos)


@torch.no_grad()
def greedy(
    model,
    memory,
    state: State,
    max_len: int,
    alpha: float = 1.0,
    start: torch.Tensor | None = None,
    eos: int | None = EOS,
) -> list[Hypothesis]:
    tokens = _first(memory, start)
    n = len(tokens)
    steps, attn, logp_sum = [], [], torch.zeros(n, device=tokens.device)
    done = torch.zeros(n, dtype=torch.bool, device=tokens.device)
    with one_step_kernels():
        for _ in range(max_len):
            logp, state, weights = model.decode_step(tokens, state, memory)
            best, tokens = logp.max(-1)
            logp_sum += best.masked_fill(done, 0.0)
            steps.append(tokens)
            attn.append(weights)
            if eos is not None:
                done |= tokens == eos
                if done.all():
                    break
    out = torch.stack(steps, 1).tolist()  # (N, T)
    weights = torch.stack(attn, 1) if attn[0] is not None else None  # (N, T, S)
    results = []
    for i, row in enumerate(out):
        ended = eos is not None and eos in row
        length = row.index(eos) + 1 if ended else len(row)
        w = weights[i, :length].float().cpu() if weights is not None else None
        results.append(Hypothesis(row[: length - ended], float(logp_sum[i]) / length**alpha, w))
    return results


@torch.no_grad()
def beam_search(
    model,
    memory,
    state: State,
    beam: int,
    max_len: int,
    alpha: float = 1.0,
    start: torch.Tensor | None = None,
    eos: int | None = EOS,
) -> list[Hypothesis]:
    """Batched beam search. Each step keeps, per sentence, the `beam` best continuing hypotheses
    among the 2 * beam best extensions; an extension ending in EOS among the top `beam` is finished.
    A sentence is done once it has `beam` finished hypotheses and its best live hypothesis, scored
    as it stands, no longer beats the best finished one (stopping at `beam` finished alone would
    return a short, poor sentence while a better one is a step from its end); with beam 1 this is
    exactly greedy search. At max_len the live hypotheses count as finished."""
    first = _first(memory, start)
    n, k, device = len(first), beam, first.device
    rows = torch.arange(n, device=device).repeat_interleave(k)  # hypothesis row -> sentence
    memory = memory.select(rows) if memory is not None else None
    state = _select(state, rows) if state is not None else None
    tokens = first[rows]
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis per sentence at the start
    history = torch.zeros((n * k, 0), dtype=torch.long, device=device)
    attention: torch.Tensor | None = None
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    done = [False] * n
    with one_step_kernels():
        for t in range(max_len):
            logp, state, weights = model.decode_step(tokens, state, memory)  # (N*K, V)
            vocab = logp.shape[-1]
            if weights is not None:  # (N*K, t + 1, S): each hypothesis's attention so far
                attention = (
                    weights.float()[:, None]
                    if attention is None
                    else torch.cat([attention, weights.float()[:, None]], 1)
                )
            total = (scores[:, :, None] + logp.view(n, k, vocab)).view(n, k * vocab)
            top, flat = total.topk(min(2 * k, k * vocab), dim=1)  # (N, 2K)
            parents, words, top_list = (flat // vocab).tolist(), (flat % vocab).tolist(), top.tolist()
            keep_rows, keep_words, keep_scores = [], [], []
            for i in range(n):
                chosen = []
                if not done[i]:
                    for rank, (score, parent, word) in enumerate(zip(top_list[i], parents[i], words[i])):
                        if score == float("-inf"):
                            break
                        if word == eos:
                            if rank < k:
                                row = i * k + parent
                                w = None if attention is None else attention[row].cpu()
                                finished[i].append(Hypothesis(history[row].tolist(), score / (t + 1) ** alpha, w))
                            continue
                        chosen.append((score, parent, word))
                        if len(chosen) == k:
                            break
                    if not chosen or (
                        len(finished[i]) >= k and chosen[0][0] / (t + 1) ** alpha <= max(h.score for h in finished[i])
                    ):
                        done[i] = True
                if done[i]:
                    chosen = []
                chosen += [(float("-inf"), 0, 0)] * (k - len(chosen))  # dead slots keep the shapes
                keep_rows += [i * k + parent for _, parent, _ in chosen]
                keep_words += [word for _, _, word in chosen]
                keep_scores += [score for score, _, _ in chosen]
            if all(done):
                break
            select = torch.tensor(keep_rows, device=device)
            tokens = torch.tensor(keep_words, device=device)
            scores = torch.tensor(keep_scores, device=device).view(n, k)
            state = _select(state, select) if state is not None else None
            history = torch.cat([history[select], tokens[:, None]], dim=1)
            attention = None if attention is None else attention[select]
        else:  # out of steps: the live hypotheses count as they are
            for i in range(n):
                if done[i]:
                    continue
                for j in range(k):
                    score = float(scores[i, j])
                    if score > float("-inf"):
                        row = i * k + j
                        w = None if attention is None else attention[row].cpu()
                        finished[i].append(
                            Hypothesis(history[row].tolist(), score / max(history.shape[1], 1) ** alpha, w)
                        )
    return [max(hyps, key=lambda h: h.score) if hyps else Hypothesis([], float("-inf"), None) for hyps in finished]
