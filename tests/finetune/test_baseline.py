"""The per-pixel baseline: learns separable bands, ignores unlabelled pixels, is seeded."""

from __future__ import annotations

import numpy as np
import pytest

from geofm.exceptions import GeofmValueError
from geofm.finetune.baseline import evaluate_baseline, fit_pixel_baseline, pixel_features


def _toy(n: int = 12, size: int = 8, seed: int = 0):
    """Samples whose class (1 or 2) is told by the red/NIR ratio, not by brightness."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(1, 3, size=(n, size, size))
    bright = rng.uniform(0.5, 2.0, size=(n, 1, size, size))
    red = np.where(codes == 1, 400.0, 1200.0)[:, None]
    nir = np.where(codes == 1, 3000.0, 1500.0)[:, None]
    pixels = (np.concatenate([red, nir], axis=1) * bright).astype(np.float32)
    return pixels, codes


def test_pixel_features_are_log_reflectance_per_pixel():
    pixels = np.full((2, 3, 4, 5), 1000.0, np.float32)
    pixels[1, 2] = 0.0  # clipped to DN 1
    feats = pixel_features(pixels)
    assert feats.shape == (2 * 4 * 5, 3)
    assert np.allclose(feats[0], np.log(0.1))
    assert np.allclose(feats[-1], [np.log(0.1), np.log(0.1), np.log(1e-4)])


def test_baseline_learns_band_ratios_and_scores_held_out_samples():
    pixels, codes = _toy()
    masked = codes.copy()
    masked[:, :, :4] = 0  # half of every sample unlabelled: never trained on nor scored

    def px(idx):
        return pixels[np.asarray(idx)]

    def cd(idx):
        return masked[np.asarray(idx)]

    fitted = fit_pixel_baseline(px, cd, range(8), max_pixels=200, seed=0)
    assert fitted.n_pixels == 8 * 25  # ceil(200 / 8) labelled pixels per training sample
    result = evaluate_baseline(fitted, px, cd, range(8, 12), n_classes=2)
    assert result["mean_iou"] == pytest.approx(1.0)
    assert sum(result["support"]) == 4 * 8 * 4  # only the labelled half is scored
    again = fit_pixel_baseline(px, cd, range(8), max_pixels=200, seed=0)
    assert np.array_equal(again.predict(pixels), fitted.predict(pixels))


def test_baseline_without_labels_says_so():
    pixels, codes = _toy(n=2)
    with pytest.raises(GeofmValueError, match="no labelled training pixel"):
        fit_pixel_baseline(lambda i: pixels[np.asarray(i)],
                           lambda i: np.zeros_like(codes[np.asarray(i)]), [0, 1])
