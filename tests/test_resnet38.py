"""ResNet-38d / AffinityNet shapes, learning-rate groups, MXNet reader and strict weight loading."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnr.errors import BnrError
from bnr.models.mxnet_params import read_mxnet_params, write_mxnet_params
from bnr.models.resnet38 import (
    AffinityNet,
    load_imagenet_weights,
    mxnet_filter_fn,
    mxnet_key,
    param_groups,
    resnet38d,
    resnet38d_tiny,
    torch_filter_fn,
)

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_torch_thread")]


# Independently written from the ademxapp A1 symbol names (bn<stage><block>_<branch>_*,
# res<stage><block>_<branch>_weight, bn7_*, linear1000_*) and PSA's ResNet-38d layer sizes.
REAL_MXNET_KEYS = {
    "arg:conv1a_weight": (64, 3, 3, 3),
    "arg:bn2a_branch2a_gamma": (64,),
    "aux:bn2a_branch2a_moving_mean": (64,),
    "arg:res2a_branch1_weight": (128, 64, 1, 1),
    "arg:res2a_branch2a_weight": (128, 64, 3, 3),
    "arg:res2b1_branch2a_weight": (128, 128, 3, 3),
    "aux:bn3b2_branch2b1_moving_var": (256,),
    "arg:res4b5_branch2b1_weight": (512, 512, 3, 3),
    "arg:bn5a_branch2a_beta": (512,),
    "arg:res5a_branch1_weight": (1024, 512, 1, 1),
    "arg:res5a_branch2a_weight": (512, 512, 3, 3),
    "arg:res5a_branch2b1_weight": (1024, 512, 3, 3),
    "arg:res5b2_branch2b1_weight": (1024, 512, 3, 3),
    "arg:bn6a_branch2a_gamma": (1024,),
    "arg:res6a_branch2a_weight": (512, 1024, 1, 1),
    "arg:res6a_branch2b1_weight": (1024, 512, 3, 3),
    "arg:res6a_branch2b2_weight": (2048, 1024, 1, 1),
    "aux:bn7a_branch2b2_moving_mean": (2048,),
    "arg:res7a_branch1_weight": (4096, 2048, 1, 1),
    "arg:bn7_gamma": (4096,),
    "aux:bn7_moving_var": (4096,),
}
# PSA's converted layout (the published .pth): module.attribute names of network/resnet38d.py.
REAL_TORCH_KEYS = {
    "conv1a.weight": (64, 3, 3, 3),
    "b2.conv_branch1.weight": (128, 64, 1, 1),
    "b2_2.bn_branch2b1.running_mean": (128,),
    "b4_5.conv_branch2b1.weight": (512, 512, 3, 3),
    "b5.conv_branch2b1.weight": (1024, 512, 3, 3),
    "b5_2.bn_branch2a.weight": (1024,),
    "b6.conv_branch2b2.weight": (2048, 1024, 1, 1),
    "b7.bn_branch2b2.bias": (2048,),
    "b7.conv_branch1.weight": (4096, 2048, 1, 1),
    "bn7.running_var": (4096,),
}


@pytest.fixture(scope="module")
def full_meta() -> nn.Module:
    with torch.device("meta"):
        return resnet38d()


def _randomized(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.rand(v.shape, generator=g) + 0.1 if v.is_floating_point() else v.clone())
        for k, v in model.state_dict().items()
    }


def _psa_layout(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict as PSA's converter writes it: no num_batches_tracked counters."""
    return {k: v for k, v in _randomized(model, seed).items() if "num_batches" not in k}


def _mxnet_layout(model: nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    params = {mxnet_key(k): v.numpy() for k, v in _psa_layout(model, seed).items()}
    params["arg:linear1000_weight"] = np.ones((1000, model.num_features), np.float32)
    params["arg:linear1000_bias"] = np.ones((1000,), np.float32)
    return params


def _assert_loaded(model: nn.Module, ref: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for k, v in ref.items():
        assert torch.equal(state[k], v), k


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("h", "w"), [(64, 64), (50, 70)])
def test_tiny_output_stride_8(h: int, w: int) -> None:
    torch.manual_seed(0)
    model = resnet38d_tiny().eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    hs, ws = -(-h // 8), -(-w // 8)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "conv4": (2, model.feature_channels["conv4"], hs, ws),
        "conv5": (2, model.feature_channels["conv5"], hs, ws),
        "conv6": (2, model.num_features, hs, ws),
    }
    assert torch.equal(out, feats["conv6"])
    assert (feats["conv6"] >= 0).all()  # after the final BN-ReLU


def test_full_preset_structure(full_meta: nn.Module) -> None:
    assert full_meta.feature_channels == {"conv4": 512, "conv5": 1024, "conv6": 4096}
    assert full_meta.block_names == [
        "b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2",
        "b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5",
        "b5", "b5_1", "b5_2", "b6", "b7",
    ]  # fmt: skip
    assert full_meta.b5.conv_branch2a.dilation == (1, 1)
    assert full_meta.b5_1.conv_branch2a.dilation == (2, 2)
    assert full_meta.b7.conv_branch2b1.dilation == (4, 4)
    n_params = sum(p.numel() for p in full_meta.parameters())
    assert 104_000_000 < n_params < 106_000_000  # ~ the 402 MB converted file, no classifier


def test_affinity_net_features_and_pairs() -> None:
    torch.manual_seed(0)
    net = AffinityNet(resnet38d_tiny()).eval()
    x = torch.randn(1, 3, 72, 80)
    with torch.no_grad():
        f = net(x)
        aff, src, dst = net.affinity(x, radius=5)
    assert f.shape == (1, 56, 9, 10)
    assert aff.shape == (1, src.numel()) and src.shape == dst.shape
    assert src.numel() == 34 * (9 - 4) * (10 - 8)
    assert ((aff > 0) & (aff <= 1)).all()
    manual = torch.exp(-(f[0, :, 0, 4] - f[0, :, 0, 5]).abs().mean())
    assert torch.allclose(aff[0, 0], manual)  # first pair: (0, 4) -> (0, 5)


def test_full_affinity_channels(full_meta: nn.Module) -> None:
    with torch.device("meta"):
        net = AffinityNet(full_meta)
    assert net.f8_3.weight.shape == (64, 512, 1, 1)
    assert net.f8_4.weight.shape == (128, 1024, 1, 1)
    assert net.f8_5.weight.shape == (256, 4096, 1, 1)
    assert net.f9.weight.shape == (448, 448, 1, 1)


# ---------------------------------------------------------------------------- lr groups


def test_param_groups_cover_trainable_once() -> None:
    net = AffinityNet(resnet38d_tiny())
    groups = param_groups(net, lr=0.01, weight_decay=5e-4)
    assert [g["lr_mult"] for g in groups] == [1.0, 2.0, 10.0, 20.0]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 5e-4, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert set(ids) == trainable
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    bn = {n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    expected_frozen = {n for n, _ in net.named_parameters() if n.rsplit(".", 1)[0] in bn}
    expected_frozen |= {
        n
        for n, _ in net.named_parameters()
        if n.startswith(("backbone.conv1a.", "backbone.b2.", "backbone.b2_1."))
    }
    assert frozen == expected_frozen
    new = {id(p) for m in net.new_layers for p in m.parameters()}
    assert {id(p) for p in groups[2]["params"]} == new
    assert groups[1]["params"] == [] and groups[3]["params"] == []  # no conv biases (PSA)
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # empty groups are accepted


def test_param_groups_biases_and_unfrozen_bn() -> None:
    model = resnet38d_tiny(freeze_bn=False, frozen=())
    groups = param_groups(model)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(".bias") for p in groups[1]["params"])
    assert groups[1]["params"]  # BN biases of an unfrozen net go to the 2x group


def test_train_keeps_frozen_bn_in_eval() -> None:
    model = resnet38d_tiny().train()
    assert model.training
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.b6.dropout_2b1.training
    net = AffinityNet(resnet38d_tiny()).train()
    assert net.training and net.backbone.b7.training
    assert all(not m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))


# ---------------------------------------------------------------------------- MXNet reader


@pytest.mark.parametrize("version", ["legacy", "v1", "v2"])
def test_mxnet_round_trip(tmp_path: Path, version: str) -> None:
    rng = np.random.default_rng(0)
    params = {
        "arg:conv_weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "aux:bn_moving_var": rng.random(7).astype(np.float64),
        "arg:half": rng.random((2, 5)).astype(np.float16),
        "arg:ints": np.arange(6, dtype=np.int32).reshape(3, 2),
        "arg:bytes": np.arange(5, dtype=np.uint8),
    }
    path = tmp_path / "m.params"
    write_mxnet_params(path, params, version=version)
    back = read_mxnet_params(path)
    assert list(back) == list(params)
    for k, v in params.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
        assert back[k].flags.writeable


def test_mxnet_legacy_layout_bytes(tmp_path: Path) -> None:
    # Hand-built pre-2017 file: list magic, reserved, 1 array (uint32 ndim + dims, cpu ctx,
    # float32 flag, data), 1 name.
    raw = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<III", 2, 1, 2)
    raw += struct.pack("<iii", 1, 0, 0) + struct.pack("<2f", 1.5, -2.0)
    raw += struct.pack("<Q", 1) + struct.pack("<Q", 7) + b"arg:w_a"
    path = tmp_path / "h.params"
    path.write_bytes(raw)
    out = read_mxnet_params(path)
    np.testing.assert_array_equal(out["arg:w_a"], np.array([[1.5, -2.0]], np.float32))


def test_mxnet_truncated_and_foreign(tmp_path: Path) -> None:
    good = tmp_path / "g.params"
    write_mxnet_params(good, {"arg:a": np.ones((8, 8), np.float32), "arg:b": np.ones(3)})
    data = good.read_bytes()
    for cut in (10, 30, 60, len(data) - 3):
        bad = tmp_path / f"cut{cut}.params"
        bad.write_bytes(data[:cut])
        with pytest.raises(BnrError, match=rf"cut{cut}\.params: .*(truncated|not an MXNet)"):
            read_mxnet_params(bad)
    foreign = tmp_path / "foreign.params"
    foreign.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(BnrError, match="foreign.params: not an MXNet NDArray file"):
        read_mxnet_params(foreign)
    with pytest.raises(BnrError, match="not found"):
        read_mxnet_params(tmp_path / "absent.params")


# ---------------------------------------------------------------------------- key maps


def test_mxnet_key_map_matches_real_names(full_meta: nn.Module) -> None:
    params = {k: np.empty(s, np.float32) for k, s in REAL_MXNET_KEYS.items()}
    params["arg:linear1000_weight"] = np.empty((1000, 4096), np.float32)
    params["arg:linear1000_bias"] = np.empty((1000,), np.float32)
    state = mxnet_filter_fn(params, full_meta)
    expected = full_meta.state_dict()
    mapped = {k: tuple(v.shape) for k, v in state.items() if "num_batches" not in k}
    assert len(mapped) == len(REAL_MXNET_KEYS)  # classifier dropped, nothing else
    for k, shape in mapped.items():
        assert k in expected, k
        assert tuple(expected[k].shape) == shape, k
    assert state["b4_5.conv_branch2b1.weight"].shape == (512, 512, 3, 3)
    assert state["bn7.running_var"].shape == (4096,)
    for k in REAL_MXNET_KEYS:  # and the inverse map gives the literal names back
        (torch_key,) = [t for t in mapped if mxnet_key(t) == k]
        assert torch_key


def test_torch_key_map_matches_real_names(full_meta: nn.Module) -> None:
    expected = full_meta.state_dict()
    for k, shape in REAL_TORCH_KEYS.items():
        assert k in expected, k
        assert tuple(expected[k].shape) == shape, k
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in full_meta.modules())
    psa_keys = [k for k in expected if "num_batches" not in k]
    assert len(expected) == len(psa_keys) + n_bn
    assert {mxnet_key(k) for k in psa_keys} >= set(REAL_MXNET_KEYS)


# ---------------------------------------------------------------------------- strict loading


@pytest.mark.parametrize("version", ["legacy", "v2"])
def test_load_mxnet_params_strict(tmp_path: Path, version: str) -> None:
    src = resnet38d_tiny()
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    write_mxnet_params(path, _mxnet_layout(src, seed=1), version=version)
    model = resnet38d_tiny()
    load_imagenet_weights(model, path)
    _assert_loaded(model, _psa_layout(src, seed=1))


def test_load_torch_pth_strict(tmp_path: Path) -> None:
    src = resnet38d_tiny()
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth"
    ref = _psa_layout(src, seed=2)
    torch.save(ref, path)
    net = AffinityNet(resnet38d_tiny())
    head = net.f9.weight.detach().clone()
    load_imagenet_weights(net, path)  # an AffinityNet loads into its backbone
    _assert_loaded(net.backbone, ref)
    assert torch.equal(net.f9.weight, head)
    # a classifier in the file is dropped on purpose
    torch.save({**ref, "linear1000.weight": torch.ones(1000, 256)}, path)
    load_imagenet_weights(resnet38d_tiny(), path)


def test_load_errors_name_file_and_keys(tmp_path: Path) -> None:
    src = resnet38d_tiny()
    ref = _psa_layout(src)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in ref.items() if k != "b4.conv_branch1.weight"}, missing)
    with pytest.raises(BnrError, match=r"missing\.pth: .*1 missing keys: b4\.conv_branch1\.weight"):
        load_imagenet_weights(resnet38d_tiny(), missing)

    extra = tmp_path / "extra.params"
    params = _mxnet_layout(src)
    params["arg:res9a_branch2a_weight"] = np.ones(3, np.float32)
    write_mxnet_params(extra, params)
    with pytest.raises(BnrError, match=r"extra\.params: .*unexpected keys: arg:res9a_branch2a"):
        load_imagenet_weights(resnet38d_tiny(), extra)

    wrong = tmp_path / "wrongshape.pth"  # right names, wrong shapes
    torch.save({**ref, "b3.conv_branch2a.weight": torch.zeros(1)}, wrong)
    with pytest.raises(BnrError, match=r"wrongshape\.pth: .*1 shape mismatches: b3\.conv_branch2a"):
        load_imagenet_weights(resnet38d_tiny(), wrong)

    prefixed = tmp_path / "prefixed.pth"  # nothing but the classifier is dropped
    torch.save({"module." + k: v for k, v in ref.items()}, prefixed)
    with pytest.raises(BnrError, match=r"prefixed\.pth: .*missing keys.*unexpected keys"):
        load_imagenet_weights(resnet38d_tiny(), prefixed)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BnrError, match=r"junk\.pth: unreadable weights file"):
        load_imagenet_weights(resnet38d_tiny(), junk)
    with pytest.raises(BnrError, match="not found"):
        load_imagenet_weights(resnet38d_tiny(), tmp_path / "nope.pth")


def test_torch_filter_adds_only_bn_counters() -> None:
    model = resnet38d_tiny()
    ref = _psa_layout(model)
    out = torch_filter_fn(ref, model)
    assert set(out) - set(ref) == {k for k in model.state_dict() if "num_batches" in k}
