"""Every bad input of issue 13's table (and its neighbours) gets a non-zero exit and one line
naming the file or key: no traceback, no partial output.

Stage cases go through :func:`bnr.pipeline.stage.run_stage` in this process (the exit code and
stderr a user sees; a subprocess per case would cost seconds of imports each); SIGTERM needs a real
process. Outputs are compared as file sets before/after (``runs/`` holds resume state, not DVC
outputs, and is left out).
"""

from __future__ import annotations

import importlib
import json
import pickle
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bnr.cli import main as bnr_main
from bnr.data.download import download_file
from bnr.errors import BnrError
from bnr.pipeline.stage import stage_command, stage_main
from tests.conftest import (
    REPO,
    stage_argv,
    update_dataset,
    write_voc_tree,
    write_weights_fingerprint,
)

try:
    from tests.httpserver import LocalServer
except ImportError:  # tests/ is not a package
    from httpserver import LocalServer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPLITS = Path("ImageSets/Segmentation")


def tiny_raw(root: Path) -> dict:
    """A synthetic-class configuration small enough to train in a second on the CPU."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    update_dataset(raw, "synthetic", data={"root": str(root)},
                   train_cam={"crop_size": 32, "resize_long": [24, 40], "epochs": 1,
                              "batch_size": 2, "lr": 0.001},
                   infer_seeds={"scales": [32]})
    raw["train_cam"].update(num_workers=0, log_every=1)
    return raw


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_voc_tree(tmp_path / "voc", {"train": ["a", "b", "c", "d"], "val": ["e"]},
                   num_classes=7)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def files_under(work: Path) -> set[str]:
    return {str(p.relative_to(work)) for p in work.rglob("*")
            if "__pycache__" not in p.parts and p.parts[len(work.parts)] != "runs"}


def one_error_line(err: str, needle: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    assert needle in errors[0], errors[0]
    assert len(errors[0]) < 300 and "weights_only" not in errors[0], errors[0]
    return errors[0]


# --- each case: (id, stage, change of the inputs -> None, text the line must hold) ----------

def _edit(path: str, data: bytes) -> Callable[[Path, dict], None]:
    return lambda work, raw: (work / "voc" / path).write_bytes(data)


def _params(update: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    return lambda work, raw: update(raw)


def _garbage_checkpoint(work: Path, raw: dict) -> None:
    (work / "models").mkdir()
    (work / "models" / "cam.pt").write_bytes(b"\x80\x02garbage" * 40)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this checkpoint ran code",))


def _malicious_checkpoint(work: Path, raw: dict) -> None:
    (work / "models").mkdir()
    (work / "models" / "cam.pt").write_bytes(pickle.dumps({"model": _RunsCode()}, protocol=2))


def _corrupt_jpeg_in_worker(work: Path, raw: dict) -> None:
    (work / "voc" / "JPEGImages" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    raw["train_cam"]["num_workers"] = 1


def _zero_byte_jpeg_in_worker(work: Path, raw: dict) -> None:
    (work / "voc" / "JPEGImages" / "b.jpg").write_bytes(b"")
    raw["train_cam"]["num_workers"] = 1


def _cams_of_another_split(work: Path, raw: dict) -> None:
    (work / "data" / "cams").mkdir(parents=True)
    for img_id in "abc":  # d of the train split has none
        (work / "data" / "cams" / f"{img_id}.npz").write_bytes(b"")


STAGE_CASES = [
    ("split-not-utf8", "train_cam", _edit(f"{SPLITS}/train.txt", b"a\nb\xff\nc\n"),
     "train.txt: split file is not UTF-8"),
    ("cls-labels-not-utf8", "train_cam", _edit("cls_labels.json", b'{"a": [1], "\xe9": [2]}'),
     "cls_labels.json: label table is not UTF-8"),
    ("cls-labels-entry-not-list", "train_cam",
     _edit("cls_labels.json", json.dumps({k: 3 for k in "abcde"}).encode()),
     "cls_labels.json: a must map to a list of class indices (e.g. [3]), got 3"),
    ("cls-labels-top-level-list", "train_cam", _edit("cls_labels.json", b"[[1], [2]]"),
     "cls_labels.json: must be a JSON object"),
    ("duplicate-split-id", "train_cam", _edit(f"{SPLITS}/train.txt", b"a\nb\nc\nb\n"),
     "train.txt: image id 'b' is listed twice"),
    ("zero-byte-jpeg-workers", "train_cam", _zero_byte_jpeg_in_worker,
     "b.jpg: empty image file (0 bytes)"),
    ("corrupt-jpeg-in-worker", "train_cam", _corrupt_jpeg_in_worker,
     "b.jpg: unreadable or truncated image"),
    ("threshold-order", "eval_seeds",
     _params(lambda r: update_dataset(r, "synthetic", eval_seeds={"threshold_start": 0.5,
                                                                  "threshold_stop": 0.2})),
     "datasets.synthetic.eval_seeds.threshold_start (0.5) must not exceed its threshold_stop "
     "(0.2)"),
    ("infer-scales-vs-patch", "infer_seeds",
     _params(lambda r: update_dataset(r, "synthetic", infer_seeds={"scales": [32, 36]})),
     "datasets.synthetic.infer_seeds.scales must be a multiple of the patch size 8"),
    ("crop-vs-patch", "train_cam",
     _params(lambda r: update_dataset(r, "synthetic", train_cam={"crop_size": 36})),
     "datasets.synthetic.train_cam.crop_size must be a multiple of the patch size 8"),
    ("batch-vs-nproc", "train_cam",
     _params(lambda r: (r["runtime"].update(nproc=2),
                        update_dataset(r, "synthetic", train_cam={"batch_size": 3}))),
     "datasets.synthetic.train_cam.batch_size=3 does not split over runtime.nproc=2"),
    ("unknown-top-level-key", "random_walk", _params(lambda r: r.update(extra_knob=1)),
     "unknown key extra_knob"),
    ("garbage-checkpoint", "infer_seeds", _garbage_checkpoint, "cam.pt: unreadable checkpoint"),
    ("malicious-checkpoint", "infer_seeds", _malicious_checkpoint,
     "cam.pt: unreadable checkpoint: not a torch file of tensors ("),
    ("val-mask-missing-before-evaluation", "evaluate",
     lambda work, raw: (work / "voc" / "SegmentationClass" / "e.png").unlink(),
     "e.png: mask of an image of split 'val' is missing"),
    ("cams-of-another-split", "eval_seeds", _cams_of_another_split, "cams/d.npz: missing"),
]



def repo_stage_args(stage: str) -> list[str]:
    """The path options of ``stage``'s cmd in the repository's dvc.yaml."""
    return stage_command(stage, REPO / "dvc.yaml", {"dataset": "synthetic"})[1]


def run_stage(work: Path, capsys, stage: str, params_text: str | bytes) -> tuple[int, str]:
    """Run ``stage`` on ``params_text`` (as p.yaml); (exit code, stderr). Asserts that no file
    appeared or vanished."""
    from bnr.pipeline.stage import stage_main

    data = params_text if isinstance(params_text, bytes) else params_text.encode()
    (work / "p.yaml").write_bytes(data)
    before = files_under(work)
    old_handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_info:
            stage_main(importlib.import_module(f"bnr.steps.{stage}"),
                       ["--params", "p.yaml", *repo_stage_args(stage)])
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    assert files_under(work) == before  # no partial output
    return exit_info.value.code, capsys.readouterr().err

@pytest.mark.parametrize("stage, change, needle", [c[1:] for c in STAGE_CASES],
                         ids=[c[0] for c in STAGE_CASES])
def test_stage_bad_input_is_one_line(work: Path, monkeypatch: pytest.MonkeyPatch, capsys,
                                     stage: str, change: Callable, needle: str) -> None:
    raw = tiny_raw(work / "voc")
    change(work, raw)
    if stage.startswith("train_"):  # what the weights stage wrote: from scratch
        write_weights_fingerprint(work, stage)
    code, err = run_stage(work, capsys, stage, yaml.safe_dump(raw))  # no partial output
    assert code == 1
    one_error_line(err, needle)


# --- bnr predict ------------------------------------------------------------------------------

PREDICT_CASES = [
    ("out-is-a-file", ["--out", "taken.txt"], "taken.txt: --out must be a folder"),
    ("scale-zero", ["--out", "o", "--scales", "0"], "--scales must be resize factors"),
    ("scale-negative", ["--out", "o", "--scales", "-1"], "--scales must be resize factors"),
    ("threshold-5", ["--out", "o", "--threshold", "5"], "--threshold must be a background"),
]


@pytest.mark.parametrize("extra, needle", [c[1:] for c in PREDICT_CASES],
                         ids=[c[0] for c in PREDICT_CASES])
def test_predict_bad_argument_is_one_line(work: Path, capsys, extra: list[str],
                                          needle: str) -> None:
    (work / "taken.txt").write_text("x")
    before = files_under(work)
    code = bnr_main(["predict", "--checkpoint", "missing.pt", "voc/JPEGImages", *extra])
    assert code == 2
    one_error_line(capsys.readouterr().err, needle)
    assert files_under(work) == before


# --- downloads --------------------------------------------------------------------------------


def test_truncated_download_without_length_or_checksum(tmp_path: Path) -> None:
    with LocalServer() as srv:
        url = srv.add("w.pth", bytes(range(256)) * 64)
        srv.fault("w.pth", no_length=True, drop_at=3000, always=True)
        with pytest.raises(BnrError) as err:
            download_file(url, tmp_path / "w.pth", progress=False, backoff=0.0, timeout=5.0)
    assert "no Content-Length, no known size and no checksum" in str(err.value)
    assert "\n" not in str(err.value) and list(tmp_path.iterdir()) == []


# --- signals, resume, stale temporaries -------------------------------------------------------


def test_sigterm_during_training_is_one_line_and_resumable(work: Path) -> None:
    raw = tiny_raw(work / "voc")
    raw["datasets"]["synthetic"]["train_cam"]["epochs"] = 200
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    write_weights_fingerprint(work, "train_cam")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(stage_argv("train_cam"), cwd=work,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not list(work.glob("runs/train_cam/*/last.pt")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "SIGTERM" in line] == [
        "terminated (SIGTERM); outputs were not written (training resumes from its checkpoint)"]
    written = {p.name for p in (work / "models").iterdir()}
    assert list(work.glob("runs/train_cam/*/last.pt")) and written == {"weights"}  # its input


def test_resumed_curves_have_no_duplicate_steps(work: Path) -> None:
    from bnr.cam.training import train_cam
    from bnr.config.params import parse_params
    from bnr.steps.train_cam import training_plan

    raw = tiny_raw(work / "voc")
    raw["datasets"]["synthetic"]["train_cam"]["epochs"] = 2
    plan = training_plan(parse_params(raw))
    kw = {"run_root": work / "runs", "progress": False}
    train_cam(plan, work / "cam.pt", work / "curves", stop_after_epoch=1, **kw)
    loss_tsv = next(work.glob("runs/*/dvclive/plots/metrics/train/loss.tsv"))
    rows = [line.split("\t") for line in loss_tsv.read_text().splitlines()]
    col = rows[0].index("step")
    last_step = int(rows[-1][col])
    for extra in (1, 2):  # the run logged on past its checkpoint before it was killed
        row = [*rows[-1]]
        row[col], row[rows[0].index("loss")] = str(last_step + extra), "9.9"
        rows.append(row)
    loss_tsv.write_text("".join("\t".join(r) + "\n" for r in rows))
    train_cam(plan, work / "cam.pt", work / "curves", **kw)
    for tsv in (work / "curves").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        col = lines[0].split("\t").index("step")
        steps = [int(line.split("\t")[col]) for line in lines[1:]]
        assert steps == sorted(set(steps)), (tsv, steps)
    assert "9.9" not in (work / "curves" / "plots" / "metrics" / "train" / "loss.tsv").read_text()


def test_stale_temporaries_of_the_stage_are_removed(work: Path, monkeypatch, capsys) -> None:
    (work / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_raw(work / "voc")))
    stale = work / "data" / ".cams.x1y2.tmp"  # killed infer_seeds
    other = work / "data" / ".rw_labels.x1y2.tmp"  # another stage's: left alone
    for path in (stale / "cams", other):
        path.mkdir(parents=True)
    with pytest.raises(SystemExit):  # no models/cam.pt: fails after the cleaning
        stage_main(importlib.import_module("bnr.steps.infer_seeds"),
                   repo_stage_args("infer_seeds"))
    assert not stale.exists() and other.exists()
    assert "removed data/.cams.x1y2.tmp" in capsys.readouterr().out


