"""Load and validate ``params.yaml`` into typed dataclasses.

Every key is declared once here, with its type and allowed range; a wrong type, an unknown key or
an out-of-range value stops with one line naming the key and the value (``param_spec``).
Dataset-dependent settings live in one block per dataset under ``datasets:``, in sub-blocks by
use (``data``, ``train_cam``, ``infer_seeds``, ``eval_seeds``, ``train_affinity``, ``random_walk``,
``train_segmenter``, ``evaluate``). ``Params.per_dataset`` is the block of the dataset the
top-level ``dataset`` key selects (``Params.data`` its ``data`` sub-block), so ``dvc exp run -S
dataset=voc2012`` alone switches to the paper's configuration.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnr.config.param_checks import check_constraints
from bnr.config.param_spec import (
    Check,
    ParamsError,
    auto_or_boolean,
    auto_or_integer,
    boolean,
    build,
    choice,
    integer,
    mapping_of_strings,
    nested,
    none_or_number,
    number,
    number_list,
    spec,
    string,
)
from bnr.config.yaml_load import load_yaml
from bnr.errors import BnrError

DATASETS = ("synthetic", "voc2012", "coco2014")
METHODS = ("bnr", "transcam")


# ----------------------------------------------------------------------------------------------
# Per-dataset blocks


@dataclass(frozen=True)
class DataConfig:
    """``datasets.<d>.data``: where the dataset is and which split each step uses."""

    root: str = spec(string(allow_empty=False))
    train_split: str = spec(string(allow_empty=False))  # train_cam learns from it
    infer_split: str = spec(string(allow_empty=False))  # CAMs inferred for it (affinity input)
    seed_eval_split: str = spec(string(allow_empty=False))  # seeds evaluated on it
    val_split: str = spec(string(allow_empty=False))  # segmentation evaluated on it
    gt_dir: str = spec(string(allow_empty=False))  # seed ground truth
    test_split: str = spec(string(), "")  # predictions for an evaluation server ("" = none)
    name: str = ""  # filled from the dataset block's key


@dataclass(frozen=True)
class CamTrainingSizes:  # datasets.<d>.train_cam: the CAM network and its schedule
    model: str = spec(string(allow_empty=False))  # backbone preset of bnr.models.conformer
    crop_size: int = spec(integer(16, 4096))
    resize_long: tuple = spec(number_list(integer(8, 8192), 2, 2, ordered=True))
    epochs: int = spec(integer(1, 10_000))
    batch_size: int = spec(integer(1, 4096))
    lr: float = spec(number(0, 10, lo_open=True))
    weight_decay: float = spec(number(0, 10))
    # transformer attention init before any loaded weights (bnr.models.conformer.INITS)
    init: str = spec(choice("official", "mimetic"), "official")


@dataclass(frozen=True)
class SeedInferenceSizes:  # datasets.<d>.infer_seeds
    scales: tuple = spec(number_list(integer(16, 4096), 1, 8))  # square side lengths


@dataclass(frozen=True)
class SeedEvaluationSizes:  # datasets.<d>.eval_seeds: the threshold sweep (TransCAM's)
    threshold_start: float = spec(number(0, 1), 0.0)
    threshold_stop: float = spec(number(0, 1), 0.59)  # inclusive
    threshold_step: float = spec(number(0, 1, lo_open=True), 0.01)


@dataclass(frozen=True)
class AffinityTrainingSizes:  # datasets.<d>.train_affinity: AffinityNet and its schedule
    model: str = spec(string(allow_empty=False), "resnet38d")  # ResNet-38d preset
    crop: int = spec(integer(16, 4096), 448)
    epochs: int = spec(integer(1, 10_000), 8)
    batch_size: int = spec(integer(1, 4096), 8)
    lr: float = spec(number(0, 10, lo_open=True), 0.01)


@dataclass(frozen=True)
class WalkSizes:  # datasets.<d>.random_walk (bnr/affinity/walk.py; the defaults are TransCAM's)
    scale: int = spec(integer(1, 8), 1)  # image and CAMs upscaled by it for AffinityNet + walk
    # background score: random_walk.bg_score (fixed) or eval_seeds' best threshold
    background: str = spec(choice("fixed", "seed_threshold"), "fixed")


@dataclass(frozen=True)
class SegmenterTrainingSizes:  # datasets.<d>.train_segmenter: backbone and schedule
    backbone: str = spec(string(allow_empty=False), "resnet38d")  # LargeFOV backbone preset
    crop: int = spec(integer(16, 4096), 448)
    iterations: int = spec(integer(1, 10**8), 20000)
    batch_size: int = spec(integer(1, 4096), 10)
    lr: float = spec(number(0, 10, lo_open=True), 1e-3)
    resize_scale: tuple = spec(number_list(number(0, 8, lo_open=True), 2, 2, ordered=True),
                               (0.5, 1.5))
    bn_momentum: float = spec(number(0, 1, lo_open=True), 3e-4)  # head BN (TransCAM)
    head_lr_mult: float = spec(number(0, 1000, lo_open=True), 10.0)  # head convs (TransCAM 10)
    classifier_init: str = spec(choice("kaiming", "normal"), "kaiming")  # TransCAM kaiming
    class_weights: str = spec(choice("none", "sqrt_median_frequency"), "none")  # TransCAM none


@dataclass(frozen=True)
class EvaluationSizes:  # datasets.<d>.evaluate
    scales: tuple = spec(number_list(number(0, 8, lo_open=True), 1, 8),
                         (0.5, 0.75, 1.0, 1.25, 1.5, 1.75))


@dataclass(frozen=True)
class DatasetConfig:
    """One ``datasets.<d>`` block: the settings that depend on the dataset, one sub-block per
    use, so a stage declares (and DVC re-runs it for) only the sub-blocks it reads."""

    data: DataConfig = nested(DataConfig, required=True)
    train_cam: CamTrainingSizes = nested(CamTrainingSizes, required=True)
    infer_seeds: SeedInferenceSizes = nested(SeedInferenceSizes, required=True)
    eval_seeds: SeedEvaluationSizes = nested(SeedEvaluationSizes)
    train_affinity: AffinityTrainingSizes = nested(AffinityTrainingSizes)
    random_walk: WalkSizes = nested(WalkSizes)
    train_segmenter: SegmenterTrainingSizes = nested(SegmenterTrainingSizes)
    evaluate: EvaluationSizes = nested(EvaluationSizes)


# ----------------------------------------------------------------------------------------------
# Per-stage blocks


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded synthetic dataset (generated by the download stage)."""

    num_train: int = spec(integer(1, 10**7), 1000)
    num_val: int = spec(integer(1, 10**7), 200)
    image_size: int = spec(integer(32, 1024), 128)
    max_objects: int = spec(integer(1, 3), 3)
    class_count_probs: tuple = spec(number_list(number(0, 1), 1, 3), (0.6, 0.3, 0.1))
    object_radius: tuple = spec(number_list(number(1, 512), 2, 2, ordered=True), (14.0, 60.0))
    truncation: float = spec(number(0, 1), 0.3)
    context_prob: float = spec(number(0, 1), 0.85)
    stray_context_prob: float = spec(number(0, 1), 0.08)
    clutter: int = spec(integer(0, 64), 12)
    seed: int = spec(integer(0), 2026)


@dataclass(frozen=True)
class DownloadConfig:
    synthetic: SyntheticConfig = nested(SyntheticConfig)
    existing_root: str = spec(string(), "")  # use data already on disk (real datasets)
    mirrors: dict = spec(mapping_of_strings(), {})  # source name -> replacement URL
    allow_unverified: bool = spec(boolean(), False)  # accept a no-checksum, unknown-length file


@dataclass(frozen=True)
class TrainCamConfig:
    pretrained: str = spec(string(), "auto")  # Conformer weights (bnr/weights/pretrained.py)
    color_jitter: tuple = spec(number_list(number(0, 10), 4, 4), (0.3, 0.3, 0.3, 0.1))
    adam_eps: float = spec(number(0, 1, lo_open=True), 1e-8)
    num_workers: Any = spec(auto_or_integer(0), "auto")  # loader workers (bnr.runtime)
    log_every: int = spec(integer(1), 10)


@dataclass(frozen=True)
class InferSeedsConfig:
    flip: bool = spec(boolean(), True)
    resize: str = spec(choice("square", "keep_aspect"), "square")
    resample: str = spec(choice("pil_bicubic", "bilinear"), "pil_bicubic")  # pass resizing
    batch_passes: bool = spec(boolean(), True)  # run the flips of a scale as one batch
    source: str = spec(choice("transcam", "conv", "clsattn", "attnagg"), "transcam")


@dataclass(frozen=True)
class EvalSeedsConfig:
    overlays: int = spec(integer(0, 64), 6)  # CAM/attention overlay PNGs (Fig. 1 and 5)


@dataclass(frozen=True)
class CrfConfig:
    gt_prob: float = spec(number(0, 1, lo_open=True), 0.7)
    gauss_sxy: float = spec(number(0, 1e4, lo_open=True), 3.0)
    gauss_compat: float = spec(number(0, 1e4), 3.0)
    bilateral_sxy: float = spec(number(0, 1e4, lo_open=True), 50.0)
    bilateral_srgb: float = spec(number(0, 1e4, lo_open=True), 5.0)
    bilateral_compat: float = spec(number(0, 1e4), 10.0)
    iterations: int = spec(integer(1, 100), 10)
    workers: int = spec(integer(0, 1024), 0)  # 0 = all available cores


@dataclass(frozen=True)
class TrainAffinityConfig:
    pretrained: str = spec(string(), "auto")  # ResNet-38 weights (bnr/weights/pretrained.py)
    low_bg: float = spec(number(0, 1), 0.60)  # fixed background score of la (confident fg)
    high_bg: float = spec(number(0, 1), 0.25)  # fixed background score of ha (confident bg)
    radius: int = spec(integer(1, 16), 5)  # pair radius on the 1/8 feature map
    pad_label: str = spec(choice("background", "ignore"), "background")  # crop padding labels
    momentum: float = spec(number(0, 1), 0.9)
    weight_decay: float = spec(number(0, 10), 5e-4)
    poly_power: float = spec(number(0, 100), 0.9)  # poly learning-rate decay (PSA, TransCAM)
    num_workers: Any = spec(auto_or_integer(0), "auto")  # loader workers (bnr.runtime)
    label_crf: CrfConfig = nested(CrfConfig)  # CRF of the la/ha affinity labels


@dataclass(frozen=True)
class RandomWalkConfig:
    beta: float = spec(number(0, 1000, lo_open=True), 14.0)  # affinity power (PSA: 8)
    logt: int = spec(integer(0, 12), 7)  # 2**logt propagation steps (PSA: 8)
    bg_score: float = spec(number(0, 1), 0.42)  # fixed background score (TransCAM)
    radius: int = spec(integer(1, 16), 5)


@dataclass(frozen=True)
class TrainSegmenterConfig:
    arch: str = spec(choice("largefov", "deeplabv3_resnet101"), "largefov")
    pretrained: str = spec(string(), "auto")  # backbone weights (bnr/weights/pretrained.py)
    labels: str = spec(choice("pseudo", "ground_truth"), "pseudo")  # ground_truth: the ceiling
    momentum: float = spec(number(0, 1), 0.9)
    weight_decay: float = spec(number(0, 10), 5e-4)
    poly_power: float = spec(number(0, 100), 0.9)
    align_corners: bool = spec(boolean(), True)  # logits -> crop upsampling (TransCAM: true)
    num_workers: Any = spec(auto_or_integer(0), "auto")  # loader workers (bnr.runtime)
    log_every: int = spec(integer(1), 10)


@dataclass(frozen=True)
class TestCrfConfig:
    """The probability dense CRF of the segmenter test (TransCAM deeplab/utils/DenseCRF.py)."""

    gauss_sxy: float = spec(number(0, 1e4, lo_open=True), 3.0)
    gauss_compat: float = spec(number(0, 1e4), 3.0)
    bilateral_sxy: float = spec(number(0, 1e4, lo_open=True), 32.0)
    bilateral_srgb: float = spec(number(0, 1e4, lo_open=True), 13.0)
    bilateral_compat: float = spec(number(0, 1e4), 10.0)
    iterations: int = spec(integer(1, 100), 1)


@dataclass(frozen=True)
class EvaluateConfig:
    flip: bool = spec(boolean(), True)
    crf: bool = spec(boolean(), True)  # dense CRF on the predictions (TransCAM test: on)
    crf_form: str = spec(choice("probability", "label"), "probability")  # test_crf | crf block
    test_crf: TestCrfConfig = nested(TestCrfConfig)
    average: str = spec(choice("logits", "probs"), "logits")  # over scales + flips (TransCAM)
    align_corners: bool = spec(boolean(), True)  # logit upsampling (TransCAM: true)
    resize: str = spec(choice("bicubic", "bilinear"), "bicubic")  # test image rescaling
    overlays: int = spec(integer(0, 64), 6)
    allow_train_overlap: bool = spec(boolean(), False)  # val ids also in a training split


@dataclass(frozen=True)
class RuntimeConfig:
    """How the networks run (bnr.runtime); shared by every stage that runs one."""

    nproc: int = spec(integer(1, 64), 1)  # training processes (torchrun --nproc_per_node)
    device: str = spec(choice("auto", "cpu", "cuda"), "auto")
    precision: str = spec(choice("auto", "float32", "bfloat16", "float16"), "auto")
    channels_last: Any = spec(auto_or_boolean(), "auto")
    pin_memory: Any = spec(auto_or_boolean(), "auto")
    num_threads: int = spec(integer(0, 1024), 0)  # CPU threads per process; 0 = auto (bnr.threads)


@dataclass(frozen=True)
class PretrainConfig:
    """Classification pretraining on the generated world (bnr/weights/pretrain.py; synthetic)."""

    seed: int = spec(integer(0), 0)  # initialisation and flip seeds
    world_seed: int = spec(integer(0), 4242)  # generator seed of the world's images
    image_size: int = spec(integer(32, 512), 64)  # square side (px), a multiple of the patch
    max_objects: int = spec(integer(1, 3), 2)  # objects per image: 1..max_objects
    clutter: int = spec(integer(0, 64), 10)  # small random strokes per image
    num_val: int = spec(integer(1, 10**7), 1000)  # held-out images
    batch_size: int = spec(integer(1, 4096), 32)
    conformer_model: str = spec(string(allow_empty=False), "conformer_tiny")
    conformer_steps: int = spec(integer(1, 10**8), 2500)
    conformer_lr: float = spec(number(0, 10, lo_open=True), 2e-3)  # AdamW peak learning rate
    resnet_model: str = spec(string(allow_empty=False), "resnet38d_tiny")
    resnet_steps: int = spec(integer(1, 10**8), 1200)
    resnet_lr: float = spec(number(0, 10, lo_open=True), 2e-3)
    weight_decay: float = spec(number(0, 10), 0.05)
    warmup_fraction: float = spec(number(0, 1), 0.05)  # linear warm-up, then cosine decay
    num_workers: Any = spec(auto_or_integer(0), "auto")  # loader workers (bnr.runtime)
    log_every: int = spec(integer(1), 50)


STAGE_BLOCKS: dict[str, type] = {
    "runtime": RuntimeConfig,
    "download": DownloadConfig,
    "train_cam": TrainCamConfig,
    "infer_seeds": InferSeedsConfig,
    "eval_seeds": EvalSeedsConfig,
    "train_affinity": TrainAffinityConfig,
    "random_walk": RandomWalkConfig,
    "crf": CrfConfig,
    "train_segmenter": TrainSegmenterConfig,
    "evaluate": EvaluateConfig,
    "pretrain": PretrainConfig,
}


@dataclass(frozen=True)
class Params:
    dataset: str
    seed: int
    method: str
    noise_scale: float | str  # > 0, or "none": without noise (M** = M*)
    per_dataset: DatasetConfig  # the datasets.<dataset> block of the selected dataset
    download: DownloadConfig
    train_cam: TrainCamConfig
    infer_seeds: InferSeedsConfig
    eval_seeds: EvalSeedsConfig
    train_affinity: TrainAffinityConfig
    random_walk: RandomWalkConfig
    crf: CrfConfig
    train_segmenter: TrainSegmenterConfig
    evaluate: EvaluateConfig
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def data(self) -> DataConfig:  # datasets.<dataset>.data: root and splits
        return self.per_dataset.data

    def protocol(self) -> dict:
        """The params every metrics file records (the selected dataset block included)."""
        blocks = dataclasses.asdict(self.per_dataset)
        return {"dataset": self.dataset, "seed": self.seed, "method": self.method,
                "noise_scale": self.noise_scale, "data": blocks.pop("data"), "per_dataset": blocks}


TOP_LEVEL: dict[str, Check] = {
    "dataset": choice(*DATASETS),
    "seed": integer(0),
    "method": choice(*METHODS),
    "noise_scale": none_or_number(0, 100, "without noise: M** = M*"),
}


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as loaded from YAML) into :class:`Params`."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: must be a mapping at top level, got {type(raw).__name__}")
    known = set(TOP_LEVEL) | {"datasets"} | set(STAGE_BLOCKS)
    if unknown := sorted(str(k) for k in set(raw) - known):
        known_list = ", ".join(sorted(known))
        raise ParamsError(f"params.yaml: unknown key {unknown[0][:60]} (known: {known_list})")
    values: dict[str, Any] = {}
    for key, check in TOP_LEVEL.items():
        if key not in raw:
            raise ParamsError(f"params.yaml: missing key {key}")
        values[key] = check(key, raw[key])
    datasets = raw.get("datasets")
    if not isinstance(datasets, dict) or values["dataset"] not in datasets:
        raise ParamsError(
            f"params.yaml: datasets.{values['dataset']} block is missing "
            f"(dataset is {values['dataset']!r})"
        )
    for name, block in datasets.items():
        if name not in DATASETS:
            raise ParamsError(f"params.yaml: unknown dataset block datasets.{str(name)[:60]}")
        parsed = build(DatasetConfig, block, f"datasets.{name}")
        if name == values["dataset"]:
            values["per_dataset"] = dataclasses.replace(
                parsed, data=dataclasses.replace(parsed.data, name=name))
    for key, cls in STAGE_BLOCKS.items():
        values[key] = build(cls, raw.get(key) or {}, key)
    params = Params(**values, raw=raw)
    check_constraints(params)
    return params


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Read and validate ``path``; a one-line ParamsError for any problem."""
    path = Path(path)
    try:
        raw = load_yaml(path, "params file")  # DVC's loader (bnr.config.yaml_load)
    except BnrError as exc:
        raise ParamsError(str(exc)) from None
    try:
        return parse_params(raw)
    except ParamsError as exc:
        msg = str(exc)
        if path.name != "params.yaml" and msg.startswith("params.yaml:"):
            msg = f"{path}:" + msg[len("params.yaml:") :]
        raise ParamsError(msg) from None
