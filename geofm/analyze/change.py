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
from typing import Any

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
                   obs_per_coef: float = 3.0, chunk: int = 16_384) -> ChangeResult:
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
        obs_per_coef: the seasonal model grows with the data, as in CCDC: the degree-2
            terms (5 features) need ``obs_per_coef * 6`` baseline observations, all 9
            degree-3 features ``obs_per_coef * 10``; with fewer, only ``sin`` and
            ``cos`` of the annual phase are used (a fit with as many features as points
            would pass through noise and extrapolate wildly). ``0`` always uses all 9,
            like the reference solution.
        chunk: chips fitted together (bounds memory to about ``chunk * T * 9`` floats).

    Returns:
        A :class:`ChangeResult`.

    Raises:
        ShapeError: if the arrays' shapes differ.
        GeofmValueError: if a parameter is out of range.
    """
    y3 = np.asarray(signal, dtype=np.float64)
    multi = y3.ndim == 3
    if not multi:
        y3 = y3[..., None]
    shape = y3.shape[:2]
    arrays = {"days": days, "valid": valid, "baseline": baseline, "monitor": monitor}
    for name, arr in arrays.items():
        if np.shape(arr) != shape or y3.ndim != 3:
            raise ShapeError(f"{name} has shape {np.shape(arr)} but signal has "
                             f"{np.shape(signal)}; inputs must be [chip, time] arrays (signal "
                             "[chip, time] or [chip, time, component]) of matching shape.")
    if threshold <= 0 or consecutive < 1 or min_baseline < 1 or rmse_floor < 0:
        raise GeofmValueError(
            f"invalid parameters threshold={threshold}, consecutive={consecutive}, "
            f"min_baseline={min_baseline}, rmse_floor={rmse_floor}: threshold must be > 0, "
            "consecutive and min_baseline >= 1, rmse_floor >= 0.")
    screen = threshold if screen_threshold is None else screen_threshold
    valid = np.asarray(valid, dtype=bool) & np.isfinite(y3).all(axis=2)
    baseline = valid & np.asarray(baseline, dtype=bool)
    monitor = valid & np.asarray(monitor, dtype=bool) & ~baseline
    y3 = np.where(valid[..., None], y3, 0.0)
    n_chips, n_t, n_comp = y3.shape
    fit_kw: dict[str, Any] = dict(alpha=alpha, chunk=chunk, obs_per_coef=obs_per_coef)

    n_obs = valid.sum(axis=1)
    n_base = baseline.sum(axis=1)
    n_mon = monitor.sum(axis=1)
    ok = (n_base >= min_baseline) & (n_mon >= consecutive)
    days = np.where(valid, np.asarray(days, dtype=np.float64), 0.0)

    fit_w = baseline & ok[:, None]
    pred, rmse, coef, intercept = _fit(days, y3, fit_w, **fit_kw)
    scale = _floored(rmse, ok, rmse_floor)

    # Screen baseline outliers once: drop |score| > screen, refit the chips that lost
    # points (only if enough points remain).
    score = _score((y3 - pred) / scale[:, None, :])
    keep = fit_w & (np.abs(score) <= screen)
    n_keep = keep.sum(axis=1)
    redo = ok & (n_keep < fit_w.sum(axis=1)) & (n_keep >= min_baseline)
    used = fit_w.copy()
    if redo.any():
        idx = np.flatnonzero(redo)
        pred[idx], rmse[idx], coef[idx], intercept[idx] = _fit(days[idx], y3[idx], keep[idx],
                                                               **fit_kw)
        used[idx] = keep[idx]
        scale = _floored(rmse, ok, rmse_floor)

    live = valid & ok[:, None]
    resid = np.where(live, _score((y3 - pred) / scale[:, None, :]), np.nan)
    pred = np.where(live[..., None], pred, np.nan)
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
    for t in range(n_t):
        s_t, m_t = signed[:, t], monitor[:, t]
        extend = (s_t != 0) & (s_t == side) & (run > 0)
        begin = (s_t != 0) & ~extend
        run = np.where(extend, run + 1, np.where(begin, 1, np.where(m_t, 0, run)))
        start = np.where(begin, t, start)
        side = np.where(s_t != 0, s_t, np.where(m_t, 0.0, side))
        found = (run >= consecutive) & (change_index < 0)
        change_index[found] = start[found]
    change = (change_index >= 0) & ok

    cols = np.arange(n_t)[None, :]
    after = monitor & np.where(change[:, None], cols >= change_index[:, None], True)
    masked = np.where(after, absres, np.nan)
    has = after.any(axis=1) & ok
    magnitude = np.full(n_chips, np.nan)
    if has.any():
        magnitude[has] = np.nanmedian(masked[has], axis=1)

    status = np.where(~ok, INSUFFICIENT, np.where(change, CHANGE, NO_CHANGE)).astype(object)
    rmse_out = np.where(ok[:, None], scale, np.nan)
    if not multi:
        pred, rmse_out, coef, intercept = pred[..., 0], rmse_out[:, 0], coef[:, 0], intercept[:, 0]
    return ChangeResult(predicted=pred, residual=resid, anomaly=anomaly & valid,
                        baseline_used=used & ok[:, None], status=status, change=change,
                        change_index=np.where(change, change_index, -1), magnitude=magnitude,
                        n_observations=n_obs, n_baseline=n_base, n_monitor=n_mon,
                        rmse=rmse_out, coef=coef, intercept=intercept)


#: Number of leading design columns of each model size (degree 1, 2, 3 in sin/cos).
MODEL_SIZES = (2, 5, 9)


def _fit(days: np.ndarray, y: np.ndarray, weights: np.ndarray, *, alpha: float, chunk: int,
         obs_per_coef: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seasonal Lasso fits of every component, in chunks of chips.

    Args: days ``[C, T]``, y ``[C, T, K]``, weights ``[C, T]``.

    Returns:
        predictions ``[C, T, K]``, RMSE ``[C, K]``, coefficients ``[C, K, 9]``,
        intercepts ``[C, K]``.
    """
    n, n_t, n_comp = y.shape
    pred = np.zeros(y.shape)
    rmse = np.zeros((n, n_comp))
    coef = np.zeros((n, n_comp, 9))
    intercept = np.zeros((n, n_comp))
    n_used = weights.sum(axis=1)
    size = np.full(n, MODEL_SIZES[0])
    for p in MODEL_SIZES[1:]:
        size = np.where(n_used >= obs_per_coef * (p + 1), p, size)
    step = max(1, chunk // n_comp)
    for lo in range(0, n, step):
        sl = slice(lo, lo + step)
        m = y[sl].shape[0]
        design = harmonic_design(days[sl]) * (np.arange(9) < size[sl, None])[:, None, :]
        design = np.repeat(design, n_comp, axis=0)  # rows: chip-major
        y_rows = y[sl].transpose(0, 2, 1).reshape(m * n_comp, n_t)
        w_rows = np.repeat(weights[sl], n_comp, axis=0)
        fit = batched_lasso(design, y_rows, w_rows, alpha=alpha)
        fitted = fit.predict(design)
        pred[sl] = fitted.reshape(m, n_comp, n_t).transpose(0, 2, 1)
        rmse[sl] = _rmse(y_rows - fitted, w_rows, fit).reshape(m, n_comp)
        coef[sl] = fit.coef.reshape(m, n_comp, -1)
        intercept[sl] = fit.intercept.reshape(m, n_comp)
    return pred, rmse, coef, intercept


def _score(z: np.ndarray) -> np.ndarray:
    """Combine per-component scaled residuals ``[C, T, K]`` into one score ``[C, T]``.

    One component: the signed residual itself. Several: the normal equivalent
    (Wilson-Hilferty) of the chi-square statistic ``sum_k z_k^2`` with ``K`` degrees of
    freedom, so that the same threshold means about the same false-alarm rate.
    """
    n_comp = z.shape[-1]
    if n_comp == 1:
        return z[..., 0]
    chi = np.sum(z * z, axis=-1) / n_comp
    v = 2.0 / (9.0 * n_comp)
    return (np.cbrt(chi) - (1.0 - v)) / np.sqrt(v)


def _rmse(resid: np.ndarray, weights: np.ndarray, fit: LassoFit) -> np.ndarray:
    """Baseline RMSE with a degrees-of-freedom correction (non-zero coefs + intercept)."""
    n = weights.sum(axis=1)
    dof = (np.abs(fit.coef) > 0).sum(axis=1) + 1
    denom = np.maximum(n - dof, np.maximum(n / 2.0, 1.0))
    ssr = np.where(weights, resid, 0.0) ** 2
    return np.sqrt(ssr.sum(axis=1) / denom)


def _floored(rmse: np.ndarray, ok: np.ndarray, fraction: float) -> np.ndarray:
    """Floor each component's RMSE ``[C, K]`` at ``fraction`` x its median over chips."""
    ref = np.median(rmse[ok], axis=0) if ok.any() else np.zeros(rmse.shape[1])
    floor = np.maximum(fraction * ref, 1e-12)[None, :]
    return np.maximum(np.where(np.isfinite(rmse), rmse, floor), floor)
