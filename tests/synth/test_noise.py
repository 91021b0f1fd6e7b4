import numpy as np

from geofm.synth.noise import block_mean, fractal_noise, rng_for, smooth_noise


def test_streams_are_keyed_not_sequential():
    a = rng_for(0, 5, 1).random(3)
    rng_for(0, 5, 0).random(100)  # drawing elsewhere does not shift stream (5, 1)
    np.testing.assert_array_equal(a, rng_for(0, 5, 1).random(3))
    assert not np.array_equal(a, rng_for(1, 5, 1).random(3))
    assert not np.array_equal(a, rng_for(0, 5, 2).random(3))


def test_smooth_noise_is_smooth_and_about_unit_variance():
    f = smooth_noise(rng_for(0, 1), (200, 300), 20)
    assert f.shape == (200, 300) and f.dtype == np.float32
    assert 0.5 < f.std() < 1.5
    # Neighbours are strongly correlated at a 20 px correlation length; white noise is not.
    corr = np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1]
    assert corr > 0.95


def test_fractal_noise_standardised():
    f = fractal_noise(rng_for(0, 2), (64, 96), 16, octaves=3)
    assert abs(float(f.mean())) < 1e-4 and abs(float(f.std()) - 1) < 1e-3


def test_block_mean():
    a = np.arange(36, dtype=np.float32).reshape(6, 6)
    np.testing.assert_allclose(block_mean(a, 3), [[7, 10], [25, 28]])
    np.testing.assert_allclose(block_mean(a, 6), [[17.5]])
    assert block_mean(a, 1) is a
