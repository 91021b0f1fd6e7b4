"""Dimensionality reduction: one PCA for the whole run (saved, reusable) and t-SNE.

The PCA is fitted once per reference, never per shard, so every chip and date is
projected onto the same axes. The analyze stage fits it on the baseline period's valid
embeddings (:func:`geofm.analyze.passes.pass_one`); to bound memory on a seeded uniform
subsample of at most ``max_samples`` vectors (exact when there are fewer): the
covariance of the sample in float64, then its eigenvectors. The fitted
axes are saved to ``analysis/pca.npz`` and can be loaded to project later data onto
the very same axes (:meth:`PCAModel.transform`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError, ShapeError
from geofm.io import atomic_path


@dataclass(frozen=True)
class PCAModel:
    """Principal axes of a run's embeddings.

    Attributes:
        components: float32 ``[K, D]`` unit-norm axes, by decreasing variance; each
            axis' sign is fixed so that its largest-magnitude loading is positive.
        mean: float32 ``[D]`` mean embedding subtracted before projecting.
        explained_variance: float64 ``[K]`` variance along each axis.
        explained_variance_ratio: float64 ``[K]`` fraction of the total variance.
        n_samples: number of vectors the axes were fitted on.
    """

    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    n_samples: int

    @property
    def dim(self) -> int:
        """Embedding dimension ``D``."""
        return int(self.components.shape[1])

    @property
    def n_components(self) -> int:
        """Number of axes ``K``."""
        return int(self.components.shape[0])

    def transform(self, vectors: np.ndarray, *, scratch: np.ndarray | None = None
                  ) -> np.ndarray:
        """Project vectors onto the axes.

        Args:
            vectors: float ``[N, D]`` embeddings.
            scratch: optional float32 ``[>= N, D]`` C-contiguous work array for the
                centred vectors (a stream of blocks reuses one; the result is the same).

        Returns:
            float32 ``[N, K]`` coordinates (``pc1`` is column 0).

        Raises:
            ShapeError: if ``D`` differs from the fitted dimension.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ShapeError(f"cannot project vectors of shape {vectors.shape}: dimension "
                             f"'embedding' is {vectors.shape[-1]} but the PCA was fitted on "
                             f"{self.dim}. Use a PCA fitted on embeddings of the same model "
                             "and kind (cls/mean).")
        axes = np.ascontiguousarray(self.components.T)  # [D, K]: a faster product
        n = vectors.shape[0]
        if scratch is not None and scratch.dtype == np.float32 and scratch.shape[0] >= n \
                and scratch.shape[1:] == vectors.shape[1:] and scratch.flags.c_contiguous:
            centred = np.subtract(vectors, self.mean, out=scratch[:n])
        else:
            centred = vectors - self.mean
        return centred @ axes

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to an ``.npz`` file atomically and return its path."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, components=self.components, mean=self.mean,
                         explained_variance=self.explained_variance,
                         explained_variance_ratio=self.explained_variance_ratio,
                         n_samples=np.int64(self.n_samples))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PCAModel:
        """Read a model written by :meth:`save`.

        Raises:
            GeofmFileNotFoundError: if ``path`` does not exist.
            GeofmValueError: if the file lacks the PCA arrays.
        """
        if not Path(path).exists():
            raise GeofmFileNotFoundError(f"PCA file {path} does not exist; fit one with "
                                         "`geofm analyze` (it writes analysis/pca.npz).")
        with np.load(path) as data:
            missing = {"components", "mean", "explained_variance_ratio"} - set(data.files)
            if missing:
                raise GeofmValueError(f"{path} is not a geofm PCA file: missing "
                                      f"{sorted(missing)}. Use an analysis/pca.npz.")
            ratio = data["explained_variance_ratio"]
            return cls(components=data["components"].astype(np.float32),
                       mean=data["mean"].astype(np.float32),
                       explained_variance=(data["explained_variance"]
                                           if "explained_variance" in data.files
                                           else np.full_like(ratio, np.nan)),
                       explained_variance_ratio=ratio,
                       n_samples=int(data["n_samples"]) if "n_samples" in data.files else 0)


def fit_pca(vectors: np.ndarray, *, n_components: int = 8, chunk: int = 16_384) -> PCAModel:
    """Fit principal axes to a (sub)sample of embeddings.

    Args:
        vectors: float ``[N, D]``; N >= 2.
        n_components: number of axes to keep, at most ``D``.
        chunk: rows per block of the covariance product (memory bound).

    Returns:
        The fitted :class:`PCAModel` (deterministic: no random solver involved).

    Raises:
        GeofmValueError: if there are fewer than 2 vectors or ``n_components`` is out of
            range.
    """
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] < 2:
        raise GeofmValueError(f"PCA needs at least 2 embeddings; got an array of shape "
                              f"{x.shape}. Embed more chips or dates first.")
    dim = x.shape[1]
    if not 1 <= n_components <= dim:
        raise GeofmValueError(f"n_components={n_components} is out of range: choose 1..{dim} "
                              "(the embedding dimension).")
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((dim, dim))
    for lo in range(0, x.shape[0], chunk):  # bounded memory: chunk x D floats at a time
        xc = (x[lo:lo + chunk] - mean).astype(np.float32)
        cov += (xc.T @ xc).astype(np.float64)
    cov /= x.shape[0] - 1
    eigval, comps, total = _top_eigen(cov, n_components)
    signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    ratio = eigval / total if total > 0 else np.zeros(n_components)
    return PCAModel(components=comps.astype(np.float32), mean=mean.astype(np.float32),
                    explained_variance=eigval, explained_variance_ratio=ratio,
                    n_samples=int(x.shape[0]))


def _top_eigen(cov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Top-``k`` eigenpairs of a symmetric PSD matrix ``[D, D]``.

    The LAPACK call runs with one BLAS thread (scoped, restored afterwards): on a
    busy machine a multi-threaded ``eigh`` of a 768 x 768 matrix can take 30x longer.

    Returns:
        ``(eigenvalues [k] descending, eigenvectors [k, D], trace)``.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1][:k]
    return np.clip(val[order], 0.0, None), vec[:, order].T, float(np.trace(cov))


def tsne(points: np.ndarray, *, max_samples: int = 5000, seed: int = 0,
         perplexity: float = 30.0, max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Seeded 2-D t-SNE of a subsample of points (e.g. PCA coordinates).

    Args:
        points: float ``[N, K]``.
        max_samples: size of the seeded subsample (all points when N is smaller).
        seed: random seed of the subsample and of t-SNE.
        perplexity: t-SNE perplexity (reduced automatically for tiny samples).
        max_iter: optimisation iterations (>= 250).

    Returns:
        ``(index [M], coords float32 [M, 2])``: rows of ``points`` used and their map.
    """
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    n = points.shape[0]
    index = np.sort(rng.choice(n, size=min(n, max_samples), replace=False))
    perplexity = float(min(perplexity, max(1.0, (index.size - 1) / 3)))
    coords = TSNE(n_components=2, perplexity=perplexity, random_state=seed,
                  init="pca", max_iter=max_iter).fit_transform(
                      np.asarray(points[index], dtype=np.float32))
    return index, coords.astype(np.float32)
