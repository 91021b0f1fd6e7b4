import numpy as np
import pytest

from geofm.analyze.harmonic import FEATURE_NAMES, batched_lasso, harmonic_design
from geofm.exceptions import ShapeError


def test_design_columns_match_hand_computed_values():
    days = np.array([0.0, 91.3125, 200.0])
    x = harmonic_design(days)
    assert x.shape == (3, 9) and len(FEATURE_NAMES) == 9
    for i, d in enumerate(days):
        s, c = np.sin(2 * np.pi * d / 365.25), np.cos(2 * np.pi * d / 365.25)
        expected = [s, c, s * s, s * c, c * c, s**3, s * s * c, s * c * c, c**3]
        np.testing.assert_allclose(x[i], expected, atol=1e-12)
    # day 0: phase 0 -> s = 0, c = 1; a quarter year later: s = 1, c = 0
    np.testing.assert_allclose(x[0], [0, 1, 0, 0, 1, 0, 0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(x[1], [1, 0, 1, 0, 0, 1, 0, 0, 0], atol=1e-12)


def test_design_matches_sklearn_polynomial_features():
    from sklearn.preprocessing import PolynomialFeatures

    days = np.linspace(18000, 19000, 17)
    phase = 2 * np.pi * days / 365.25
    ref = PolynomialFeatures(3, include_bias=False).fit_transform(
        np.c_[np.sin(phase), np.cos(phase)])
    np.testing.assert_allclose(harmonic_design(days), ref, atol=1e-12)
    assert harmonic_design(days.reshape(1, -1)).shape == (1, 17, 9)


def test_batched_lasso_matches_sklearn_per_chip():
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(3)
    n_chips, n_t = 12, 25
    days = np.sort(rng.uniform(18628, 18628 + 400, (n_chips, n_t)), axis=1)
    x = harmonic_design(days)
    y = (rng.normal(size=(n_chips, 1)) + 0.4 * np.sin(2 * np.pi * days / 365.25 + 1)
         + 0.08 * rng.normal(size=(n_chips, n_t)))
    w = rng.random((n_chips, n_t)) > 0.3
    y[~w] = np.nan  # unobserved values must be ignored
    fit = batched_lasso(x, y, w, alpha=0.001)
    pred = fit.predict(x)
    for i in range(n_chips):
        m = w[i]
        sk = Lasso(alpha=0.001, tol=1e-10, max_iter=100_000).fit(x[i, m], y[i, m])
        np.testing.assert_allclose(pred[i], sk.predict(x[i]), atol=1e-4)
        np.testing.assert_allclose(fit.coef[i], sk.coef_, atol=1e-4)
        assert fit.intercept[i] == pytest.approx(sk.intercept_, abs=1e-4)
    assert fit.converged.all()


def test_batched_lasso_penalty_shrinks_and_empty_chip_is_zero():
    days = np.tile(np.arange(0, 365, 15.0), (2, 1))
    x = harmonic_design(days)
    y = 0.01 * np.sin(2 * np.pi * days / 365.25) + 5.0
    w = np.ones_like(y, dtype=bool)
    w[1] = False
    fit = batched_lasso(x, y, w, alpha=1.0)  # alpha far above the signal: all zero
    np.testing.assert_array_equal(fit.coef, 0.0)
    assert fit.intercept[0] == pytest.approx(y[0].mean())
    assert fit.intercept[1] == 0.0


def test_batched_lasso_shape_errors():
    with pytest.raises(ShapeError, match="y and weights must both be"):
        batched_lasso(np.zeros((2, 3, 9)), np.zeros((2, 3)), np.ones((2, 4)))
    with pytest.raises(ShapeError, match="design must be"):
        batched_lasso(np.zeros((2, 4, 9)), np.zeros((2, 3)), np.ones((2, 3)))
