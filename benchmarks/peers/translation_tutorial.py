"""Peer for English -> French translation: the recipe of PyTorch's tutorial "NLP From Scratch:
Translation with a Sequence to Sequence Network and Attention" (pytorch.org/tutorials, the 2023+
version), reimplemented from its description, within a wall-clock budget.

What it reproduces: an EncoderRNN (Embedding -> Dropout 0.1 -> GRU, batch first) and an
AttnDecoderRNN with additive (Bahdanau) attention: at each step the previous token goes through
Embedding -> Dropout 0.1, the decoder's hidden state is the query, the scores are
Va(tanh(Wa(query) + Ua(keys))), softmaxed over the source positions, and their weighted sum of the
encoder outputs (the context) is concatenated to the embedding as the input of a GRU(2 x hidden,
hidden) started from the encoder's final state; Linear(hidden, vocab) and log-softmax give the next
token. Hidden size 128, batches of 32 drawn at random every epoch (RandomSampler), Adam with lr 0.001
for the encoder and for the decoder, NLLLoss on the log-softmax outputs, the target fed at every step
in training (teacher forcing), greedy decoding from SOS until EOS at inference.

What differs, on purpose:
1. Data and tokens are lamina's: the gettext:fr corpus and its train / val / test splits, and
   lamina's own subword tokenizer, trained as lamina trains it. The tutorial's lowercased ASCII word
   vocabulary cannot write the French accents the references have, and the same tokens leave the
   model and its optimisation as the only things compared.
2. No MAX_LENGTH=10 filter: it trains on every pair lamina trains on (lamina leaves out pairs with a
   side longer than data.max_tokens subwords, and so does this) and decodes up to 2 x source subwords
   + 10, lamina's limit. Batches are padded to their longest sentence, and the padding is kept out of
   the loss (ignore_index), out of the attention (masked scores) and out of the encoder's final state
   (packed sequences), where the tutorial's fixed-length zero padding is read like text.
3. It trains for a wall-clock budget, counted from the start of the process (imports, data,
   training, validation and the final test pass all inside it), instead of 80 epochs.
The tutorial keeps no validation set; this one measures the validation loss (teacher-forced NLL per
target subword) every minute or so and keeps the best weights, as lamina does, and the test split
is translated once, at the end, with those weights and scored with lamina's BLEU and chrF.

    python -m benchmarks.peers.translation_tutorial --budget 600 [--seed 0] [--device cpu] [--limit-test N]

Progress goes to stderr; the last line of stdout is one JSON object: BLEU, chrF, the best validation
loss, the validation curve, steps, epochs, parameters, wall time.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget includes Python's start-up and the imports below

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402
from torch.utils.data import BatchSampler, RandomSampler  # noqa: E402

HIDDEN = 128
BATCH = 32
LR = 0.001
DROPOUT = 0.1
EVAL_BATCH = 64  # sentences per validation and decoding batch, as lamina evaluates
WARMUP_STEPS = 10  # the first steps are slow (allocations): the training speed is read after them
FINISHING_SECONDS = 2.0  # kept at the end of the budget for scoring and writing the result
# Before the first validation, a guess: a greedy translation of a sentence costs about this many
# teacher-forced loss passes of it (lamina's figure); a model that has not yet learnt to stop runs to
# the length limit. Each validation then times the greedy translation of every SAMPLE_EVERY-th
# validation sentence (in length order), which tracks what the test pass will cost as the model learns.
DECODE_COST = 4.0
SAMPLE_EVERY = 16


def elapsed() -> float:
    return time.monotonic() - STARTED


def log(message: str) -> None:
    print(f"[{elapsed():7.1f} s] {message}", file=sys.stderr, flush=True)


# ----- the tutorial's networks ----------------------------------------------------------------------
@dataclass
class Memory:
    """What the decoder attends to: the encoder's outputs, their projection by Ua (the same at every
    step, so computed once per batch rather than once per step) and which positions are real text."""

    keys: torch.Tensor  # (B, S, H)
    projected: torch.Tensor  # (B, S, H)
    mask: torch.Tensor  # (B, S) bool


class EncoderRNN(nn.Module):
    def __init__(self, vocab: int, hidden: int = HIDDEN):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.dropout = nn.Dropout(DROPOUT)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs (B, S, H), final state (1, B, H)) of right-padded sources; packing stops each row's
        recurrence at its own last token, so the state handed to the decoder has read no padding."""
        embedded = self.dropout(self.embedding(src))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, hidden = self.gru(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        return outputs, hidden


class BahdanauAttention(nn.Module):
    def __init__(self, hidden: int = HIDDEN):
        super().__init__()
        self.Wa = nn.Linear(hidden, hidden)
        self.Ua = nn.Linear(hidden, hidden)
        self.Va = nn.Linear(hidden, 1)

    def memory(self, keys: torch.Tensor, lengths: torch.Tensor) -> Memory:
        mask = torch.arange(keys.shape[1], device=keys.device) < lengths[:, None]
        return Memory(keys, self.Ua(keys), mask)

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, 1, H), weights (B, S)) for a query (B, 1, H)."""
        scores = self.Va(torch.tanh(self.Wa(query) + memory.projected)).squeeze(-1)  # (B, S)
        weights = F.softmax(scores.masked_fill(~memory.mask, float("-inf")), dim=-1)
        return torch.bmm(weights.unsqueeze(1), memory.keys), weights


class AttnDecoderRNN(nn.Module):
    def __init__(self, vocab: int, hidden: int = HIDDEN):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.attention = BahdanauAttention(hidden)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        self.dropout = nn.Dropout(DROPOUT)

    def step(self, tokens: torch.Tensor, hidden: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for the previous tokens (B,): (GRU output (B, 1, H), new state (1, B, H))."""
        embedded = self.dropout(self.embedding(tokens[:, None]))  # (B, 1, H)
        context, _ = self.attention(hidden.transpose(0, 1), memory)
        return self.gru(torch.cat((embedded, context), dim=2), hidden)

    def forward(self, tgt_in: torch.Tensor, hidden: torch.Tensor, memory: Memory) -> torch.Tensor:
        """Log-probabilities (B, T, V) of the next tokens with the target fed at every step (teacher
        forcing). The output layer runs once on all steps: the same numbers as once per step, faster."""
        outputs = []
        for t in range(tgt_in.shape[1]):
            output, hidden = self.step(tgt_in[:, t], hidden, memory)
            outputs.append(output)
        return F.log_softmax(self.out(torch.cat(outputs, dim=1)), dim=-1)


class Translator(nn.Module):
    """The encoder and the decoder together, so that one state_dict holds both (for the best weights)."""

    def __init__(self, vocab: int, hidden: int = HIDDEN):
        super().__init__()
        self.encoder = EncoderRNN(vocab, hidden)
        self.decoder = AttnDecoderRNN(vocab, hidden)

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[Memory, torch.Tensor]:
        keys, hidden = self.encoder(src, lengths)
        return self.decoder.attention.memory(keys, lengths), hidden

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, hidden = self.encode(src, lengths)
        return self.decoder(tgt_in, hidden, memory)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, lengths: torch.Tensor, max_len: int) -> list[list[int]]:
        """The most likely next token at every step, from BOS, until every row has written EOS or
        max_len steps; each row's tokens before its EOS."""
        from lamina.data.vocab import BOS, EOS

        memory, hidden = self.encode(src, lengths)
        tokens = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
        done = torch.zeros_like(tokens, dtype=torch.bool)
        steps = []
        for _ in range(max_len):
            output, hidden = self.decoder.step(tokens, hidden, memory)
            tokens = self.decoder.out(output[:, 0]).argmax(-1)  # log-softmax keeps the order: skipped
            steps.append(tokens)
            done |= tokens == EOS
            if done.all():
                break
        rows = torch.stack(steps, 1).tolist()
        return [row[: row.index(EOS)] if EOS in row else row for row in rows]


# ----- lamina's data ---------------------------------------------------------------------------------
@dataclass
class Data:
    vocab: int
    train: tuple[list[list[int]], list[list[int]]]  # (sources, targets) in subwords
    val: tuple[list[list[int]], list[list[int]]]
    test_sources: list[list[int]]
    test_references: list[str]
    decode: Callable[[list[int]], str]  # subword ids -> text, by lamina's tokenizer


def load_data() -> Data:
    """lamina's translate task prepares the data exactly as for its own training: the gettext:fr
    corpus and splits, the subword tokenizer trained on the training split, the over-long training
    pairs left out (validation and test keep every pair, as lamina evaluates them)."""
    from lamina import config
    from lamina.engine.device import Precision
    from lamina.tasks import get_task

    task_cls = get_task("translate")
    cfg = config.resolve(task_cls.defaults, data=task_cls.Data, sets=["data.name=gettext:fr"])
    cpu = torch.device("cpu")  # lamina's batches are not used, only its lists of subwords
    task = task_cls(cfg, cpu, Precision(None, cpu))
    prepared = task.prepare()
    return Data(
        vocab=prepared.model_args["vocab_size"],
        train=(prepared.train.sources, prepared.train.targets),
        val=(prepared.val.sources, prepared.val.targets),
        test_sources=prepared.test.sources,
        test_references=[target for _, target in prepared.test.pairs],
        decode=task.tokenizer.decode,  # what TranslateTask.scores does to a hypothesis
    )


def source_batch(sources: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(source ids (B, S), lengths (B,)): each sentence ends with EOS, as lamina and the tutorial feed it."""
    from lamina.data.batching import pad
    from lamina.data.vocab import EOS

    rows = [[*s, EOS] for s in sources]
    return pad(rows, device), torch.tensor([len(r) for r in rows], device=device)


def target_batch(targets: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder input BOS + target, expected output target + EOS), each (B, T), padded with PAD."""
    from lamina.data.batching import pad
    from lamina.data.vocab import BOS, EOS

    return pad([[BOS, *t] for t in targets], device), pad([[*t, EOS] for t in targets], device)


def by_length(seqs: list[list[int]], size: int) -> list[list[int]]:
    """Indices in batches of similar length of `seqs`, so that little of an evaluation batch is padding."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [order[i : i + size] for i in range(0, len(order), size)]


# ----- training and evaluation -------------------------------------------------------------------
def nll_sum(model: Translator, sources, targets, rows: list[int], device: str) -> tuple[torch.Tensor, int]:
    """Summed NLL of the target tokens of `rows` (padding left out) and their number."""
    from lamina.data.vocab import PAD

    src, lengths = source_batch([sources[i] for i in rows], device)
    tgt_in, tgt_out = target_batch([targets[i] for i in rows], device)
    logp = model(src, lengths, tgt_in)
    loss = F.nll_loss(logp.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, reduction="sum")
    return loss, int((tgt_out != PAD).sum())


@torch.no_grad()
def val_loss(model: Translator, val: tuple[list[list[int]], list[list[int]]], device: str) -> tuple[float, float]:
    """(teacher-forced NLL per target subword, seconds it took)."""
    started = time.perf_counter()
    model.eval()
    total, count = 0.0, 0
    for rows in by_length(val[1], EVAL_BATCH):  # by target length: the decoder's steps are most of the time
        loss, n = nll_sum(model, *val, rows, device)
        total, count = total + float(loss), count + n
    model.train()
    return total / max(count, 1), time.perf_counter() - started


def translate(model: Translator, sources: list[list[int]], device: str) -> list[list[int]]:
    """Greedy translations in batches of similar length, in the order of `sources`."""
    from lamina.tasks.translate import max_output_tokens

    model.eval()
    out: list[list[int]] = [[] for _ in sources]
    for rows in by_length(sources, EVAL_BATCH):
        src, lengths = source_batch([sources[i] for i in rows], device)
        for i, tokens in zip(rows, model.greedy(src, lengths, max_output_tokens(src.shape[1]))):
            out[i] = tokens
    return out


def tokens_of(targets: list[list[int]]) -> int:
    return sum(len(t) + 1 for t in targets)  # + EOS


class Clock:
    """When to validate and when to stop. The reserve is what the end needs: one last validation
    (so the steps since the previous one count) and the test translation, from the measured times of
    the last validation, or before the first one from the training speed."""

    def __init__(self, budget: float, data: Data, test_sentences: int):
        self.budget = budget
        self.val_every = min(60.0, max(15.0, budget / 8))
        self.next_val = elapsed() + self.val_every
        self.val_sentences, self.test_sentences = len(data.val[0]), test_sentences
        self.val_tokens = tokens_of(data.val[1])
        self.train_tokens_per_step = BATCH * tokens_of(data.train[1]) / len(data.train[1])
        self.val_seconds: float | None = None  # a whole validation: the loss pass and the timed translations
        self.decode_seconds = 0.0  # per sentence, greedy
        self.train_started, self.steps, self.validating = elapsed(), 0, 0.0  # seconds spent validating

    def reserve(self) -> float:
        if self.val_seconds is None:
            # A loss pass without backward or optimiser is about a third of a training step per token.
            seconds_per_step = (elapsed() - self.train_started) / max(self.steps, 1)
            loss_pass = seconds_per_step * self.val_tokens / self.train_tokens_per_step / 3
            per_sentence = DECODE_COST * loss_pass / self.val_sentences
            val = loss_pass + per_sentence * self.val_sentences / SAMPLE_EVERY
            return val + per_sentence * self.test_sentences + FINISHING_SECONDS
        return self.val_seconds + self.decode_seconds * self.test_sentences + FINISHING_SECONDS

    def out_of_time(self) -> bool:
        if self.val_seconds is None and self.steps < WARMUP_STEPS:  # too few steps to tell the speed
            return elapsed() + FINISHING_SECONDS >= self.budget
        return elapsed() + self.reserve() >= self.budget

    def validation_due(self) -> bool:
        return elapsed() >= self.next_val

    def validated(self, seconds: float, decode_seconds: float) -> None:
        self.val_seconds, self.decode_seconds = seconds, decode_seconds
        self.validating += seconds
        self.next_val = elapsed() + self.val_every


def train(model: Translator, data: Data, clock: Clock, seed: int, device: str) -> tuple[list, dict, float]:
    """Train until the clock says stop; (validation curve, best weights, best validation loss)."""
    enc_opt = torch.optim.Adam(model.encoder.parameters(), lr=LR)
    dec_opt = torch.optim.Adam(model.decoder.parameters(), lr=LR)
    sources, targets = data.train
    sampler = BatchSampler(RandomSampler(sources, generator=torch.Generator().manual_seed(seed)), BATCH, False)
    sample = [data.val[0][rows[0]] for rows in by_length(data.val[0], SAMPLE_EVERY)]  # every SAMPLE_EVERY-th by length
    curve, best, best_loss, last_val_step = [], None, float("inf"), -1

    def validate() -> None:
        nonlocal best, best_loss, last_val_step
        loss, seconds = val_loss(model, data.val, device)
        started = time.perf_counter()
        translate(model, sample, device)
        decode_seconds = time.perf_counter() - started
        model.train()
        clock.validated(seconds + decode_seconds, decode_seconds / len(sample))
        curve.append([round(elapsed(), 1), round(loss, 4)])
        last_val_step = clock.steps
        if loss < best_loss:
            best_loss = loss
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        epochs = clock.steps * BATCH / len(sources)
        log(
            f"step {clock.steps}  epoch {epochs:.2f}  val loss {loss:.4f}  (loss pass {seconds:.1f} s, "
            f"{len(sample)} translations {decode_seconds:.1f} s)"
        )

    model.train()
    while not clock.out_of_time():
        for rows in sampler:
            if clock.out_of_time():
                break
            enc_opt.zero_grad()
            dec_opt.zero_grad()
            loss, n = nll_sum(model, sources, targets, rows, device)
            (loss / n).backward()  # NLLLoss's mean over the real target tokens
            enc_opt.step()
            dec_opt.step()
            clock.steps += 1
            if clock.validation_due():
                validate()
    if last_val_step != clock.steps:
        validate()
    return curve, best, best_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, required=True, help="seconds of wall clock for the whole process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit-test", type=int, metavar="N", help="translate only the first N test pairs (smoke tests)")
    a = p.parse_args()

    from lamina import metrics
    from lamina.models.rnn import one_step_kernels

    torch.manual_seed(a.seed)
    data = load_data()
    test_sources, references = data.test_sources, data.test_references
    if a.limit_test is not None:
        test_sources, references = test_sources[: a.limit_test], references[: a.limit_test]
    prepared_s = elapsed()
    log(
        f"data ready: {len(data.train[0]):,} training pairs, {len(data.val[0]):,} validation, "
        f"{len(test_sources):,} test, {data.vocab:,} subwords"
    )

    model = Translator(data.vocab).to(a.device)
    parameters = sum(w.numel() for w in model.parameters())
    clock = Clock(a.budget, data, len(test_sources))
    # oneDNN's RNN kernels, which lamina turns off for decoding (one_step_kernels), also slow this
    # recipe's training on a CPU: its GRUs run one time step at a time and each new batch shape pays a
    # set-up cost; the first 60 training steps took 4 times as long with them on.
    with one_step_kernels():
        curve, best, best_loss = train(model, data, clock, a.seed, a.device)
        train_s = elapsed() - clock.train_started - clock.validating
        model.load_state_dict(best)
        started = time.perf_counter()
        hypotheses = [data.decode(tokens) for tokens in translate(model, test_sources, a.device)]
        decode_s = time.perf_counter() - started
    bleu, chrf = metrics.bleu(hypotheses, references), metrics.chrf(hypotheses, references)
    log(
        f"test BLEU {bleu:.2f}  chrF {chrf:.2f}  ({len(hypotheses):,} sentences in {decode_s:.1f} s; "
        f"{clock.steps / max(train_s, 1e-9):.2f} steps/s; data {prepared_s:.1f} s)"
    )
    result = {
        "peer": "pytorch-seq2seq-tutorial",
        "bleu": bleu,
        "chrf": chrf,
        "val_loss": best_loss,
        "steps": clock.steps,
        "epochs": round(clock.steps * BATCH / len(data.train[0]), 3),
        "train_pairs": len(data.train[0]),
        "test_sentences": len(hypotheses),
        "parameters": parameters,
        "wall_s": round(elapsed(), 1),
        "curve": curve,  # [seconds since start, validation loss] at every validation
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
