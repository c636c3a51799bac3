"""Conformer (Peng et al., ICCV 2021) with the TransCAM changes, in timm style.

Two branches run side by side and exchange features in every block:

* a CNN branch of ResNet-like bottleneck ``ConvBlock``s (stage channels c1, 2*c1, 4*c1 at
  strides s, 2s, 4s where s is the stem stride), and
* a ViT branch of pre-norm transformer blocks on a (1 + h*w)-token sequence (class token first,
  h, w = H / patch, W / patch),

coupled by Feature Coupling Units: ``FCUDown`` (1x1 conv, average pool, LayerNorm, GELU: CNN
map -> patch tokens) and ``FCUUp`` (1x1 conv, BatchNorm, ReLU, nearest upsampling: patch tokens
-> CNN map).

TransCAM changes (REFERENCE.md, "The method"):

* the CNN classifier is a 3x3 ``Conv2d(c3, S)`` applied before global average pooling, so its
  output is the class activation map M (B, S, h, w) and GAP(M) are the CNN logits;
* the last fusion block uses stride 1 (``last_fusion_stride=1``), so M lies on the patch grid;
* every transformer block also returns its softmax attention (B, heads, 1+N, 1+N); the model
  folds them block by block into A = ``attn_sum`` (B, 1+N, 1+N) with
  ``bnr.models.attention.aggregate_attention`` (eq. 3-4).

Module and attribute names follow the official implementation (pengzhiliang/Conformer), so its
checkpoint ``Conformer_small_patch16.pth`` loads 1:1; the OpenMMLab (mmpretrain) file is mapped by
``mmpretrain_checkpoint_filter_fn``. ``load_pretrained`` loads either layout strictly.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_

from bnr.checkpoints import key_mismatches, load_weights_only
from bnr.errors import BnrError
from bnr.models.attention import aggregate_attention
from bnr.models.mimetic import mimetic_attention_
from bnr.models.registry import ModelKind, register_model

__all__ = [
    "PRESETS",
    "Conformer",
    "ConformerConfig",
    "checkpoint_filter_fn",
    "create_conformer",
    "detect_checkpoint_layout",
    "load_pretrained",
    "mimetic_init_",
    "mmpretrain_checkpoint_filter_fn",
    "num_patches_hw",
]

_BOTTLENECK_EXPANSION = 4
# The two 1000-class ImageNet heads of the published checkpoints; ours differ in shape (the CNN
# head is a 3x3 conv to S classes), so they are dropped on purpose when loading.
HEAD_PREFIXES = ("trans_cls_head.", "conv_cls_head.")


# ----------------------------------------------------------------------------------------------
# Configuration and presets
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConformerConfig:
    """Architecture of one Conformer.

    ``stage_depths`` counts the transformer blocks of the three CNN stages; the first stage's
    first block is the stem pair (``conv_1``, ``trans_1``), every other block is a
    ``ConvTransBlock`` named ``conv_trans_<i>`` (i = 2 .. depth). ``None`` means depth / 3 each
    (the published models: 4, 4, 4). The stem is conv7x7/2 + BN + ReLU, followed by a 3x3/2 max
    pool when ``stem_stride`` is 4 (original) and no pool when it is 2 (finer patch grid for a
    small model). ``patch_size`` must be a multiple of 4 * stem_stride.
    """

    patch_size: int = 16
    channel_ratio: float = 4
    base_channel: int = 64
    stem_channels: int = 64
    stem_stride: int = 4
    embed_dim: int = 384
    depth: int = 12
    stage_depths: tuple[int, int, int] | None = None
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    last_fusion_stride: int = 1
    in_chans: int = 3

    def __post_init__(self) -> None:
        problems = []
        if self.stem_stride not in (2, 4):
            problems.append(f"stem_stride must be 2 or 4, got {self.stem_stride}")
        elif self.patch_size <= 0 or self.patch_size % (4 * self.stem_stride):
            problems.append(
                f"patch_size must be a positive multiple of 4 * stem_stride = "
                f"{4 * self.stem_stride}, got {self.patch_size}"
            )
        if self.embed_dim <= 0 or self.num_heads <= 0 or self.embed_dim % self.num_heads:
            problems.append(
                f"embed_dim ({self.embed_dim}) must be a positive multiple of num_heads "
                f"({self.num_heads})"
            )
        if self.stage_depths is None:
            if self.depth <= 0 or self.depth % 3:
                problems.append(
                    f"depth must be a positive multiple of 3 when stage_depths is unset, "
                    f"got {self.depth}"
                )
        elif len(self.stage_depths) != 3 or min(self.stage_depths) < 1:
            problems.append(f"stage_depths must be 3 positive ints, got {self.stage_depths}")
        elif sum(self.stage_depths) != self.depth:
            problems.append(
                f"stage_depths {tuple(self.stage_depths)} must sum to depth {self.depth}"
            )
        c1 = int(self.base_channel * self.channel_ratio)
        if c1 <= 0 or c1 % _BOTTLENECK_EXPANSION:
            problems.append(f"base_channel * channel_ratio = {c1} must be a positive multiple of 4")
        if self.last_fusion_stride not in (1, 2):
            problems.append(f"last_fusion_stride must be 1 or 2, got {self.last_fusion_stride}")
        if self.stem_channels <= 0:
            problems.append(f"stem_channels must be positive, got {self.stem_channels}")
        if problems:
            raise BnrError("invalid Conformer config: " + "; ".join(problems))

    @property
    def blocks_per_stage(self) -> tuple[int, int, int]:
        """Transformer blocks in CNN stages 1, 2, 3 (the stem pair counts in stage 1)."""
        if self.stage_depths is None:
            return (self.depth // 3,) * 3
        return tuple(int(d) for d in self.stage_depths)  # type: ignore[return-value]

    @property
    def stage_channels(self) -> tuple[int, int, int]:
        """Output channels of CNN stages 1, 2, 3 (the last one feeds the CAM classifier)."""
        c1 = int(self.base_channel * self.channel_ratio)
        return c1, 2 * c1, 4 * c1

    @property
    def cam_stride(self) -> int:
        """Input pixels per CAM cell: patch_size (TransCAM) or 2 * patch_size (original)."""
        return self.patch_size * self.last_fusion_stride


PRESETS: dict[str, ConformerConfig] = {
    # Conformer-S as in the paper / the published ImageNet weights (37.7 M parameters with the
    # two 1000-class heads), TransCAM's stride-1 last fusion block.
    "conformer_s": ConformerConfig(
        patch_size=16,
        channel_ratio=4,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.1,
    ),
    # A CPU preset for smoke runs on 128x128 images: stem stride 2 and patch 8 (16x16 tokens,
    # same grid density as conformer_s at 256x256), one block per stage. Measured: forward +
    # backward of a 16-image 128x128 batch, torch default threads on 2 shared AMD EPYC cores:
    # 0.135-0.140 s median (AdamW step included), i.e. about 2.2 min for 1000 images x 15 epochs.
    "conformer_tiny": ConformerConfig(
        patch_size=8,
        channel_ratio=0.25,
        base_channel=64,
        stem_channels=16,
        stem_stride=2,
        embed_dim=96,
        depth=3,
        stage_depths=(1, 1, 1),
        num_heads=2,
        mlp_ratio=2.0,
        qkv_bias=True,
        drop_path_rate=0.0,
    ),
}


def num_patches_hw(model_or_cfg: Conformer | ConformerConfig, H: int, W: int) -> tuple[int, int]:
    """Token grid (h, w) = (H / patch, W / patch) for an input of H x W pixels.

    This is also the CAM grid when ``last_fusion_stride`` is 1. A BnrError if H or W is not a
    positive multiple of the patch size.
    """
    cfg = model_or_cfg.cfg if isinstance(model_or_cfg, Conformer) else model_or_cfg
    p = cfg.patch_size
    if H <= 0 or W <= 0 or H % p or W % p:
        raise BnrError(
            f"Conformer input size {H}x{W} must be a positive multiple of the patch size {p}"
        )
    return H // p, W // p


def create_conformer(preset: str, num_classes: int, **overrides: Any) -> Conformer:
    """Build a Conformer from a named preset, with config fields overridden by keyword."""
    if preset not in PRESETS:
        raise BnrError(
            f"unknown Conformer preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}"
        )
    fields = {f.name for f in dataclasses.fields(ConformerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise BnrError(
            f"unknown Conformer config field(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(fields))}"
        )
    return Conformer(dataclasses.replace(PRESETS[preset], **overrides), num_classes=num_classes)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention that also returns its softmax weights."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> output (B, T, D) and softmax weights (B, heads, T, T)."""
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, T, d)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, T, T)
        attn = attn.softmax(dim=-1)
        out = self.attn_drop(attn) @ v  # (B, heads, T, d)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        out = self.proj_drop(self.proj(out))
        return out, attn


class TransBlock(nn.Module):
    """Pre-norm ViT block (attention + MLP, stochastic depth); returns its attention too."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> (B, T, D) and attention (B, heads, T, T)."""
        y, attn = self.attn(self.norm1(x))
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn


class ConvBlock(nn.Module):
    """Bottleneck residual block 1x1 -> 3x3 (stride) -> 1x1, width out_channels / 4.

    ``forward`` optionally adds a coupled feature map to the 3x3 conv's input (the FCUUp output)
    and can also return the 3x3 branch activation (fed to FCUDown).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        res_conv: bool = False,
    ) -> None:
        super().__init__()
        mid = out_channels // _BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=1e-6)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid, eps=1e-6)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=1e-6)
        self.act3 = nn.ReLU(inplace=True)
        self.res_conv = res_conv
        if res_conv:
            self.residual_conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.residual_bn = nn.BatchNorm2d(out_channels, eps=1e-6)

    def forward(
        self, x: torch.Tensor, x_t: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Cin, H, W) [+ (B, Cout/4, H, W)] -> (B, Cout, H/s, W/s), (B, Cout/4, H/s, W/s)."""
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))  # (B, Cin, H, W) -> (B, Cout/4, H, W)
        if x_t is not None:
            x = x + x_t
        x2 = self.act2(self.bn2(self.conv2(x)))  # -> (B, Cout/4, H/s, W/s)
        x = self.bn3(self.conv3(x2))  # -> (B, Cout, H/s, W/s)
        if self.res_conv:
            shortcut = self.residual_bn(self.residual_conv(shortcut))  # -> (B, Cout, H/s, W/s)
        return self.act3(x + shortcut), x2


class FCUDown(nn.Module):
    """CNN map -> patch tokens: 1x1 conv, avg-pool by ``dw_stride``, LayerNorm, GELU."""

    def __init__(self, in_channels: int, embed_dim: int, dw_stride: int) -> None:
        super().__init__()
        self.dw_stride = dw_stride
        self.conv_project = nn.Conv2d(in_channels, embed_dim, 1)
        self.sample_pooling = nn.AvgPool2d(kernel_size=dw_stride, stride=dw_stride)
        self.ln = nn.LayerNorm(embed_dim, eps=1e-6)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """(B, C, h*k, w*k), tokens (B, 1+N, D) -> (B, 1+N, D) (class token from x_t)."""
        x = self.sample_pooling(self.conv_project(x))  # (B, C, h*k, w*k) -> (B, D, h, w)
        x = self.act(self.ln(x.flatten(2).transpose(1, 2)))  # -> (B, N, D)
        return torch.cat([x_t[:, :1], x], dim=1)  # -> (B, 1+N, D)


class FCUUp(nn.Module):
    """Patch tokens -> CNN map: 1x1 conv, BatchNorm, ReLU, nearest upsampling by ``up_stride``."""

    def __init__(self, embed_dim: int, out_channels: int, up_stride: int) -> None:
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(embed_dim, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-6)
        self.act = nn.ReLU()

    def forward(self, x_t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Tokens (B, 1+h*w, D) -> (B, C, h*k, w*k) (class token dropped)."""
        B, _, D = x_t.shape
        x = x_t[:, 1:].transpose(1, 2).reshape(B, D, h, w)  # (B, 1+N, D) -> (B, D, h, w)
        x = self.act(self.bn(self.conv_project(x)))  # -> (B, C, h, w)
        return F.interpolate(x, size=(h * self.up_stride, w * self.up_stride))  # nearest


class ConvTransBlock(nn.Module):
    """One coupled block: CNN bottleneck -> FCUDown -> ViT block -> FCUUp -> fusion bottleneck."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        res_conv: bool,
        stride: int,
        dw_stride: int,
        embed_dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        last_fusion: bool = False,
        last_fusion_stride: int = 1,
    ) -> None:
        super().__init__()
        mid = out_channels // _BOTTLENECK_EXPANSION
        self.cnn_block = ConvBlock(in_channels, out_channels, stride=stride, res_conv=res_conv)
        if last_fusion:
            self.fusion_block = ConvBlock(
                out_channels, out_channels, stride=last_fusion_stride, res_conv=True
            )
        else:
            self.fusion_block = ConvBlock(out_channels, out_channels)
        self.squeeze_block = FCUDown(mid, embed_dim, dw_stride)
        self.expand_block = FCUUp(embed_dim, mid, dw_stride)
        self.trans_block = TransBlock(
            embed_dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            drop_path=drop_path_rate,
        )
        self.dw_stride = dw_stride

    def forward(
        self, x: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CNN (B, Cin, H', W'), tokens (B, 1+N, D) -> CNN (B, Cout, H'/s, W'/s), tokens, attn.

        The attention is (B, heads, 1+N, 1+N).
        """
        x, x2 = self.cnn_block(x)  # (B, Cin, H', W') -> (B, Cout, H'', W''), (B, Cout/4, ...)
        H, W = x2.shape[-2:]
        x_t, attn = self.trans_block(self.squeeze_block(x2, x_t) + x_t)
        x_up = self.expand_block(x_t, H // self.dw_stride, W // self.dw_stride)
        x, _ = self.fusion_block(x, x_up)  # last block, stride 2: -> (B, Cout, H''/2, W''/2)
        return x, x_t, attn


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class Conformer(nn.Module):
    """Conformer with TransCAM's CAM head, stride-1 last fusion and attention outputs.

    ``forward(x)`` with x (B, 3, H, W), H and W multiples of the patch size, returns a dict:

    * ``cam`` (B, S, h, w): the CNN classifier map M (h, w = H/patch, W/patch when
      last_fusion_stride is 1, half that otherwise);
    * ``cnn_logits`` (B, S): GAP of ``cam``;
    * ``token_logits`` (B, S): linear classifier on the normalised class token;
    * ``attn_sum`` (B, 1+N, 1+N): sum over all ``num_blocks`` blocks of the head-mean softmax
      attention, class token first (N = h*w);
    * ``attn_blocks`` (only with ``keep_attn_blocks=True``): list of (B, heads, 1+N, 1+N).
    """

    def __init__(self, cfg: ConformerConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes <= 0:
            raise BnrError(f"Conformer num_classes must be positive, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.embed_dim = self.num_features = cfg.embed_dim
        self.num_blocks = cfg.depth
        c1, c2, c3 = cfg.stage_channels
        d1, d2, d3 = cfg.blocks_per_stage
        dw1 = cfg.patch_size // cfg.stem_stride  # CNN cells per patch side in stage 1
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        block_args = dict(
            embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            drop_rate=cfg.drop_rate,
            attn_drop_rate=cfg.attn_drop_rate,
        )

        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))

        # Stem: conv7x7/2 (+ maxpool/2 for stem_stride 4).
        self.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_channels)
        self.act1 = nn.ReLU(inplace=True)
        if cfg.stem_stride == 4:
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.maxpool = nn.Identity()

        # Stage 1, first block: plain bottleneck + patch embedding + ViT block.
        self.conv_1 = ConvBlock(cfg.stem_channels, c1, stride=1, res_conv=True)
        self.trans_patch_conv = nn.Conv2d(cfg.stem_channels, cfg.embed_dim, dw1, stride=dw1)
        self.trans_1 = TransBlock(
            cfg.embed_dim,
            cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            drop=cfg.drop_rate,
            attn_drop=cfg.attn_drop_rate,
            drop_path=dpr[0],
        )

        # Coupled blocks conv_trans_2 .. conv_trans_<depth>; the first block of stages 2 and 3
        # halves the CNN resolution (and widens it), so the FCU stride halves with it.
        self._block_names: list[str] = []
        stage_plan = [(c1, c1, dw1, d1 - 1), (c1, c2, dw1 // 2, d2), (c2, c3, dw1 // 4, d3)]
        index = 2
        for stage, (c_in, c_out, dw, n) in enumerate(stage_plan):
            for j in range(n):
                first = j == 0 and stage > 0
                name = f"conv_trans_{index}"
                self.add_module(
                    name,
                    ConvTransBlock(
                        c_in if first else c_out,
                        c_out,
                        res_conv=first,
                        stride=2 if first else 1,
                        dw_stride=dw,
                        drop_path_rate=dpr[index - 1],
                        last_fusion=index == cfg.depth,
                        last_fusion_stride=cfg.last_fusion_stride,
                        **block_args,
                    ),
                )
                self._block_names.append(name)
                index += 1

        # Heads (TransCAM): a 3x3 conv classifier before GAP, a linear one on the class token.
        self.trans_norm = nn.LayerNorm(cfg.embed_dim)
        self.trans_cls_head = nn.Linear(cfg.embed_dim, num_classes)
        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.conv_cls_head = nn.Conv2d(c3, num_classes, 3, padding=1)

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay."""
        return {"cls_token"}

    def forward_features(self, x: torch.Tensor, keep_attn_blocks: bool = False) -> dict[str, Any]:
        """Run both branches.

        (B, 3, H, W) -> dict with ``cnn`` (B, c3, h, w), ``tokens`` (B, 1+N, D) (before the
        final norm), ``attn_sum`` (B, 1+N, 1+N) and, if asked, ``attn_blocks``.
        """
        num_patches_hw(self, x.shape[-2], x.shape[-1])  # BnrError unless H, W fit the patch
        B = x.shape[0]
        x_base = self.act1(self.bn1(self.conv1(x)))  # (B, 3, H, W) -> (B, C0, H/2, W/2)
        x_base = self.maxpool(x_base)  # -> (B, C0, H/s, W/s), s = stem_stride
        x, _ = self.conv_1(x_base)  # -> (B, c1, H/s, W/s)
        x_t = self.trans_patch_conv(x_base)  # -> (B, D, h, w)
        x_t = x_t.flatten(2).transpose(1, 2)  # -> (B, N, D)
        x_t = torch.cat([self.cls_token.expand(B, -1, -1), x_t], dim=1)  # -> (B, 1+N, D)
        feats: dict[str, Any] = {}
        kept: list[torch.Tensor] | None = [] if keep_attn_blocks else None
        feats["attn_sum"] = aggregate_attention(self._run_blocks(x, x_t, feats, kept))  # A
        if kept is not None:
            feats["attn_blocks"] = kept
        return feats

    def _run_blocks(self, x: torch.Tensor, x_t: torch.Tensor, feats: dict[str, Any],
                    kept: list[torch.Tensor] | None) -> Iterator[torch.Tensor]:
        """Run the blocks in order, yielding each one's attention (B, heads, 1+N, 1+N).

        The final CNN map and tokens go to ``feats["cnn"]`` and ``feats["tokens"]``; ``kept``
        (if given) collects the attention maps. A map is released before the next block runs, so
        :func:`aggregate_attention` folds them with one per-head map alive at a time.
        """
        x_t, attn = self.trans_1(x_t)  # block 1: the transformer alone
        for name in [None, *self._block_names]:  # None: block 1, already run
            if name is not None:
                x, x_t, attn = getattr(self, name)(x, x_t)  # CNN map shrinks in stages 2, 3
            if kept is not None:
                kept.append(attn)
            yield attn
            del attn
        feats["cnn"], feats["tokens"] = x, x_t

    def forward_head(self, feats: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Classifiers: ``cam`` (B, S, h, w), ``cnn_logits`` (B, S), ``token_logits`` (B, S)."""
        cam = self.conv_cls_head(feats["cnn"])  # (B, c3, h, w) -> (B, S, h, w)
        cnn_logits = self.pooling(cam).flatten(1)  # -> (B, S)
        cls = self.trans_norm(feats["tokens"][:, 0])  # (B, 1+N, D) -> (B, D)
        token_logits = self.trans_cls_head(cls)  # -> (B, S)
        return {"cam": cam, "cnn_logits": cnn_logits, "token_logits": token_logits}

    def forward(self, x: torch.Tensor, keep_attn_blocks: bool = False) -> dict[str, Any]:
        """(B, 3, H, W) -> dict: cam, cnn_logits, token_logits, attn_sum [, attn_blocks]."""
        feats = self.forward_features(x, keep_attn_blocks=keep_attn_blocks)
        out: dict[str, Any] = self.forward_head(feats)
        out["attn_sum"] = feats["attn_sum"]
        if keep_attn_blocks:
            out["attn_blocks"] = feats["attn_blocks"]
        return out


def _init_weights(m: nn.Module) -> None:
    """The official initialisation: truncated normal linears, Kaiming convs, unit norms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------
# Pretrained weights
# ----------------------------------------------------------------------------------------------

_TRANS = r"(trans_1|conv_trans_\d+\.trans_block)"
# OpenMMLab transformer-layer names -> official names (inside trans_1 / trans_block only).
_MMPRETRAIN_RULES = [
    (re.compile(rf"^{_TRANS}\.ln1\."), r"\1.norm1."),
    (re.compile(rf"^{_TRANS}\.ln2\."), r"\1.norm2."),
    (re.compile(rf"^{_TRANS}\.ffn\.layers\.0\.0\."), r"\1.mlp.fc1."),
    (re.compile(rf"^{_TRANS}\.ffn\.layers\.1\."), r"\1.mlp.fc2."),
]


def _strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """Official layout (pengzhiliang/Conformer, ``Conformer_small_patch16.pth``) -> ours.

    Our names are the official ones, so this only removes a DataParallel ``module.`` prefix.
    Heads are kept (``load_pretrained`` drops them). ``model`` is unused (timm convention).
    """
    del model
    return _strip_prefix(state_dict, "module.")


def mmpretrain_checkpoint_filter_fn(
    state_dict: Mapping[str, Any], model: nn.Module
) -> dict[str, Any]:
    """OpenMMLab layout (``conformer-small-p16_3rdparty_8xb128_in1k``) -> ours.

    ``backbone.X`` -> ``X``, ``head.{conv,trans}_cls_head.*`` -> ``{conv,trans}_cls_head.*``;
    inside the transformer layers ``ln1/ln2`` -> ``norm1/norm2``, ``ffn.layers.0.0`` ->
    ``mlp.fc1`` and ``ffn.layers.1`` -> ``mlp.fc2`` (``attn.qkv``/``attn.proj`` are the same).
    Unknown keys pass through unchanged so a strict load reports them.
    """
    del model
    out: dict[str, Any] = {}
    for key, value in _strip_prefix(state_dict, "module.").items():
        if key.startswith("backbone."):
            key = key[len("backbone.") :]
            for pattern, repl in _MMPRETRAIN_RULES:
                key = pattern.sub(repl, key)
        elif key.startswith("head.") and key[len("head.") :].startswith(HEAD_PREFIXES):
            key = key[len("head.") :]
        out[key] = value
    return out


def detect_checkpoint_layout(state_dict: Mapping[str, Any]) -> str:
    """``"mmpretrain"`` if the keys use the OpenMMLab names (``backbone.``), else ``"official"``."""
    keys = list(_strip_prefix(state_dict, "module."))
    if any(k.startswith("backbone.") for k in keys):
        return "mmpretrain"
    return "official"


def _unwrap(obj: Any) -> Any:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` (with ``meta`` etc. alongside)."""
    for _ in range(3):
        if isinstance(obj, Mapping):
            for key in ("state_dict", "model"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                return obj
    return obj


def load_pretrained(model: Conformer, path: str | os.PathLike[str]) -> None:
    """Load ImageNet Conformer weights (official or OpenMMLab layout) into ``model``, strictly.

    The two 1000-class heads of the file (``trans_cls_head.*``, ``conv_cls_head.*``) are dropped
    on purpose; ``model``'s own classifiers keep their initialisation. Everything else must match
    exactly: a missing key, an unexpected key or a shape mismatch raises a one-line BnrError
    naming the file and (the first few of) the offending keys. BatchNorm ``num_batches_tracked``
    counters absent from the file are taken from the model (they are not weights).
    """
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: pretrained weights file not found")
    obj = load_weights_only(path, "weights file")
    state_dict = _unwrap(obj)
    if (
        not isinstance(state_dict, Mapping)
        or not state_dict
        or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state_dict.items())
    ):
        raise BnrError(
            f"{path}: not a state dict (expected a mapping of parameter names to tensors, "
            f"got {type(state_dict).__name__})"
        )

    layout = detect_checkpoint_layout(state_dict)
    if layout == "mmpretrain":
        state_dict = mmpretrain_checkpoint_filter_fn(state_dict, model)
    else:
        state_dict = checkpoint_filter_fn(state_dict, model)
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(HEAD_PREFIXES)}

    own = model.state_dict()
    for key, value in own.items():
        if key.startswith(HEAD_PREFIXES) or (
            key.endswith(".num_batches_tracked") and key not in state_dict
        ):
            state_dict[key] = value
    problems = key_mismatches(own, state_dict)
    if problems:
        raise BnrError(
            f"{path}: does not match the Conformer ({layout} checkpoint layout): "
            + "; ".join(problems)
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # pragma: no cover - the checks above should catch everything
        raise BnrError(f"{path}: cannot load weights ({str(exc).splitlines()[0]})") from None


# ----------------------------------------------------------------------------------------------
# Registry entry (bnr/models/registry.py)


INITS = ("official", "mimetic")  # the transformer branch's initialisation (train_cam.init)


def mimetic_init_(model: Conformer, generator: torch.Generator | None = None) -> int:
    """Re-initialise every ``Attention`` of the transformer branch mimetically (Trockman and
    Kolter, ICML 2023; :mod:`bnr.models.mimetic`), after the official initialisation. Only
    ``qkv`` and ``proj`` weights change; returns the number of attention layers."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for layer in layers:
        mimetic_attention_(layer.qkv, layer.proj, layer.num_heads, generator=generator)
    return len(layers)


def _build_cam(preset: str, num_classes: int, pretrained: str, init: str = "official",
               **overrides: Any) -> Conformer:
    """The registry's builder: ``init`` (``INITS``) first, then ``pretrained``'s weights, which
    replace it wherever the file has them (every attention weight)."""
    if init not in INITS:
        raise BnrError(f"unknown Conformer init {init!r} (known: {', '.join(INITS)})")
    model = create_conformer(preset, num_classes=num_classes, **overrides)
    if init == "mimetic":
        mimetic_init_(model)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


register_model("cam", ModelKind("conformer", tuple(PRESETS), _build_cam, ("conformer_s",)))
