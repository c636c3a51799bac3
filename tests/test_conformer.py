"""Tests for bnr.models.conformer: shapes, attention outputs, gradients, pretrained loading."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from bnr.errors import BnrError
from bnr.models.conformer import (
    PRESETS,
    Conformer,
    ConformerConfig,
    create_conformer,
    detect_checkpoint_layout,
    load_pretrained,
    num_patches_hw,
)

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2

S = 21  # VOC: background + 20 classes


@pytest.fixture(scope="module")
def tiny() -> Conformer:
    torch.manual_seed(0)
    return create_conformer("conformer_tiny", S).eval()


# ----------------------------------------------------------------------------------------------
# Shapes and attention
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("H,W", [(64, 96), (40, 24)])
def test_output_shapes_non_square(tiny: Conformer, H: int, W: int) -> None:
    p = tiny.cfg.patch_size
    h, w = H // p, W // p
    assert num_patches_hw(tiny, H, W) == (h, w) == num_patches_hw(tiny.cfg, H, W)
    with torch.no_grad():
        out = tiny(torch.randn(2, 3, H, W))
    assert set(out) == {"cam", "cnn_logits", "token_logits", "attn_sum"}
    assert out["cam"].shape == (2, S, h, w)  # CAM grid == token grid
    assert out["cnn_logits"].shape == (2, S)
    assert out["token_logits"].shape == (2, S)
    assert out["attn_sum"].shape == (2, 1 + h * w, 1 + h * w)
    torch.testing.assert_close(out["cnn_logits"], out["cam"].mean(dim=(2, 3)))


def test_attention_blocks_and_sum(tiny: Conformer) -> None:
    x = torch.randn(2, 3, 48, 64)
    T = 1 + (48 // 8) * (64 // 8)
    with torch.no_grad():
        out = tiny(x, keep_attn_blocks=True)
        plain = tiny(x)
    blocks = out["attn_blocks"]
    assert len(blocks) == tiny.num_blocks == tiny.cfg.depth
    for a in blocks:
        assert a.shape == (2, tiny.cfg.num_heads, T, T)
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(2, tiny.cfg.num_heads, T))
    expected = torch.stack([a.mean(1) for a in blocks]).sum(0)
    torch.testing.assert_close(out["attn_sum"], expected)
    # Row sums of the head-mean sum are the number of blocks.
    torch.testing.assert_close(out["attn_sum"].sum(-1), torch.full((2, T), float(len(blocks))))
    assert "attn_blocks" not in plain
    torch.testing.assert_close(plain["attn_sum"], out["attn_sum"])
    torch.testing.assert_close(plain["cam"], out["cam"])


def test_per_block_attention_is_not_retained(tiny: Conformer) -> None:
    """Without keep_attn_blocks, a block's (B, heads, T, T) map is freed before the next block."""
    refs: list[weakref.ref] = []
    alive_at_hook: list[int] = []

    def hook(_module, _inputs, output) -> None:
        alive_at_hook.append(sum(r() is not None for r in refs))
        refs.append(weakref.ref(output[1]))

    attns = [m for m in tiny.modules() if type(m).__name__ == "Attention"]
    handles = [m.register_forward_hook(hook) for m in attns]
    try:
        with torch.no_grad():
            out = tiny(torch.randn(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    gc.collect()
    assert len(alive_at_hook) == tiny.num_blocks
    assert alive_at_hook == [0] * tiny.num_blocks
    assert out["attn_sum"].shape == (1, 17, 17)


def test_gradients_flow_through_attn_sum_and_cam() -> None:
    torch.manual_seed(1)
    model = create_conformer("conformer_tiny", S).train()
    x = torch.randn(2, 3, 32, 48)

    out = model(x)
    out["attn_sum"][:, 1:, 1:].pow(2).sum().backward()
    qkv = model.trans_1.attn.qkv.weight.grad
    assert qkv is not None and qkv.abs().sum() > 0
    assert model.conv_cls_head.weight.grad is None  # the CAM head is not on this path

    model.zero_grad(set_to_none=True)
    out = model(x)
    out["cam"].pow(2).mean().backward()
    for p in (model.conv_cls_head.weight, model.conv_1.conv1.weight, model.conv1.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # The CNN branch is coupled to the tokens, so the CAM also trains the transformer.
    assert model.trans_1.attn.qkv.weight.grad.abs().sum() > 0


def test_last_fusion_stride_two_halves_the_cam_grid() -> None:
    model = create_conformer("conformer_tiny", 3, last_fusion_stride=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 64))
    assert out["cam"].shape == (1, 3, 2, 4)
    assert out["attn_sum"].shape == (1, 33, 33)


def test_bad_sizes_presets_and_configs() -> None:
    model = create_conformer("conformer_tiny", S)
    with pytest.raises(BnrError, match="multiple of the patch size 8"):
        model(torch.randn(1, 3, 36, 32))
    with pytest.raises(BnrError, match="conformer_s, conformer_tiny"):
        create_conformer("conformer_xl", S)
    with pytest.raises(BnrError, match="unknown Conformer config field"):
        create_conformer("conformer_tiny", S, embed=3)
    with pytest.raises(BnrError, match="patch_size"):
        ConformerConfig(patch_size=8, stem_stride=4)
    with pytest.raises(BnrError, match="must sum to depth"):
        ConformerConfig(depth=12, stage_depths=(4, 4, 3))
    assert set(PRESETS) == {"conformer_s", "conformer_tiny"}


# ----------------------------------------------------------------------------------------------
# Published checkpoint layouts (written here independently of the model code)
# ----------------------------------------------------------------------------------------------


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def _bottleneck(prefix: str, cin: int, cout: int, res: bool) -> dict[str, tuple[int, ...]]:
    mid = cout // 4
    spec = {f"{prefix}.conv1.weight": (mid, cin, 1, 1), **_bn(f"{prefix}.bn1", mid)}
    spec |= {f"{prefix}.conv2.weight": (mid, mid, 3, 3), **_bn(f"{prefix}.bn2", mid)}
    spec |= {f"{prefix}.conv3.weight": (cout, mid, 1, 1), **_bn(f"{prefix}.bn3", cout)}
    if res:
        spec |= {f"{prefix}.residual_conv.weight": (cout, cin, 1, 1)}
        spec |= _bn(f"{prefix}.residual_bn", cout)
    return spec


def _vit_block(prefix: str, d: int = 384, hidden: int = 1536) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.norm1.weight": (d,),
        f"{prefix}.norm1.bias": (d,),
        f"{prefix}.attn.qkv.weight": (3 * d, d),
        f"{prefix}.attn.qkv.bias": (3 * d,),
        f"{prefix}.attn.proj.weight": (d, d),
        f"{prefix}.attn.proj.bias": (d,),
        f"{prefix}.norm2.weight": (d,),
        f"{prefix}.norm2.bias": (d,),
        f"{prefix}.mlp.fc1.weight": (hidden, d),
        f"{prefix}.mlp.fc1.bias": (hidden,),
        f"{prefix}.mlp.fc2.weight": (d, hidden),
        f"{prefix}.mlp.fc2.bias": (d,),
    }


def official_conformer_s_spec() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of Conformer_small_patch16.pth (pengzhiliang/Conformer)."""
    spec = {"cls_token": (1, 1, 384), "conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    spec |= _bottleneck("conv_1", 64, 256, True)
    spec |= {"trans_patch_conv.weight": (384, 64, 4, 4), "trans_patch_conv.bias": (384,)}
    spec |= _vit_block("trans_1")
    for i in range(2, 13):
        cout = 256 if i <= 4 else 512 if i <= 8 else 1024
        first = i in (5, 9)
        cin = cout // 2 if first else cout
        p = f"conv_trans_{i}"
        spec |= _bottleneck(f"{p}.cnn_block", cin, cout, first)
        spec |= _bottleneck(f"{p}.fusion_block", cout, cout, i == 12)
        spec |= {
            f"{p}.squeeze_block.conv_project.weight": (384, cout // 4, 1, 1),
            f"{p}.squeeze_block.conv_project.bias": (384,),
            f"{p}.squeeze_block.ln.weight": (384,),
            f"{p}.squeeze_block.ln.bias": (384,),
            f"{p}.expand_block.conv_project.weight": (cout // 4, 384, 1, 1),
            f"{p}.expand_block.conv_project.bias": (cout // 4,),
            **_bn(f"{p}.expand_block.bn", cout // 4),
        }
        spec |= _vit_block(f"{p}.trans_block")
    spec |= {"trans_norm.weight": (384,), "trans_norm.bias": (384,)}
    spec |= {"trans_cls_head.weight": (1000, 384), "trans_cls_head.bias": (1000,)}
    spec |= {"conv_cls_head.weight": (1000, 1024), "conv_cls_head.bias": (1000,)}
    return spec


def to_mmpretrain_key(key: str) -> str:
    """Official key -> OpenMMLab key (ImageClassifier: backbone + ConformerHead)."""
    if key.startswith(("trans_cls_head.", "conv_cls_head.")):
        return "head." + key
    for old, new in (
        (".norm1.", ".ln1."),
        (".norm2.", ".ln2."),
        (".mlp.fc1.", ".ffn.layers.0.0."),
        (".mlp.fc2.", ".ffn.layers.1."),
    ):
        key = key.replace(old, new)
    return "backbone." + key


# Literal samples read off the public code (not generated): name -> shape.
OFFICIAL_SAMPLE = {
    "cls_token": (1, 1, 384),
    "trans_patch_conv.weight": (384, 64, 4, 4),
    "conv_1.residual_conv.weight": (256, 64, 1, 1),
    "trans_1.mlp.fc1.weight": (1536, 384),
    "conv_trans_5.cnn_block.residual_conv.weight": (512, 256, 1, 1),
    "conv_trans_9.cnn_block.conv2.weight": (256, 256, 3, 3),
    "conv_trans_12.fusion_block.residual_conv.weight": (1024, 1024, 1, 1),
    "conv_trans_12.expand_block.conv_project.weight": (256, 384, 1, 1),
    "conv_trans_7.squeeze_block.conv_project.weight": (384, 128, 1, 1),
    "conv_trans_3.trans_block.attn.qkv.weight": (1152, 384),
    "conv_cls_head.weight": (1000, 1024),
}
MMPRETRAIN_SAMPLE = {
    "backbone.cls_token": (1, 1, 384),
    "backbone.conv1.weight": (64, 3, 7, 7),
    "backbone.trans_1.ln1.weight": (384,),
    "backbone.trans_1.attn.qkv.bias": (1152,),
    "backbone.conv_trans_5.trans_block.ffn.layers.0.0.weight": (1536, 384),
    "backbone.conv_trans_5.trans_block.ffn.layers.1.weight": (384, 1536),
    "backbone.conv_trans_11.trans_block.ln2.bias": (384,),
    "backbone.conv_trans_12.fusion_block.residual_bn.running_var": (1024,),
    "backbone.conv_trans_10.squeeze_block.ln.weight": (384,),
    "backbone.trans_norm.weight": (384,),
    "head.conv_cls_head.weight": (1000, 1024),
    "head.trans_cls_head.weight": (1000, 384),
}


def _n_params(spec: dict[str, tuple[int, ...]]) -> int:
    skip = (".running_mean", ".running_var", ".num_batches_tracked")
    return sum(torch.Size(s).numel() for k, s in spec.items() if not k.endswith(skip))


def _random_state(spec: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for k, shape in spec.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[k] = torch.randn(shape, generator=gen)
    return out


def test_layout_specs_match_the_published_files() -> None:
    official = official_conformer_s_spec()
    mmpre = {to_mmpretrain_key(k): v for k, v in official.items()}
    assert OFFICIAL_SAMPLE.items() <= official.items()
    assert MMPRETRAIN_SAMPLE.items() <= mmpre.items()
    # REFERENCE.md: the OpenMMLab Conformer-S file has 37,673,424 parameters.
    assert _n_params(mmpre) == _n_params(official) == 37_673_424
    assert detect_checkpoint_layout(mmpre) == "mmpretrain"
    assert detect_checkpoint_layout(official) == "official"


@pytest.fixture(scope="module")
def conformer_s_state() -> dict[str, torch.Tensor]:
    return _random_state(official_conformer_s_spec())


@pytest.mark.parametrize("layout", ["official", "mmpretrain"])
def test_load_published_layouts_into_conformer_s(
    tmp_path, conformer_s_state: dict[str, torch.Tensor], layout: str
) -> None:
    torch.manual_seed(0)
    model = create_conformer("conformer_s", S)
    n_ours = sum(p.numel() for p in model.parameters())
    n_heads_ours = (S * 1024 * 9 + S) + (S * 384 + S)
    assert n_ours - n_heads_ours + (1000 * 1024 + 1000) + (1000 * 384 + 1000) == 37_673_424
    head_before = {k: v.clone() for k, v in model.state_dict().items() if "cls_head" in k}
    if layout == "official":
        state = dict(conformer_s_state)
        blob = state
        pairs = [  # (our key, file key)
            ("conv_trans_5.trans_block.mlp.fc1.weight", "conv_trans_5.trans_block.mlp.fc1.weight"),
            ("trans_1.norm1.weight", "trans_1.norm1.weight"),
        ]
    else:
        state = {to_mmpretrain_key(k): v for k, v in conformer_s_state.items()}
        blob = {"meta": {"mmcls_version": "0.18.0"}, "state_dict": state}
        pairs = [
            (
                "conv_trans_5.trans_block.mlp.fc1.weight",
                "backbone.conv_trans_5.trans_block.ffn.layers.0.0.weight",
            ),
            (
                "conv_trans_8.trans_block.mlp.fc2.bias",
                "backbone.conv_trans_8.trans_block.ffn.layers.1.bias",
            ),
            ("trans_1.norm1.weight", "backbone.trans_1.ln1.weight"),
            (
                "conv_trans_11.trans_block.norm2.weight",
                "backbone.conv_trans_11.trans_block.ln2.weight",
            ),
        ]
        assert _n_params({k: tuple(v.shape) for k, v in state.items()}) == 37_673_424
    path = tmp_path / f"{layout}.pth"
    torch.save(blob, path)
    load_pretrained(model, path)

    own = model.state_dict()
    prefix = "backbone." if layout == "mmpretrain" else ""
    pairs += [
        ("cls_token", prefix + "cls_token"),
        (
            "conv_trans_12.fusion_block.residual_bn.running_var",
            prefix + "conv_trans_12.fusion_block.residual_bn.running_var",
        ),
        (
            "conv_trans_9.squeeze_block.conv_project.weight",
            prefix + "conv_trans_9.squeeze_block.conv_project.weight",
        ),
        ("trans_norm.bias", prefix + "trans_norm.bias"),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(own[ours], state[theirs], rtol=0, atol=0)
    for k, v in head_before.items():  # our new heads keep their initialisation
        torch.testing.assert_close(own[k], v, rtol=0, atol=0)
    assert own["conv_cls_head.weight"].shape == (S, 1024, 3, 3)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 32, 48))
    assert out["cam"].shape == (1, S, 2, 3)


# ----------------------------------------------------------------------------------------------
# Loading errors (tiny model, small files)
# ----------------------------------------------------------------------------------------------


def _tiny_file_state(model: Conformer) -> dict[str, torch.Tensor]:
    """An official-layout file for conformer_tiny, with 1000-class ImageNet-style heads."""
    state = {k: v.clone() for k, v in model.state_dict().items() if "cls_head" not in k}
    d, c3 = model.cfg.embed_dim, model.cfg.stage_channels[2]
    state |= {
        "trans_cls_head.weight": torch.randn(1000, d),
        "trans_cls_head.bias": torch.zeros(1000),
    }
    state |= {
        "conv_cls_head.weight": torch.randn(1000, c3),
        "conv_cls_head.bias": torch.zeros(1000),
    }
    return state


def test_tiny_round_trip_wrappers(tmp_path) -> None:
    src = create_conformer("conformer_tiny", S)
    dst = create_conformer("conformer_tiny", S)
    state = _tiny_file_state(src)
    cases = {
        "model_wrapped.pth": {"model": {"module." + k: v for k, v in state.items()}},
        "mm.pth": {"meta": {}, "state_dict": {to_mmpretrain_key(k): v for k, v in state.items()}},
        "no_counters.pth": {k: v for k, v in state.items() if "num_batches" not in k},
    }
    for name, blob in cases.items():
        torch.save(blob, tmp_path / name)
        load_pretrained(dst, tmp_path / name)
        torch.testing.assert_close(dst.trans_1.attn.qkv.weight, src.trans_1.attn.qkv.weight)
        torch.testing.assert_close(dst.conv_1.bn3.running_mean, src.conv_1.bn3.running_mean)


def _expect_error(model: Conformer, path, *needles: str) -> str:
    with pytest.raises(BnrError) as info:
        load_pretrained(model, path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_missing_unexpected_and_wrong_shape_keys_raise(tmp_path) -> None:
    model = create_conformer("conformer_tiny", S)
    good = _tiny_file_state(model)

    missing = dict(good)
    del missing["trans_1.attn.qkv.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    _expect_error(model, tmp_path / "missing.pth", "missing keys", "trans_1.attn.qkv.weight")

    extra = dict(good)
    extra["conv_trans_2.med_block.0.conv1.weight"] = torch.zeros(1)
    torch.save(extra, tmp_path / "extra.pth")
    _expect_error(
        model, tmp_path / "extra.pth", "unexpected keys", "conv_trans_2.med_block.0.conv1.weight"
    )

    wrong = dict(good)
    wrong["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    torch.save(wrong, tmp_path / "wrong.pth")
    _expect_error(model, tmp_path / "wrong.pth", "shape mismatch", "conv1.weight")

    mm = {to_mmpretrain_key(k): v for k, v in good.items()}
    del mm["backbone.conv_trans_3.trans_block.ffn.layers.1.weight"]
    torch.save({"state_dict": mm}, tmp_path / "mm_missing.pth")
    _expect_error(
        model, tmp_path / "mm_missing.pth", "mmpretrain", "conv_trans_3.trans_block.mlp.fc2.weight"
    )


def test_unreadable_and_non_state_dict_files_raise(tmp_path) -> None:
    model = create_conformer("conformer_tiny", S)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    _expect_error(model, text, "unreadable")

    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    _expect_error(model, listing, "not a state dict")

    mixed = tmp_path / "mixed.pth"
    torch.save({"epoch": 3, "lr": 0.1}, mixed)
    _expect_error(model, mixed, "not a state dict")

    _expect_error(model, tmp_path / "absent.pth", "not found")
