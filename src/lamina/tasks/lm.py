"""Character-level language modelling: RNN, LSTM and GRU that learn to write (Shakespeare, or any text).

The error signal is the cross-entropy of the next character, in nats per character; bits per
character and perplexity are the same figure in other units. Training is char-rnn's: contiguous
streams per batch row, truncated back-propagation through time over `data.seq_len` characters, the
recurrent state carried (detached) from one batch to the next, and gradient clipping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from lamina.commands import Verb, arg
from lamina.config import PROBABILITY, DataConfig, setting
from lamina.data import text
from lamina.data.sources import SHAKESPEARE
from lamina.data.vocab import CharVocab
from lamina.engine.loop import StepOutput
from lamina.errors import LaminaError, UsageError, warn
from lamina.insight.views import View
from lamina.models import decoding
from lamina.models.rnn import detach_state
from lamina.tasks import register_task
from lamina.tasks.base import Prepared, Task

EVAL_ROWS = 64  # parallel streams when measuring the loss on a whole text
EVAL_SEQ_LEN = 512
ESTIMATE_CHARS = 65_536  # the validation sample that picks the best checkpoint during training


@dataclass
class LanguageModelData(DataConfig):
    """A text, its validation and test parts, and how it is cut into streams."""

    name: str = setting(
        "shakespeare", "shakespeare, or a UTF-8 text file or a folder of text files", flag="--data", metavar="NAME|PATH"
    )
    val: str = setting(
        "",
        "validation text file or folder (default: the data.val_fraction of the text before its test part)",
        flag="--val",
        metavar="PATH",
        path=True,
    )
    val_fraction: float = setting(
        0.05,
        "held out for validation (picks checkpoints): the part of the text before the test part",
        check=(lambda v: 0 <= v < 1, "must be in [0, 1)"),
    )
    test_fraction: float = setting(
        0.05,
        "the final part of the text, held out for the figures a run reports (0: no test text)",
        check=(lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    )
    seq_len: int = setting(
        128,
        "characters per window of truncated back-propagation through time",
        check=(lambda v: v >= 1, "must be at least 1"),
    )
    state_reset: float = setting(
        0.02, "chance per batch row that the carried recurrent state starts afresh", check=PROBABILITY
    )


GENERATE = Verb(
    "generate",
    "generate text with a language-model run (streamed as it is sampled)",
    (
        arg("--prompt", help="text to continue (default: a new line)"),
        arg("--length", type=int, help="characters to generate"),
        arg("--temperature", type=float, help="below 1: safer text; above 1: wilder"),
        arg("--top-k", type=int, metavar="K", help="sample among the K most likely characters only (0: all)"),
        arg("--seed", type=int, help="same seed, same text"),
        arg("--beam", type=int, metavar="N", help="the most likely continuation, by beam search of width N"),
    ),
    stream=True,
    returns="{prompt, text, characters, seconds, first_char_s, chars_per_s}",
)


def _gradients(run, out: Path, others: list | None = None, steps: int = 200, rows: int = 16) -> dict[str, Any]:
    """`lamina inspect RUN gradients [RUN...]`: this run's gradient flow, and the other runs' in the same plot."""
    from lamina import api

    runs = [run, *(api.load(r, "cpu", task="lm") for r in others or [])]
    result = run.task.gradient_flow_of(runs, steps, rows, out / "gradient-flow.png")
    return {**result, "plots": [result["plot"]]}


GRADIENTS = View(
    "gradients",
    "how far back the loss gradient reaches in a recurrent network, beside other lm runs",
    (
        arg("others", nargs="*", metavar="RUN", path=True, help="more lm runs to draw in the same plot"),
        arg("--steps", type=int, help="time steps back from the loss"),
        arg("--rows", type=int, help="validation windows to average over"),
    ),
    function=_gradients,
    returns="{steps, rows, curves: {run: [norm at t = 0..steps]}, plot}",
)


@register_task
class LanguageModelTask(Task):
    name = "lm"
    description = "character-level language models (RNN, LSTM, GRU) that generate text"
    Data = LanguageModelData
    monitor = ("loss", "min")
    defaults = {
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
    datasets = (SHAKESPEARE.name,)
    data_paths = "a UTF-8 text file or a folder of text files"
    data_model_args = ("vocab_size",)
    resume_keys = ("vocab",)
    verbs = (GENERATE,)
    insights = (GRADIENTS,)
    not_exported = "it generates text one character at a time, sampling each in a Python loop that carries its state"
    predict_args = (arg("--top-k", type=int, metavar="K", help="how many of the most likely next characters to show"),)
    inputs = "text"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.carried = None  # the recurrent state carried from one training batch to the next

    # ----- data ---------------------------------------------------------------------------------
    def prepare(self, previous_meta: dict[str, Any] | None = None) -> Prepared:
        d, t = self.cfg.data, self.cfg.train
        corpus = self.corpus(d.name)
        # The vocabulary is every character of the run's own text (all three parts), in sorted order;
        # a resumed run keeps its own.
        everything = corpus.train + corpus.val + corpus.test
        vocab = CharVocab(previous_meta["vocab"]) if previous_meta else CharVocab.build(everything)
        train_ids = vocab.encode(corpus.train, "the training text")
        val_ids = vocab.encode(corpus.val, "the validation text")
        test_ids = vocab.encode(corpus.test, "the test text") if len(corpus.test) >= 2 else None
        if len(train_ids) <= 2 * d.seq_len:
            raise LaminaError(
                f"the training text ({len(train_ids)} characters) is too short for data.seq_len "
                f"{d.seq_len}; give more text or a smaller --set data.seq_len"
            )
        wanted = self.global_batch  # every process reads batch_size of the streams
        rows = min(wanted, (len(train_ids) - d.seq_len) // d.seq_len)
        if rows < wanted:
            warn(
                f"the training text fills only {rows} streams of data.seq_len={d.seq_len} characters; "
                f"training with {rows} rows per batch instead of {wanted}"
            )
        meta = {"vocab": vocab.chars, "data": corpus.source}
        streams = text.TextStreams(
            train_ids, rows, d.seq_len, train=True, seed=t.seed, reset=d.state_reset, device=self.device
        )
        return Prepared(
            train=streams,
            val=self.estimate_streams(val_ids),
            test=self.streams(test_ids) if test_ids is not None else None,
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

    def corpus(self, data: str) -> text.Corpus:
        """The run's own text (its validation file, its fractions), or another named corpus cut the same way."""
        d = self.cfg.data
        own = self.normalise_data(data) == d.name
        return text.load_corpus(data, d.val if own else "", d.val_fraction, d.test_fraction)

    def has_split(self, data: str, split: str) -> bool:
        return split in ("train", "val") or (split == "test" and self.cfg.data.test_fraction > 0)

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
        """Cross-entropy per character over the whole stream; each process reads its rows."""
        model.eval()
        total, count, state = torch.zeros((), device=self.device), 0, None
        for x, y, fresh in batches.epoch(0, 0, self.dist.rank, self.dist.world):
            state = restart(state, fresh)
            with self.precision.autocast():
                logits, _, state = model(x, None, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
            count += y.numel()
        total, count = self.dist.sum(torch.tensor([float(total), float(count)], dtype=torch.float64))
        return nats(float(total) / max(float(count), 1))

    def report(self, model: nn.Module, meta: dict[str, Any], data: str, split: str, out_dir: Path) -> dict[str, Any]:
        """Loss in nats per character, bits per character and perplexity on the run's own train,
        validation or test text, or on the whole of another text."""
        vocab = CharVocab(meta["vocab"])
        if self.normalise_data(data) == self.cfg.data.name or data in self.datasets:
            corpus = self.corpus(data)
            body = {"train": corpus.train, "val": corpus.val, "test": corpus.test}[split]
            if split == "test" and len(body) < 2:
                raise LaminaError(f"{data} has no test split (the run was trained with data.test_fraction=0)")
        else:
            body, _ = text.read_text(Path(data).expanduser())
            split = "all"
        ids = vocab.encode(body, f"{data} ({split})")
        if len(ids) < 2:
            raise LaminaError(f"{data} ({split}) has fewer than two characters the model knows")
        streams = self.streams(ids)
        return {"split": split, "n": streams.n_samples, "metrics": self.evaluate(model, streams)}

    # ----- generation and prediction ------------------------------------------------------------
    def prompt_ids(self, vocab: CharVocab, prompt: str) -> torch.Tensor:
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
        emit: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """`length` characters after `prompt`, sampled one at a time (the same seed gives the same text),
        or the most likely continuation by beam search (beam > 0). `emit`, if given, receives the
        prompt, then each piece as soon as it is produced (a terminal or a page can show it)."""
        if length < 1:
            raise UsageError("--length must be at least 1")
        if not temperature > 0 or not math.isfinite(temperature):
            raise UsageError(f"--temperature must be a positive number, not {temperature:g}")
        if top_k < 0:
            raise UsageError("--top-k must not be negative (0: no limit)")
        if beam < 0:
            raise UsageError("--beam must not be negative (0: sample instead)")
        if seed is not None and not 0 <= seed < 2**63:
            raise UsageError("--seed must be in [0, 2**63)")
        if beam and (temperature != 1.0 or top_k or seed is not None):
            warn("--beam finds the most likely continuation: --temperature, --top-k and --seed do not apply")
        vocab = CharVocab(meta["vocab"])
        ids = self.prompt_ids(vocab, prompt)
        model.eval()
        emit = emit or (lambda piece: None)
        emit(prompt)
        started, first, out = time.perf_counter(), None, []
        # Generation runs in fp32: one character at a time, autocast would re-cast the weights at every
        # step, which costs more than it saves (on this CPU bf16 ran at 2,000 characters/s, fp32 at 3,200).
        if beam:
            with torch.no_grad():
                _, _, state = model(ids[None, :-1]) if len(ids) > 1 else (None, None, None)
            [best] = decoding.search(model, None, state, beam, length, alpha=0.0, start=ids[-1:], eos=None)
            pieces = iter([vocab.decode(best.tokens)])
        else:
            generator = torch.Generator(device=self.device)
            generator.seed() if seed is None else generator.manual_seed(seed)
            pieces = (vocab.chars[token] for token in model.generate(ids, length, temperature, top_k, generator))
        for piece in pieces:
            first = first if first is not None else time.perf_counter() - started
            out.append(piece)
            emit(piece)
        seconds = time.perf_counter() - started
        generated = "".join(out)
        return {
            "prompt": prompt,
            "text": generated,
            "characters": len(generated),
            "seconds": round(seconds, 4),
            "first_char_s": round(first or 0.0, 4),
            "chars_per_s": round(len(generated) / max(seconds, 1e-9), 1),
        }

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list, top_k: int = 5) -> dict[str, Any]:
        """The most likely next characters after each input text: {'results': [{'input', 'next': [{'char',
        'probability'}]}]}."""
        vocab = CharVocab(meta["vocab"])
        model.eval()
        results = []
        for prompt in inputs:
            if not isinstance(prompt, str):
                results.append({"input": repr(prompt), "error": f"not a text: {type(prompt).__name__}"})
                continue
            ids = self.prompt_ids(vocab, prompt)
            with torch.no_grad(), self.precision.autocast():
                logits, _, _ = model(ids[None])
            probs = logits[0, -1].float().softmax(-1)
            p, i = probs.topk(max(1, min(top_k, len(probs))))
            results.append(
                {
                    "input": prompt,
                    "next": [
                        {"char": vocab.chars[c], "probability": round(float(q), 6)}
                        for q, c in zip(p.tolist(), i.tolist())
                    ],
                }
            )
        return {"results": results}

    def gradient_flow(self, model: nn.Module, meta: dict[str, Any], steps: int = 200, rows: int = 16) -> list[float]:
        """||dL_T / dh_(T-t)|| for t = 0..steps, averaged over `rows` windows of the validation text."""
        from lamina.viz.gradient_flow import gradient_flow

        corpus = self.corpus(self.cfg.data.name)
        ids = CharVocab(meta["vocab"]).encode(corpus.val, "the validation text")
        if len(ids) < steps + 2:
            raise LaminaError(f"the validation text ({len(ids)} characters) is shorter than {steps + 2} characters")
        windows = text.TextStreams(ids, rows, steps + 2, window=steps + 1)
        x, y, _ = next(windows.epoch())
        tokens = torch.cat([x, y[:, -1:]], dim=1)  # (rows, steps + 2)
        return gradient_flow(model, tokens, steps)

    def gradient_flow_of(
        self, runs: list, steps: int = 200, rows: int = 16, out: str = "gradient-flow.png"
    ) -> dict[str, Any]:
        """`lamina inspect RUN gradients [RUN...]`: the gradient flow of each run, one plot with all of them."""
        from lamina.viz.gradient_flow import plot_gradient_flow

        if steps < 1 or rows < 1:
            raise UsageError("--steps and --rows must be at least 1")
        curves: dict[str, list[float]] = {}
        for run in runs:
            label = f"{run.path.name} ({run.info['model']['name']})"
            if label in curves:  # runs of the same name in different folders
                label = f"{run.path} ({run.info['model']['name']})"
            curves[label] = run.task.gradient_flow(run.model, run.meta, steps, rows)
        plot = plot_gradient_flow(curves, Path(out))
        return {"steps": steps, "rows": rows, "curves": curves, "plot": str(plot)}

    # ----- on a terminal -------------------------------------------------------------------------
    @classmethod
    def render_generate(cls, result: dict[str, Any], out: TextIO) -> None:
        print(file=out)  # the text itself was streamed as it came

    @classmethod
    def render_predict(cls, result: dict[str, Any], out: TextIO) -> None:
        for r in result["results"]:
            if "next" in r:
                shown = ", ".join(f"{p['char']!r} {p['probability']:.1%}" for p in r["next"])
                print(f"{r['input']!r}: {shown}", file=out)

    @classmethod
    def render_inspect_gradients(cls, result: dict[str, Any], out: TextIO) -> None:
        marks = [t for t in (0, 1, 10, 25, 50, 100, 200, 500) if t <= result["steps"]]
        print(f"{'run':40s} " + " ".join(f"{'t=' + str(t):>9s}" for t in marks), file=out)
        for label, norms in result["curves"].items():
            print(f"{label[:40]:40s} " + " ".join(f"{norms[t]:9.2e}" for t in marks), file=out)
        print(f"wrote {result['plot']}", file=out)


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
