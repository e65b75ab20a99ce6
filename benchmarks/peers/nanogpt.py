"""Peer for Shakespeare: nanoGPT's README CPU configuration, a character-level Transformer, within a wall-clock budget.

What it reproduces: karpathy/nanoGPT, "quick start" on a CPU, as its README gives the command:
`train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0`, with the rest from that config file and train.py's defaults: a GPT of pre-norm blocks
(LayerNorm without bias, causal self-attention, a 4x GELU MLP, no biases), learned position
embeddings, output weights tied to the token embeddings, weights drawn from N(0, 0.02) and the
residual projections from N(0, 0.02 / sqrt(2 * layers)); random windows of 64 characters, 12 a
batch; AdamW (betas 0.9, 0.99; weight decay 0.1 on matrices only), learning rate 1e-3 with 100 steps
of linear warm-up and a cosine decay to 1e-4 at step 2,000; gradients clipped to norm 1; every 250
steps the loss on 20 random validation batches, the weights kept when it improves.

What differs, so that the comparison with lamina is on the same data and the same clock:
- the text is lamina's Shakespeare corpus and split (train, validation, test: whole plays) and its
  84-symbol vocabulary (nanoGPT's prepare.py builds one the same way, from every character);
- it stops at 2,000 steps as published, or earlier when the wall-clock budget (which counts from
  the start of the process: imports, data, training and the test pass) runs out;
- the figure reported is the loss of the kept weights on the whole test text, every character
  predicted once with 32 to 63 characters of context (windows of 64 moved 32 at a time; the first
  window scores all of its characters), in nats per character as lamina reports it.

    python -m benchmarks.peers.nanogpt --budget 128

The last line of stdout is one JSON object: test loss, the validation curve, steps, wall time.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget includes Python's start-up and the imports below

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

# The README's CPU command, and train_shakespeare_char.py / train.py for everything it leaves out.
BLOCK, BATCH, LAYERS, HEADS, WIDTH, DROPOUT = 64, 12, 4, 4, 128, 0.0
LR, MIN_LR, WARMUP, DECAY_STEPS, MAX_STEPS = 1e-3, 1e-4, 100, 2000, 2000
WEIGHT_DECAY, BETAS, GRAD_CLIP = 0.1, (0.9, 0.99), 1.0
EVAL_INTERVAL, EVAL_ITERS = 250, 20
STRIDE = 32  # test windows of BLOCK characters, moved STRIDE at a time
FINISHING_SECONDS = 1.0


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH, bias=False)
        self.c_attn = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.attn_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.ln_2 = nn.LayerNorm(WIDTH, bias=False)
        self.c_fc = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
        self.mlp_proj = nn.Linear(4 * WIDTH, WIDTH, bias=False)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x):  # (B, T, C)
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(WIDTH, dim=2)
        q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in (q, k, v))  # (B, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=DROPOUT if self.training else 0.0, is_causal=True)
        x = x + self.dropout(self.attn_proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.dropout(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class GPT(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, WIDTH), nn.Embedding(BLOCK, WIDTH)
        self.drop = nn.Dropout(DROPOUT)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH, bias=False)
        self.lm_head = nn.Linear(WIDTH, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):  # (B, T) -> logits (B, T, V)
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1])))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def lr_at(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / (WARMUP + 1)
    if step > DECAY_STEPS:
        return MIN_LR
    ratio = (step - WARMUP) / (DECAY_STEPS - WARMUP)
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def batch(data: torch.Tensor, gen: torch.Generator):
    ix = torch.randint(len(data) - BLOCK, (BATCH,), generator=gen)
    x = torch.stack([data[i : i + BLOCK] for i in ix.tolist()])
    y = torch.stack([data[i + 1 : i + 1 + BLOCK] for i in ix.tolist()])
    return x, y


@torch.no_grad()
def estimate(model: nn.Module, data: torch.Tensor, gen: torch.Generator) -> float:
    model.eval()
    losses = []
    for _ in range(EVAL_ITERS):
        x, y = batch(data, gen)
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    model.train()
    return sum(losses) / len(losses)


@torch.no_grad()
def text_loss(model: nn.Module, data: torch.Tensor, rows: int = 64) -> float:
    """Nats per character over the whole text: every character after the first scored once, with
    STRIDE to BLOCK - 1 characters of context (all the context there is in the first window)."""
    model.eval()
    starts = list(range(0, max(1, len(data) - BLOCK), STRIDE))
    total, count = 0.0, 0
    for i in range(0, len(starts), rows):
        chunk = starts[i : i + rows]
        x = torch.stack([data[s : s + BLOCK] for s in chunk])
        y = torch.stack([data[s + 1 : s + 1 + BLOCK] for s in chunk])
        losses = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none").view(len(chunk), BLOCK)
        first = 1 if chunk[0] == 0 else 0  # the text's first window: every position is new
        if first:
            total, count = total + losses[0].sum().item(), count + BLOCK
        scored = losses[first:, BLOCK - STRIDE :]
        total, count = total + scored.sum().item(), count + scored.numel()
    # characters past the last window's end (fewer than STRIDE): scored with the context that is left
    end = starts[-1] + BLOCK
    if end < len(data) - 1:
        x, y = data[-BLOCK - 1 : -1][None], data[-BLOCK:][None]
        losses = F.cross_entropy(model(x)[0], y[0], reduction="none")
        tail = len(data) - 1 - end
        total, count = total + losses[-tail:].sum().item(), count + tail
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, required=True, help="seconds of wall clock for the whole process")
    p.add_argument("--seed", type=int, default=1337, help="nanoGPT's train.py seeds 1337")
    a = p.parse_args()

    from lamina.data import text  # lamina's corpus, split and vocabulary
    from lamina.data.vocab import CharVocab

    corpus = text.load_corpus("shakespeare")
    vocab = CharVocab.build(corpus.train + corpus.val + corpus.test)
    train, val, test = (vocab.encode(t, "text") for t in (corpus.train, corpus.val, corpus.test))
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = GPT(len(vocab))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
    elapsed = lambda: time.monotonic() - STARTED  # noqa: E731

    best, best_state, curve, step, timed_from = math.inf, None, [], 0, None
    reserve = 0.0  # seconds for the test pass: a forward pass of its characters at 3x the training speed
    while step < MAX_STEPS:
        if step == 10:
            timed_from = time.monotonic()
        if step > 30:
            rate = (step - 10) * BATCH * BLOCK / (time.monotonic() - timed_from)  # training characters/s
            reserve = len(test) * BLOCK / STRIDE / (3 * rate)
        if elapsed() >= a.budget - reserve - FINISHING_SECONDS:
            break
        if step % EVAL_INTERVAL == 0:
            loss = estimate(model, val, gen)
            curve.append([round(elapsed(), 2), step, round(loss, 4)])
            print(f"step {step}  val loss {loss:.4f}  {elapsed():.1f} s", file=sys.stderr)
            if loss < best:
                best, best_state = loss, {k: v.clone() for k, v in model.state_dict().items()}
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = batch(train, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        step += 1
    # The last steps since the previous evaluation: measured too, then the kept weights on the test text.
    loss = estimate(model, val, gen)
    curve.append([round(elapsed(), 2), step, round(loss, 4)])
    if loss < best:
        best, best_state = loss, None
    if best_state is not None:
        model.load_state_dict(best_state)
    test_loss = text_loss(model, test)
    result = {
        "peer": "nanogpt-shakespeare-char-cpu",
        "test_loss": round(test_loss, 4),
        "test_bpc": round(test_loss / math.log(2), 4),
        "best_val_estimate": round(best, 4),
        "val_curve": curve,  # [seconds since start, step, validation estimate]
        "steps": step,
        "epochs": round(step * BATCH * BLOCK / len(train), 3),  # characters seen / training characters
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_chars_per_s": round(step * BATCH * BLOCK / max(curve[-1][0], 1e-9), 1),
        "wall_s": round(elapsed(), 1),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
