"""Data-parallel training: two gloo processes on CPU equal one process on the same global batch.

Two processes sum the gradients in another order than one (half batches, other kernel blocking,
gloo's all-reduce), so the weights cannot match bit for bit, and a few SGD / AdamW steps amplify
rounding-level differences by an amount that depends on the CPU's float kernels. What is compared
is what the test is about, in units that follow from the computation:
- per-epoch (per-step) losses, relative;
- each weight tensor's difference between the two runs *relative to the update it received*
  (max |w_two - w_one| / max |w_one - w_init|): a data-parallel bug (a missing all-reduce, a
  gradient averaged over the wrong count, an unsynchronised BatchNorm) is an error of the order
  of the update itself (ratio ~0.1-1), rounding is orders of magnitude below.
- train_cam through the stage CLI (``runtime.nproc: 2`` re-launches under torchrun) against an
  in-process single run. The test uses ``train_cam.adam_eps: 1.0``: with the default 1e-8, AdamW
  divides by sqrt(v) + 1e-8 and so turns rounding-level gradient differences of near-zero
  gradients into full-size (lr) steps; a large epsilon keeps the update proportional to the
  gradient, so the comparison sees the gradients themselves.
- train_affinity and train_segmenter (spawned gloo processes), with dropout switched off in both
  runs (dropout masks are per-process random draws, so they cannot match a single process's).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

import bnr.affinity.affinity_training as psa
import bnr.segmenter.segmenter_training as segmentation
from bnr.cam.cam_model import build_cam_model
from bnr.cam.training import train_cam
from bnr.checkpoints import load_checkpoint
from bnr.config.params import load_params
from bnr.data.synthetic import SyntheticSpec, generate_synthetic
from bnr.data.voc import read_split
from bnr.distributed import (
    SINGLE,
    DistContext,
    SeededItems,
    SyncBatchNorm2d,
    convert_sync_batchnorm,
    ddp_mean,
    relaunch_under_torchrun,
    shard,
)
from bnr.engine import epoch_batches, training_session
from bnr.errors import BnrError
from bnr.steps.train_affinity import training_plan as affinity_plan
from bnr.steps.train_cam import training_plan
from bnr.steps.train_segmenter import training_plan as segmenter_plan
from tests.conftest import REPO, stage_argv, update_dataset, write_weights_fingerprint
from tests.test_psa_pipeline import fake_cams

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2

# Measured 2026-12-06 on an AMD EPYC with AVX-512 (tests run with -s print MEASURED lines), under
# ATEN_CPU_CAPABILITY = avx512 (native) | avx2 | default (no SIMD), the last two with
# ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2, 1 and 2 threads (the same figures: the
# stages run 1 torch thread):
#                     ||two - one|| / ||one - init||     worst tensor's ratio     loss rel. diff
#   CAM               2.0e-7 / 2.0e-7 / 2.0e-7           3.4e-4 / 3.4e-4 / 1.5e-4  1.9e-7 max
#   affinity          7.3e-7 / 9.4e-7 / 1.2e-6           4.8e-4 / 3.9e-4 / 2.4e-4  1.5e-7 max
#   segmenter         1.0e-5 / 2.0e-4 / 1.2e-3           2.4e-3 / 4.0e-2 / 0.145   3.0e-5 (default)
# The segmenter's 4 SGD steps on 32 px crops (BatchNorm over 4x4 maps) amplify rounding most.
# A data-parallel bug (an unsynchronised BatchNorm, gradients summed instead of averaged, a
# missed all-reduce) moves the network by a sizeable fraction of its update (ratio ~0.1-1).
UPDATE_RTOL = 2e-2  # the network's ||two - one|| / ||one - init||: 17x the worst measured
TENSOR_RTOL = 1.0  # any tensor's max |two - one| / max |one - init|: 7x the worst measured
LOSS_RTOL = 1e-3  # per-epoch / per-step losses, relative: 33x the worst measured


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# Single-process pieces


def test_shard_takes_contiguous_slices_and_refuses_uneven_batches() -> None:
    batch = list(range(8))
    parts = [shard(batch, DistContext(r, 4, r)) for r in range(4)]
    assert parts == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert shard(batch, SINGLE) == batch
    with pytest.raises(BnrError, match="batch of 6 does not split over runtime.nproc=4"):
        shard(list(range(6)), DistContext(0, 4, 0))


def test_epoch_batches_cover_a_permutation_with_distinct_sample_seeds() -> None:
    batches = epoch_batches(10, 4, seed=3, epoch=1)
    assert [len(b) for b in batches] == [4, 4]  # the incomplete last batch is dropped
    indices = [i for b in batches for i, _ in b]
    assert len(set(indices)) == 8 and set(indices) <= set(range(10))
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == 8
    assert epoch_batches(10, 4, 3, 1) == batches  # deterministic
    assert epoch_batches(10, 4, 3, 2) != batches  # another epoch, another order
    assert [len(b) for b in epoch_batches(3, 8, 0, 0)] == [3]  # fewer samples than a batch


def test_seeded_items_do_not_depend_on_the_callers_random_state() -> None:
    class Noise(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(3) + i

    items = SeededItems(Noise())
    torch.manual_seed(0)
    a = items[(2, 77)]
    after = torch.rand(1)
    torch.manual_seed(0)
    torch.rand(5)  # another state before the call
    b = items[(2, 77)]
    assert torch.equal(a, b)
    torch.manual_seed(0)
    items[(1, 5)]
    assert torch.equal(torch.rand(1), after)  # the caller's generator was restored


def test_ddp_mean_is_the_plain_mean_in_one_process() -> None:
    total, count = torch.tensor(6.0), torch.tensor(3.0)
    assert float(ddp_mean(total, count, SINGLE)) == 2.0
    assert float(ddp_mean(torch.tensor(0.0), torch.tensor(0.0), SINGLE, min_count=1.0)) == 0.0


def test_convert_keeps_parameters_keys_and_frozen_batchnorms() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    model[2][0].requires_grad_(False)  # frozen (PSA's ImageNet statistics)
    weight = model[1].weight
    keys = list(model.state_dict())
    convert_sync_batchnorm(model)
    assert type(model[1]) is SyncBatchNorm2d and model[1].weight is weight
    assert type(model[2][0]) is nn.BatchNorm2d
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 5, 5)
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(model[1].state_dict())
    y = model[0](x)
    assert torch.equal(model[1](y), plain(y))  # one process: exactly BatchNorm2d


def test_relaunch_only_when_needed(monkeypatch) -> None:
    assert relaunch_under_torchrun(1, ["x.py"]) is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert relaunch_under_torchrun(2, ["x.py"]) is None  # already inside torchrun


# ----------------------------------------------------------------------------------------------
# Two gloo processes


def _reductions_worker(rank: int, port: int, x: torch.Tensor, w: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ctx = DistContext(rank, 2, rank)
    torch.manual_seed(0)
    bn = SyncBatchNorm2d(3)
    xs = x[rank * 2:(rank + 1) * 2].clone().requires_grad_()
    y = bn(xs)
    (y * w[rank * 2:(rank + 1) * 2]).sum().backward()
    # uneven labelled counts: rank 0 has 3 labelled values, rank 1 has 1
    values = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])[rank]
    labelled = torch.tensor([3.0, 1.0])[rank]
    mean = ddp_mean(values.sum(), labelled, ctx)  # x world size: DDP averages the gradients
    dist.all_reduce(mean)
    torch.save({"y": y.detach(), "grad": xs.grad, "wgrad": bn.weight.grad,
                "running_var": bn.running_var, "mean": mean / 2}, f"{out}/r{rank}.pt")
    dist.destroy_process_group()


def test_sync_batchnorm_and_global_mean_over_two_processes(tmp_path: Path) -> None:
    torch.manual_seed(1)
    x, w = torch.randn(4, 3, 5, 5) * 3 + 1, torch.randn(4, 3, 5, 5)
    mp.spawn(_reductions_worker, args=(free_port(), x, w, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in (0, 1))
    bn = nn.BatchNorm2d(3)
    xx = x.clone().requires_grad_()
    y = bn(xx)
    (y * w).sum().backward()
    assert torch.allclose(torch.cat([r0["y"], r1["y"]]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([r0["grad"], r1["grad"]]), xx.grad, atol=1e-5)
    assert torch.allclose(r0["wgrad"] + r1["wgrad"], bn.weight.grad, atol=1e-4)
    assert torch.allclose(r0["running_var"], bn.running_var, atol=1e-5)
    assert float(r0["mean"]) == pytest.approx(16.0 / 4)  # global mean, not (2 + 10) / 2


# ----------------------------------------------------------------------------------------------
# The training loops


def _workspace(tmp: Path) -> Path:
    """Synthetic data, seed CAMs (from the ground truth) and pseudo labels (the ground truth)."""
    root = tmp / "data" / "synthetic"
    generate_synthetic(root, SyntheticSpec(num_train=8, num_val=2, image_size=48, clutter=2))
    fake_cams(root, tmp / "data" / "cams", empty="")
    labels = tmp / "data" / "pseudo_labels"
    labels.mkdir()
    for img_id in read_split(root, "train"):
        shutil.copy(root / "SegmentationClass" / f"{img_id}.png", labels / f"{img_id}.png")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["dataset"] = "synthetic"
    update_dataset(raw, "synthetic", data={"root": str(root)},
                   train_cam={"crop_size": 32, "resize_long": [28, 44], "epochs": 2,
                              "batch_size": 4},
                   train_affinity={"model": "resnet38d_tiny", "crop": 32, "epochs": 2,
                                   "batch_size": 4},
                   train_segmenter={"backbone": "resnet38d_tiny", "crop": 32, "iterations": 4,
                                    "batch_size": 4})
    raw["train_cam"]["adam_eps"] = 1.0  # see the module docstring
    for block in ("train_cam", "train_affinity", "train_segmenter"):
        raw[block]["pretrained"] = ""  # from scratch: the pretrain stage's files are not here
    raw["train_affinity"]["radius"] = 2
    raw["train_affinity"]["label_crf"]["workers"] = 1
    raw["runtime"].update(device="cpu", num_threads=1)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    raw["runtime"]["nproc"] = 2
    (tmp / "params_2.yaml").write_text(yaml.safe_dump(raw))
    return tmp


def _no_dropout(build, init_out: Path | None = None):
    """Dropout off; a segmenter's classifier re-initialised with std 0.01 (with TransCAM's
    kaiming init, std 0.8 for 3 classes, 4 steps move the classifier by more than its signal,
    which is not what this test compares). ``init_out``: where to save the initial weights."""
    def wrapped(*args, **kwargs):
        model = build(*args, **kwargs)
        for m in model.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout2d)):
                m.p = 0.0
        if isinstance(getattr(model, "classifier", None), nn.Conv2d):
            nn.init.normal_(model.classifier.weight, std=0.01)
        if init_out is not None:
            init_out.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, init_out)
        return model
    return wrapped


def _train_psa_and_segmenter(work: Path, out: Path, progress: bool = False,
                             record_init: bool = False) -> None:
    """train_affinity then train_segmenter in ``work`` into ``out`` (dropout off); with
    ``record_init`` the networks' initial weights go to ``out/init_*.pt``."""
    psa.build_affinity_model = _no_dropout(psa.build_affinity_model,
                                           out / "init_affinity.pt" if record_init else None)
    segmentation.build_segmenter = _no_dropout(segmentation.build_segmenter,
                                               out / "init_segmenter.pt" if record_init else None)
    params = load_params(work / "params.yaml")
    with training_session(params.runtime) as (runtime, ctx):
        a = psa.train_affinity(affinity_plan(params), out / "affinity.pt", out / "aff_curves",
                               cam_dir=work / "data" / "cams", run_root=out / "runs_aff",
                               progress=progress, runtime=runtime, ctx=ctx)
        s = segmentation.train_segmenter(segmenter_plan(params), out / "segmenter.pt",
                                         out / "seg_curves", run_root=out / "runs_seg",
                                         progress=progress,
                                         label_dir=work / "data" / "pseudo_labels",
                                         runtime=runtime, ctx=ctx)
    if ctx.is_main:
        (out / "history.json").write_text(json.dumps({"affinity": a["history"],
                                                      "segmenter": s["history"]}))


def _psa_worker(rank: int, port: int, work: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    _train_psa_and_segmenter(Path(work), Path(work) / "two")


def _assert_same_weights(init: dict, one_path: Path, two_path: Path) -> float:
    """The two runs agree to UPDATE_RTOL of the update the single run made (the whole network),
    and each tensor to TENSOR_RTOL of its own update; returns the network's ratio (printed with
    the worst tensor's: the measured margins)."""
    one = load_checkpoint(one_path, {})["model"]
    two = load_checkpoint(two_path, {})["model"]
    assert one.keys() == two.keys() == init.keys()
    worst, worst_key, diff_sq, update_sq = 0.0, "", 0.0, 0.0
    for k in one:
        if not one[k].numel():
            continue
        diff = float((one[k].double() - two[k].double()).abs().max())
        update = float((one[k].double() - init[k].double()).abs().max())
        if one[k].is_floating_point():
            diff_sq += float(((one[k].double() - two[k].double()) ** 2).sum())
            update_sq += float(((one[k].double() - init[k].double()) ** 2).sum())
        if update == 0.0:  # not trained (frozen, or a counter): both runs leave it alone
            assert diff == 0.0, f"{two_path.name} {k}: untrained, yet max |diff| {diff:.3g}"
            continue
        if diff / update > worst:
            worst, worst_key = diff / update, k
        assert diff <= TENSOR_RTOL * update, (
            f"{two_path.name} {k}: max |diff| {diff:.3g} is {diff / update:.3g} of the update "
            f"{update:.3g}")
    ratio = (diff_sq / update_sq) ** 0.5
    print(f"MEASURED {one_path.name}: ||w_two - w_one|| / ||w_one - w_init|| = {ratio:.3g}; "
          f"worst tensor {worst:.3g} ({worst_key})")
    assert ratio <= UPDATE_RTOL, f"{two_path.name}: the runs differ by {ratio:.3g} of the update"
    return ratio


def _assert_close_losses(a: list[dict], b: list[dict], keys: tuple[str, ...]) -> None:
    assert len(a) == len(b)
    worst = 0.0
    for ha, hb in zip(a, b, strict=True):
        for k in keys:
            assert ha[k] == pytest.approx(hb[k], rel=LOSS_RTOL), (k, ha, hb)
            worst = max(worst, abs(ha[k] - hb[k]) / max(abs(ha[k]), 1e-12))
    print(f"MEASURED losses {keys[0]}...: max relative diff {worst:.3g}")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return _workspace(tmp_path_factory.mktemp("ddp"))


def test_train_cam_stage_with_two_processes_equals_one(work: Path) -> None:
    # two processes: the plain stage command, as DVC runs it (runtime.nproc: 2 -> torchrun)
    stage_dir = work / "stage"
    stage_dir.mkdir()
    write_weights_fingerprint(stage_dir, "train_cam")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(stage_argv("train_cam", "--params", str(work / "params_2.yaml")),
                          cwd=stage_dir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run" in proc.stdout
    metrics = json.loads((stage_dir / "metrics" / "train_cam.json").read_text())
    protocol = json.loads((stage_dir / "metrics" / "train_cam.protocol.json").read_text())
    assert protocol["runtime"]["processes"] == 2 and "protocol" not in metrics
    # one process, in this process
    params = load_params(work / "params.yaml")
    plan = training_plan(params)
    torch.manual_seed(params.seed)  # as train_cam does before it builds the network
    init = build_cam_model(plan.model, plan.dataset, plan.init, plan.weights).state_dict()
    with training_session(params.runtime) as (runtime, ctx):
        single = train_cam(plan, work / "one" / "cam.pt", work / "one" / "curves",
                           run_root=work / "one" / "runs", progress=False, runtime=runtime,
                           ctx=ctx)
    _assert_same_weights(init, work / "one" / "cam.pt", stage_dir / "models" / "cam.pt")
    last = single["history"][-1]
    for k in ("loss", "loss_cls", "loss_bnr"):
        assert metrics["final_epoch_loss"][k] == pytest.approx(last[k], rel=LOSS_RTOL)
        print(f"MEASURED train_cam {k}: relative diff "
              f"{abs(metrics['final_epoch_loss'][k] - last[k]) / abs(last[k]):.3g}")


def test_affinity_and_segmenter_with_two_processes_equal_one(work: Path, monkeypatch) -> None:
    monkeypatch.setattr(psa, "build_affinity_model", psa.build_affinity_model)
    monkeypatch.setattr(segmentation, "build_segmenter", segmentation.build_segmenter)
    mp.spawn(_psa_worker, args=(free_port(), str(work)), nprocs=2)
    _train_psa_and_segmenter(work, work / "single", record_init=True)
    two, one = work / "two", work / "single"
    for name in ("affinity", "segmenter"):
        init = torch.load(one / f"init_{name}.pt", weights_only=True)
        _assert_same_weights(init, one / f"{name}.pt", two / f"{name}.pt")
    h1 = json.loads((one / "history.json").read_text())
    h2 = json.loads((two / "history.json").read_text())
    _assert_close_losses(h1["affinity"], h2["affinity"], ("loss", "bg", "fg", "neg",
                                                          "bg_count", "fg_count", "neg_count"))
    _assert_close_losses(h1["segmenter"], h2["segmenter"], ("loss",))
    assert np.isfinite([h["loss"] for h in h1["segmenter"]]).all()
