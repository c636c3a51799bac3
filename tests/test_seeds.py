import numpy as np
import pytest

from bnr.cam import cams_to_seeds
from bnr.metrics import confusion_matrix
from bnr.seeds import threshold_confusions, threshold_grid

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2


def test_threshold_grid_matches_public_sweep():
    grid = threshold_grid(0.0, 0.59, 0.01)
    assert len(grid) == 60 and grid[0] == 0.0 and grid[-1] == pytest.approx(0.59)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_all_thresholds_at_once_equal_one_at_a_time(k):
    rng = np.random.default_rng(k)
    cams = rng.random((k, 9, 11)).astype(np.float32)
    classes = np.array([2, 5, 6][:k])
    gt = rng.integers(0, 7, (9, 11))
    gt[0, :3] = 255
    ths = threshold_grid(0.0, 0.95, 0.05)
    fast = threshold_confusions(cams, classes, gt, ths, 7)
    for i, t in enumerate(ths):
        slow = confusion_matrix(cams_to_seeds(cams, classes, t), gt, 7)
        np.testing.assert_array_equal(fast[i], slow)
