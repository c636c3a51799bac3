"""Segmenter: head shapes, poly schedule, multi-scale / flip prediction, exact resume, stages
train_segmenter + evaluate on a tiny synthetic set, the server archive layout, clear errors."""

import dataclasses
import importlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bnr.checkpoints import load_checkpoint, load_state_strict
from bnr.config.params import parse_params
from bnr.data.synthetic import SyntheticSpec, generate_synthetic
from bnr.data.voc import read_split
from bnr.engine import poly_lr
from bnr.errors import BnrError
from bnr.models.deeplab import DeepLabLargeFOV, create_segmenter
from bnr.models.resnet38 import param_groups
from bnr.pipeline.metrics_files import count_values, read_protocol
from bnr.segmenter.evaluation import SERVER_DIR, multiscale_predict, write_server_archive
from bnr.segmenter.segmenter_training import iteration_batches, train_segmenter
from bnr.steps.evaluate import prediction_options
from bnr.steps.train_segmenter import training_plan as segmenter_plan
from tests.conftest import REPO, run_step, update_dataset, write_voc_tree

SIZE = 64


pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_torch_thread")]


def tiny_params(root: Path, **data):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["dataset"] = "synthetic"
    update_dataset(raw, "synthetic", data={"root": str(root), **data},
                   train_segmenter={"backbone": "resnet38d_tiny", "crop": 48, "iterations": 4,
                                    "batch_size": 3, "lr": 0.01},
                   evaluate={"scales": [1.0]})
    raw["train_segmenter"]["log_every"] = 2
    raw["train_segmenter"]["pretrained"] = ""  # from scratch (not the pretrain stage's weights)
    raw["evaluate"]["overlays"] = 2
    return parse_params(raw)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working directory after the crf stage: pseudo labels = the ground truth."""
    work = tmp_path_factory.mktemp("seg")
    root = work / "data" / "synthetic"
    generate_synthetic(root, SyntheticSpec(num_train=6, num_val=2, image_size=SIZE, clutter=2))
    labels = work / "data" / "pseudo_labels"
    labels.mkdir()
    for img_id in read_split(root, "train"):
        shutil.copy(root / "SegmentationClass" / f"{img_id}.png", labels / f"{img_id}.png")
    return work


class _Recorder:
    """A dvclive stand-in (tests run outside a committed git repository)."""

    def __init__(self, dir: str, **_: object) -> None:
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
        self.step = 0
        self.logged: list[tuple[int, str, float]] = []

    def log_params(self, params: dict) -> None:
        (self.dir / "params.yaml").write_text(yaml.safe_dump(params))

    def log_metric(self, name: str, value: float) -> None:
        self.logged.append((self.step, name, value))

    def end(self) -> None:
        pass


def test_largefov_head_shapes() -> None:
    model = create_segmenter("largefov", "resnet38d_tiny", 7)
    assert isinstance(model, DeepLabLargeFOV)
    assert model.head_conv.dilation == (12, 12) and model.head_conv.out_channels == 512
    assert model.classifier.kernel_size == (1, 1) and model.dropout.p == 0.5
    assert type(model.dropout) is torch.nn.Dropout  # TransCAM: nn.Dropout, not Dropout2d
    model.eval()
    x = torch.randn(2, 3, 60, 72)
    feats = model.forward_features(x)
    assert feats.shape == (2, 256, 8, 9)  # ceil(60 / 8), 72 / 8
    assert model.forward_head(feats).shape == (2, 7, 8, 9)
    assert model(x).shape == (2, 7, 8, 9)
    # from scratch the backbone BatchNorms train; head layers are the 10x group
    assert model.backbone.b2.bn_branch2a.weight.requires_grad
    assert model.new_layers == [model.head_conv, model.head_conv2, model.classifier]


def test_largefov_head_layers_and_groups_match_transcam() -> None:
    """TransCAM deeplabv1: conv_fov 3x3 d12 (no bias), bn_fov, ReLU, conv_fov2 1x1 (no bias),
    bn_fov2, ReLU, Dropout(0.5), cls_conv; groups from convs only: new conv weights x10, the
    classifier bias x20, head BatchNorm affine parameters in no group."""
    model = create_segmenter("largefov", "resnet38d_tiny", 3, bn_momentum=3e-4)
    head = [(n, type(m).__name__) for n, m in model.named_children() if n != "backbone"]
    assert head == [("head_conv", "Conv2d"), ("head_bn", "BatchNorm2d"),
                    ("head_conv2", "Conv2d"), ("head_bn2", "BatchNorm2d"),
                    ("dropout", "Dropout"), ("classifier", "Conv2d")]
    assert model.head_conv2.kernel_size == (1, 1) and model.head_conv2.bias is None
    assert (model.head_conv2.in_channels, model.head_conv2.out_channels) == (512, 512)
    assert model.head_bn.momentum == model.head_bn2.momentum == 3e-4
    groups = {g["name"]: g for g in param_groups(model, lr=1.0)}
    ids = {k: {id(p) for p in g["params"]} for k, g in groups.items()}
    assert ids["new_weight"] == {id(model.head_conv.weight), id(model.head_conv2.weight),
                                 id(model.classifier.weight)}
    assert ids["new_bias"] == {id(model.classifier.bias)}
    assert (groups["new_weight"]["lr"], groups["new_bias"]["lr"]) == (10.0, 20.0)
    in_groups = set().union(*ids.values())
    for bn in (model.head_bn, model.head_bn2):
        assert id(bn.weight) not in in_groups and id(bn.bias) not in in_groups
    # 6 keys more than the one-layer head: head_conv2.weight and head_bn2's five entries
    keys = set(model.state_dict())
    assert {k for k in keys if k.startswith("head_conv2.") or k.startswith("head_bn2.")} == {
        "head_conv2.weight", "head_bn2.weight", "head_bn2.bias", "head_bn2.running_mean",
        "head_bn2.running_var", "head_bn2.num_batches_tracked"}
    old_layout = {k: v for k, v in model.state_dict().items()
                  if not k.startswith(("head_conv2.", "head_bn2."))}
    with pytest.raises(BnrError, match="6 missing key"):  # a one-layer-head checkpoint
        load_state_strict(model, old_layout, Path("segmenter.pt"))


def test_deeplabv3_resnet101_shapes() -> None:
    model = create_segmenter("deeplabv3_resnet101", "ignored", 5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 8, 8)


def test_segmenter_errors(tmp_path: Path) -> None:
    with pytest.raises(BnrError, match="unknown segmenter arch"):
        create_segmenter("unet", "resnet38d_tiny", 7)
    with pytest.raises(BnrError, match="unknown segmenter backbone"):
        create_segmenter("largefov", "resnet50", 7)
    with pytest.raises(BnrError, match="weights file not found"):
        create_segmenter("largefov", "resnet38d_tiny", 7, tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1a.weight": torch.zeros(1)}, bad)
    with pytest.raises(BnrError, match="bad.pth") as info:
        create_segmenter("largefov", "resnet38d_tiny", 7, bad)
    assert "\n" not in str(info.value)


def test_poly_lr_values() -> None:
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(1.0, 99, 100, 1.0) == pytest.approx(0.01)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0 and poly_lr(0.01, 120, 100) == 0.0
    values = [poly_lr(1e-3, i, 20, 0.9) for i in range(20)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_iteration_batches_are_resumable() -> None:
    full = list(iteration_batches(7, 3, 0, 0, 8))
    assert len(full) == 8 and all(len(b) == 3 for b in full)
    epoch0 = [i for b in full[:2] for i, _ in b]
    assert len(set(epoch0)) == 6  # one epoch = 7 // 3 batches, no repeats
    assert list(iteration_batches(7, 3, 0, 5, 8)) == full[5:]
    assert list(iteration_batches(2, 3, 0, 0, 1)) [0].__len__() == 2  # fewer images than batch


class _Asym(torch.nn.Module):
    """A stride-8 'segmenter' that is not flip-equivariant (a fixed left-right ramp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(x, 8, ceil_mode=True)  # (B, 3, h, w)
        ramp = torch.linspace(-2, 2, pooled.shape[-1])  # (w,)
        return torch.cat([pooled[:, :2] + ramp, pooled[:, 2:] - ramp], 1)  # (B, 3, h, w)


def test_multiscale_predict_flip_average() -> None:
    torch.manual_seed(0)
    model, image = _Asym(), torch.randn(3, 32, 40)

    def probs(x: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.interpolate(model(x[None]), size=(32, 40), mode="bilinear",
                                             align_corners=False)
        return up.softmax(1)[0]

    ours = {"average": "probs", "align_corners": False, "resize": "bilinear"}
    plain = probs(image)
    flipped = probs(image.flip(-1)).flip(-1)
    assert not torch.allclose(plain, flipped)
    out = multiscale_predict(model, image, [1.0], flip=True, **ours)
    assert out.shape == (3, 32, 40)
    assert torch.allclose(out, (plain + flipped) / 2, atol=1e-6)
    assert torch.allclose(multiscale_predict(model, image, [1.0], flip=False, **ours), plain,
                          atol=1e-6)
    multi = multiscale_predict(model, image, [0.5, 1.0, 1.5], flip=True)
    assert multi.shape == (3, 32, 40)
    assert torch.allclose(multi.sum(0), torch.ones(32, 40), atol=1e-5)


def test_training_resumes_exactly(work: Path, tmp_path: Path) -> None:
    params = segmenter_plan(tiny_params(work / "data" / "synthetic"))
    kw = {"label_dir": work / "data" / "pseudo_labels", "progress": False,
          "live_factory": _Recorder, "checkpoint_every": 2}
    a = train_segmenter(params, tmp_path / "a.pt", tmp_path / "a", run_root=tmp_path / "ra", **kw)
    assert a["iterations"] == 4 and len(a["history"]) == 2
    stopped = train_segmenter(params, tmp_path / "b.pt", tmp_path / "b",
                              run_root=tmp_path / "rb", stop_after_iteration=3, **kw)
    assert stopped == {"interrupted_at_iteration": 3} and not (tmp_path / "b.pt").exists()
    b = train_segmenter(params, tmp_path / "b.pt", tmp_path / "b", run_root=tmp_path / "rb", **kw)
    assert b["resumed_from"] == 2  # the checkpoint of iteration 2; iteration 3 is redone
    wa = load_checkpoint(tmp_path / "a.pt", {"kind": "segmenter"})["model"]
    wb = load_checkpoint(tmp_path / "b.pt", {"kind": "segmenter"})["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not any((tmp_path / "rb").iterdir())  # resume dir removed when finished


def test_missing_pseudo_label_is_clear(work: Path, tmp_path: Path) -> None:
    params = tiny_params(work / "data" / "synthetic")
    labels = tmp_path / "labels"
    shutil.copytree(work / "data" / "pseudo_labels", labels)
    missing = sorted(labels.iterdir())[2]
    missing.unlink()
    with pytest.raises(BnrError, match=f"{missing.name}: pseudo label missing .run the crf") as e:
        train_segmenter(segmenter_plan(params), tmp_path / "m.pt", tmp_path / "c",
                        run_root=tmp_path / "r", label_dir=labels, progress=False,
                        live_factory=_Recorder)
    assert "\n" not in str(e.value) and not (tmp_path / "m.pt").exists()


def test_non_finite_loss_is_clear(work: Path, tmp_path: Path, monkeypatch) -> None:
    import bnr.segmenter.segmenter_training as seg

    monkeypatch.setattr(seg, "segmentation_loss",
                        lambda logits, label, *rest: logits.sum() * float("nan"))
    params = tiny_params(work / "data" / "synthetic")
    with pytest.raises(BnrError, match="loss is not finite at block 1, iteration 1"):
        train_segmenter(segmenter_plan(params), tmp_path / "n.pt", tmp_path / "c",
                        run_root=tmp_path / "r", label_dir=work / "data" / "pseudo_labels",
                        progress=False, live_factory=_Recorder)


def test_stages_end_to_end(work: Path, monkeypatch) -> None:
    monkeypatch.chdir(work)
    params = tiny_params(work / "data" / "synthetic")
    import bnr.segmenter.segmenter_training as seg

    original = seg.train_segmenter
    monkeypatch.setattr(
        importlib.import_module("bnr.steps.train_segmenter"), "train_segmenter",
        lambda *a, **k: original(*a, **k, progress=False, live_factory=_Recorder),
    )
    run_step("train_segmenter", params)
    assert Path("models/segmenter.pt").is_file()
    summary = json.loads(Path("metrics/train_segmenter.json").read_text())
    proto = read_protocol("metrics/train_segmenter.json")
    assert summary["train_images"] == 6 and proto["iterations"] == 4
    assert proto["arch"] == "largefov" and proto["crop"] == 48 and proto["resumed_from"] == 0
    assert count_values(summary) == 3  # final_loss, train_images, seconds_this_run
    assert Path("metrics/train_segmenter/plots/metrics").is_dir()

    run_step("evaluate", params)
    metrics = json.loads(Path("metrics/segmentation.json").read_text())
    assert 0 <= metrics["miou"] <= 100 and metrics["images"] == 2
    assert set(metrics) == {"miou", "images", "seconds", "server_archive_written"}  # per class: CSV
    proto = read_protocol("metrics/segmentation.json")
    for key in ("dataset", "split", "ground_truth", "scales", "flip", "crf", "method",
                "noise_scale", "seed"):
        assert key in proto
    assert proto["split"] == "val" and proto["scales"] == [1.0]
    assert proto["crf"]["iterations"] == 1 and proto["crf_form"] == "probability"
    assert proto["average"] == "logits" and proto["align_corners"] is True
    val = read_split(params.data.root, "val")
    assert sorted(p.stem for p in Path("data/predictions").iterdir()) == sorted(val)
    with Image.open(f"data/predictions/{val[0]}.png") as im:
        assert im.mode == "P" and im.size == (SIZE, SIZE)
    overlays = sorted(Path("metrics/overlays/segmentation").iterdir())
    assert len(overlays) == 2
    with Image.open(overlays[0]) as im:
        width, height = im.size  # image | gt | prediction, titled, a legend below
        assert width == 3 * SIZE + 4 and height > SIZE + 16
    table = Path("metrics/segmentation_per_class.csv").read_text().splitlines()
    assert table[0].startswith("class,iou") and table[1].startswith("background,")
    assert table[-1].startswith("mIoU,")
    assert float(table[-1].split(",")[1]) == pytest.approx(metrics["miou"], abs=0.006)
    assert proto["server_archive"]["images"] == 0
    with tarfile.open("data/server_archive.tar") as tar:
        assert tar.getnames() == []  # synthetic: no server archive


def test_evaluate_with_crf(work: Path) -> None:
    from bnr.segmenter.evaluation import evaluate_split

    params = tiny_params(work / "data" / "synthetic")
    params = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, crf=True),
                                 crf=dataclasses.replace(params.crf, workers=1))
    model = create_segmenter("largefov", "resnet38d_tiny", 7).eval()
    torch.nn.init.constant_(model.classifier.bias, 0.0)
    with torch.no_grad():
        model.classifier.bias[1] = 5.0  # every pixel 'disc': the CRF gets a foreground label
    data = params.data
    conf, stats = evaluate_split(model, None, read_split(data.root, data.val_split),
                                 root=Path(data.root), gt_dir=data.gt_dir, n_labels=7,
                                 options=prediction_options(params), progress=False)
    assert conf.shape == (7, 7) and stats["images"] == 2
    assert conf.sum() > 0 and conf[:, 1].sum() > 0


def test_server_archive_layout(tmp_path: Path) -> None:
    root = write_voc_tree(tmp_path / "VOC2012", {"train": ["a"], "val": ["b"],
                                                 "test": ["t1", "t2"]}, num_classes=21)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["dataset"] = "voc2012"
    update_dataset(raw, "voc2012", data={"root": str(root), "test_split": "test"},
                   evaluate={"scales": [1.0]})
    params = parse_params(raw)
    model = create_segmenter("largefov", "resnet38d_tiny", 21).eval()
    out = tmp_path / "server.tar"
    values = {"dataset": "voc2012", "root": root, "options": prediction_options(params)}
    info = write_server_archive(model, out, test_split="test", progress=False, **values)
    assert info["images"] == 2
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names == [f"{SERVER_DIR}/t1.png", f"{SERVER_DIR}/t2.png"]
        assert SERVER_DIR == "results/VOC2012/Segmentation/comp6_test_cls"
        with Image.open(tar.extractfile(names[0])) as im:
            assert im.mode == "P" and im.size == (32, 24)
            assert np.asarray(im).max() < 21
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".server")] == []

    info = write_server_archive(model, out, test_split="", progress=False, **values)
    assert info["images"] == 0 and "test_split is empty" in info["note"]
    with tarfile.open(out) as tar:
        assert tar.getnames() == []


def test_bfloat16_channels_last_runtime_trains(work: Path, tmp_path: Path) -> None:
    """The GPU defaults (bf16 autocast + channels_last) exercised on the CPU."""
    from bnr.runtime import Runtime

    runtime = Runtime(torch.device("cpu"), "bfloat16", channels_last=True)
    # One thread whatever BNR_TEST_THREADS says: with 2 threads, torch 2.14.1's oneDNN crashes
    # (double free / segfault) in the channels_last convolution backward-weights of this
    # segmenter on an AVX-512 AMD EPYC, in float32 and bfloat16 alike (not under
    # ONEDNN_MAX_CPU_ISA=AVX2, not with contiguous tensors): a library bug, not ours.
    torch.set_num_threads(1)  # the fixture restores the count
    summary = train_segmenter(segmenter_plan(tiny_params(work / "data" / "synthetic")),
                              tmp_path / "s.pt",
                              tmp_path / "c", run_root=tmp_path / "r",
                              label_dir=work / "data" / "pseudo_labels", progress=False,
                              live_factory=_Recorder, runtime=runtime)
    assert all(np.isfinite(h["loss"]) for h in summary["history"])
    state = load_checkpoint(tmp_path / "s.pt", {"kind": "segmenter"})["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_ground_truth_labels_train_on_the_masks(work: Path, monkeypatch) -> None:
    """train_segmenter.labels: ground_truth trains on datasets.<d>.data.gt_dir of the same
    split (the fully supervised ceiling); pseudo on the crf stage's folder; a missing mask is
    one line before any work."""
    step = importlib.import_module("bnr.steps.train_segmenter")
    monkeypatch.chdir(work)
    params = tiny_params(work / "data" / "synthetic")
    seen = []
    monkeypatch.setattr(step, "train_segmenter", lambda plan, ckpt, curves, labels, **k: (
        seen.append(Path(labels)) or {"final_loss": 0.0, "train_images": 6, "iterations": 4,
                                      "seconds_this_run": 0, "resumed_from": 0,
                                      "seconds_per_iteration": 0}))
    gt = dataclasses.replace(params, train_segmenter=dataclasses.replace(
        params.train_segmenter, labels="ground_truth"))
    run_step("train_segmenter", params)
    run_step("train_segmenter", gt)
    assert seen == [Path("data/pseudo_labels"), work / "data" / "synthetic" / "SegmentationClass"]
    assert read_protocol("metrics/train_segmenter.json")["trained_on"] == "ground_truth"
    inputs = step.Inputs(pseudo_labels=Path("data/pseudo_labels"), weights=Path("w.json"))
    monkeypatch.setattr(step, "verify_fingerprint", lambda *a: None)
    first = read_split(gt.data.root, "train")[0]
    mask = work / "data" / "synthetic" / "SegmentationClass" / f"{first}.png"
    saved = mask.read_bytes()
    mask.unlink()
    try:
        with pytest.raises(BnrError, match="mask of an image of split 'train' is missing"):
            step.check(gt, inputs)
        step.check(params, inputs)  # the pseudo labels do not need the masks
    finally:
        mask.write_bytes(saved)


def test_classifier_init_and_head_multiplier_are_options() -> None:
    """datasets.<d>.train_segmenter.classifier_init: TransCAM's Kaiming fan-out gives logits of
    std ~10 on a from-scratch backbone in training (an initial loss far above ln S);
    DeepLab-v1's N(0, 0.01) starts near 0. head_lr_mult sets the new layers' groups."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    stds = {}
    for init in ("kaiming", "normal"):
        torch.manual_seed(0)
        model = create_segmenter("largefov", "resnet38d_tiny", 7, classifier_init=init).train()
        with torch.no_grad():
            stds[init] = float(model(x).std())
    assert stds["kaiming"] > 5.0 > 1.0 > stds["normal"], stds  # measured 11.5 and 0.23
    with pytest.raises(BnrError, match="unknown classifier init"):
        create_segmenter("largefov", "resnet38d_tiny", 7, classifier_init="xavier")
    groups = param_groups(model, 0.01, 5e-4, (1.0, 2.0, 3.0, 6.0))
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.02, 0.03, 0.06])
    assert [g["lr_mult"] for g in param_groups(model, 0.01)] == [1.0, 2.0, 10.0, 20.0]


IGNORE = 255


def test_class_weights_from_label_shares(tmp_path) -> None:
    """sqrt_median_frequency: w = sqrt(median share / share) over the labelled pixels (255 and
    absent classes aside); the weighted loss is the weighted mean, = the plain loss at w = 1."""
    from bnr.io import write_label_png
    from bnr.segmenter.segmenter_training import label_class_weights, segmentation_loss

    lab = np.zeros((10, 10), np.uint8)
    lab[:, :1] = 1  # 10 % class 1, 90 % background, class 2 absent, a 255 row ignored
    lab[0] = 255
    write_label_png(tmp_path / "a.png", lab)
    w = label_class_weights([tmp_path / "a.png"], 3)
    f0, f1 = 81 / 90, 9 / 90
    med = (f0 + f1) / 2
    assert w.tolist() == pytest.approx([(med / f0) ** 0.5, (med / f1) ** 0.5, 1.0], rel=1e-5)
    torch.manual_seed(0)
    logits, label = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 8, 8))
    label[0, 0] = IGNORE
    plain = segmentation_loss(logits, label)
    assert segmentation_loss(logits, label, class_weights=torch.ones(3)) == pytest.approx(
        float(plain), rel=1e-6)
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=True)
    per_pixel = torch.nn.functional.cross_entropy(up, label, ignore_index=IGNORE,
                                                  reduction="none")
    weights = torch.tensor([0.1, 5.0, 1.0])
    valid = label != IGNORE
    expected = (per_pixel[valid] * weights[label[valid]]).sum() / weights[label[valid]].sum()
    got = segmentation_loss(logits, label, class_weights=weights)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(got) != pytest.approx(float(plain), rel=1e-3)
