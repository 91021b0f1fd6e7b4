"""Confusion-matrix metrics for label codes ``1..n_classes`` with 0 = ignore.

Rows of the confusion matrix are the true class, columns the predicted class; entry
``[i, j]`` counts pixels (or chips) of code ``i + 1`` predicted as code ``j + 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geofm.exceptions import ShapeError


def confusion_matrix(pred: np.ndarray, target: np.ndarray, n_classes: int, *,
                     ignore_index: int = 0) -> np.ndarray:
    """Count (true, predicted) code pairs.

    Args:
        pred: predicted codes, any shape, integers in ``1..n_classes``.
        target: true codes, same shape; ``ignore_index`` entries are not counted.
        n_classes: number of codes.
        ignore_index: the "no label" code.

    Returns:
        int64 [n_classes, n_classes] (rows true, columns predicted).
    """
    pred = np.asarray(pred).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    if pred.shape != target.shape:
        raise ShapeError(f"pred has {pred.size} values, target {target.size}", dim="pixel",
                         expected=target.size, got=pred.size)
    keep = (target != ignore_index) & (target >= 1) & (target <= n_classes)
    keep &= (pred >= 1) & (pred <= n_classes)
    flat = (target[keep] - 1) * n_classes + (pred[keep] - 1)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores(cm: np.ndarray) -> dict[str, Any]:
    """Per-class IoU and F1, mean IoU, macro F1 and pixel accuracy of a confusion matrix.

    A class absent from both truth and prediction gets IoU/F1 ``None`` and is left out
    of the means.

    Returns:
        ``{"iou": [..], "f1": [..], "mean_iou", "macro_f1", "pixel_accuracy", "support": [..]}``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / (tp + fp + fn), np.nan)
        f1 = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
    total = cm.sum()

    def _list(a: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else float(v) for v in a]

    return {
        "iou": _list(iou),
        "f1": _list(f1),
        "mean_iou": float(np.nanmean(iou)) if present.any() else 0.0,
        "macro_f1": float(np.nanmean(f1)) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "support": [int(v) for v in cm.sum(axis=1)],
    }


def boundaries(codes: np.ndarray) -> np.ndarray:
    """Pixels (bool [H, W]) whose code differs from their right or lower neighbour."""
    codes = np.asarray(codes)
    out = np.zeros(codes.shape, bool)
    out[:, :-1] |= codes[:, :-1] != codes[:, 1:]
    out[:-1] |= codes[:-1] != codes[1:]
    return out


def boundary_f1(pred: np.ndarray, truth: np.ndarray, area: np.ndarray | None = None, *,
                tolerance: int = 2) -> float:
    """Boundary F1 of a class map [H, W] against the truth [H, W], both 10 m codes.

    A predicted boundary pixel (:func:`boundaries`) is correct when a true boundary pixel
    lies within ``tolerance`` pixels (chessboard distance; 2 px = 20 m), and a true one
    is found when a predicted one lies that near; F1 of that precision and recall,
    counted inside ``area`` (bool [H, W], default everywhere). 1.0 when neither map has
    a boundary there.
    """
    from scipy.ndimage import binary_dilation

    inside = np.ones(np.shape(pred), bool) if area is None else np.asarray(area, bool)
    bp, bt = boundaries(pred) & inside, boundaries(truth) & inside
    if not bp.any() and not bt.any():
        return 1.0
    square = np.ones((3, 3), bool)
    near_t = binary_dilation(bt, square, iterations=tolerance) if tolerance else bt
    near_p = binary_dilation(bp, square, iterations=tolerance) if tolerance else bp
    precision = float((bp & near_t).sum() / max(int(bp.sum()), 1))
    recall = float((bt & near_p).sum() / max(int(bt.sum()), 1))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
