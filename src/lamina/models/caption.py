"""Image captioning: a CNN encoder and an LSTM decoder that writes a sentence one word at a time.

    show-attend-tell  the encoder keeps its grid of features (one annotation vector per cell); at every
                      step the decoder scores every cell from its state (additive attention), reads
                      their weighted average gated by its state, and takes it with the previous word
                      (Xu et al. 2015, soft attention, with its doubly stochastic regularisation)
    show-tell         the same encoder pooled to one vector, which starts the decoder (Vinyals et al.
                      2015): the no-attention baseline, wider so that both have about as many parameters

The encoder is laid out as lamina's classify ResNets (features.0 the stem, then stages of basic
blocks), with a stride-2 stem for scenes larger than Fashion-MNIST's 28 px: a classify run's backbone
loads into it (`--init RUN`). Models take (N, 3, H, W) uint8 images and normalise them with the
statistics kept in their weights. Interface: ``forward(images, tgt_in, tgt_out=None) -> (logits,
losses)``, ``encode(images) -> (memory, state)`` and ``decode_step(tokens, state, memory)`` for the
shared search (lamina.models.decoding).

Two choices measured here (show-attend-tell, 240 s runs on synth-captions, test CIDEr of greedy
captions): word vectors started small, U(-0.1, 0.1), gave 0.292 against 0.181 with PyTorch's
N(0, 1), and dropout 0.1 then 0.335 against 0.292 at 0.3 (the networks underfit in minutes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lamina.data.vocab import BOS, PAD
from lamina.models.attention import Attention, Memory
from lamina.models.classifier import Normalize
from lamina.models.layers import conv_norm_act, norm_layer
from lamina.models.registry import register_variant
from lamina.models.resnet import _stage
from lamina.models.rnn import State


class Encoder(nn.Module):
    """(N, 3, H, W) uint8 -> (N, C, H/s, W/s) features; s = stem_stride * 2 ** (stages - 1)."""

    def __init__(self, widths=(32, 64, 128), blocks=(1, 1, 1), stem_stride: int = 2, norm: str = "batch",
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25)):  # fmt: skip
        super().__init__()
        Norm = norm_layer(norm)
        self.normalize = Normalize(3)
        self.normalize.set(list(image_mean), list(image_std))
        layers: list[nn.Module] = [conv_norm_act(3, widths[0], Norm, lambda: nn.ReLU(inplace=True), stride=stem_stride)]
        channels = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            layers.append(_stage(channels, width, n, 1 if i == 0 else 2, Norm))
            channels = width
        self.features = nn.Sequential(*layers)
        self.channels = channels
        self.stride = stem_stride * 2 ** (len(widths) - 1)
        self.frozen = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        if self.features[0][0].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # a model moved to channels-last: 1.28x here
        return self.features(x)

    def freeze(self) -> None:
        """Keep the backbone as transferred: no gradients, and batch-norm statistics that do not drift."""
        self.frozen = True
        self.features.requires_grad_(False)
        self.features.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.features.eval()
        return self


def _check(vocab_size: int, embed: int, hidden: int, dropout: float) -> None:
    if min(vocab_size, embed, hidden) < 1:
        raise ValueError("vocab_size, embed and hidden must be at least 1")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), not {dropout}")


def _small_embedding(embed: nn.Embedding) -> None:
    """Word vectors start as small as the image features they are added to (U(-0.1, 0.1), as the
    reference implementations of both papers do): PyTorch's N(0, 1) drowns the visual context at the
    start, and the decoder then learns a language model long before it learns to look."""
    with torch.no_grad():
        embed.weight.uniform_(-0.1, 0.1)
        embed.weight[PAD].zero_()


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(N, V) -> log-probabilities of the next word; padding and the start token are never next."""
    logits = logits.float()
    logits[:, [PAD, BOS]] = float("-inf")
    return logits.log_softmax(-1)


def _cross_entropy(logits: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=PAD,
                           label_smoothing=label_smoothing)  # fmt: skip


class ShowAttendTell(nn.Module):
    def __init__(self, vocab_size: int = 100, embed: int = 128, hidden: int = 256, widths=(32, 64, 128),
                 blocks=(1, 1, 1), stem_stride: int = 2, dropout: float = 0.1, doubly_stochastic: float = 1.0,
                 attention_dim: int = 256, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25)):  # fmt: skip
        super().__init__()
        _check(vocab_size, embed, hidden, dropout)
        self.encoder = Encoder(widths, blocks, stem_stride, image_mean=image_mean, image_std=image_std)
        self.hidden, self.doubly_stochastic = hidden, doubly_stochastic
        self.project = nn.Linear(self.encoder.channels, hidden)  # annotation vectors a_i
        self.attention = Attention("additive", hidden, attention_dim)
        self.init_h, self.init_c = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.gate = nn.Linear(hidden, hidden)  # beta = sigmoid(f_beta(h)): how much of the context to read
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.cell = nn.LSTMCell(embed + hidden, hidden)
        # The paper's deep output: p(y_t) ~ exp(L_o (E y_{t-1} + L_h h_t + L_z z_t))
        self.out_h, self.out_z = nn.Linear(hidden, embed), nn.Linear(hidden, embed, bias=False)
        self.head = nn.Linear(embed, vocab_size)
        self.drop = nn.Dropout(dropout)
        _small_embedding(self.embed)

    def encode(self, images: torch.Tensor) -> tuple[Memory, State]:
        """Images (N, 3, H, W) -> memory over the (N, L = h*w) grid and the first state ((1, N, H) x 2)."""
        grid = self.encoder(images).flatten(2).transpose(1, 2)  # (N, L, C)
        a = self.project(grid)  # (N, L, H)
        mean = a.mean(1)
        state = (torch.tanh(self.init_h(mean))[None], torch.tanh(self.init_c(mean))[None])
        mask = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)  # every cell can be looked at
        return Memory(a, self.attention.keys(a), mask), state

    def _step(self, tokens: torch.Tensor, state: State, memory: Memory):
        h, c = state[0][0], state[1][0]  # (N, H)
        weights = self.attention(h[:, None], memory)[:, 0]  # (N, L), from the state before the word
        z = torch.sigmoid(self.gate(h)) * memory.read(weights[:, None])[:, 0]  # (N, H)
        e = self.drop(self.embed(tokens))  # (N, E)
        h, c = self.cell(torch.cat([e, z.to(e.dtype)], -1), (h, c))
        logits = self.head(self.drop(e + self.out_h(h) + self.out_z(z)))  # (N, V)
        return logits, (h[None], c[None]), weights

    def decode_step(self, tokens: torch.Tensor, state: State, memory: Memory):
        logits, state, weights = self._step(tokens, state, memory)
        return _log_probs(logits), state, weights

    def forward(self, images: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor | None = None,
                label_smoothing: float = 0.0):  # fmt: skip
        """Teacher forcing: (logits (N, T, V), {'xent', 'attention'} or None). The attention loss is
        lambda * mean over cells of (1 - attention summed over the caption's steps)^2: every part of
        the image should be looked at over a caption, none all the time."""
        memory, state = self.encode(images)
        logits, weights = [], []
        for t in range(tgt_in.shape[1]):
            step_logits, state, w = self._step(tgt_in[:, t], state, memory)
            logits.append(step_logits)
            weights.append(w)
        logits_t = torch.stack(logits, 1)  # (N, T, V)
        if tgt_out is None:
            return logits_t, None
        real = (tgt_out != PAD).float()  # (N, T)
        coverage = (torch.stack(weights, 1) * real[..., None]).sum(1)  # (N, L)
        losses = {
            "xent": _cross_entropy(logits_t, tgt_out, label_smoothing),
            "attention": self.doubly_stochastic * ((1 - coverage) ** 2).mean(),
        }
        return logits_t, losses


class ShowTell(nn.Module):
    def __init__(self, vocab_size: int = 100, embed: int = 128, hidden: int = 420, widths=(32, 64, 128),
                 blocks=(1, 1, 1), stem_stride: int = 2, dropout: float = 0.1,
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25)):  # fmt: skip
        super().__init__()
        _check(vocab_size, embed, hidden, dropout)
        self.encoder = Encoder(widths, blocks, stem_stride, image_mean=image_mean, image_std=image_std)
        self.init_h = nn.Linear(self.encoder.channels, hidden)
        self.init_c = nn.Linear(self.encoder.channels, hidden)
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.rnn = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)
        self.drop = nn.Dropout(dropout)
        _small_embedding(self.embed)

    def encode(self, images: torch.Tensor) -> tuple[None, State]:
        """Images -> (no memory: nothing to attend to, the first state from the pooled features)."""
        v = self.drop(self.encoder(images).mean((2, 3)))  # (N, C)
        return None, (torch.tanh(self.init_h(v))[None], torch.tanh(self.init_c(v))[None])

    def decode(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        s, state = self.rnn(self.drop(self.embed(tokens)), state)  # (N, T, H): one fused call
        return self.head(self.drop(s)), state

    def decode_step(self, tokens: torch.Tensor, state: State, memory: None):
        logits, state = self.decode(tokens[:, None], state)
        return _log_probs(logits[:, 0]), state, None

    def forward(self, images: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor | None = None,
                label_smoothing: float = 0.0):  # fmt: skip
        _, state = self.encode(images)
        logits, _ = self.decode(tgt_in, state)
        if tgt_out is None:
            return logits, None
        return logits, {"xent": _cross_entropy(logits, tgt_out, label_smoothing)}


register_variant(
    "caption",
    "show-attend-tell",
    "ResNet grid encoder + LSTM decoder with soft attention, Xu et al. 2015",
    ShowAttendTell,
)
register_variant(
    "caption",
    "show-tell",
    "ResNet encoder pooled to one vector that starts an LSTM decoder, Vinyals et al. 2015",
    ShowTell,
)
