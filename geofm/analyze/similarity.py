"""Cosine similarity of each observation to its chip's baseline mean embedding.

The reference is the mean embedding over the chip's baseline period (not the first
date), so one hazy first image does not poison a chip. :class:`BaselineMeans` builds
those means while streaming embedding files, with memory ``[chips, D]``.
"""

from __future__ import annotations

import numpy as np

from geofm.exceptions import ShapeError


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity.

    Args:
        a: float ``[N, D]``.
        b: float ``[N, D]`` or ``[D]`` (broadcast).

    Returns:
        float32 ``[N]`` in [-1, 1]; NaN where either vector is zero or NaN.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape[-1] != b.shape[-1]:
        raise ShapeError(f"dimension 'embedding' differs: {a.shape[-1]} vs {b.shape[-1]}; "
                         "compare embeddings of the same model and kind.")
    b = np.broadcast_to(b, a.shape)
    # einsum: dot products and norms without [N, D] temporaries
    dot = np.einsum("nd,nd->n", a, b)
    norm = np.sqrt(np.einsum("nd,nd->n", a, a) * np.einsum("nd,nd->n", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, dot / norm, np.nan).astype(np.float32)


def baseline_mean(vectors: np.ndarray, in_baseline: np.ndarray) -> np.ndarray:
    """Mean embedding of one chip over its baseline observations.

    Args:
        vectors: float ``[T, D]`` a chip's embeddings, one per date.
        in_baseline: bool ``[T]`` dates in the baseline period.

    Returns:
        float32 ``[D]``; NaN if no date is in the baseline.
    """
    sel = np.asarray(vectors, dtype=np.float64)[np.asarray(in_baseline, dtype=bool)]
    if sel.shape[0] == 0:
        return np.full(np.shape(vectors)[-1], np.nan, dtype=np.float32)
    return sel.mean(axis=0).astype(np.float32)


class BaselineMeans:
    """Accumulates per-chip baseline sums from streamed batches.

    Args:
        n_chips: number of chips ``C`` (rows are addressed by chip index).
        dim: embedding dimension ``D``.
    """

    def __init__(self, n_chips: int, dim: int) -> None:
        self.sums = np.zeros((n_chips, dim), dtype=np.float32)
        self.weights = np.zeros(n_chips, dtype=np.float64)

    def add(self, chip_index: np.ndarray, vectors: np.ndarray, weights: np.ndarray) -> None:
        """Add a batch: ``vectors [N, D]`` of chips ``chip_index [N]`` with ``weights [N]``.

        Weights are 0 for observations outside the baseline and ``1/k`` for each of
        ``k`` same-day acquisitions of a chip (so a date counts once).
        """
        weights = np.asarray(weights, dtype=np.float64)
        sel = weights > 0
        if not sel.any():
            return
        if sel.all():  # no copy of the vectors
            idx, vec, w = chip_index, vectors, weights
        else:
            idx, vec, w = chip_index[sel], vectors[sel], weights[sel]
        self.weights += np.bincount(idx, weights=w, minlength=self.weights.size)
        if not (w == 1.0).all():
            vec = vec * w[:, None].astype(np.float32)
        if np.bincount(idx).max() == 1:  # each chip once: one gather-add-scatter
            self.sums[idx] += vec
        else:
            np.add.at(self.sums, idx, vec)

    def unit_means(self) -> np.ndarray:
        """float32 ``[C, D]`` baseline means scaled to unit length (NaN without baseline).

        Normalises the sums in place (no second ``[C, D]`` array); call once.
        """
        norm = np.linalg.norm(self.sums, axis=1)
        bad = (norm <= 0) | (self.weights <= 0)
        self.sums /= np.where(bad, 1.0, norm)[:, None]
        self.sums[bad] = np.nan
        return self.sums
