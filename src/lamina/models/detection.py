"""Object detectors: torchvision's Mask R-CNN and FCOS on a small residual backbone with a feature pyramid.

Everything but the backbone is torchvision's (region proposals, RoIAlign, box and mask heads, NMS,
mask pasting); the models are built without pretrained weights, so nothing is ever downloaded. The
sizes are chosen for a CPU: the heads, not the backbone, hold most of torchvision's default
parameters and time (a 1024-wide box head on 256-channel 7x7 features, four 256-channel mask
convolutions on every positive region, 2,000 proposals), so the pyramid here is 64 channels wide,
the box head 256, the mask head two 64-channel convolutions, and training samples 128 regions per image.
RoIAlign takes one bilinear sample per bin (sampling_ratio=1, where torchvision uses 2): its backward
pass runs on one core in torchvision's CPU kernel and took a third of a training step; one sample
makes a step 1.35x faster (11.3 against 8.4 images/s at 192 px, batch 4, on 2 cores), and on feature
maps this small a bin rarely spans more than a cell (detectron2's adaptive ratio gives 1 to 2 here).

The backbone is a residual network laid out as lamina's `classify` ResNets (a stem, then stages of
basic blocks): a classify run's backbone loads into it (``load_classifier_backbone``), which is how a
network pretrained on Fashion-MNIST objects is adapted to finding them in photographs.

Models take a list of (3, H, W) float images in [0, 1] and, in training, a list of targets
{'boxes', 'labels', 'masks'}; they return a dict of named losses when training and a list of
{'boxes', 'labels', 'scores'[, 'masks']} per image otherwise (torchvision's convention).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from lamina.models.layers import conv_norm_act, norm_layer
from lamina.models.registry import register_model
from lamina.models.resnet import _stage, load_features

FASHION_MEAN, FASHION_STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # overridden by a transferred backbone's own


class ResNetFPN(nn.Module):
    """Stem (stride 2) and max pooling, then residual stages at strides 4, 8, 16, 32, and a feature
    pyramid over them with one more max-pooled level: {'0'..'3', 'pool'}, each `out_channels` wide.

    `features` is laid out as a classify ResNet's (features.0 the stem, features.1.. the stages), so
    that its weights load by name."""

    def __init__(self, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), out_channels=64, norm="batch"):
        super().__init__()
        Norm = norm_layer(norm)
        layers: list[nn.Module] = [conv_norm_act(3, widths[0], Norm, lambda: nn.ReLU(inplace=True), stride=2)]
        channels = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            layers.append(_stage(channels, width, n, 1 if i == 0 else 2, Norm))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fpn = FeaturePyramidNetwork(list(widths), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.pool(self.features[0](x))  # (B, w0, H/4, W/4)
        levels = OrderedDict()
        for i, stage in enumerate(self.features[1:]):
            x = stage(x)  # (B, w_i, H/2^(i+2), W/2^(i+2))
            levels[str(i)] = x
        return self.fpn(levels)


def _sizes(image_size: int) -> dict:
    # Images are resized so their shorter side is image_size (a square scene is left as it is), the
    # longer one at most 5/3 of it, as torchvision's 800/1333.
    return {"min_size": image_size, "max_size": image_size * 5 // 3}


def _anchors(sizes=(16, 32, 64, 128, 256), ratios=(0.5, 1.0, 2.0)) -> AnchorGenerator:
    return AnchorGenerator(tuple((s,) for s in sizes), (tuple(ratios),) * len(sizes))


@register_model("detect", "maskrcnn", "Mask R-CNN (boxes and masks) on a small ResNet with a 64-channel FPN")
def maskrcnn(
    num_classes: int = 11,
    image_size: int = 192,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    blocks: tuple[int, ...] = (1, 1, 1, 1),
    fpn_channels: int = 64,
    box_head: int = 256,
    mask_head: tuple[int, ...] = (64, 64),
    norm: str = "batch",
    proposals: int = 300,
    sampled_regions: int = 128,
    sampling_ratio: int = 1,
    image_mean: tuple[float, ...] = tuple(FASHION_MEAN),
    image_std: tuple[float, ...] = tuple(FASHION_STD),
) -> MaskRCNN:
    backbone = ResNetFPN(widths, blocks, fpn_channels, norm)
    levels = ["0", "1", "2", "3"]
    return MaskRCNN(
        backbone,  # num_classes is implied by the predictors given below
        **_sizes(image_size),
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=_anchors(),
        rpn_head=RPNHead(fpn_channels, 3),
        rpn_pre_nms_top_n_train=2 * proposals,
        rpn_post_nms_top_n_train=proposals,
        rpn_pre_nms_top_n_test=proposals,
        rpn_post_nms_top_n_test=proposals // 3,
        box_roi_pool=MultiScaleRoIAlign(levels, 7, sampling_ratio),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head),
        box_predictor=FastRCNNPredictor(box_head, num_classes),
        box_batch_size_per_image=sampled_regions,
        box_detections_per_img=100,
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, sampling_ratio),
        mask_head=MaskRCNNHeads(fpn_channels, list(mask_head), 1),
        mask_predictor=MaskRCNNPredictor(mask_head[-1], mask_head[-1], num_classes),
    )


@register_model("detect", "fcos", "FCOS, one-stage and anchor-free (boxes only), on the same backbone: faster")
def fcos(
    num_classes: int = 11,
    image_size: int = 192,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    blocks: tuple[int, ...] = (1, 1, 1, 1),
    fpn_channels: int = 64,
    head_convs: int = 2,
    norm: str = "batch",
    image_mean: tuple[float, ...] = tuple(FASHION_MEAN),
    image_std: tuple[float, ...] = tuple(FASHION_STD),
) -> FCOS:
    backbone = ResNetFPN(widths, blocks, fpn_channels, norm)
    # One location per feature-map cell; its "anchor" size is the level's stride, from which FCOS
    # sets the range of object sizes each level answers for (4x to 8x the stride).
    return FCOS(
        backbone,
        num_classes=num_classes,
        **_sizes(image_size),
        image_mean=list(image_mean),
        image_std=list(image_std),
        anchor_generator=_anchors((4, 8, 16, 32, 64), (1.0,)),
        head=FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs),
        detections_per_img=100,
    )


def load_classifier_backbone(detector: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy a classify ResNet's backbone (features.*) into a detector's backbone (see
    lamina.models.resnet.load_features); returns the names loaded."""
    return load_features(detector.backbone.features, state)
