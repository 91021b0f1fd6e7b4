import numpy as np
import pytest

from geofm.analyze.similarity import BaselineMeans, baseline_mean, cosine
from geofm.exceptions import ShapeError


def test_cosine_to_baseline_uses_the_baseline_mean_not_the_first_date():
    rng = np.random.default_rng(0)
    typical = np.array([1.0, 0.0, 0.0, 0.0])
    series = typical + 0.05 * rng.normal(size=(8, 4))
    series[0] = [0.0, 0.0, 1.0, 0.0]  # a hazy first image
    in_base = np.array([1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    ref = baseline_mean(series, in_base)
    np.testing.assert_allclose(ref, series[:5].mean(axis=0), rtol=1e-6)
    sim = cosine(series, ref)
    # every ordinary date stays close to the baseline; against the first date it would not
    assert (sim[1:] > 0.9).all()
    assert (cosine(series[1:], series[0]) < 0.3).all()
    assert np.isnan(baseline_mean(series, np.zeros(8, bool))).all()


def test_baseline_means_accumulator_matches_direct_mean():
    rng = np.random.default_rng(1)
    vec = rng.normal(size=(10, 6)).astype(np.float32)
    chip = np.array([0, 0, 1, 1, 1, 0, 2, 2, 0, 1])
    weight = np.array([1, 1, 1, 0.5, 0.5, 0, 1, 1, 1, 0])  # 0: outside the baseline
    acc = BaselineMeans(4, 6)
    acc.add(chip[:5], vec[:5], weight[:5])
    acc.add(chip[5:], vec[5:], weight[5:])
    unit = acc.unit_means()
    for c in range(3):
        m = (weight[chip == c][:, None] * vec[chip == c]).sum(0)
        np.testing.assert_allclose(unit[c], m / np.linalg.norm(m), rtol=1e-5)
    assert np.isnan(unit[3]).all()  # chip without baseline


def test_cosine_dimension_mismatch():
    with pytest.raises(ShapeError, match="dimension 'embedding' differs: 3 vs 4"):
        cosine(np.zeros((2, 3)), np.zeros(4))
