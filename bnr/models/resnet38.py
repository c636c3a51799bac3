"""ResNet-38d (wide ResNet-38, ademxapp model A1, as used by PSA) and PSA's AffinityNet.

One family per file, timm style: :class:`ResNet38d` with presets :func:`resnet38d` (the full
network: pre-activation residual stages b2..b7, channels up to 4096, dilation 2 in b5 and 4 in
b6/b7, output stride 8) and :func:`resnet38d_tiny` (same structure and stride, few narrow blocks,
for CPU tests). Module names follow PSA's ``network/resnet38d.py`` (``conv1a``, ``b2``,
``b2_1``, ..., ``b7``, ``bn7``) so that the published PyTorch conversion loads with no renaming.

ImageNet weights: :func:`load_imagenet_weights` reads either the original MXNet file
(``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``, keys like ``arg:res2a_branch2a_weight``) or the
published PyTorch conversion (``.pth``, keys like ``b2.conv_branch2a.weight``), drops the
1000-class classifier and nothing else, and loads with ``strict=True``; any missing, unexpected
or mis-shaped key is a one-line :class:`BnrError`. (PSA / TransCAM load non-strictly, so
a wrong file silently leaves the network random.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnr.checkpoints import key_mismatches, load_weights_only
from bnr.errors import BnrError
from bnr.models.mxnet_params import LIST_MAGIC, read_mxnet_params
from bnr.models.pairs import feature_affinity
from bnr.models.registry import ModelKind, register_model

__all__ = [
    "AffinityNet",
    "PRESETS",
    "ResNet38d",
    "StageCfg",
    "load_imagenet_weights",
    "mxnet_filter_fn",
    "mxnet_key",
    "param_groups",
    "resnet38d",
    "resnet38d_tiny",
    "torch_filter_fn",
]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3(stride, dilation)-BN-ReLU-conv3x3(dilation).

    The shortcut is the identity, or a 1x1 conv on the pre-activated input when the shape
    changes (``conv_branch1``).
    """

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        out_ch: int,
        stride: int = 1,
        first_dilation: int | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(
            in_ch, mid_ch, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(
            mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False
        )
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(output, relu(bn(x)))``; x (B, Cin, H, W) -> (B, Cout, H/s, W/s)."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)  # (B, Cout, H/s, W/s)
        y = self.conv_branch2a(pre)  # (B, Cmid, H/s, W/s)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))  # (B, Cout, H/s, W/s)
        return shortcut + y, pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Cin, H, W) -> (B, Cout, H/stride, W/stride)."""
        return self.forward_preact(x)[0]


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck: 1x1 (out/4) - 3x3 dilated (out/2) - 1x1 (out), with
    Dropout2d before the last two convs (PSA's ``ResBlock_bot``) and a 1x1 projection shortcut.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(output, relu(bn(x)))``; x (B, Cin, H, W) -> (B, Cout, H/s, W/s)."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(pre)  # (B, Cout, H/s, W/s)
        y = self.conv_branch2a(pre)  # (B, Cout/4, H/s, W/s)
        y = self.dropout_2b1(F.relu(self.bn_branch2b1(y)))
        y = self.conv_branch2b1(y)  # (B, Cout/2, H/s, W/s)
        y = self.dropout_2b2(F.relu(self.bn_branch2b2(y)))
        y = self.conv_branch2b2(y)  # (B, Cout, H/s, W/s)
        return shortcut + y, pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Cin, H, W) -> (B, Cout, H/stride, W/stride)."""
        return self.forward_preact(x)[0]


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageCfg:
    """One stage ``b<index>``: ``depth`` blocks named ``b<i>``, ``b<i>_1``, ..."""

    index: int
    depth: int
    out_ch: int
    mid_ch: int = 0  # basic blocks only
    stride: int = 1
    dilation: int = 1
    first_dilation: int | None = None
    bottleneck: bool = False
    dropout: float = 0.0


_FULL_STAGES = (
    StageCfg(2, 3, 128, 128, stride=2),
    StageCfg(3, 3, 256, 256, stride=2),
    StageCfg(4, 6, 512, 512, stride=2),
    StageCfg(5, 3, 1024, 512, dilation=2, first_dilation=1),
    StageCfg(6, 1, 2048, dilation=4, bottleneck=True, dropout=0.3),
    StageCfg(7, 1, 4096, dilation=4, bottleneck=True, dropout=0.5),
)
_TINY_STAGES = (
    StageCfg(2, 2, 16, 16, stride=2),
    StageCfg(3, 2, 32, 32, stride=2),
    StageCfg(4, 2, 32, 32, stride=2),
    StageCfg(5, 2, 64, 32, dilation=2, first_dilation=1),
    StageCfg(6, 1, 128, dilation=4, bottleneck=True, dropout=0.3),
    StageCfg(7, 1, 256, dilation=4, bottleneck=True, dropout=0.5),
)


class ResNet38d(nn.Module):
    """Wide ResNet-38 with dilation (PSA's ``resnet38d.Net``), output stride 8.

    ``forward_features(x)`` returns PSA's feature dict (all at 1/8 resolution, ceil-rounded):

    * ``"conv4"``: relu(bn(input of b5)), (B, C4, H/8, W/8) (512 channels for the full net);
    * ``"conv5"``: relu(bn(input of b6)), (B, C5, H/8, W/8) (1024);
    * ``"conv6"``: relu(bn7(output of b7)), (B, C6, H/8, W/8) (4096).

    Frozen as in PSA: every BatchNorm keeps its ImageNet statistics and affine parameters
    (``requires_grad=False`` and the modules stay in eval mode under ``train()``) when
    ``freeze_bn``; the modules named in ``frozen`` (PSA: ``conv1a``) get ``requires_grad=False``.
    """

    def __init__(
        self,
        stages: Sequence[StageCfg] = _FULL_STAGES,
        stem_ch: int = 64,
        freeze_bn: bool = True,
        frozen: Iterable[str] = ("conv1a",),
        preset: str = "custom",
    ) -> None:
        super().__init__()
        self.preset = preset
        self.freeze_bn = freeze_bn
        self.conv1a = nn.Conv2d(3, stem_ch, 3, padding=1, bias=False)
        self.block_names: list[str] = []
        self.stage_blocks: dict[int, list[str]] = {}
        in_ch = stem_ch
        for st in stages:
            names = []
            for i in range(st.depth):
                name = f"b{st.index}" if i == 0 else f"b{st.index}_{i}"
                first = i == 0
                if st.bottleneck:
                    block: nn.Module = BottleneckBlock(
                        in_ch, st.out_ch, st.stride if first else 1, st.dilation, st.dropout
                    )
                else:
                    block = ResBlock(
                        in_ch,
                        st.mid_ch,
                        st.out_ch,
                        stride=st.stride if first else 1,
                        first_dilation=st.first_dilation if first else None,
                        dilation=st.dilation,
                    )
                self.add_module(name, block)
                names.append(name)
                in_ch = st.out_ch
            self.stage_blocks[st.index] = names
            self.block_names += names
        self.bn7 = nn.BatchNorm2d(in_ch)
        self.feature_channels = {
            "conv4": self._stage_in_ch(stages, 5, stem_ch),
            "conv5": self._stage_in_ch(stages, 6, stem_ch),
            "conv6": in_ch,
        }
        self.num_features = in_ch
        if freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.requires_grad_(False)
        self.freeze_modules(frozen)

    @staticmethod
    def _stage_in_ch(stages: Sequence[StageCfg], index: int, stem_ch: int) -> int:
        ch = stem_ch
        for st in stages:
            if st.index == index:
                return ch
            ch = st.out_ch
        raise ValueError(f"ResNet38d needs a stage b{index}")

    def freeze_modules(self, names: Iterable[str]) -> None:
        """Set ``requires_grad=False`` on every parameter of the named child modules."""
        for name in names:
            getattr(self, name).requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet38d:
        """Like ``nn.Module.train`` but frozen BatchNorms stay in eval mode (PSA)."""
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, 3, H, W) -> {"conv4", "conv5", "conv6"}, each (B, C, ceil(H/8), ceil(W/8))."""
        feats: dict[str, torch.Tensor] = {}
        x = self.conv1a(x)  # (B, stem, H, W)
        for name in self.block_names:
            block = getattr(self, name)
            if name == "b5":
                x, feats["conv4"] = block.forward_preact(x)  # (B, C5, H/8, W/8)
            elif name == "b6":
                x, feats["conv5"] = block.forward_preact(x)  # (B, C6, H/8, W/8)
            else:
                x = block(x)  # b2/b3/b4 first blocks halve H and W: 1/2, 1/4, 1/8
        feats["conv6"] = F.relu(self.bn7(x))  # (B, num_features, H/8, W/8)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> last features (B, num_features, ceil(H/8), ceil(W/8))."""
        return self.forward_features(x)["conv6"]


def resnet38d(freeze_bn: bool = True, frozen: Iterable[str] = ("conv1a",)) -> ResNet38d:
    """The full ResNet-38d (about 105 M parameters, 4096 output channels)."""
    return ResNet38d(_FULL_STAGES, 64, freeze_bn=freeze_bn, frozen=frozen, preset="resnet38d")


def resnet38d_tiny(freeze_bn: bool = True, frozen: Iterable[str] = ("conv1a",)) -> ResNet38d:
    """A narrow two-blocks-per-stage ResNet-38d for CPU tests (256 output channels, stride 8)."""
    return ResNet38d(_TINY_STAGES, 8, freeze_bn=freeze_bn, frozen=frozen, preset="resnet38d_tiny")


# --------------------------------------------------------------------------------------------
# AffinityNet
# --------------------------------------------------------------------------------------------


# The ResNet-38d presets by name (params ``train_affinity.model``, ``train_segmenter.backbone``).
PRESETS: dict[str, Callable[..., ResNet38d]] = {
    "resnet38d": resnet38d,
    "resnet38d_tiny": resnet38d_tiny,
}

AFFINITY_CHANNELS = {"resnet38d": (64, 128, 256), "resnet38d_tiny": (8, 16, 32)}


class AffinityNet(nn.Module):
    """PSA's AffinityNet head on a ResNet-38d backbone.

    1x1 convs (no bias) map conv4 / conv5 / conv6 to 64 / 128 / 256 channels (full net; the
    tiny preset uses 1/8 of these), each followed by ELU; the concatenation goes through a
    1x1 conv (448 -> 448) and ELU. The backbone's stage b2 and conv1a are frozen (PSA).
    ``new_layers`` lists the layers trained with the 10x / 20x learning rates.
    """

    def __init__(self, backbone: ResNet38d, channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if channels is None:
            if backbone.preset not in AFFINITY_CHANNELS:
                raise ValueError(f"give AffinityNet channels for preset {backbone.preset!r}")
            channels = AFFINITY_CHANNELS[backbone.preset]
        c3, c4, c5 = channels
        fc = backbone.feature_channels
        self.backbone = backbone
        backbone.freeze_modules(["conv1a", *backbone.stage_blocks[2]])
        self.f8_3 = nn.Conv2d(fc["conv4"], c3, 1, bias=False)
        self.f8_4 = nn.Conv2d(fc["conv5"], c4, 1, bias=False)
        self.f8_5 = nn.Conv2d(fc["conv6"], c5, 1, bias=False)
        self.out_channels = c3 + c4 + c5
        self.f9 = nn.Conv2d(self.out_channels, self.out_channels, 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.new_layers: list[nn.Module] = [self.f8_3, self.f8_4, self.f8_5, self.f9]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> affinity features (B, out_channels, ceil(H/8), ceil(W/8))."""
        d = self.backbone.forward_features(x)
        f = torch.cat(
            [
                F.elu(self.f8_3(d["conv4"])),  # (B, c3, h, w)
                F.elu(self.f8_4(d["conv5"])),  # (B, c4, h, w)
                F.elu(self.f8_5(d["conv6"])),  # (B, c5, h, w)
            ],
            dim=1,
        )  # (B, c3 + c4 + c5, h, w)
        return F.elu(self.f9(f))  # (B, out_channels, h, w)

    def affinity(
        self, x: torch.Tensor, radius: int = 5
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> ``(aff (B, P), src (P,), dst (P,))`` over PSA's radius pairs."""
        return feature_affinity(self(x), radius)  # features (B, C, h, w)


# --------------------------------------------------------------------------------------------
# Learning-rate groups (PSA / TransCAM: 1x, 2x, 10x, 20x)
# --------------------------------------------------------------------------------------------

LR_MULTS = (1.0, 2.0, 10.0, 20.0)


def param_groups(
    model: nn.Module, lr: float = 0.01, weight_decay: float = 5e-4,
    lr_mults: tuple[float, float, float, float] | None = None,
) -> list[dict[str, object]]:
    """The 4 optimizer groups of PSA's ``get_parameter_groups`` + ``train_aff.py``.

    Groups: backbone weights (lr x1, weight decay), backbone biases (x2, no decay), new-layer
    weights (x10, decay), new-layer biases (x20, no decay). New layers are the modules in
    ``model.new_layers`` (empty if absent). Every parameter with ``requires_grad`` appears in
    exactly one group; frozen ones (BatchNorm, conv1a, stage b2 under AffinityNet) in none.
    Each group has ``params``, ``lr``, ``weight_decay``, ``lr_mult`` and ``name``; groups may be
    empty (ResNet-38d and AffinityNet convs have no biases), which torch optimizers accept.
    ``lr_mults``: the four multipliers (None: PSA's ``LR_MULTS``, 1 / 2 / 10 / 20).
    """
    new_ids = {id(p) for m in getattr(model, "new_layers", ()) for p in m.parameters()}
    buckets: list[list[nn.Parameter]] = [[], [], [], []]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bias = name.rsplit(".", 1)[-1] == "bias"
        buckets[(2 if id(p) in new_ids else 0) + (1 if is_bias else 0)].append(p)
    names = ("backbone_weight", "backbone_bias", "new_weight", "new_bias")
    return [
        {
            "params": params,
            "lr": lr * mult,
            "weight_decay": 0.0 if i % 2 else weight_decay,
            "lr_mult": mult,
            "name": names[i],
        }
        for i, (params, mult) in enumerate(zip(buckets, lr_mults or LR_MULTS, strict=True))
    ]


# --------------------------------------------------------------------------------------------
# ImageNet weights
# --------------------------------------------------------------------------------------------

_BN_MX_TO_PT = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_var": "running_var",
}
_BN_PT_TO_MX = {v: k for k, v in _BN_MX_TO_PT.items()}
_MX_BLOCK = re.compile(
    r"^(res|bn)(\d)([a-z])(\d*)_(branch\w+?)_(weight|gamma|beta|moving_mean|moving_var)$"
)
_MX_BN7 = re.compile(r"^bn7_(gamma|beta|moving_mean|moving_var)$")
_PT_BLOCK = re.compile(r"^b(\d)(?:_(\d+))?\.(conv|bn)_(branch\w+)\.(\w+)$")
CLASSIFIER_PREFIX = "linear1000"


def is_classifier_key(key: str) -> bool:
    """True for the ImageNet 1000-class classifier (``[arg:]linear1000_*`` / ``linear1000.*``)."""
    bare = key.split(":", 1)[1] if key.startswith(("arg:", "aux:")) else key
    return bare.startswith(CLASSIFIER_PREFIX + "_") or bare.startswith(CLASSIFIER_PREFIX + ".")


def _mx_to_torch_name(key: str) -> str | None:
    """ademxapp A1 name (``arg:res4b5_branch2b1_weight``) -> torch key, or None if unknown."""
    bare = key.split(":", 1)[1] if key.startswith(("arg:", "aux:")) else key
    if bare == "conv1a_weight":
        return "conv1a.weight"
    m = _MX_BN7.match(bare)
    if m:
        return f"bn7.{_BN_MX_TO_PT[m.group(1)]}"
    m = _MX_BLOCK.match(bare)
    if not m:
        return None
    kind, stage, letter, idx, branch, leaf = m.groups()
    if letter == "a" and not idx:
        block = f"b{stage}"
    elif letter == "b" and idx:
        block = f"b{stage}_{idx}"
    else:
        return None
    if kind == "res" and leaf == "weight":
        return f"{block}.conv_{branch}.weight"
    if kind == "bn" and leaf in _BN_MX_TO_PT:
        return f"{block}.bn_{branch}.{_BN_MX_TO_PT[leaf]}"
    return None


def mxnet_key(torch_key: str) -> str:
    """Inverse map: torch key -> ademxapp A1 name with its ``arg:``/``aux:`` prefix.

    ``b4_5.conv_branch2b1.weight`` -> ``arg:res4b5_branch2b1_weight``;
    ``b2.bn_branch2a.running_mean`` -> ``aux:bn2a_branch2a_moving_mean``.
    """
    if torch_key == "conv1a.weight":
        return "arg:conv1a_weight"
    if torch_key.startswith("bn7."):
        leaf = _BN_PT_TO_MX[torch_key.split(".", 1)[1]]
        return f"{'aux' if leaf.startswith('moving') else 'arg'}:bn7_{leaf}"
    m = _PT_BLOCK.match(torch_key)
    if not m:
        raise KeyError(f"no MXNet name for {torch_key}")
    stage, idx, kind, branch, leaf = m.groups()
    block = f"{stage}a" if idx is None else f"{stage}b{idx}"
    if kind == "conv":
        return f"arg:res{block}_{branch}_weight"
    mx_leaf = _BN_PT_TO_MX[leaf]
    return f"{'aux' if mx_leaf.startswith('moving') else 'arg'}:bn{block}_{branch}_{mx_leaf}"


def _mxnet_key_or(torch_key: str) -> str:
    try:
        return mxnet_key(torch_key)
    except KeyError:
        return "no MXNet name"


def _fill_bn_counters(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Add the BatchNorm ``num_batches_tracked`` counters the converted files do not carry."""
    for key, value in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value, device="cpu")


def mxnet_filter_fn(params: Mapping[str, np.ndarray], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map ademxapp A1 ``.params`` arrays to ``model``'s state-dict keys (PSA's conversion).

    ``arg:conv1a_weight`` -> ``conv1a.weight``; ``arg:res<s><a|b<i>>_<branch>_weight`` ->
    ``b<s>[_<i>].conv_<branch>.weight``; ``arg:bn..._gamma|beta`` / ``aux:bn..._moving_mean|var``
    -> ``b<s>[_<i>].bn_<branch>.weight|bias|running_mean|running_var``; ``bn7_*`` -> ``bn7.*``.
    The classifier ``linear1000_*`` is dropped; names that do not map are kept unchanged so the
    strict load reports them as unexpected. BatchNorm ``num_batches_tracked`` come from ``model``.
    """
    state: dict[str, torch.Tensor] = {}
    for key, value in params.items():
        if is_classifier_key(key):
            continue
        name = _mx_to_torch_name(key) or key
        state[name] = torch.from_numpy(np.ascontiguousarray(value))
    _fill_bn_counters(state, model)
    return state


def torch_filter_fn(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """The published PyTorch conversion already uses PSA's key names (``b2.bn_branch2a.weight``).

    Drops the 1000-class classifier if present (``linear1000.*``) and nothing else; adds the
    BatchNorm ``num_batches_tracked`` counters from ``model`` when the file lacks them.
    """
    state = {k: v for k, v in state_dict.items() if not is_classifier_key(k)}
    _fill_bn_counters(state, model)
    return state


def _load_state_file(path: Path) -> tuple[str, dict[str, torch.Tensor] | dict[str, np.ndarray]]:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) == 8 and int.from_bytes(head, "little") == LIST_MAGIC:
        return "mxnet", read_mxnet_params(path)
    if path.suffix == ".params":
        raise BnrError(f"{path}: not an MXNet NDArray file (bad header)")
    obj = load_weights_only(path, "weights file")
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BnrError(f"{path}: expected a flat state dict of tensors, got {type(obj).__name__}")
    return "torch", dict(obj)


def load_imagenet_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load ImageNet ResNet-38d weights strictly into ``model`` (a ResNet38d or AffinityNet).

    The format is sniffed from the content (MXNet list magic 0x112, else ``torch.load`` with
    ``weights_only=True``). A missing / unexpected key or a shape mismatch raises a one-line
    :class:`BnrError` naming the file and the first offending keys.
    """
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: ImageNet weights file not found")
    target = model.backbone if isinstance(model, AffinityNet) else model
    kind, raw = _load_state_file(path)
    if kind == "mxnet":
        state = mxnet_filter_fn(raw, target)  # type: ignore[arg-type]
    else:
        state = torch_filter_fn(raw, target)  # type: ignore[arg-type]
    if kind == "mxnet":  # show the file's own names too
        origin = {(_mx_to_torch_name(k) or k): k for k in raw}
        problems = key_mismatches(
            target.state_dict(), state,
            missing_name=lambda k: f"{k} ({_mxnet_key_or(k)})",
            unexpected_name=lambda k: f"{origin[k]} (as {k})" if origin.get(k, k) != k else k)
    else:
        problems = key_mismatches(target.state_dict(), state)
    if problems:
        raise BnrError(
            f"{path}: does not match {getattr(target, 'preset', type(target).__name__)} "
            f"({kind} layout): " + "; ".join(problems)
        )
    target.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------
# Registry entry (bnr/models/registry.py)

IMAGENET_SOURCES = ("resnet38_mxnet", "resnet38_pytorch")  # names in bnr.data.sources.SOURCES


def _build_affinity(preset: str, num_classes: int | None, pretrained: str) -> AffinityNet:
    model = AffinityNet(PRESETS[preset]())
    if pretrained:
        load_imagenet_weights(model, pretrained)
    return model


register_model("affinity", ModelKind("resnet38", tuple(PRESETS), _build_affinity,
                                     IMAGENET_SOURCES))
