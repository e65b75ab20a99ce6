"""Scene text: a recognizer that reads a word crop (CRNN), a detector that finds words (DBNet), and
the reader that chains them.

    crnn    Shi et al. 2016: convolutions turn a (1, 32, W) crop into W/4 columns of features, a
            bidirectional LSTM reads them left and right, and CTC (lamina.models.ctc) sums over every
            alignment of the transcript to the columns; no character segmentation anywhere
    dbnet   Liao et al. 2020: a feature pyramid predicts, at half the image's resolution, the
            probability that a pixel lies in the shrunk core of a word and a threshold map; the loss
            sees a differentiable binarisation of one by the other, which teaches sharp borders
            between words that nearly touch. Words are the connected regions of the probability map,
            grown back by the amount they were shrunk (lamina.data.ocr.polygons_from_map)
    reader  both, trained together on the same scenes: the detector's words are cut out with their
            perspective undone and read by the recognizer

Why DBNet rather than the detection task's Mask R-CNN with one text class: text is thin, long,
rotated and dense, so axis-aligned anchors and boxes fit it badly, and a segmentation map costs one
dense pass with no region sampling, RoIAlign or NMS: at batch 1 on 2 AVX2 cores, `detect`'s Mask
R-CNN takes 65 ms at 192 px and 73 ms at 256 px; `lamina read` with this DBNet (32-channel pyramid), crops
and recognition included, 112 ms at 512 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lamina.models import ctc
from lamina.models.detection import ResNetFPN
from lamina.models.layers import conv_norm_act, norm_layer
from lamina.models.registry import register_model

CROP_HEIGHT = 32
DB_STRIDE = 2  # the maps are at half the image's resolution
DB_K = 50.0  # steepness of the differentiable binarisation


class CRNN(nn.Module):
    """(N, 1, 32, W) crops in [0, 1] -> (N, W/4, vocab) logits, with CTC's blank at id 0."""

    def __init__(self, vocab_size: int, widths=(32, 64, 96, 128), hidden: int = 128, layers: int = 2,
                 norm: str = "batch", dropout: float = 0.1):  # fmt: skip
        super().__init__()
        Norm = norm_layer(norm)
        act = lambda: nn.ReLU(inplace=True)  # noqa: E731
        a, b, c, d = widths
        self.features = nn.Sequential(
            conv_norm_act(1, a, Norm, act),
            nn.MaxPool2d(2),  # (a, 16, W/2)
            conv_norm_act(a, b, Norm, act),
            nn.MaxPool2d(2),  # (b, 8, W/4)
            conv_norm_act(b, c, Norm, act),
            conv_norm_act(c, c, Norm, act),
            nn.MaxPool2d((2, 1)),  # (c, 4, W/4): height halves, the columns stay
            conv_norm_act(c, d, Norm, act),
            conv_norm_act(d, d, Norm, act),
            nn.MaxPool2d((2, 1)),  # (d, 2, W/4)
            nn.Conv2d(d, d, (2, 1)),  # (d, 1, W/4): one feature vector per column
            nn.ReLU(inplace=True),
        )
        self.rnn = nn.LSTM(d, hidden, layers, batch_first=True, bidirectional=True, dropout=dropout)
        # A linear path from the columns around the LSTM: CTC leaves its all-blank plateau sooner when
        # the classifier sees the convolutional features directly while the LSTM learns context
        # (training loss 3.02 against 3.93 after 400 steps of 64 synth-text crops, AdamW at 1e-3).
        self.skip = nn.Linear(d, 2 * hidden)
        self.head = nn.Linear(2 * hidden, vocab_size)
        self.vocab_size = vocab_size

    @staticmethod
    def frames(widths: torch.Tensor) -> torch.Tensor:
        """Columns of features for crops `widths` pixels wide."""
        return widths // 4

    def forward(self, crops: torch.Tensor, widths: torch.Tensor | None = None, targets: torch.Tensor | None = None):
        x = self.features((crops - 0.5) / 0.25)  # (N, d, 1, W/4)
        x = x.squeeze(2).transpose(1, 2)  # (N, T, d)
        h, _ = self.rnn(x)  # (N, T, 2 * hidden)
        logits = self.head(h + self.skip(x))  # (N, T, V)
        if targets is None:
            return logits, None
        frames = self.frames(widths if widths is not None else torch.full((len(crops),), crops.shape[-1]))
        return logits, ctc.ctc_loss(logits, frames.clamp(max=logits.shape[1]), targets)

    @torch.no_grad()
    def recognize(self, crops: torch.Tensor, widths: torch.Tensor, beam: int = 1) -> list:
        """Hypotheses (tokens, score): best path for beam 1, else prefix beam search."""
        logits, _ = self(crops)
        frames = self.frames(widths).clamp(max=logits.shape[1])
        return ctc.decode(logits.float().log_softmax(-1), frames.cpu(), beam)


class DBHead(nn.Module):
    """Fused pyramid features at stride 4 -> one map at stride 2, in (0, 1)."""

    def __init__(self, channels: int, norm):
        super().__init__()
        self.body = nn.Sequential(
            conv_norm_act(channels, channels // 4, norm, lambda: nn.ReLU(inplace=True)),
            nn.ConvTranspose2d(channels // 4, channels // 4, 2, 2),
            norm(channels // 4),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 4, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(1)  # (B, H/2, W/2) logits


class DBNet(nn.Module):
    """(B, 3, H, W) images in [0, 1] (H, W multiples of 32) -> {'prob', 'thresh'} maps (B, H/2, W/2):
    probabilities of the shrunk word cores, and the learned threshold (training only)."""

    def __init__(self, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), fpn_channels: int = 32, norm: str = "batch"):
        super().__init__()
        Norm = norm_layer(norm)
        self.backbone = ResNetFPN(widths, blocks, fpn_channels, norm)
        fused = 4 * fpn_channels
        self.prob = DBHead(fused, Norm)
        self.thresh = DBHead(fused, Norm)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, thresh: bool = False) -> dict[str, torch.Tensor]:
        """The threshold map comes in training, or when asked (a validation loss)."""
        levels = self.backbone((images - self.mean) / self.std)  # strides 4, 8, 16, 32 (+ pool, unused)
        size = levels["0"].shape[-2:]
        fused = torch.cat(
            [
                F.interpolate(levels[k], size=size, mode="nearest") if k != "0" else levels[k]
                for k in ("0", "1", "2", "3")
            ],
            1,
        )  # fmt: skip  (B, 4 * fpn, H/4, W/4)
        out = {"prob": torch.sigmoid(self.prob(fused))}
        if self.training or thresh:
            out["thresh"] = torch.sigmoid(self.thresh(fused))
        return out

    @staticmethod
    def loss(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """DB's loss: balanced BCE on the probabilities (hard negatives at 3 per positive), dice on the
        binarised map, and 10 x L1 on the threshold inside the grown words."""
        prob, thresh = out["prob"].float(), out["thresh"].float()
        gt, mask = targets["prob"], targets["prob_mask"]  # (B, h, w) 0/1, 1 where counted
        bce = F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), gt, reduction="none")
        positive, negative = gt * mask, (1 - gt) * mask
        n_pos = int(positive.sum())
        n_neg = min(int(negative.sum()), max(3 * n_pos, 64))
        hard = torch.topk((bce * negative).flatten(), n_neg).values if n_neg else bce.new_zeros(1)
        loss_prob = ((bce * positive).sum() + hard.sum()) / (n_pos + n_neg + 1e-6)
        binary = torch.sigmoid(DB_K * (prob - thresh))
        inter = (binary * gt * mask).sum()
        loss_binary = 1 - 2 * inter / ((binary * mask).sum() + (gt * mask).sum() + 1e-6)
        t_mask = targets["thresh_mask"]
        loss_thresh = ((thresh - targets["thresh"]).abs() * t_mask).sum() / (t_mask.sum() + 1e-6)
        return {"prob": loss_prob, "binary": loss_binary, "thresh": 10 * loss_thresh}


class TextReader(nn.Module):
    """A detector and a recognizer, trained together: what `lamina read` needs to read a whole image.
    Training calls both in one forward (so that DistributedDataParallel, which wraps this module,
    sees every parameter used and averages every gradient): (detector maps, (logits, CTC loss))."""

    def __init__(self, detector: DBNet, recognizer: CRNN):
        super().__init__()
        self.detector, self.recognizer = detector, recognizer

    def forward(self, images: torch.Tensor, crops: torch.Tensor, widths: torch.Tensor, targets: torch.Tensor):
        return self.detector(images), self.recognizer(crops, widths, targets)


@register_model("read", "crnn", "recognizer: convolutions + BiLSTM + CTC over a 32 px word crop (Shi et al.)")
def crnn(vocab_size: int = 98, widths=(32, 64, 96, 128), hidden: int = 128, layers: int = 2,
         dropout: float = 0.1) -> CRNN:  # fmt: skip
    return CRNN(vocab_size, tuple(widths), hidden, layers, dropout=dropout)


@register_model("read", "dbnet", "detector: word probability and threshold maps on a small ResNet-FPN (DBNet)")
def dbnet(widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), fpn_channels: int = 32) -> DBNet:
    return DBNet(tuple(widths), tuple(blocks), fpn_channels)


@register_model("read", "reader", "dbnet finds the words, crnn reads them: one run reads whole images")
def reader(vocab_size: int = 98, hidden: int = 128, fpn_channels: int = 32) -> TextReader:
    return TextReader(DBNet(fpn_channels=fpn_channels), CRNN(vocab_size, hidden=hidden))
