"""The per-pixel baseline every ``geofm finetune`` run fits beside its head.

A gradient-boosting classifier (scikit-learn's ``HistGradientBoostingClassifier``) on the
log reflectance of single pixels, no encoder: it shows at once whether the foundation
model adds anything to what the raw bands already allow. It is trained on a seeded
subsample of the labelled pixels of the same training samples as the head and scored on
every labelled pixel of the same validation samples, with the same metrics
(:func:`geofm.finetune.metrics.scores`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geofm.finetune.metrics import confusion_matrix, scores

#: Labelled training pixels the baseline is fitted on (a seeded, even subsample).
BASELINE_PIXELS = 40_000

#: ``pixels(indices) -> DN float32 [B, C, H, W]`` (numpy or torch)
Pixels = Callable[[Any], Any]
#: ``codes(indices) -> int64 codes [B, H, W]`` (0 = no label)
Codes = Callable[[Any], np.ndarray]


def pixel_features(pixels: Any) -> np.ndarray:
    """Per-pixel features float32 [B * H * W, C]: log reflectance of DN [B, C, H, W]."""
    arr = np.asarray(pixels.cpu().numpy() if hasattr(pixels, "cpu") else pixels,
                     dtype=np.float32)
    logs = np.log(np.maximum(arr, 1.0) / 10000.0)
    return logs.transpose(0, 2, 3, 1).reshape(-1, arr.shape[1])


@dataclass
class PixelBaseline:
    """A fitted per-pixel baseline.

    Attributes:
        model: the fitted ``HistGradientBoostingClassifier`` (classes are label codes).
        n_pixels: training pixels it saw.
        seconds: fit time.
    """

    model: Any
    n_pixels: int
    seconds: float

    def predict(self, pixels: Any) -> np.ndarray:
        """Codes int64 [B, H, W] for DN [B, C, H, W]."""
        b, _, h, w = pixels.shape
        return self.model.predict(pixel_features(pixels)).astype(np.int64).reshape(b, h, w)


def fit_pixel_baseline(pixels: Pixels, codes: Codes, train_idx: Sequence[int] | np.ndarray, *,
                       max_pixels: int = BASELINE_PIXELS, batch_size: int = 16,
                       seed: int = 0) -> PixelBaseline:
    """Fit the baseline on labelled pixels of the training samples.

    Each training sample contributes an equal share of ``max_pixels`` labelled pixels
    (all of them if it has fewer), drawn with a seeded generator; the classifier weights
    classes by inverse frequency (``class_weight="balanced"``), as the head does.

    Args:
        pixels: the bands of a batch of sample indices.
        codes: their label codes (0 = no label, never trained on).
        train_idx: training sample indices.
        max_pixels: training pixels at most.
        batch_size: samples read at once.
        seed: seeds the subsample and the classifier.

    Returns:
        The :class:`PixelBaseline`.

    Raises:
        GeofmValueError: no labelled training pixel.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    from geofm.exceptions import GeofmValueError

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    train_arr = np.asarray(train_idx)
    per_sample = max(1, int(np.ceil(max_pixels / max(len(train_arr), 1))))
    xs, ys = [], []
    for start in range(0, len(train_arr), batch_size):
        idx = train_arr[start:start + batch_size]
        feats = pixel_features(pixels(idx))
        labels = np.asarray(codes(idx)).reshape(len(idx), -1)
        n_px = labels.shape[1]
        for k in range(len(idx)):
            where = np.flatnonzero(labels[k] != 0)
            if where.size > per_sample:
                where = rng.choice(where, per_sample, replace=False)
            xs.append(feats[k * n_px + where])
            ys.append(labels[k, where])
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    if y.size == 0:
        raise GeofmValueError("the per-pixel baseline found no labelled training pixel; "
                              "check that the label raster covers the training chips")
    model = HistGradientBoostingClassifier(max_iter=100, early_stopping=False,
                                           class_weight="balanced", random_state=seed)
    model.fit(np.concatenate(xs), y)
    return PixelBaseline(model=model, n_pixels=int(y.size),
                         seconds=time.perf_counter() - started)


def evaluate_baseline(baseline: PixelBaseline, pixels: Pixels, codes: Codes,
                      indices: Sequence[int] | np.ndarray, *, n_classes: int,
                      batch_size: int = 16) -> dict[str, Any]:
    """Scores of the baseline on every labelled pixel of samples ``indices``.

    Returns:
        :func:`geofm.finetune.metrics.scores` plus ``confusion``, ``train_pixels`` and
        ``fit_seconds``.
    """
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    index_arr = np.asarray(indices)
    for start in range(0, len(index_arr), batch_size):
        idx = index_arr[start:start + batch_size]
        cm += confusion_matrix(baseline.predict(pixels(idx)), codes(idx), n_classes)
    out = scores(cm)
    out.update(confusion=cm.tolist(), train_pixels=baseline.n_pixels,
               fit_seconds=round(baseline.seconds, 3))
    return out
