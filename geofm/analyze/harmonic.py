"""Harmonic (seasonal) regression: the design matrix and a batched, masked Lasso.

The seasonal model is the reference solution's: polynomial features of degree 3 of the
sine and cosine of the annual phase (sklearn's ``PolynomialFeatures(3)`` on
``[sin, cos]`` without the bias column), fitted with a Lasso (``alpha=0.001``) and an
intercept. :func:`batched_lasso` solves that Lasso for many chips at once (one weight
vector per chip, coordinate descent on each chip's Gram matrix, vectorised over
chips), so 100,000 chips need no Python loop of estimator fits. Chips observed on
different dates are handled by per-observation weights (0 = not observed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geofm.exceptions import ShapeError

#: Days per year used to turn a date into an annual phase.
DAYS_PER_YEAR = 365.25

#: Feature names, in the column order of :func:`harmonic_design`.
FEATURE_NAMES = ("s", "c", "s^2", "s c", "c^2", "s^3", "s^2 c", "s c^2", "c^3")


def annual_phase(days: np.ndarray) -> np.ndarray:
    """Annual phase in radians of dates given as days since 1970-01-01 (UTC).

    Args:
        days: float days since the Unix epoch, any shape.

    Returns:
        ``2 pi * days / 365.25`` (same shape).
    """
    return 2.0 * np.pi * np.asarray(days, dtype=np.float64) / DAYS_PER_YEAR


def harmonic_design(days: np.ndarray) -> np.ndarray:
    """Degree-3 polynomial features of ``sin`` and ``cos`` of the annual phase.

    Columns (as sklearn ``PolynomialFeatures(degree=3, include_bias=False)`` orders
    them for inputs ``[s, c]``): ``s, c, s^2, s*c, c^2, s^3, s^2*c, s*c^2, c^3``.

    Args:
        days: float days since 1970-01-01 (UTC), shape ``[...]``.

    Returns:
        float64 ``[..., 9]``.
    """
    phase = annual_phase(days)
    s, c = np.sin(phase), np.cos(phase)
    return np.stack([s, c, s * s, s * c, c * c, s**3, s * s * c, s * c * c, c**3], axis=-1)


@dataclass
class LassoFit:
    """Coefficients of a batch of Lasso fits.

    Attributes:
        coef: float64 ``[C, P]`` per-chip feature weights.
        intercept: float64 ``[C]``.
        n_iter: coordinate-descent sweeps used (max over chips).
        converged: bool ``[C]``; False where ``max_iter`` was reached.
    """

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int
    converged: np.ndarray

    def predict(self, design: np.ndarray) -> np.ndarray:
        """Predictions ``intercept + design @ coef`` for a design ``[C, T, P]`` -> ``[C, T]``."""
        return self.intercept[:, None] + np.einsum("ctp,cp->ct", design, self.coef)


def batched_lasso(design: np.ndarray, y: np.ndarray, weights: np.ndarray, *,
                  alpha: float = 0.001, max_iter: int = 10_000, tol: float = 1e-7,
                  chunk: int = 65_536) -> LassoFit:
    """Solve one Lasso per chip: sklearn's objective, with an intercept and weights.

    For each chip ``i`` this minimises
    ``1 / (2 sum(w)) * sum_t w_t (y_t - b - x_t . beta)^2 + alpha * ||beta||_1``,
    which is ``sklearn.linear_model.Lasso(alpha, fit_intercept=True)`` fitted on the
    observations with ``w_t = 1`` when the weights are 0/1. The intercept is removed by
    centring with the weighted means; the Lasso is then solved by cyclic coordinate
    descent on each chip's ``P x P`` Gram matrix, all chips of a chunk at once, until
    the largest coefficient change is below ``tol`` (relative to the coefficients'
    scale) or ``max_iter`` sweeps. Chips with no weight get zeros.

    Args:
        design: float ``[C, T, P]`` features per chip and observation (or ``[T, P]``
            shared by every chip).
        y: float ``[C, T]`` targets; values where the weight is 0 are ignored (NaN ok).
        weights: float or bool ``[C, T]``, >= 0.
        alpha: L1 penalty (sklearn's ``alpha``).
        max_iter: maximum coordinate-descent sweeps.
        tol: convergence tolerance on the largest coefficient update.
        chunk: chips solved together (bounds memory to about ``chunk * P * P`` floats).

    Returns:
        A :class:`LassoFit` with ``coef [C, P]`` and ``intercept [C]``.

    Raises:
        ShapeError: if the shapes of ``design``, ``y`` and ``weights`` disagree.
    """
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if y.ndim != 2 or w.shape != y.shape:
        raise ShapeError(f"y and weights must both be [chip, time]; got {y.shape} and "
                         f"{w.shape}. Pass one row per chip and one column per date.")
    design = np.asarray(design, dtype=np.float64)
    if design.ndim == 2:
        design = np.broadcast_to(design, (y.shape[0], *design.shape))
    if design.ndim != 3 or design.shape[:2] != y.shape:
        raise ShapeError(f"design must be [chip, time, feature] matching y {y.shape}; got "
                         f"{design.shape}. Build it with harmonic_design(days) for the same "
                         "chips and dates.")
    n_chips, _, n_feat = design.shape
    coef = np.zeros((n_chips, n_feat))
    intercept = np.zeros(n_chips)
    converged = np.ones(n_chips, dtype=bool)
    n_iter = 0
    for lo in range(0, n_chips, chunk):
        sl = slice(lo, lo + chunk)
        b, icpt, it, conv = _lasso_chunk(design[sl], y[sl], w[sl], alpha, max_iter, tol)
        coef[sl], intercept[sl], converged[sl] = b, icpt, conv
        n_iter = max(n_iter, it)
    return LassoFit(coef=coef, intercept=intercept, n_iter=n_iter, converged=converged)


def _lasso_chunk(design: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float,
                 max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    n_chips, _, n_feat = design.shape
    y = np.where(w > 0, y, 0.0)
    n = w.sum(axis=1)
    safe_n = np.where(n > 0, n, 1.0)
    x_mean = np.einsum("ct,ctp->cp", w, design) / safe_n[:, None]
    y_mean = (w * y).sum(axis=1) / safe_n
    xc = design - x_mean[:, None, :]
    yc = y - y_mean[:, None]
    gram = np.einsum("ct,ctp,ctq->cpq", w, xc, xc) / safe_n[:, None, None]
    xty = np.einsum("ct,ctp,ct->cp", w, xc, yc) / safe_n[:, None]
    diag = np.einsum("cpp->cp", gram).copy()
    # Features that are constant over a chip's observations have no effect: weight 0.
    usable = diag > 1e-12 * np.maximum(diag.max(axis=1, keepdims=True), 1e-300)
    inv_diag = np.where(usable, 1.0 / np.where(usable, diag, 1.0), 0.0)
    beta = np.zeros((n_chips, n_feat))
    active = np.flatnonzero(n > 0)
    sweeps = 0
    converged = np.ones(n_chips, dtype=bool)
    while active.size and sweeps < max_iter:
        sweeps += 1
        g, r, b, inv = gram[active], xty[active], beta[active], inv_diag[active]
        max_step = np.zeros(active.size)
        for j in range(n_feat):
            # rho = x_j' (y - X beta + x_j beta_j) / n, from the Gram matrix.
            rho = r[:, j] - np.einsum("cp,cp->c", g[:, j, :], b) + g[:, j, j] * b[:, j]
            new = np.sign(rho) * np.maximum(np.abs(rho) - alpha, 0.0) * inv[:, j]
            max_step = np.maximum(max_step, np.abs(new - b[:, j]))
            b[:, j] = new
        beta[active] = b
        scale = np.maximum(np.abs(b).max(axis=1), 1.0)
        active = active[max_step > tol * scale]
    if active.size:
        converged[active] = False
    intercept = np.where(n > 0, y_mean - np.einsum("cp,cp->c", x_mean, beta), 0.0)
    return beta, intercept, sweeps, converged
