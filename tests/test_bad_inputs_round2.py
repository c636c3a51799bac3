"""Issue 22, the second round of bad inputs: whole classes of mistakes, each refused with a
non-zero exit and exactly one ``error:`` line naming the file or key, no traceback, no partial
output. One table per class; the instances go beyond the issue's own examples.

Stage cases run :func:`bnr.pipeline.stage.stage_main` in this process, as
``tests/test_bad_inputs.py`` does; they fail before any work, so each costs milliseconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import update_dataset, write_weights_fingerprint

try:
    from tests.test_bad_inputs import one_error_line, run_stage, tiny_raw, work  # noqa: F401
except ImportError:  # tests/ is not a package
    from test_bad_inputs import one_error_line, run_stage, tiny_raw, work  # noqa: F401

SPLITS = Path("ImageSets/Segmentation")


def dumped(change: Callable[[dict], object]) -> Callable[[Path], str]:
    """A case's params text: the tiny configuration, changed, written by PyYAML."""
    def text(work: Path) -> str:
        raw = tiny_raw(work / "voc")
        change(raw)
        return yaml.safe_dump(raw)
    return text


def _set(path: str, value: object) -> Callable[[Path], str]:
    def change(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    return dumped(change)


# --- 1. numbers that are not sane numbers ------------------------------------------------------

SANE_NUMBER_CASES = [  # (id, key, value, text of the line)
    ("inf-noise-scale", "noise_scale", float("inf"),
     "noise_scale must be none (without noise: M** = M*) or a finite number > 0 and <= 100, "
     "got inf"),
    ("minus-inf-lr", "datasets.synthetic.train_cam.lr", float("-inf"),
     "datasets.synthetic.train_cam.lr must be a finite number"),
    ("nan-weight-decay", "datasets.synthetic.train_cam.weight_decay", float("nan"),
     "datasets.synthetic.train_cam.weight_decay must be a finite number >= 0 and <= 10, got nan"),
    ("inf-threshold-step", "datasets.synthetic.eval_seeds.threshold_step", float("inf"),
     "datasets.synthetic.eval_seeds.threshold_step must be a finite number"),
    ("huge-int-as-float", "random_walk.beta", 10**400,
     "random_walk.beta must be a finite number"),
    ("absurd-noise-scale", "noise_scale", 1e300, "noise_scale must be none (without noise"),
    ("absurd-lr", "datasets.synthetic.train_affinity.lr", 1e6,
     "datasets.synthetic.train_affinity.lr must be a number > 0 and <= 10, got 1000000.0"),
    ("seed-beyond-torch", "seed", 2**64, "seed must be an integer >= 0 and < 2**63, got "),
    ("seed-negative", "seed", -1, "seed must be an integer >= 0 and < 2**63, got -1"),
    ("synthetic-seed-beyond-int64", "download.synthetic.seed", 2**63,
     "download.synthetic.seed must be an integer >= 0 and < 2**63"),
    ("absurd-epochs", "datasets.synthetic.train_cam.epochs", 10**12,
     "datasets.synthetic.train_cam.epochs must be an integer >= 1 and <= 10000"),
    ("absurd-iterations", "datasets.synthetic.train_segmenter.iterations", 10**18,
     "datasets.synthetic.train_segmenter.iterations must be an integer >= 1 and <= 100000000"),
    ("absurd-eval-scale", "datasets.synthetic.evaluate.scales", [1.0, 1e9],
     "datasets.synthetic.evaluate.scales[1] must be a number > 0 and <= 8"),
    ("inf-resize-scale", "datasets.synthetic.train_segmenter.resize_scale", [0.5, float("inf")],
     "datasets.synthetic.train_segmenter.resize_scale[1] must be a finite number"),
    ("absurd-workers", "train_cam.num_workers", 10**6,
     "train_cam.num_workers must be auto or an integer >= 0 and <= 1024"),
    ("hue-beyond-half", "train_cam.color_jitter", [0.3, 0.3, 0.3, 0.9],
     "train_cam.color_jitter[3] (hue) must be <= 0.5, got 0.9"),
    ("inf-crf-sxy", "crf.bilateral_sxy", float("inf"), "crf.bilateral_sxy must be a finite"),
]


@pytest.mark.parametrize("key, value, needle", [c[1:] for c in SANE_NUMBER_CASES],
                         ids=[c[0] for c in SANE_NUMBER_CASES])
def test_numbers_are_finite_and_fit_their_use(work: Path, capsys, key: str, value: object,
                                              needle: str) -> None:
    code, err = run_stage(work, capsys, "eval_seeds", _set(key, value)(work))
    assert code == 1
    one_error_line(err, needle)


def test_dvc_writes_1e400_as_inf_and_it_is_refused(work: Path, capsys) -> None:
    text = yaml.safe_dump(tiny_raw(work / "voc")).replace("noise_scale: 1.0", "noise_scale: .inf")
    assert "noise_scale: .inf" in text
    code, err = run_stage(work, capsys, "train_cam", text)
    assert code == 1
    one_error_line(err, "p.yaml: noise_scale must be none (without noise: M** = M*) or a finite "
                        "number")


def test_long_values_are_cut_in_the_error_line(work: Path, capsys) -> None:
    code, err = run_stage(work, capsys, "eval_seeds", _set("seed", "x" * 50_000)(work))
    assert code == 1
    line = one_error_line(err, "p.yaml: seed must be an integer")
    assert "(50002 chars)" in line and len(line) < 200



# --- 2. YAML traps -------------------------------------------------------------------------


def _text_edit(old: str, new: str) -> Callable[[Path], str]:
    def text(work: Path) -> str:
        base = yaml.safe_dump(tiny_raw(work / "voc"), sort_keys=False)
        assert old in base, old
        return base.replace(old, new, 1)
    return text


def _alias_bomb(levels: int) -> Callable[[Path], str]:
    """``download.mirrors`` of ``levels`` anchors, each listing the previous one 9 times."""
    def text(work: Path) -> str:
        lines = ["download:", "  mirrors:", "    l0: &l0 [x, x, x, x, x, x, x, x, x]"]
        lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]"
                  for i in range(1, levels)]
        raw = tiny_raw(work / "voc")
        del raw["download"]
        return yaml.safe_dump(raw) + "\n".join(lines) + "\n"
    return text


YAML_CASES = [  # (id, params text, text of the line)
    ("duplicate-top-level-key", _text_edit("seed: 0\n", "seed: 0\nseed: 1\n"),
     "p.yaml: key 'seed' is given twice in one mapping at line"),
    ("duplicate-nested-key", _text_edit("  log_every: 1\n", "  log_every: 1\n  log_every: 5\n"),
     "p.yaml: key 'log_every' is given twice"),
    ("duplicate-dataset-block-key", _text_edit("      epochs: 1\n",
                                               "      epochs: 1\n      epochs: 40\n"),
     "p.yaml: key 'epochs' is given twice"),
    ("alias-bomb-in-mirrors", _alias_bomb(9),
     "p.yaml: its aliases (*name) expand to more than 100000 values"),
    ("small-alias-bomb", _alias_bomb(5), "download.mirrors must be a mapping of names to"),
    ("recursive-alias", _text_edit("seed: 0\n", "seed: &s [*s]\n"),
     "p.yaml: a recursive alias at line"),
    ("tab-indentation", _text_edit("  log_every: 1\n", "\tlog_every: 1\n"),
     "p.yaml: not valid YAML at line"),
    ("unclosed-bracket", _text_edit("seed: 0\n", "seed: [0\n"), "p.yaml: not valid YAML"),
    ("not-utf8", lambda work: b"seed: \xff\n", "p.yaml: params file is not UTF-8 text (byte"),
    ("yaml-1.1-yes-is-a-string", _text_edit("flip: true", "flip: yes"),
     "infer_seeds.flip must be true or false, got 'yes'"),
    ("empty-file", lambda work: "", "p.yaml: must be a mapping at top level, got NoneType"),
    ("top-level-list", lambda work: "- seed\n- 0\n", "p.yaml: must be a mapping at top level"),
    ("integer-key", _text_edit("seed: 0\n", "seed: 0\n7: x\n"), "p.yaml: unknown key 7"),
    ("huge-unknown-key", _text_edit("seed: 0\n", "seed: 0\n" + "k" * 1000 + ": 1\n"),
     "p.yaml: unknown key kkkk"),
]


@pytest.mark.parametrize("text, needle", [c[1:] for c in YAML_CASES],
                         ids=[c[0] for c in YAML_CASES])
def test_yaml_traps_are_one_short_line(work: Path, capsys, text: Callable[[Path], str],
                                       needle: str) -> None:
    code, err = run_stage(work, capsys, "eval_seeds", text(work))
    assert code == 1
    one_error_line(err, needle)
    assert max(len(line) for line in err.splitlines()) < 300


def test_params_read_as_dvc_reads_them(work: Path) -> None:
    """``lr: 1e-3`` (YAML 1.2, DVC's ruamel loader) is 0.001; other scalars agree with DVC."""
    from dvc.utils.serialize import parse_yaml

    from bnr.config.params import load_params
    from bnr.config.yaml_load import parse_yaml_text

    scalars = "a: 1e-3\nb: 5E-5\nc: .5\nd: yes\ne: 012\nf: 0o12\ng: 1_000\nh: ~\ni: .inf\nj: on\n"
    assert parse_yaml_text(scalars, "x") == parse_yaml(scalars, "x")
    text = _text_edit("      lr: 0.001\n", "      lr: 1e-3\n")(work)
    (work / "params.yaml").write_text(text)
    assert load_params(work / "params.yaml").per_dataset.train_cam.lr == 0.001


# --- 3. split files that mean something other than they say ------------------------------------

SPLIT_CASES = [  # (id, bytes of train.txt, text of the line)
    ("id-with-space", b"a\nb c\nd\n", "train.txt: line 2: one image id per line, got 'b c'"),
    ("id-with-tab", b"a\nb\tc\nd\n", "train.txt: line 2: one image id per line"),
    ("id-after-blank-lines", b"a\n\n\nb extra words\n", "train.txt: line 4: one image id"),
    ("bell-character", b"a\nb\x07\n", "train.txt: line 2: image id 'b\\x07' is not a file name"),
    ("zero-width-space", "a\nb\u200b\n".encode(), "train.txt: line 2: image id"),
    ("path-in-id", b"a\n../b\n", "train.txt: line 2: image id '../b' is not a file name"),
    ("dot-dot", b"a\n..\n", "train.txt: line 2: image id '..' is not a file name"),
    ("duplicate-with-lines", b"a\nb\n\nb\n", "train.txt: image id 'b' is listed twice (line 4, "
     "first at line 2)"),
    ("duplicate-crlf", b"a\r\nb\r\na\r\n", "train.txt: image id 'a' is listed twice (line 3"),
    ("only-blank-lines", b"\n  \n\t\n", "train.txt: split is empty"),
]


@pytest.mark.parametrize("content, needle", [c[1:] for c in SPLIT_CASES],
                         ids=[c[0] for c in SPLIT_CASES])
def test_split_ids_are_one_printable_token_each(work: Path, capsys, content: bytes,
                                                needle: str) -> None:
    (work / "voc" / SPLITS / "train.txt").write_bytes(content)
    code, err = run_stage(work, capsys, "infer_seeds", yaml.safe_dump(tiny_raw(work / "voc")))
    assert code == 1
    one_error_line(err, needle)


def test_split_bom_and_crlf_are_read(work: Path) -> None:
    from bnr.data.voc import read_split

    (work / "voc" / SPLITS / "train.txt").write_bytes("\ufeffa\r\nb\r\n\r\nc \r\n".encode())
    assert read_split(work / "voc", "train") == ["a", "b", "c"]


def _val_and_aff(work: Path, val: str, aff: str | None = None) -> None:
    (work / "voc" / SPLITS / "val.txt").write_text(val)
    if aff is not None:
        (work / "voc" / SPLITS / "aff.txt").write_text(aff)


OVERLAP_CASES = [  # (id, val.txt, aff.txt or None, data block changes, text of the line)
    ("val-id-in-train", "e\na\n", None, {},
     "val.txt: image id 'a' is also in training split 'train' (1 shared:"),
    ("val-is-train", "a\nb\nc\nd\n", None, {}, "(4 shared: its mIoU would score"),
    ("val-id-in-infer-split", "e\n", "a\ne\n", {"infer_split": "aff"},
     "val.txt: image id 'e' is also in training split 'aff'"),
    ("val-split-named-train", "e\n", None, {"val_split": "train"},
     "train.txt: image id 'a' is also in training split 'train'"),
]


@pytest.mark.parametrize("val, aff, data, needle", [c[1:] for c in OVERLAP_CASES],
                         ids=[c[0] for c in OVERLAP_CASES])
def test_val_overlapping_training_is_an_error(work: Path, capsys, val: str, aff: str | None,
                                              data: dict, needle: str) -> None:
    _val_and_aff(work, val, aff)
    raw = update_dataset(tiny_raw(work / "voc"), "synthetic", data=data)
    code, err = run_stage(work, capsys, "evaluate", yaml.safe_dump(raw))
    assert code == 1
    line = one_error_line(err, needle)
    assert "evaluate.allow_train_overlap: true accepts it" in line


def test_allowed_overlap_is_counted_for_the_protocol(work: Path) -> None:
    from bnr.config.params import parse_params
    from bnr.steps.evaluate import train_overlap

    _val_and_aff(work, "e\na\nb\n")
    raw = tiny_raw(work / "voc")
    raw["evaluate"]["allow_train_overlap"] = True
    assert train_overlap(parse_params(raw)) == {"images": 2, "allowed": True,
                                                "splits": ["train"], "absent": []}
    _val_and_aff(work, "e\n")
    raw["evaluate"]["allow_train_overlap"] = False
    assert train_overlap(parse_params(raw))["images"] == 0
    raw["datasets"]["synthetic"]["data"]["infer_split"] = "elsewhere"  # trained elsewhere
    assert train_overlap(parse_params(raw))["absent"] == ["elsewhere"]


# --- 4. structure errors: label table, output folders -----------------------------------------

def _labels(**changes: object) -> bytes:
    table: dict = {k: [i + 1] for i, k in enumerate("abcde")}
    table.update(changes)
    return json.dumps(table).encode()


LABEL_CASES = [  # (id, stage, cls_labels.json bytes, text of the line)
    ("bool-index", "infer_seeds", _labels(a=[True]),
     "cls_labels.json: a has invalid class index True (class indices are integers 1..6)"),
    ("top-level-list-of-bool", "infer_seeds", b"[true]", "cls_labels.json: must be a JSON object"),
    ("nested-list", "infer_seeds", _labels(b=[[1]]), "cls_labels.json: b has invalid class index"),
    ("float-index", "infer_seeds", _labels(c=[1.0]), "cls_labels.json: c has invalid class index"),
    ("string-entry", "infer_seeds", _labels(a="1"), "cls_labels.json: a must map to a list"),
    ("null-entry", "infer_seeds", _labels(a=None), "cls_labels.json: a must map to a list"),
    ("index-out-of-range", "infer_seeds", _labels(d=[99]), "d has invalid class index 99"),
    ("background-index", "infer_seeds", _labels(d=[0]), "d has invalid class index 0"),
    ("long-entry-cut", "infer_seeds", _labels(a="x" * 10_000), "cls_labels.json: a must map"),
    ("missing-id", "infer_seeds", json.dumps({"b": [1]}).encode(),
     "cls_labels.json: no image-level label for a"),
    ("empty-file", "infer_seeds", b"", "cls_labels.json: not valid JSON"),
    ("bool-index-seed-eval", "eval_seeds", _labels(b=[False]), "b has invalid class index False"),
]


@pytest.mark.parametrize("stage, content, needle", [c[1:] for c in LABEL_CASES],
                         ids=[c[0] for c in LABEL_CASES])
def test_label_table_structure_is_checked_before_work(work: Path, capsys, stage: str,
                                                      content: bytes, needle: str) -> None:
    (work / "voc" / "cls_labels.json").write_bytes(content)
    code, err = run_stage(work, capsys, stage, yaml.safe_dump(tiny_raw(work / "voc")))
    assert code == 1
    one_error_line(err, needle)


def test_label_table_checked_by_train_cam(work: Path, capsys) -> None:
    (work / "voc" / "cls_labels.json").write_bytes(_labels(a=[True]))
    write_weights_fingerprint(work, "train_cam")
    code, err = run_stage(work, capsys, "train_cam", yaml.safe_dump(tiny_raw(work / "voc")))
    assert code == 1
    one_error_line(err, "cls_labels.json: a has invalid class index True")


def _file_at(name: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    return lambda work, mp: (work / name).write_text("not a folder")


def _not_writable(name: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    """``name`` made read-only as root cannot (root ignores permission bits): os.access says
    what a non-root user would be told."""
    def change(work: Path, mp: pytest.MonkeyPatch) -> None:
        (work / name).mkdir(parents=True, exist_ok=True)
        real = os.access
        mp.setattr(os, "access", lambda p, mode, **kw: (
            False if Path(p).resolve() == (work / name).resolve() else real(p, mode, **kw)))
    return change


OUTPUT_CASES = [  # (id, stage, change of the work folder, text of the line)
    ("data-is-a-file", "infer_seeds", _file_at("data"), "data: not a folder, so data/cams"),
    ("metrics-is-a-file", "eval_seeds", _file_at("metrics"), "metrics: not a folder, so"),
    ("data-read-only", "infer_seeds", _not_writable("data"),
     "data: folder is not writable, so data/cams cannot be written"),
    ("existing-output-read-only", "infer_seeds", _not_writable("data/cams"),
     "data/cams: folder is not writable, so data/cams cannot be written"),
    ("metrics-read-only", "eval_seeds", _not_writable("metrics"), "metrics: folder is not"),
]


@pytest.mark.parametrize("stage, change, needle", [c[1:] for c in OUTPUT_CASES],
                         ids=[c[0] for c in OUTPUT_CASES])
def test_output_folders_are_checked_writable_before_work(
        work: Path, capsys, monkeypatch: pytest.MonkeyPatch, stage: str,
        change: Callable, needle: str) -> None:
    change(work, monkeypatch)
    code, err = run_stage(work, capsys, stage, yaml.safe_dump(tiny_raw(work / "voc")))
    assert code == 1
    one_error_line(err, needle)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_data_folder_for_real(work: Path, capsys) -> None:
    (work / "data").mkdir()
    (work / "data").chmod(0o555)
    try:
        code, err = run_stage(work, capsys, "infer_seeds", yaml.safe_dump(tiny_raw(work / "voc")))
    finally:
        (work / "data").chmod(0o755)
    assert code == 1
    one_error_line(err, "data: folder is not writable")


# --- 5. settings that are silently ignored -------------------------------------------------

def _dl(dataset: str = "synthetic", **download: object) -> Callable[[Path], str]:
    def change(raw: dict) -> None:
        raw["dataset"] = dataset
        raw["download"].update(download)
    return dumped(change)


def _pretrained(block: str, value: str, **extra: object) -> Callable[[Path], str]:
    def change(raw: dict) -> None:
        raw[block]["pretrained"] = value
        raw["train_segmenter"].update(extra)
    return dumped(change)


IGNORED_CASES = [  # (id, stage, params text, text of the line)
    ("existing-root-nonexistent-synthetic", "download", _dl(existing_root="/nonexistent"),
     "download.existing_root=/nonexistent does not apply to the synthetic dataset"),
    ("existing-root-present-synthetic", "download", _dl(existing_root="voc"),
     "download.existing_root=voc does not apply to the synthetic dataset"),
    ("existing-root-nonexistent-voc", "download", _dl("voc2012", existing_root="/nonexistent"),
     "download.existing_root=/nonexistent: no such folder"),
    ("existing-root-is-a-file-coco", "download", _dl("coco2014", existing_root="p.yaml"),
     "download.existing_root=p.yaml: no such folder"),
    ("unknown-mirror-synthetic", "download", _dl(mirrors={"voc2021": "http://x/y.tar"}),
     "download.mirrors.voc2021: unknown source"),
    ("unknown-mirror-weights", "weights", _dl(mirrors={"imagenet22k": "http://x/y.pth"}),
     "download.mirrors.imagenet22k: unknown source"),
    ("imagenet-for-deeplabv3", "weights",
     _pretrained("train_segmenter", "imagenet", arch="deeplabv3_resnet101"),
     "train_segmenter.pretrained: imagenet names no file for the resnet101 network"),
    ("pretrain-for-deeplabv3", "weights",
     _pretrained("train_segmenter", "pretrain", arch="deeplabv3_resnet101"),
     "train_segmenter.pretrained: pretrain names no file for the resnet101 network"),
]


@pytest.mark.parametrize("stage, text, needle", [c[1:] for c in IGNORED_CASES],
                         ids=[c[0] for c in IGNORED_CASES])
def test_settings_that_do_not_apply_are_errors(work: Path, capsys, stage: str,
                                               text: Callable[[Path], str], needle: str) -> None:
    code, err = run_stage(work, capsys, stage, text(work))
    assert code == 1
    one_error_line(err, needle)


def test_auto_for_deeplabv3_is_still_from_scratch() -> None:
    from bnr.weights.pretrained import pretrained_path

    assert pretrained_path("auto", "voc2012", "resnet101") == ""
