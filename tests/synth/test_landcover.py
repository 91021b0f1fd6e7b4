import numpy as np
import pytest

from geofm.synth.grid import make_canvas
from geofm.synth.landcover import FOREST, MIN_DOMINANT, make_landcover


@pytest.mark.parametrize(("size", "chip", "n_events", "each"), [
    (512, 64, 4, 2), (256, 64, 4, 2), (128, 64, 1, 0), (64, 32, 1, 0)])
def test_cells_are_dominated_and_classes_forced(size, chip, n_events, each):
    canvas = make_canvas(size, chip, 1)
    for seed in range(3):
        lc = make_landcover(canvas, seed=seed, n_events=n_events)
        n = size // chip
        cells = lc.cell_class[:n, :n]
        for code in range(1, 7):
            assert (cells == code).sum() >= each
        assert (cells == FOREST).sum() >= n_events + 1
        assert lc.class_map.shape == (canvas.rows, canvas.cols)
        block = lc.class_map[:size, :size].reshape(n, chip, n, chip)
        share = (block == cells[:, None, :, None]).mean(axis=(1, 3))
        assert share.min() >= MIN_DOMINANT
    # Inclusions exist (texture of land cover), but are a small share.
    other = lc.class_map[:size, :size] != np.repeat(np.repeat(cells, chip, 0), chip, 1)
    assert 0.005 < other.mean() < 0.15
