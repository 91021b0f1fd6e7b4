import numpy as np
import pytest

from geofm.analyze.change import CHANGE, INSUFFICIENT, NO_CHANGE, detect_changes
from geofm.exceptions import GeofmValueError, ShapeError

D0 = 18628.0  # 2021-01-01 in days since the epoch


def _series(n_chips=6, n_t=40, cadence=18.0, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    days = np.tile(D0 + np.arange(n_t) * cadence, (n_chips, 1))
    y = 0.4 * np.sin(2 * np.pi * days / 365.25 + 0.7) + noise * rng.normal(size=days.shape)
    valid = np.ones(days.shape, dtype=bool)
    base = days < D0 + 365
    return days, y, valid, base, ~base


def _detect(days, y, valid, base, mon, **kw):
    return detect_changes(days, y, valid, baseline=base, monitor=mon, **kw)


def test_planted_step_is_flagged_at_its_date():
    days, y, valid, base, mon = _series()
    y[0, 27:] += 1.0   # upward step at column 27
    y[1, 31:] -= 1.0   # downward step at column 31
    r = _detect(days, y, valid, base, mon)
    assert r.status[0] == CHANGE and r.change_index[0] == 27
    assert r.status[1] == CHANGE and r.change_index[1] == 31
    assert list(r.status[2:]) == [NO_CHANGE] * 4
    assert r.magnitude[0] > 10 and r.magnitude[2] < 2
    assert r.anomaly[0, 27:].all()
    assert np.isnan(r.residual[~valid]).all()


def test_single_outlier_and_two_outliers_are_not_a_change():
    days, y, valid, base, mon = _series()
    y[0, 30] += 2.0
    y[1, 25] += 2.0
    y[1, 26] += 2.0
    r = _detect(days, y, valid, base, mon)
    assert r.anomaly[0, 30] and r.anomaly[1, 25] and r.anomaly[1, 26]
    assert r.status[0] == NO_CHANGE and r.status[1] == NO_CHANGE
    assert not r.change.any()
    # with k = 2 the pair is a change, the single outlier is still not
    r2 = _detect(days, y, valid, base, mon, consecutive=2)
    assert r2.status[1] == CHANGE and r2.change_index[1] == 25
    assert r2.status[0] == NO_CHANGE


def test_opposite_signs_do_not_form_a_run():
    days, y, valid, base, mon = _series()
    y[0, 25] += 2.0
    y[0, 26] -= 2.0
    y[0, 27] += 2.0
    r = _detect(days, y, valid, base, mon)
    assert r.anomaly[0, 25:28].all() and r.status[0] == NO_CHANGE


def test_baseline_outlier_is_screened_out_of_the_fit():
    days, y, valid, base, mon = _series()
    y[0, 5] += 3.0   # a hazy baseline image
    y[0, 30:] += 0.5  # a moderate step, ~10 noise sigmas
    r = _detect(days, y, valid, base, mon)
    assert not r.baseline_used[0, 5] and r.baseline_used[0, :5].all()
    assert r.status[0] == CHANGE and r.change_index[0] == 30
    # without screening the outlier would inflate the scale and hide the step
    r_noscreen = _detect(days, y, valid, base, mon, screen_threshold=1e9)
    assert r_noscreen.rmse[0] > 3 * r.rmse[0]


def test_insufficient_baseline_is_not_no_change():
    days, y, valid, base, mon = _series()
    valid[2, :21] = False  # columns 0..20 are the baseline year
    valid[2, 3:8] = True   # 5 baseline observations < min_baseline 6
    valid[3, 23:] = False  # only 2 monitoring observations < consecutive 3
    r = _detect(days, y, valid, base, mon)
    assert r.status[2] == INSUFFICIENT and r.n_baseline[2] == 5
    assert r.status[3] == INSUFFICIENT and r.n_monitor[3] == 2
    assert not r.change[2] and np.isnan(r.magnitude[2])
    assert np.isnan(r.residual[2]).all()
    r4 = _detect(days, y, valid, base, mon, min_baseline=5)
    assert r4.status[2] != INSUFFICIENT and r4.n_baseline[2] == 5


def test_bad_inputs_raise():
    days, y, valid, base, mon = _series()
    with pytest.raises(ShapeError, match="valid has shape"):
        _detect(days, y, valid[:, :5], base, mon)
    with pytest.raises(GeofmValueError, match="consecutive and min_baseline >= 1"):
        _detect(days, y, valid, base, mon, consecutive=0)


def test_several_components_are_combined_into_one_score():
    rng = np.random.default_rng(5)
    days, y, valid, base, mon = _series(n_chips=8)
    y3 = np.stack([y, 0.1 * rng.normal(size=y.shape), 2.0 * rng.normal(size=y.shape)], axis=-1)
    y3[0, 29:, 1] += 1.5  # the change is only in the (low-variance) second component
    r = _detect(days, y3, valid, base, mon)
    assert r.predicted.shape == y3.shape and r.rmse.shape == (8, 3)
    assert r.coef.shape == (8, 3, 9)
    assert r.status[0] == CHANGE and r.change_index[0] == 29
    assert (r.status[1:] == NO_CHANGE).all()
    # the per-component scales differ like the components' noise
    assert np.median(r.rmse[:, 2]) > 5 * np.median(r.rmse[:, 1])


def test_assess_magnitude_is_the_nanmedian_after_the_change():
    from geofm.analyze.change import SeasonalFit, assess

    rng = np.random.default_rng(4)
    n_chips, n_t = 300, 40
    resid = rng.normal(size=(n_chips, n_t)) * 2.0
    resid[:100, 25:] += 6.0  # a step in a third of the chips
    valid = rng.random((n_chips, n_t)) > 0.3
    resid[~valid] = np.nan
    monitor = np.broadcast_to(np.arange(n_t) >= 12, (n_chips, n_t))
    fit = SeasonalFit(coef=np.zeros((n_chips, 1, 9)), intercept=np.zeros((n_chips, 1)),
                      scale=np.ones((n_chips, 1)), fitted=np.ones(n_chips, bool),
                      n_baseline=np.full(n_chips, 8))
    out = assess(fit, resid, valid, monitor, threshold=3.0, consecutive=3)
    assert out["change"][:100].mean() > 0.9
    cols = np.arange(n_t)[None, :]
    after = valid & monitor & np.where(out["change"][:, None],
                                       cols >= out["change_index"][:, None], True)
    expected = np.nanmedian(np.where(after, np.abs(resid), np.nan), axis=1)
    np.testing.assert_array_equal(out["magnitude"], expected)
