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
    ``coef`` ``[C, 9]`` and ``intercept`` of the seasonal model (see :func:`harmonic_design`),
    ``confirm_index`` (column of the observation that completed the run, -1 if none).
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
    confirm_index: np.ndarray | None = None


@dataclass
class SeasonalFit:
    """Each chip's seasonal model of the baseline period: the reference that scores later dates.

    Attributes:
        coef: float64 ``[C, K, 9]`` harmonic coefficients per component (see
            :func:`~geofm.analyze.harmonic.harmonic_design`; unused terms are 0).
        intercept: float64 ``[C, K]``.
        scale: float64 ``[C, K]`` residual scale (the floored baseline RMSE, signal units).
        fitted: bool ``[C]``: the chip had at least ``min_baseline`` baseline observations.
        n_baseline: int ``[C]`` valid baseline observations (before screening).
    """

    coef: np.ndarray
    intercept: np.ndarray
    scale: np.ndarray
    fitted: np.ndarray
    n_baseline: np.ndarray

    def score(self, chip: np.ndarray, days: np.ndarray, values: np.ndarray, *,
              chunk: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
        """Score observations against their chip's model (no refit).

        Args:
            chip: int ``[M]`` chip row of each observation.
            days: float ``[M]`` days since 1970-01-01 UTC.
            values: float ``[M, K]`` the signal (one column per component).
            chunk: observations scored together (memory ``chunk * 9`` floats).

        Returns:
            ``(predicted float64 [M, K], residual float64 [M])``: the model's value and the
            scaled residual (several components: their combined score, see
            :func:`combine_scores`); NaN for chips that were not fitted.
        """
        chip = np.asarray(chip, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64).reshape(chip.size, -1)
        pred = np.full(values.shape, np.nan)
        resid = np.full(chip.size, np.nan)
        for lo in range(0, chip.size, chunk):
            sl = slice(lo, lo + chunk)
            c = chip[sl]
            design = harmonic_design(np.asarray(days[sl], dtype=np.float64))
            p = self.intercept[c] + np.einsum("mp,mkp->mk", design, self.coef[c])
            z = combine_scores((values[sl] - p) / self.scale[c])
            ok = self.fitted[c]
            pred[sl] = np.where(ok[:, None], p, np.nan)
            resid[sl] = np.where(ok, z, np.nan)
        return pred, resid


def fit_seasonal(days: np.ndarray, signal: np.ndarray, valid: np.ndarray, *,
                 baseline: np.ndarray, threshold: float = 3.0, min_baseline: int = 6,
                 alpha: float = 0.001, screen_threshold: float | None = None,
                 rmse_floor: float = 0.5, obs_per_coef: float = 3.0,
                 chunk: int = 16_384) -> tuple[SeasonalFit, np.ndarray]:
    """Fit every chip's seasonal model on its baseline observations (see :func:`detect_changes`).

    Args:
        days: float ``[C, T]`` days since 1970-01-01 UTC.
        signal: float ``[C, T, K]`` the monitored components.
        valid: bool ``[C, T]`` real, finite observations.
        baseline: bool ``[C, T]`` observations in the baseline period.
        threshold: screening threshold (default for ``screen_threshold``).
        min_baseline: fewest baseline observations for a fit.
        alpha: Lasso penalty.
        screen_threshold: see :func:`detect_changes`.
        rmse_floor: see :func:`detect_changes`.
        obs_per_coef: see :func:`detect_changes`.
        chunk: chips fitted together.

    Returns:
        ``(fit, used)``: the :class:`SeasonalFit` and bool ``[C, T]`` the baseline
        observations the final fit used (after screening).
    """
    screen = threshold if screen_threshold is None else screen_threshold
    base = valid & baseline
    n_base = base.sum(axis=1)
    fitted = n_base >= min_baseline
    fit_kw: dict[str, Any] = dict(alpha=alpha, chunk=chunk, obs_per_coef=obs_per_coef)
    fit_w = base & fitted[:, None]
    pred, rmse, coef, intercept = _fit(days, signal, fit_w, **fit_kw)
    scale = _floored(rmse, fitted, rmse_floor)

    # Screen baseline outliers once: drop |score| > screen, refit the chips that lost
    # points (only if enough points remain).
    score = combine_scores((signal - pred) / scale[:, None, :])
    keep = fit_w & (np.abs(score) <= screen)
    n_keep = keep.sum(axis=1)
    redo = fitted & (n_keep < fit_w.sum(axis=1)) & (n_keep >= min_baseline)
    used = fit_w.copy()
    if redo.any():
        idx = np.flatnonzero(redo)
        _, rmse[idx], coef[idx], intercept[idx] = _fit(days[idx], signal[idx], keep[idx],
                                                       **fit_kw)
        used[idx] = keep[idx]
        scale = _floored(rmse, fitted, rmse_floor)
    return SeasonalFit(coef=coef, intercept=intercept, scale=scale, fitted=fitted,
                       n_baseline=n_base), used


def assess(fit: SeasonalFit, residual: np.ndarray, valid: np.ndarray, monitor: np.ndarray, *,
           threshold: float = 3.0, consecutive: int = 3) -> dict[str, np.ndarray]:
    """Turn scaled residuals into each chip's status (the CCDC rule; see :func:`detect_changes`).

    This is the part of change detection that a new acquisition updates: it needs only
    the residuals (scored once, against a fixed :class:`SeasonalFit`), never a refit.

    Args:
        fit: the chips' seasonal models (``fitted``, ``n_baseline``).
        residual: float ``[C, T]`` scaled residuals, dates in order (NaN where none).
        valid: bool ``[C, T]`` real observations.
        monitor: bool ``[C, T]`` monitoring observations (outside the baseline period).
        threshold: anomaly threshold on ``|residual|``.
        consecutive: anomalies in a row (same side) that make a change.

    Returns:
        Per chip ``status``, ``change``, ``change_index``, ``confirm_index`` (column of
        the observation that completed the run, -1 if none), ``magnitude``,
        ``n_observations``, ``n_monitor``; per observation ``anomaly``.
    """
    from geofm.analyze.chipstate import ChipState, walk

    residual = np.asarray(residual)
    n_chips, n_t = residual.shape
    # the rule from no observation on (chipstate.walk: also how an update goes on)
    _, out = walk(ChipState.empty(n_chips), residual, np.ones((n_chips, n_t), dtype=bool),
                  valid, monitor, np.zeros((n_chips, n_t), dtype=np.int64),
                  np.full((n_chips, n_t), None, dtype=object), np.asarray(fit.fitted, bool),
                  threshold=threshold, consecutive=consecutive)
    return out


def detect_changes(days: np.ndarray, signal: np.ndarray, valid: np.ndarray, *,
                   baseline: np.ndarray, monitor: np.ndarray, threshold: float = 3.0,
                   consecutive: int = 3, min_baseline: int = 6, alpha: float = 0.001,
                   screen_threshold: float | None = None, rmse_floor: float = 0.5,
                   obs_per_coef: float = 3.0, chunk: int = 16_384) -> ChangeResult:
    """Detect changes in many chips' series at once.

    The three steps are public so that a run can be updated incrementally:
    :func:`fit_seasonal` (the baseline reference), :meth:`SeasonalFit.score` (scaled
    residuals of any observation against it) and :func:`assess` (the CCDC rule).

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
    check_parameters(threshold=threshold, consecutive=consecutive, min_baseline=min_baseline,
                     rmse_floor=rmse_floor)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(y3).all(axis=2)
    baseline = valid & np.asarray(baseline, dtype=bool)
    monitor = valid & np.asarray(monitor, dtype=bool) & ~baseline
    y3 = np.where(valid[..., None], y3, 0.0)
    days = np.where(valid, np.asarray(days, dtype=np.float64), 0.0)
    fit, used = fit_seasonal(days, y3, valid, baseline=baseline, threshold=threshold,
                             min_baseline=min_baseline, alpha=alpha,
                             screen_threshold=screen_threshold, rmse_floor=rmse_floor,
                             obs_per_coef=obs_per_coef, chunk=chunk)
    rows, cols = np.nonzero(valid)
    pred_m, resid_m = fit.score(rows, days[rows, cols], y3[rows, cols])
    pred = np.full(y3.shape, np.nan)
    pred[rows, cols] = pred_m
    resid = np.full(shape, np.nan)
    resid[rows, cols] = resid_m
    out = assess(fit, resid, valid, monitor, threshold=threshold, consecutive=consecutive)
    ok = out["status"] != INSUFFICIENT
    rmse_out = np.where(fit.fitted[:, None], fit.scale, np.nan)
    coef, intercept = fit.coef, fit.intercept
    if not multi:
        pred, rmse_out, coef, intercept = pred[..., 0], rmse_out[:, 0], coef[:, 0], intercept[:, 0]
    return ChangeResult(predicted=pred, residual=resid, anomaly=out["anomaly"],
                        baseline_used=used & ok[:, None], status=out["status"],
                        change=out["change"], change_index=out["change_index"],
                        magnitude=out["magnitude"], n_observations=out["n_observations"],
                        n_baseline=fit.n_baseline, n_monitor=out["n_monitor"],
                        rmse=rmse_out, coef=coef, intercept=intercept,
                        confirm_index=out["confirm_index"])


def check_parameters(*, threshold: float, consecutive: int, min_baseline: int,
                     rmse_floor: float = 0.5) -> None:
    """Validate change-detection parameters.

    Raises:
        GeofmValueError: if one is out of range.
    """
    if threshold <= 0 or consecutive < 1 or min_baseline < 1 or rmse_floor < 0:
        raise GeofmValueError(
            f"invalid parameters threshold={threshold}, consecutive={consecutive}, "
            f"min_baseline={min_baseline}, rmse_floor={rmse_floor}: threshold must be > 0, "
            "consecutive and min_baseline >= 1, rmse_floor >= 0.")


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


def combine_scores(z: np.ndarray) -> np.ndarray:
    """Combine per-component scaled residuals ``[..., K]`` into one score ``[...]``.

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
