"""Load and validate ``params.yaml`` into typed dataclasses.

Every key is declared once here, with its type and allowed range. A wrong type, an unknown key or
an out-of-range value stops with one line naming the key and the value, for example::

    params.yaml: noise_scale must be a number >= 0, got 'abc'

Dataset-dependent settings (image and crop size, epochs, batch size, model preset, inference
scales) live in one block per dataset under ``datasets:``; ``Params.data`` is the block of the
dataset selected by the top-level ``dataset`` key, so ``dvc exp run -S dataset=voc2012`` alone
switches to the paper's configuration.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bnr.errors import BnrError

DATASETS = ("synthetic", "voc2012", "coco2014")
METHODS = ("bnr", "transcam")

Check = Callable[[str, Any], Any]


class ParamsError(BnrError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _fail(key: str, must: str, value: Any) -> None:
    raise ParamsError(f"params.yaml: {key} must be {must}, got {value!r}")


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Check:
    """A real number, optionally bounded: ``lo <= x`` (or ``lo < x``) and ``x <= hi``."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    must = "a number" + (" " + " and ".join(parts) if parts else "")

    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            _fail(key, must, value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            _fail(key, must, value)
        if hi is not None and value > hi:
            _fail(key, must, value)
        return float(value)

    return check


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """A whole number, optionally bounded (inclusive)."""
    must = "an integer" + (f" >= {lo}" if lo is not None else "") + (
        f" and <= {hi}" if hi is not None else ""
    )

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, must, value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            _fail(key, must, value)
        return int(value)

    return check


def choice(*options: str) -> Check:
    """One of a fixed set of strings."""
    must = "one of " + ", ".join(options)

    def check(key: str, value: Any) -> str:
        if value not in options:
            _fail(key, must, value)
        return str(value)

    return check


def boolean() -> Check:
    def check(key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            _fail(key, "true or false", value)
        return value

    return check


def auto_or_integer(lo: int = 0) -> Check:
    def check(key: str, value: Any) -> str | int:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            _fail(key, f"auto or an integer >= {lo}", value)
        return int(value)

    return check


def auto_or_boolean() -> Check:
    def check(key: str, value: Any) -> str | bool:
        if value != "auto" and not isinstance(value, bool):
            _fail(key, "auto, true or false", value)
        return value

    return check


def string(allow_empty: bool = True) -> Check:
    def check(key: str, value: Any) -> str:
        if value is None and allow_empty:
            return ""
        if not isinstance(value, str) or (not allow_empty and not value):
            _fail(key, "a string" if allow_empty else "a non-empty string", value)
        return value

    return check


def number_list(
    item: Check, min_len: int = 1, max_len: int | None = None, ordered: bool = False
) -> Check:
    """A list of numbers, each checked by ``item``; ``ordered``: non-decreasing."""
    size = f"{min_len}" + (f" to {max_len}" if max_len != min_len else "")
    if max_len is None:
        size = f"at least {min_len}"

    def check(key: str, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)):
            _fail(key, f"a list of {size} numbers", value)
        if len(value) < min_len or (max_len is not None and len(value) > max_len):
            _fail(key, f"a list of {size} numbers", value)
        out = tuple(item(f"{key}[{i}]", v) for i, v in enumerate(value))
        if ordered and any(a > b for a, b in itertools.pairwise(out)):
            _fail(key, "in non-decreasing order", value)
        return out

    return check


def mapping_of_strings() -> Check:
    def check(key: str, value: Any) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            _fail(key, "a mapping of names to strings", value)
        return dict(value)

    return check


def spec(check: Check, default: Any = dataclasses.MISSING) -> Any:
    """Declare a params field: its check, and a default (absent = the key is required)."""
    if default is dataclasses.MISSING:
        return field(metadata={"check": check})
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


def build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from mapping ``data``; ``prefix`` names the block in messages."""
    if not isinstance(data, dict):
        raise ParamsError(f"params.yaml: {prefix} must be a mapping, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key {prefix}.{unknown[0]} (known: {', '.join(sorted(names))})"
        )
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"params.yaml: missing key {key}")
            continue
        if "nested" in f.metadata:
            values[f.name] = build(f.metadata["nested"], data[f.name], key)
        else:
            values[f.name] = f.metadata["check"](key, data[f.name])
    return cls(**values)


def nested(cls: type) -> Any:
    """Declare a field holding a nested params block of dataclass ``cls``."""
    return field(default_factory=cls, metadata={"nested": cls})


# ----------------------------------------------------------------------------------------------
# Per-dataset blocks


@dataclass(frozen=True)
class DatasetConfig:
    """The settings that depend on the dataset (one block per dataset in params.yaml)."""

    root: str = spec(string(allow_empty=False))
    train_split: str = spec(string(allow_empty=False))  # train_cam learns from it
    infer_split: str = spec(string(allow_empty=False))  # CAMs inferred for it (affinity input)
    seed_eval_split: str = spec(string(allow_empty=False))  # seeds evaluated on it
    val_split: str = spec(string(allow_empty=False))  # segmentation evaluated on it
    gt_dir: str = spec(string(allow_empty=False))  # seed ground truth
    model: str = spec(string(allow_empty=False))  # backbone preset of bnr.models.conformer
    crop_size: int = spec(integer(16))
    resize_long: tuple = spec(number_list(integer(8), 2, 2, ordered=True))
    epochs: int = spec(integer(1))
    batch_size: int = spec(integer(1))
    lr: float = spec(number(0, lo_open=True))
    weight_decay: float = spec(number(0))
    infer_scales: tuple = spec(number_list(integer(16), 1, 8))  # square side lengths
    affinity_model: str = spec(string(allow_empty=False), "resnet38d")  # AffinityNet backbone
    affinity_crop: int = spec(integer(16), 448)
    affinity_epochs: int = spec(integer(1), 8)
    affinity_batch_size: int = spec(integer(1), 8)
    affinity_lr: float = spec(number(0, lo_open=True), 0.01)
    segmenter_backbone: str = spec(string(allow_empty=False), "resnet38d")  # LargeFOV backbone
    segmenter_crop: int = spec(integer(16), 448)
    segmenter_iterations: int = spec(integer(1), 20000)
    segmenter_batch_size: int = spec(integer(1), 10)
    segmenter_lr: float = spec(number(0, lo_open=True), 1e-3)
    segmenter_resize_scale: tuple = spec(number_list(number(0, lo_open=True), 2, 2, ordered=True),
                                         (0.5, 1.5))
    eval_scales: tuple = spec(number_list(number(0, lo_open=True), 1, 8),
                              (0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
    test_split: str = spec(string(), "")  # predictions for an evaluation server ("" = none)
    name: str = ""  # filled from the block's key


# ----------------------------------------------------------------------------------------------
# Per-stage blocks


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded synthetic dataset (generated by the download stage)."""

    num_train: int = spec(integer(1), 1000)
    num_val: int = spec(integer(1), 200)
    image_size: int = spec(integer(32, 1024), 128)
    max_objects: int = spec(integer(1, 3), 3)
    context_prob: float = spec(number(0, 1), 0.85)
    stray_context_prob: float = spec(number(0, 1), 0.08)
    clutter: int = spec(integer(0, 64), 12)
    seed: int = spec(integer(0), 2026)


@dataclass(frozen=True)
class DownloadConfig:
    synthetic: SyntheticConfig = nested(SyntheticConfig)
    existing_root: str = spec(string(), "")  # use data already on disk (real datasets)
    mirrors: dict = spec(mapping_of_strings(), {})  # source name -> replacement URL


@dataclass(frozen=True)
class TrainCamConfig:
    pretrained: str = spec(string(), "")  # ImageNet Conformer weights; "" = from scratch
    color_jitter: tuple = spec(number_list(number(0), 4, 4), (0.3, 0.3, 0.3, 0.1))
    adam_eps: float = spec(number(0, lo_open=True), 1e-8)
    num_workers: Any = spec(auto_or_integer(0), "auto")  # loader workers (bnr.runtime)
    log_every: int = spec(integer(1), 10)


@dataclass(frozen=True)
class InferSeedsConfig:
    flip: bool = spec(boolean(), True)
    resize: str = spec(choice("square", "keep_aspect"), "square")
    batch_passes: bool = spec(boolean(), True)  # run the flips of a scale as one batch
    source: str = spec(choice("transcam", "conv", "clsattn", "attnagg"), "transcam")


@dataclass(frozen=True)
class EvalSeedsConfig:
    threshold_start: float = spec(number(0, 1), 0.0)
    threshold_stop: float = spec(number(0, 1), 0.59)  # inclusive
    threshold_step: float = spec(number(0, 1, lo_open=True), 0.01)
    overlays: int = spec(integer(0, 64), 6)  # CAM/attention overlay PNGs (Fig. 1 and 5)


@dataclass(frozen=True)
class CrfConfig:
    gt_prob: float = spec(number(0, 1, lo_open=True), 0.7)
    gauss_sxy: float = spec(number(0, lo_open=True), 3.0)
    gauss_compat: float = spec(number(0), 3.0)
    bilateral_sxy: float = spec(number(0, lo_open=True), 50.0)
    bilateral_srgb: float = spec(number(0, lo_open=True), 5.0)
    bilateral_compat: float = spec(number(0), 10.0)
    iterations: int = spec(integer(1, 100), 10)
    workers: int = spec(integer(0), 0)  # 0 = all available cores


@dataclass(frozen=True)
class TrainAffinityConfig:
    pretrained: str = spec(string(), "")  # ImageNet ResNet-38 (.params or .pth); "" = scratch
    low_bg: float = spec(number(0, 1), 0.60)  # fixed background score of la (confident fg)
    high_bg: float = spec(number(0, 1), 0.25)  # fixed background score of ha (confident bg)
    radius: int = spec(integer(1, 16), 5)  # pair radius on the 1/8 feature map
    momentum: float = spec(number(0, 1), 0.9)
    weight_decay: float = spec(number(0), 5e-4)
    num_workers: Any = spec(auto_or_integer(0), "auto")  # loader workers (bnr.runtime)
    label_crf: CrfConfig = nested(CrfConfig)  # CRF of the la/ha affinity labels


@dataclass(frozen=True)
class RandomWalkConfig:
    beta: float = spec(number(0, lo_open=True), 14.0)  # affinity power (PSA: 8)
    logt: int = spec(integer(0, 12), 7)  # 2**logt propagation steps (PSA: 8)
    bg_score: float = spec(number(0, 1), 0.42)  # fixed background score (TransCAM)
    radius: int = spec(integer(1, 16), 5)


@dataclass(frozen=True)
class TrainSegmenterConfig:
    arch: str = spec(choice("largefov", "deeplabv3_resnet101"), "largefov")
    pretrained: str = spec(string(), "")  # ImageNet backbone weights; "" = from scratch
    momentum: float = spec(number(0, 1), 0.9)
    weight_decay: float = spec(number(0), 5e-4)
    poly_power: float = spec(number(0), 0.9)
    num_workers: Any = spec(auto_or_integer(0), "auto")  # loader workers (bnr.runtime)
    log_every: int = spec(integer(1), 10)


@dataclass(frozen=True)
class EvaluateConfig:
    flip: bool = spec(boolean(), True)
    crf: bool = spec(boolean(), False)  # dense CRF on the predictions (settings: crf block)
    overlays: int = spec(integer(0, 64), 6)


@dataclass(frozen=True)
class RuntimeConfig:
    """How the networks run (bnr.runtime); shared by every stage that runs one."""

    nproc: int = spec(integer(1, 64), 1)  # training processes (torchrun --nproc_per_node)
    device: str = spec(choice("auto", "cpu", "cuda"), "auto")
    precision: str = spec(choice("auto", "float32", "bfloat16", "float16"), "auto")
    channels_last: Any = spec(auto_or_boolean(), "auto")
    pin_memory: Any = spec(auto_or_boolean(), "auto")
    num_threads: int = spec(integer(0, 1024), 0)  # torch CPU threads per process; 0 = cores/nproc


@dataclass(frozen=True)
class PretrainConfig:
    """Classification pretraining on the generated world (bnr/pretrain.py, synthetic only)."""

    seed: int = spec(integer(0), 0)  # initialisation and flip seeds
    world_seed: int = spec(integer(0), 4242)  # generator seed of the world's images
    image_size: int = spec(integer(32, 512), 64)  # square side (px), a multiple of the patch
    max_objects: int = spec(integer(1, 3), 2)  # objects per image: 1..max_objects
    clutter: int = spec(integer(0, 64), 10)  # small random strokes per image
    num_val: int = spec(integer(1), 1000)  # held-out images
    batch_size: int = spec(integer(1), 32)
    conformer_model: str = spec(string(allow_empty=False), "conformer_tiny")
    conformer_steps: int = spec(integer(1), 2500)
    conformer_lr: float = spec(number(0, lo_open=True), 2e-3)  # AdamW peak learning rate
    resnet_model: str = spec(string(allow_empty=False), "resnet38d_tiny")
    resnet_steps: int = spec(integer(1), 1200)
    resnet_lr: float = spec(number(0, lo_open=True), 2e-3)
    weight_decay: float = spec(number(0), 0.05)
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
    noise_scale: float
    data: DatasetConfig  # the block of the selected dataset
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

    def protocol(self) -> dict:
        """The params every metrics file records (the selected dataset block included)."""
        return {
            "dataset": self.dataset,
            "seed": self.seed,
            "method": self.method,
            "noise_scale": self.noise_scale,
            "data": {k: v for k, v in dataclasses.asdict(self.data).items()},
        }


TOP_LEVEL: dict[str, Check] = {
    "dataset": choice(*DATASETS),
    "seed": integer(0),
    "method": choice(*METHODS),
    "noise_scale": number(0),
}


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as loaded from YAML) into :class:`Params`."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: must be a mapping at top level, got {type(raw).__name__}")
    known = set(TOP_LEVEL) | {"datasets"} | set(STAGE_BLOCKS)
    unknown = sorted(set(raw) - known)
    if unknown:
        known_list = ", ".join(sorted(known))
        raise ParamsError(f"params.yaml: unknown key {unknown[0]} (known: {known_list})")
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
            raise ParamsError(f"params.yaml: unknown dataset block datasets.{name}")
        parsed = build(DatasetConfig, block, f"datasets.{name}")
        if name == values["dataset"]:
            values["data"] = dataclasses.replace(parsed, name=name)
    for key, cls in STAGE_BLOCKS.items():
        values[key] = build(cls, raw.get(key) or {}, key)
    return Params(**values, raw=raw)


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Read and validate ``path``; a one-line ParamsError for any problem."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return parse_params(raw)
    except ParamsError as exc:
        msg = str(exc)
        if path.name != "params.yaml" and msg.startswith("params.yaml:"):
            msg = f"{path}:" + msg[len("params.yaml:") :]
        raise ParamsError(msg) from None
