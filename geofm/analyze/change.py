"""Per-chip change detection on a signal time series (CCDC-style, batched over chips).

For every chip at once: fit the seasonal model (:mod:`geofm.analyze.harmonic`) on the
baseline period, screen baseline outliers once (drop ``|z| > screen_threshold`` and
refit), scale all residuals by the baseline fit's RMSE (floored, so a near-perfect
baseline fit does not turn noise into changes), and flag a change where at least
``consecutive`` successive monitoring observations exceed ``threshold`` on the same
side of the model. The change
date is the first observation of that run.

Series come as padded arrays: chip ``i`` has its valid observations, in date order, in
the first columns of row ``i`` and ``valid[i, t]`` says which columns are real.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geofm.analyze.harmonic import LassoFit, batched_lasso, harmonic_design
from geofm.exceptions import GeofmValueError, ShapeError

CHANGE = "change"
NO_CHANGE = "no change"
INSUFFICIENT = "insufficient data"
STATUSES = (CHANGE, NO_CHANGE, INSUFFICIENT)


@dataclass
class ChangeResult:
    """Per-chip and per-observation outputs of :func:`detect_changes`.

    Per observation (``[C, T]``, NaN / False where not valid): ``predicted`` (seasonal
    model), ``residual`` (``(signal - predicted) / rmse``, unitless), ``anomaly``
    (``|residual| > threshold``), ``baseline_used`` (fitted on, after screening).
    Per chip (``[C]``): ``status`` (one of :data:`STATUSES`), ``change`` (bool),
    ``change_index`` (column of the first changed observation, -1 if none),
    ``magnitude`` (median ``|residual|`` of the monitoring observations from the change
    on, or of all monitoring observations when there is no change; NaN if unknown),
    ``n_observations``, ``n_baseline`` (valid observations in the baseline period,
    before screening), ``n_monitor``, ``rmse`` (the floored scale, signal units),
    ``coef`` ``[C, 9]`` and ``intercept`` of the seasonal model (see :func:`harmonic_design`).
    """

    predicted: np.ndarray
    residual: np.ndarray
    anomaly: np.ndarray
    baseline_used: np.ndarray
    status: np.ndarray
    change: np.ndarray
    change_index: np.ndarray
    magnitude: np.ndarray
    n_observations: np.ndarray
    n_baseline: np.ndarray
    n_monitor: np.ndarray
    rmse: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray


def detect_changes(days: np.ndarray, signal: np.ndarray, valid: np.ndarray, *,
                   baseline: np.ndarray, monitor: np.ndarray, threshold: float = 3.0,
                   consecutive: int = 3, min_baseline: int = 6, alpha: float = 0.001,
                   screen_threshold: float | None = None, rmse_floor: float = 0.5,
                   chunk: int = 16_384) -> ChangeResult:
    """Detect changes in many chips' series at once.

    Args:
        days: float ``[C, T]`` observation dates, days since 1970-01-01 UTC.
        signal: float ``[C, T]`` the monitored value (e.g. PC1, cosine to baseline).
        valid: bool ``[C, T]`` which entries are real observations.
        baseline: bool ``[C, T]`` observations in the baseline period.
        monitor: bool ``[C, T]`` observations in the monitoring period.
        threshold: scaled-residual magnitude above which an observation is anomalous.
        consecutive: anomalous monitoring observations in a row that make a change.
        min_baseline: fewest baseline observations for a fit; chips with fewer get
            status ``"insufficient data"`` (so do chips with fewer than
            ``consecutive`` monitoring observations: a change could not be seen).
        alpha: Lasso penalty of the seasonal fit.
        screen_threshold: baseline points with ``|z|`` above this are dropped once
            before the refit; default ``threshold``.
        rmse_floor: the residual scale is at least this fraction of the median
            baseline RMSE over all fitted chips (guards near-perfect fits).
        chunk: chips fitted together (bounds memory to about ``chunk * T * 9`` floats).

    Returns:
        A :class:`ChangeResult`.

    Raises:
        ShapeError: if the arrays' shapes differ.
        GeofmValueError: if a parameter is out of range.
    """
    arrays = {"days": days, "signal": signal, "valid": valid, "baseline": baseline,
              "monitor": monitor}
    shape = np.shape(signal)
    for name, arr in arrays.items():
        if np.shape(arr) != shape or len(shape) != 2:
            raise ShapeError(f"{name} has shape {np.shape(arr)} but signal has {shape}; all "
                             "inputs must be [chip, time] arrays of the same shape.")
    if threshold <= 0 or consecutive < 1 or min_baseline < 1 or rmse_floor < 0:
        raise GeofmValueError(
            f"invalid parameters threshold={threshold}, consecutive={consecutive}, "
            f"min_baseline={min_baseline}, rmse_floor={rmse_floor}: threshold must be > 0, "
            "consecutive and min_baseline >= 1, rmse_floor >= 0.")
    screen = threshold if screen_threshold is None else screen_threshold
    valid = np.asarray(valid, dtype=bool)
    baseline = valid & np.asarray(baseline, dtype=bool)
    monitor = valid & np.asarray(monitor, dtype=bool) & ~baseline
    y = np.where(valid, np.asarray(signal, dtype=np.float64), 0.0)
    valid &= np.isfinite(y)
    baseline &= valid
    monitor &= valid
    n_chips, _ = shape

    n_obs = valid.sum(axis=1)
    n_base = baseline.sum(axis=1)
    n_mon = monitor.sum(axis=1)
    ok = (n_base >= min_baseline) & (n_mon >= consecutive)
    days = np.where(valid, np.asarray(days, dtype=np.float64), 0.0)

    fit_w = baseline & ok[:, None]
    pred, rmse, coef, intercept = _fit(days, y, fit_w, alpha, chunk)
    scale = _floored(rmse, ok, rmse_floor)

    # Screen baseline outliers once: drop |z| > screen, refit the chips that lost points
    # (only if enough points remain).
    z = np.abs(y - pred) / scale[:, None]
    keep = fit_w & (z <= screen)
    n_keep = keep.sum(axis=1)
    redo = ok & (n_keep < fit_w.sum(axis=1)) & (n_keep >= min_baseline)
    used = fit_w.copy()
    if redo.any():
        idx = np.flatnonzero(redo)
        pred[idx], rmse[idx], coef[idx], intercept[idx] = _fit(days[idx], y[idx], keep[idx],
                                                               alpha, chunk)
        used[idx] = keep[idx]
        scale = _floored(rmse, ok, rmse_floor)

    resid = (y - pred) / scale[:, None]
    resid = np.where(valid & ok[:, None], resid, np.nan)
    pred = np.where(valid & ok[:, None], pred, np.nan)
    absres = np.abs(resid)
    anomaly = np.nan_to_num(absres, nan=0.0) > threshold

    # CCDC rule: >= `consecutive` anomalous monitoring observations in a row, all on the
    # same side of the seasonal model (a run is broken by a normal monitoring
    # observation or by a jump to the other side).
    signed = np.sign(np.nan_to_num(resid, nan=0.0)) * (anomaly & monitor)
    run = np.zeros(n_chips, dtype=np.int64)
    side = np.zeros(n_chips)
    start = np.full(n_chips, -1, dtype=np.int64)
    change_index = np.full(n_chips, -1, dtype=np.int64)
    for t in range(shape[1]):
        s_t, m_t = signed[:, t], monitor[:, t]
        extend = (s_t != 0) & (s_t == side) & (run > 0)
        begin = (s_t != 0) & ~extend
        run = np.where(extend, run + 1, np.where(begin, 1, np.where(m_t, 0, run)))
        start = np.where(begin, t, start)
        side = np.where(s_t != 0, s_t, np.where(m_t, 0.0, side))
        found = (run >= consecutive) & (change_index < 0)
        change_index[found] = start[found]
    change = (change_index >= 0) & ok

    cols = np.arange(shape[1])[None, :]
    after = monitor & np.where(change[:, None], cols >= change_index[:, None], True)
    masked = np.where(after, absres, np.nan)
    has = after.any(axis=1) & ok
    magnitude = np.full(n_chips, np.nan)
    if has.any():
        magnitude[has] = np.nanmedian(masked[has], axis=1)

    status = np.where(~ok, INSUFFICIENT, np.where(change, CHANGE, NO_CHANGE)).astype(object)
    return ChangeResult(predicted=pred, residual=resid, anomaly=anomaly & valid,
                        baseline_used=used & ok[:, None], status=status, change=change,
                        change_index=np.where(change, change_index, -1), magnitude=magnitude,
                        n_observations=n_obs, n_baseline=n_base, n_monitor=n_mon,
                        rmse=np.where(ok, scale, np.nan), coef=coef, intercept=intercept)


def _fit(days: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float, chunk: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seasonal Lasso fits in chunks of chips: predictions, RMSE, coefficients, intercept."""
    n = y.shape[0]
    pred = np.zeros(y.shape)
    rmse = np.zeros(n)
    coef = np.zeros((n, 9))
    intercept = np.zeros(n)
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        design = harmonic_design(days[sl])
        fit = batched_lasso(design, y[sl], weights[sl], alpha=alpha)
        pred[sl] = fit.predict(design)
        rmse[sl] = _rmse(y[sl] - pred[sl], weights[sl], fit)
        coef[sl], intercept[sl] = fit.coef, fit.intercept
    return pred, rmse, coef, intercept


def _rmse(resid: np.ndarray, weights: np.ndarray, fit: LassoFit) -> np.ndarray:
    """Baseline RMSE with a degrees-of-freedom correction (non-zero coefs + intercept)."""
    n = weights.sum(axis=1)
    dof = (np.abs(fit.coef) > 0).sum(axis=1) + 1
    denom = np.maximum(n - dof, np.maximum(n / 2.0, 1.0))
    ssr = np.where(weights, resid, 0.0) ** 2
    return np.sqrt(ssr.sum(axis=1) / denom)


def _floored(rmse: np.ndarray, ok: np.ndarray, fraction: float) -> np.ndarray:
    ref = float(np.median(rmse[ok])) if ok.any() else 0.0
    floor = max(fraction * ref, 1e-12)
    return np.maximum(np.nan_to_num(rmse, nan=floor), floor)
