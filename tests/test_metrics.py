import numpy as np
import pytest

from bnr.metrics import (
    confusion_matrix,
    iou_per_class,
    mean_iou,
    per_class_table,
    write_class_table,
)


def test_confusion_matrix_hand_case():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    conf = confusion_matrix(pred, gt, 3)
    # rows = gt, cols = pred; the 255 pixel is ignored
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(conf, expected)
    assert conf.dtype == np.int64


def test_iou_hand_case_and_absent_class():
    conf = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    iou = iou_per_class(conf)
    # class 0: tp 1, union 1+2+1-1 = ... gt row 2, pred col 2 -> 2+2-1 = 3
    assert iou[0] == pytest.approx(1 / 3)
    assert iou[1] == pytest.approx(2 / 3)  # gt 2, pred 3, tp 2
    assert iou[2] == 0.0  # present in gt, never predicted
    assert np.isnan(iou[3])  # absent from both: excluded
    assert mean_iou(conf) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_any_shape_and_accumulation():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (2, 3, 5, 7))
    pred = rng.integers(0, 4, (2, 3, 5, 7))
    total = confusion_matrix(pred, gt, 4)
    parts = sum(confusion_matrix(pred[i], gt[i], 4) for i in range(2))
    np.testing.assert_array_equal(total, parts)
    assert total.sum() == gt.size
    assert mean_iou(confusion_matrix(gt, gt, 4)) == 1.0


def test_errors_on_shape_and_range():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([5]), np.array([0]), 2)


def test_class_table_files(tmp_path):
    conf = np.array([[3, 1], [0, 4]])
    table = per_class_table(conf, ["background", "thing"])
    assert list(table["class"]) == ["background", "thing", "mIoU"]
    assert table["iou"].iloc[0] == pytest.approx(75.0)
    assert table["iou"].iloc[2] == pytest.approx(round((0.75 + 0.8) / 2 * 100, 2))
    write_class_table(table, tmp_path / "seeds_per_class")
    assert (tmp_path / "seeds_per_class.csv").read_text().startswith("class,iou")
    assert "| background" in (tmp_path / "seeds_per_class.md").read_text()
