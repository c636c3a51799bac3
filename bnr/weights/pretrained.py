"""Where the ``*.pretrained`` keys point.

``train_cam.pretrained``, ``train_affinity.pretrained`` and ``train_segmenter.pretrained`` take

* ``auto`` (the default): the paper's choice for the dataset. ``voc2012`` / ``coco2014``: the
  ImageNet files (``imagenet`` below), so ``-S dataset=voc2012`` alone is the paper's
  configuration; ``synthetic``: from scratch (the demo's pretrained backbone left M* where it
  was, docs/results.md "With the pretrained backbone");
* ``imagenet``: the ImageNet file of the paper for that network (:data:`IMAGENET_FILES`: the
  OpenMMLab Conformer-S, the MXNet ResNet-38 of PSA); the ``weights`` stage downloads a missing
  one and verifies it (bnr/weights/fingerprints.py);
* ``pretrain``: the pretrain stage's file (:data:`PRETRAINED_FILES`, the synthetic world's
  "ImageNet", bnr/weights/pretrain.py);
* ``""``: from scratch; anything else: a weights file path.

The torchvision segmenter (``train_segmenter.arch: deeplabv3_resnet101``) has no ImageNet or
pretrain file here: ``auto`` means from scratch for it, and ``imagenet`` / ``pretrain``, which
would be silently ignored, are an error.
"""

from __future__ import annotations

from bnr.errors import BnrError

AUTO, IMAGENET, PRETRAIN = "auto", "imagenet", "pretrain"
# The pretrain stage's outputs (its cmd in dvc.yaml writes them here; a test keeps them equal).
PRETRAINED_FILES = {"conformer": "models/pretrain/conformer.pth",
                    "resnet38": "models/pretrain/resnet38d.pth"}
# The paper's ImageNet weights; the file names are the download sources' (bnr/data/sources.py,
# conformer_s and resnet38_mxnet; a test keeps them equal), so the weights stage fetches them.
IMAGENET_FILES = {
    "conformer": "models/pretrained/conformer-small-p16_3rdparty_8xb128_in1k_20211206-3065dcf5.pth",
    "resnet38": "models/pretrained/ilsvrc-cls_rna-a1_cls1000_ep-0001.params",
}
TRAINING_BLOCKS = ("train_cam", "train_affinity", "train_segmenter")  # with a pretrained key
PAPER_DATASETS = ("voc2012", "coco2014")


def pretrained_path(value: str, dataset: str, kind: str, key: str = "pretrained") -> str:
    """The weights file that ``value`` of a ``*.pretrained`` key means for ``dataset`` and the
    network family ``kind`` (``conformer``, ``resnet38``, or another family, which has no
    ImageNet or pretrain file here); "" = from scratch."""
    given = value
    if value == AUTO:
        value = IMAGENET if dataset in PAPER_DATASETS else ""
    files = {IMAGENET: IMAGENET_FILES, PRETRAIN: PRETRAINED_FILES}.get(value)
    if files is not None and kind not in files:
        if given == AUTO:
            return ""
        raise BnrError(f"params.yaml: {key}: {value} names no file for the {kind} network "
                       "(there is none here); use \"\" (from scratch) or a weights file")
    return value if files is None else files[kind]


def stage_weights(block: str, value: str, dataset: str, segmenter_arch: str = "largefov") -> str:
    """The weights file ``value`` of ``<block>.pretrained`` means for the training stage
    ``block`` (one of :data:`TRAINING_BLOCKS`): the ``dataset`` decides ``auto``, the stage's
    network family decides the file (the segmenter's family follows ``segmenter_arch``,
    ``train_segmenter.arch``). "" = from scratch."""
    if block == "train_cam":
        family = "conformer"
    elif block == "train_affinity" or segmenter_arch == "largefov":
        family = "resnet38"
    else:
        family = "resnet101"  # torchvision's DeepLabV3: no file here
    return pretrained_path(value, dataset, family, f"{block}.pretrained")
