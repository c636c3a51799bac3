import copy

import pytest
import yaml

from bnr.config.params import ParamsError, load_params, parse_params
from tests.conftest import REPO


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_load():
    p = load_params(REPO / "params.yaml")
    assert p.dataset == "synthetic" and p.data.name == "synthetic"
    assert p.per_dataset.train_cam.model == "conformer_tiny"


def test_switching_dataset_switches_the_whole_block(raw):
    raw["dataset"] = "voc2012"
    p = parse_params(raw)
    assert p.per_dataset.train_cam.model == "conformer_s"
    cam = p.per_dataset.train_cam
    assert cam.crop_size == 512 and cam.batch_size == 8 and cam.epochs == 22
    assert p.per_dataset.infer_seeds.scales == (256, 512, 768)
    assert p.data.train_split == "train_aug" and p.data.seed_eval_split == "train"
    raw["dataset"] = "coco2014"
    p = parse_params(raw)
    assert p.per_dataset.train_cam.epochs == 10 and p.per_dataset.train_cam.batch_size == 16


@pytest.mark.parametrize(
    "path, value, message",
    [
        (["noise_scale"], "abc", "params.yaml: noise_scale must be none (without noise: M** = "
         "M*) or a number > 0 and <= 100, got 'abc'"),
        (["noise_scale"], 0, "params.yaml: noise_scale must be none (without noise: M** = M*) "
         "or a number > 0 and <= 100, got 0"),
        (["noise_scale"], -1, "params.yaml: noise_scale must be none (without noise: M** = M*) "
         "or a number > 0 and <= 100, got -1"),
        (["method"], "cam", "params.yaml: method must be one of bnr, transcam, got 'cam'"),
        (["dataset"], "imagenet", "params.yaml: dataset must be one of synthetic, voc2012, "
         "coco2014, got 'imagenet'"),
        (["seed"], 1.5, "params.yaml: seed must be an integer >= 0 and < 2**63, got 1.5"),
        (["datasets", "synthetic", "train_cam", "epochs"], 0,
         "params.yaml: datasets.synthetic.train_cam.epochs must be an integer >= 1 and <= "
         "10000, got 0"),
        (["infer_seeds", "flip"], "yes", "params.yaml: infer_seeds.flip must be true or false, "
         "got 'yes'"),
        (["train_cam", "num_workers"], -1,
         "params.yaml: train_cam.num_workers must be auto or an integer >= 0 and "
         "<= 1024, got -1"),
        (["runtime", "channels_last"], "yes",
         "params.yaml: runtime.channels_last must be auto, true or false, got 'yes'"),
        (["runtime", "nproc"], 0, "params.yaml: runtime.nproc must be an integer >= 1 and "
         "<= 64, got 0"),
        (["datasets", "synthetic", "eval_seeds", "threshold_stop"], 2,
         "params.yaml: datasets.synthetic.eval_seeds.threshold_stop must be a number >= 0 and "
         "<= 1, got 2"),
    ],
)
def test_bad_values_name_key_and_value(raw, path, value, message):
    bad = copy.deepcopy(raw)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError) as err:
        parse_params(bad)
    assert str(err.value) == message


def test_unknown_and_missing_keys(raw):
    bad = copy.deepcopy(raw)
    bad["train_cam"]["learning_rate"] = 1
    with pytest.raises(ParamsError, match=r"unknown key train_cam.learning_rate"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["noise_scal"] = 1
    with pytest.raises(ParamsError, match=r"unknown key noise_scal"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    del bad["datasets"]["synthetic"]["train_cam"]["crop_size"]
    with pytest.raises(ParamsError, match=r"missing key datasets.synthetic.train_cam.crop_size"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    del bad["datasets"]["synthetic"]["data"]
    with pytest.raises(ParamsError, match=r"missing key datasets.synthetic.data$"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["datasets"]["synthetic"]["epochs"] = 3  # the flat layout before the sub-blocks
    with pytest.raises(ParamsError, match=r"unknown key datasets.synthetic.epochs"):
        parse_params(bad)


def test_resize_range_must_be_ordered(raw):
    raw["datasets"]["synthetic"]["train_cam"]["resize_long"] = [160, 96]
    with pytest.raises(ParamsError, match="non-decreasing"):
        parse_params(raw)


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("dataset: [unclosed\n")
    with pytest.raises(ParamsError, match=r"p.yaml: not valid YAML"):
        load_params(f)
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")
