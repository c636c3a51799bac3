"""The segmentation networks of the last step (timm style: one family, presets, a factory).

* :class:`DeepLabLargeFOV`: DeepLab-v1 LargeFOV on the dilated ResNet-38d of
  :mod:`bnr.models.resnet38`, TransCAM's ``deeplab/net/deeplabv1.py``: head = 3x3 conv,
  dilation 12, 512 channels, BatchNorm, ReLU, 1x1 conv 512 -> 512, BatchNorm, ReLU,
  ``nn.Dropout(0.5)``, 1x1 conv to the classes.
* ``deeplabv3_resnet101``: torchvision's DeepLab-v3 (ResNet-101, ASPP), built with
  ``weights=None, weights_backbone=None`` (nothing is ever downloaded), wrapped in
  :class:`TorchvisionDeepLab` so both archs have the same interface.

Both return logits at **1/8 of the input resolution** (output stride 8, ceil-rounded for
ResNet-38d): ``forward(x (B, 3, H, W)) -> (B, S, ceil(H/8), ceil(W/8))``. Training upsamples
the logits bilinearly to the label size, and evaluation (:func:`bnr.segmenter.evaluation.
multiscale_predict`) upsamples them to the image size. ``new_layers`` lists the head's convs
(trained with the 10x / 20x learning rates of :func:`bnr.models.resnet38.param_groups`); as in
TransCAM's ``get_parameter_groups`` (convs only), the head BatchNorms' affine parameters are in
no optimizer group (they stay 1 / 0; their running statistics still update).

``create_segmenter(arch, backbone_preset, num_classes, pretrained)`` is the one entry point;
``pretrained`` is an ImageNet backbone file loaded strictly (a wrong file is a one-line
:class:`BnrError`, never a silently random network).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from bnr.checkpoints import key_mismatches, load_weights_only
from bnr.errors import BnrError
from bnr.models.registry import ModelKind, register_model
from bnr.models.resnet38 import IMAGENET_SOURCES, PRESETS, ResNet38d, load_imagenet_weights

__all__ = [
    "ARCHS",
    "DeepLabLargeFOV",
    "TorchvisionDeepLab",
    "create_segmenter",
]

ARCHS = ("largefov", "deeplabv3_resnet101")
OUTPUT_STRIDE = 8


class DeepLabLargeFOV(nn.Module):
    """DeepLab-v1 LargeFOV head on a ResNet-38d backbone (output stride 8), TransCAM's layout.

    ``head_conv`` 3x3 dilation 12 (C -> 512, no bias) -> ``head_bn`` -> ReLU -> ``head_conv2``
    1x1 (512 -> 512, no bias) -> ``head_bn2`` -> ReLU -> ``nn.Dropout(0.5)`` -> ``classifier``
    1x1 (512 -> S, with bias). ``bn_momentum``: the head BatchNorms' momentum (TransCAM 0.0003).
    ``classifier_init``: ``kaiming`` (TransCAM: Kaiming fan-out, initial logits of std ~10 on a
    from-scratch backbone) | ``normal`` (DeepLab-v1: N(0, 0.01), initial logits near 0).
    """

    def __init__(
        self,
        backbone: ResNet38d,
        num_classes: int,
        head_channels: int = 512,
        dilation: int = 12,
        dropout: float = 0.5,
        bn_momentum: float = 0.1,
        classifier_init: str = "kaiming",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.output_stride = OUTPUT_STRIDE
        self.head_conv = nn.Conv2d(backbone.num_features, head_channels, 3, padding=dilation,
                                   dilation=dilation, bias=False)
        self.head_bn = nn.BatchNorm2d(head_channels, momentum=bn_momentum)
        self.head_conv2 = nn.Conv2d(head_channels, head_channels, 1, bias=False)
        self.head_bn2 = nn.BatchNorm2d(head_channels, momentum=bn_momentum)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        for conv in (self.head_conv, self.head_conv2, self.classifier):  # TransCAM __initial__
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if classifier_init == "normal":  # DeepLab-v1's classifier: Gaussian std 0.01, bias 0
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)
        elif classifier_init != "kaiming":
            raise BnrError(f"unknown classifier init {classifier_init!r} (kaiming | normal)")
        for bn in (self.head_bn, self.head_bn2):  # convs-only optimizer groups (TransCAM)
            bn.weight.requires_grad_(False)
            bn.bias.requires_grad_(False)
            bn.fixed_affine = True  # still batch statistics: synchronised across processes
        self.new_layers: list[nn.Module] = [self.head_conv, self.head_conv2, self.classifier]

    def train(self, mode: bool = True) -> DeepLabLargeFOV:
        """``nn.Module.train``; the backbone keeps its frozen BatchNorms in eval mode."""
        super().train(mode)
        self.backbone.train(mode)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> backbone features (B, C, ceil(H/8), ceil(W/8))."""
        return self.backbone.forward_features(x)["conv6"]

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, C, h, w) -> logits (B, S, h, w)."""
        x = torch.relu(self.head_bn(self.head_conv(feats)))  # (B, 512, h, w)
        x = torch.relu(self.head_bn2(self.head_conv2(x)))  # (B, 512, h, w)
        return self.classifier(self.dropout(x))  # (B, S, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> logits (B, S, ceil(H/8), ceil(W/8))."""
        return self.forward_head(self.forward_features(x))


class TorchvisionDeepLab(nn.Module):
    """torchvision's ``deeplabv3_resnet101`` with the :class:`DeepLabLargeFOV` interface.

    The backbone runs at output stride 8 (torchvision: dilation in layer3 / layer4); the
    ASPP classifier output is returned at 1/8 (torchvision itself upsamples to the input).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_resnet101

        net = deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=num_classes,
                                  aux_loss=False)
        self.backbone = net.backbone  # IntermediateLayerGetter: {"out": layer4}
        self.classifier = net.classifier
        self.num_classes = num_classes
        self.output_stride = OUTPUT_STRIDE
        self.new_layers: list[nn.Module] = [self.classifier]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> layer4 features (B, 2048, ceil(H/8), ceil(W/8))."""
        return self.backbone(x)["out"]

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, 2048, h, w) -> logits (B, S, h, w) (ASPP + 3x3 conv + 1x1 conv)."""
        return self.classifier(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> logits (B, S, ceil(H/8), ceil(W/8))."""
        return self.forward_head(self.forward_features(x))


def _load_torchvision_backbone(model: TorchvisionDeepLab, path: Path) -> None:
    """ImageNet ResNet-101 weights (torchvision layout, ``fc.*`` dropped) into the backbone,
    strictly; a one-line BnrError for an unreadable file or any key / shape mismatch."""
    obj = load_weights_only(path, "weights file")
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BnrError(f"{path}: expected a flat state dict of tensors, got {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if not k.startswith("fc.")}
    problems = key_mismatches(model.backbone.state_dict(), state)
    if problems:
        raise BnrError(f"{path}: does not match the resnet101 backbone ({'; '.join(problems)})")
    model.backbone.load_state_dict(state, strict=True)


def create_segmenter(
    arch: str,
    backbone_preset: str,
    num_classes: int,
    pretrained: str | os.PathLike[str] = "",
    bn_momentum: float = 0.1,
    classifier_init: str = "kaiming",
) -> nn.Module:
    """A fresh segmenter: ``arch`` in :data:`ARCHS`; ``backbone_preset`` names the ResNet-38d
    preset (``resnet38d`` | ``resnet38d_tiny``; ignored by ``deeplabv3_resnet101``);
    ``bn_momentum``: the LargeFOV head BatchNorms' momentum.

    ResNet-38d BatchNorms are frozen (PSA) only with ImageNet weights; from scratch they train.
    ``pretrained``: ImageNet backbone weights file ("" = from scratch), loaded strictly.
    """
    if arch not in ARCHS:
        raise BnrError(f"unknown segmenter arch {arch!r} (known: {', '.join(ARCHS)})")
    if num_classes < 2:
        raise BnrError(f"a segmenter needs at least 2 classes, got {num_classes}")
    path = Path(pretrained) if pretrained else None
    if path is not None and not path.is_file():
        raise BnrError(f"{path}: ImageNet weights file not found")
    if arch == "deeplabv3_resnet101":
        model: nn.Module = TorchvisionDeepLab(num_classes)
        if path is not None:
            _load_torchvision_backbone(model, path)  # type: ignore[arg-type]
        return model
    if backbone_preset not in PRESETS:
        raise BnrError(f"unknown segmenter backbone {backbone_preset!r} "
                       f"(known: {', '.join(sorted(PRESETS))})")
    backbone = PRESETS[backbone_preset](freeze_bn=path is not None)
    if path is not None:
        load_imagenet_weights(backbone, path)
    return DeepLabLargeFOV(backbone, num_classes, bn_momentum=bn_momentum,
                           classifier_init=classifier_init)


# ----------------------------------------------------------------------------------------------
# Registry entry (bnr/models/registry.py)


def _build_segmenter(preset: str, num_classes: int, pretrained: str, arch: str = "largefov",
                     bn_momentum: float = 0.1, classifier_init: str = "kaiming") -> nn.Module:
    return create_segmenter(arch, preset, num_classes, pretrained, bn_momentum=bn_momentum,
                            classifier_init=classifier_init)


register_model("segmenter", ModelKind("deeplab", tuple(PRESETS), _build_segmenter,
                                      IMAGENET_SOURCES))
