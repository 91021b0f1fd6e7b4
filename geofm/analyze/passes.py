"""The two streaming passes of a reference analysis over the embedding files.

Pass 1 (:func:`pass_one`) collects the PCA sample and the per-chip baseline sums,
pass 2 (:func:`pass_two`) projects every vector onto the PCA basis and takes its cosine
to the chip's unit baseline mean; an update runs pass 2 alone on its new files.
Memory: one file plus ``[chips, D]`` sums plus the PCA sample. :class:`Padded` lays
observations out as a ``[chip, date]`` grid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from geofm.analyze.reduce import PCAModel
from geofm.analyze.series import ObservationIndex, iter_vectors
from geofm.analyze.similarity import BaselineMeans
from geofm.layout import RunRoot
from geofm.log import progress as progress_bar
from geofm.manifest import StageRecord

#: Fewest valid chips in a scene for its median embedding to be subtracted.
MIN_CENTER_CHIPS = 8


def _vectors(index: ObservationIndex, column: str, center: str
             ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """:func:`iter_vectors`, with each scene's median embedding subtracted if asked."""
    for i, vectors, ok in iter_vectors(index, column):
        if center == "scene" and ok.sum() >= MIN_CENTER_CHIPS:
            vectors = vectors - np.median(vectors[ok], axis=0)
            vectors[~ok] = 0.0
        yield i, vectors, ok


def _record_bad(record: StageRecord, rr: RunRoot, index: ObservationIndex, i: int,
                ok: np.ndarray) -> None:
    """Record the bad rows (``~ok``) of file ``i`` as one failure of its scene."""
    if ok.all():
        return
    rows = slice(index.offsets[i], index.offsets[i + 1])
    bad = np.flatnonzero(~ok)
    chips = index.chip_ids[index.row_chip[rows][bad]][:5].tolist()
    record.fail(index.scene_ids[i], f"{bad.size} embedding(s) null, of the wrong "
                f"length or not finite (chips {chips}); those rows are left out. "
                "Re-embed this scene with `geofm embed --overwrite`.",
                path=os.path.relpath(index.files[i], rr.path))


def pass_one(index: ObservationIndex, column: str, center: str, row_in_base: np.ndarray,
             record: StageRecord, rr: RunRoot, *, fit: bool, max_samples: int, seed: int,
             progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1: per-chip unit baseline means and the PCA sample, one file at a time.

    ``row_in_base``: bool ``[rows]`` rows dated in the baseline period. Bad rows are
    recorded as failures in ``record``.

    Returns:
        ``(row_ok, means, sample)``: bool ``[rows]`` valid rows, float32 ``[C, D]`` unit
        baseline means (NaN rows without baseline), float32 ``[S, D]`` seeded uniform
        subsample of at most ``max_samples`` valid vectors (empty unless ``fit``).
    """
    rng = np.random.default_rng(seed)
    rate = min(1.0, max_samples / max(index.n_rows, 1))
    row_ok = np.ones(index.n_rows, dtype=bool)
    means = BaselineMeans(index.chip_ids.size, index.dim)
    picks: list[np.ndarray] = []
    bar = progress_bar(total=len(index.files), desc="analyze: baseline + PCA sample",
                       unit="file", disable=not progress)
    for i, vectors, ok in _vectors(index, column, center):
        rows = slice(index.offsets[i], index.offsets[i + 1])
        if not ok.all():
            _record_bad(record, rr, index, i, ok)
            row_ok[rows] = ok
        weight = index.row_weight[rows] * (row_in_base[rows] & ok)
        means.add(index.row_chip[rows], vectors, weight)
        if fit:
            take = ok & (rng.random(ok.size) < rate)
            picks.append(vectors[take].copy())
        bar.update(1)
    bar.close()
    sample = np.concatenate(picks) if picks else np.zeros((0, index.dim), np.float32)
    if sample.shape[0] > max_samples:
        sample = sample[np.sort(rng.choice(sample.shape[0], max_samples, replace=False))]
    return row_ok, means.unit_means(), sample


def pass_two(index: ObservationIndex, column: str, center: str, row_ok: np.ndarray | None,
             means: np.ndarray,
             pca: PCAModel, n_components: int, *, progress: bool,
             record: StageRecord | None = None, rr: RunRoot | None = None,
             mean_rows: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project every row and take its cosine to the chip's unit baseline mean.

    ``row_ok`` None: the rows' own validity is used, and bad rows are recorded as
    failures in ``record`` (the update path, which has no pass 1). ``mean_rows``: the
    row of ``means`` of each of the index's chips (-1: none, the cosine is NaN); default
    the chip's own index.
    """
    n_obs = index.n_obs
    pcs = np.zeros((n_obs, n_components), dtype=np.float64)
    wsum = np.zeros(n_obs)
    cos = np.zeros(n_obs, dtype=np.float64)
    dup_sums: dict[int, np.ndarray] = {}
    bar = progress_bar(total=len(index.files), desc="analyze: project + cosine", unit="file",
                       disable=not progress)
    comps = pca.components[:n_components]
    for i, vectors, valid in _vectors(index, column, center):
        rows = slice(index.offsets[i], index.offsets[i + 1])
        if row_ok is None:
            assert record is not None and rr is not None
            _record_bad(record, rr, index, i, valid)
            ok = valid
        else:
            ok = row_ok[rows]
        obs = index.row_obs[rows]
        w = index.row_weight[rows] * ok
        proj = (vectors - pca.mean) @ comps.T
        np.add.at(wsum, obs, w)
        if np.unique(obs).size == obs.size:
            pcs[obs] += proj * w[:, None]
        else:
            np.add.at(pcs, obs, proj * w[:, None])
        single = (index.row_weight[rows] == 1.0) & ok
        every = bool(single.all())
        vec = vectors if every else vectors[single]
        chips = index.row_chip[rows] if every else index.row_chip[rows][single]
        ref = _mean_of(means, chips, mean_rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos[obs if every else obs[single]] = np.einsum("nd,nd->n", vec, ref) / np.sqrt(
                np.einsum("nd,nd->n", vec, vec))
        for r in np.flatnonzero(~single & ok):
            o = int(obs[r])
            dup_sums[o] = dup_sums.get(o, 0.0) + w[r] * vectors[r].astype(np.float64)
        bar.update(1)
    bar.close()
    for o, vec in dup_sums.items():
        norm = np.linalg.norm(vec)
        ref = _mean_of(means, index.obs_chip[o:o + 1], mean_rows)[0]
        cos[o] = float(vec @ ref / norm) if norm > 0 else np.nan
    obs_ok = wsum > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        pcs = (pcs / wsum[:, None]).astype(np.float32)
    cos = np.where(obs_ok, cos, np.nan).astype(np.float32)
    return pcs, cos, obs_ok


def _mean_of(means: np.ndarray, chips: np.ndarray, mean_rows: np.ndarray | None) -> np.ndarray:
    """float32 ``[n, D]`` unit baseline means of ``chips`` (NaN rows where there is none)."""
    if mean_rows is None:
        return np.asarray(means[chips])
    pos = mean_rows[chips]
    known = pos >= 0
    if known.all():
        return np.asarray(means[pos])
    out = np.full((chips.size, means.shape[1]), np.nan, dtype=np.float32)
    out[known] = means[pos[known]]
    return out


class Padded:
    """Observations laid out as ``[chip, column]``: chip rows, dates in order."""

    def __init__(self, chip: np.ndarray, n_chips: int, keep: np.ndarray) -> None:
        counts = np.bincount(chip, minlength=n_chips)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.col = np.arange(chip.size) - starts[chip]
        self.chip = chip
        width = int(counts.max()) if counts.size else 0
        self.shape = (n_chips, width)
        self.valid = self.take(keep, False)

    def take(self, values: np.ndarray, fill: Any) -> np.ndarray:
        """Scatter per-observation ``values [M, ...]`` into ``[C, T, ...]`` (``fill`` elsewhere)."""
        values = np.asarray(values)
        out = np.full(self.shape + values.shape[1:], fill, dtype=values.dtype if fill is not np.nan
                      else np.result_type(values.dtype, np.float32))
        out[self.chip, self.col] = values
        return out

    def gather(self, grid: np.ndarray) -> np.ndarray:
        """Per-observation values ``[M]`` of a ``[C, T]`` array."""
        return grid[self.chip, self.col]

