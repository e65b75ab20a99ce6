"""Character-level language modelling: RNN, LSTM and GRU that learn to write (Shakespeare, or any text).

The error signal is the cross-entropy of the next character, in nats per character; bits per
character and perplexity are the same figure in other units. Training is char-rnn's: contiguous
streams per batch row, truncated back-propagation through time over `data.seq_len` characters, the
recurrent state carried (detached) from one batch to the next, and gradient clipping.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lamina.data import text
from lamina.engine.loop import StepOutput
from lamina.errors import LaminaError, UsageError, warn
from lamina.models.rnn import detach_state
from lamina.tasks.base import Prepared, Task

EVAL_ROWS = 64  # parallel streams when measuring the loss on a whole text
EVAL_SEQ_LEN = 512
ESTIMATE_CHARS = 65_536  # the validation sample that picks the best checkpoint during training


class LanguageModelTask(Task):
    name = "lm"
    description = "character-level language models (RNN, LSTM, GRU) that generate text"
    monitor = ("loss", "min")
    defaults = {
        "data.name": "shakespeare",
        "model.name": "lstm",
        "optim.name": "adamw",
        "optim.lr": 3e-3,
        "optim.weight_decay": 0.01,
        "optim.schedule": "cosine",
        "optim.warmup": 0.02,
        "optim.grad_clip": 1.0,
        "train.batch_size": 64,
        "train.eval_every": 200,
        "train.channels_last": False,
    }
    datasets = text.DATASETS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.carried = None  # the recurrent state carried from one training batch to the next

    # ----- data ---------------------------------------------------------------------------------
    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        d, t = self.cfg.data, self.cfg.train
        corpus = text.load_corpus(d.name, d.val, d.val_fraction)
        # The vocabulary is every character of the run's own text (train and validation), in sorted
        # order; a resumed run keeps its own.
        vocab = text.Vocab(previous_meta["vocab"]) if previous_meta else text.Vocab.build(corpus.train + corpus.val)
        train_ids = vocab.encode(corpus.train, "the training text")
        val_ids = vocab.encode(corpus.val, "the validation text")
        if len(train_ids) <= 2 * d.seq_len:
            raise LaminaError(
                f"the training text ({len(train_ids)} characters) is too short for data.seq_len "
                f"{d.seq_len}; give more text or a smaller --set data.seq_len"
            )
        rows = min(t.batch_size, (len(train_ids) - d.seq_len) // d.seq_len)
        if rows < t.batch_size:
            warn(
                f"the training text fills only {rows} streams of data.seq_len={d.seq_len} characters; "
                f"training with {rows} rows per batch instead of {t.batch_size}"
            )
        meta = {"vocab": vocab.chars, "data": corpus.source}
        return Prepared(
            train=text.TextStreams(
                train_ids, rows, d.seq_len, train=True, seed=t.seed, reset=d.state_reset, device=self.device
            ),
            val=self.estimate_streams(val_ids),
            test=None,
            final_val=self.streams(val_ids),
            meta=meta,
            model_args={"vocab_size": len(vocab)},
        )

    def streams(self, ids: torch.Tensor) -> text.TextStreams:
        """The whole text in parallel streams of at least EVAL_SEQ_LEN characters, for its loss: every
        character predicted once, with what precedes it in its stream as context (the last
        (N - 1) mod rows characters, fewer than 64, are left out)."""
        rows = min(EVAL_ROWS, max(1, len(ids) // EVAL_SEQ_LEN))
        return text.TextStreams(ids, rows, EVAL_SEQ_LEN, device=self.device)

    def estimate_streams(self, ids: torch.Tensor) -> text.TextStreams:
        """A fixed sample of the validation text, spread over all of it: quick to measure often."""
        rows = 32
        if len(ids) <= 2 * ESTIMATE_CHARS:
            return self.streams(ids)
        return text.TextStreams(ids, rows, EVAL_SEQ_LEN, window=ESTIMATE_CHARS // rows, device=self.device)

    def has_split(self, data: str, split: str) -> bool:
        return split in ("train", "val")

    # ----- the carried state is part of a resumable run -------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = self.carried
        if state is None:
            return {}
        return {"carried": [s.cpu() for s in state] if isinstance(state, tuple) else [state.cpu()]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        carried = saved.get("carried")
        if carried:
            carried = [s.to(self.device) for s in carried]
            self.carried = tuple(carried) if len(carried) == 2 else carried[0]

    # ----- loss and metrics -----------------------------------------------------------------------
    def step(self, model: nn.Module, batch) -> StepOutput:
        x, y, fresh = batch  # (B, T), (B, T), (B,) rows whose state starts afresh
        _, loss, state = model(x, y, restart(self.carried, fresh))
        self.carried = detach_state(state)
        return StepOutput(loss, y.numel())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: text.TextStreams, tta: bool | None = None) -> dict[str, float]:
        model.eval()
        total, count, state = torch.zeros((), device=self.device), 0, None
        for x, y, fresh in batches.epoch():
            state = restart(state, fresh)
            with self.precision.autocast():
                logits, _, state = model(x, None, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
            count += y.numel()
        return nats(float(total) / max(count, 1))

    def report(self, model: nn.Module, meta: dict[str, Any], data: str, split: str, out_dir: Path) -> dict[str, Any]:
        """Loss in nats per character, bits per character and perplexity on the run's own train or
        validation text, or on the whole of another text."""
        vocab = text.Vocab(meta["vocab"])
        if self.normalise_data(data) == self.cfg.data.name or data in self.datasets:
            own = self.normalise_data(data) == self.cfg.data.name
            corpus = text.load_corpus(data, self.cfg.data.val if own else "", self.cfg.data.val_fraction)
            body = corpus.train if split == "train" else corpus.val
            if split == "test":
                raise LaminaError(f"{data} has no test split (a language model's text has train and val)")
        else:
            body, _ = text.read_text(Path(data).expanduser())
            split = "all"
        ids = vocab.encode(body, f"{data} ({split})")
        if len(ids) < 2:
            raise LaminaError(f"{data} ({split}) has fewer than two characters the model knows")
        streams = self.streams(ids)
        return {"split": split, "n": streams.n_samples, "metrics": self.evaluate(model, streams)}

    # ----- generation and prediction ------------------------------------------------------------
    def prompt_ids(self, vocab: text.Vocab, prompt: str) -> torch.Tensor:
        ids = vocab.encode(prompt, "the prompt")
        if len(ids) == 0:  # nothing to condition on: start as a new line does (or with the first symbol)
            ids = vocab.encode("\n") if "\n" in vocab.index else torch.zeros(1, dtype=torch.long)
        return ids.to(self.device)

    def generate(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        prompt: str = "",
        length: int = 500,
        temperature: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        beam: int = 0,
    ) -> Iterator[str]:
        """Characters after `prompt`, one at a time (sampled), or the whole most likely continuation (beam).

        Arguments are checked, and the prompt read, now; the characters come as the result is iterated."""
        if length < 1:
            raise UsageError("--length must be at least 1")
        if not temperature > 0 or not math.isfinite(temperature):
            raise UsageError(f"--temperature must be a positive number, not {temperature:g}")
        if top_k < 0:
            raise UsageError("--top-k must not be negative (0: no limit)")
        if beam < 0:
            raise UsageError("--beam must not be negative (0: sample instead)")
        vocab = text.Vocab(meta["vocab"])
        ids = self.prompt_ids(vocab, prompt)
        model.eval()
        # Generation runs in fp32: one character at a time, autocast would re-cast the weights at every
        # step, which costs more than it saves (on this CPU bf16 ran at 2,000 characters/s, fp32 at 3,200).
        if beam:
            tokens, _ = model.beam_search(ids, length, beam)
            return iter([vocab.decode(tokens)])
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        tokens = model.generate(ids, length, temperature, top_k, generator)
        return (vocab.chars[token] for token in tokens)

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list[str], top_k: int = 5) -> list[dict]:
        """The most likely next characters after each input text."""
        vocab = text.Vocab(meta["vocab"])
        model.eval()
        results = []
        for prompt in inputs:
            ids = self.prompt_ids(vocab, prompt)
            with torch.no_grad(), self.precision.autocast():
                logits, _, _ = model(ids[None])
            probs = logits[0, -1].float().softmax(-1)
            p, i = probs.topk(max(1, min(top_k, len(probs))))
            results.append(
                {
                    "text": prompt,
                    "next": [
                        {"char": vocab.chars[c], "probability": round(float(q), 6)}
                        for q, c in zip(p.tolist(), i.tolist())
                    ],
                }
            )
        return results

    def gradient_flow(self, model: nn.Module, meta: dict[str, Any], steps: int = 200, rows: int = 16) -> list[float]:
        """||dL_T / dh_(T-t)|| for t = 0..steps, averaged over `rows` windows of the validation text."""
        from lamina.viz.gradient_flow import gradient_flow

        corpus = text.load_corpus(self.cfg.data.name, self.cfg.data.val, self.cfg.data.val_fraction)
        ids = text.Vocab(meta["vocab"]).encode(corpus.val, "the validation text")
        if len(ids) < steps + 2:
            raise LaminaError(f"the validation text ({len(ids)} characters) is shorter than {steps + 2} characters")
        windows = text.TextStreams(ids, rows, steps + 2, window=steps + 1)
        x, y, _ = next(windows.epoch())
        tokens = torch.cat([x, y[:, -1:]], dim=1)  # (rows, steps + 2)
        return gradient_flow(model, tokens, steps)


def restart(state, fresh: torch.Tensor):
    """The carried state with the rows marked `fresh` set to zero (None: all of them)."""
    if state is None or fresh.all():
        return None
    if not fresh.any():
        return state
    keep = (~fresh).to(device=(state[0] if isinstance(state, tuple) else state).device)[None, :, None]
    return tuple(s * keep for s in state) if isinstance(state, tuple) else state * keep


def nats(loss: float) -> dict[str, float]:
    """One loss in its three usual units."""
    return {"loss": loss, "bpc": loss / math.log(2), "perplexity": math.exp(min(loss, 50.0))}
