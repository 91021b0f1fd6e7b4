"""The two streaming passes of a reference analysis over the embedding files.

Pass 1 (:func:`pass_one`) reads the files of the baseline period only: it collects the
per-chip baseline sums (:class:`~geofm.analyze.similarity.BaselineMeans`) and the PCA
sample, a seeded uniform sample of the baseline period's vectors (the reference period:
the basis is fitted on what later observations are compared with, and the files after
it are decoded once, not twice). Pass 2 (:func:`pass_two`) projects every vector onto
the PCA basis (:meth:`~geofm.analyze.reduce.PCAModel.transform`) and takes its cosine
to the chip's unit baseline mean (:func:`~geofm.analyze.similarity.cosine`); an update
runs pass 2 alone on its new files. Both stream blocks of rows
(:data:`~geofm.analyze.series.BLOCK_ROWS`, never a whole file) while a thread decodes
the next ones (:func:`~geofm.analyze.series.iter_vectors`); pass 2 streams pass 1's
files first, in reverse, so the files pass 1 read last are read while the operating
system may still cache them. Memory: a few blocks plus ``[chips, D]`` sums plus the PCA
sample (pass 1) plus float32 ``[observations, K]`` projections. :class:`Padded` lays
observations out as a ``[chip, date]`` grid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from geofm.analyze import series
from geofm.analyze.reduce import PCAModel
from geofm.analyze.series import FileVectors, ObservationIndex, iter_vectors
from geofm.analyze.similarity import BaselineMeans, cosine
from geofm.layout import RunRoot
from geofm.log import progress as progress_bar
from geofm.manifest import StageRecord

#: Fewest valid chips in a scene for its median embedding to be subtracted.
MIN_CENTER_CHIPS = 8


def _vectors(index: ObservationIndex, column: str, center: str, *,
             order: Sequence[int] | None = None) -> Iterator[FileVectors]:
    """:func:`iter_vectors`, with each scene's median embedding subtracted if asked."""
    for f in iter_vectors(index, column, order=order):
        if center == "scene":  # the scene's median needs the whole file
            vectors, ok = f.whole()
            if ok.sum() >= MIN_CENTER_CHIPS:
                vectors -= np.median(vectors[ok], axis=0)
                vectors[~ok] = 0.0
            f = FileVectors(f.index, [(0, vectors, ok)])
        yield f


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


def pass_one_files(index: ObservationIndex, row_in_base: np.ndarray, *, fit: bool
                   ) -> np.ndarray:
    """The files :func:`pass_one` reads: bool ``[F]``.

    Those with a row in the baseline period; every file when a PCA is to be fitted
    (``fit``) and the baseline period has fewer than 2 rows (the PCA sample is then
    drawn from every row).
    """
    upto = np.concatenate([[0], np.cumsum(row_in_base)])
    counts = upto[index.offsets[1:]] - upto[index.offsets[:-1]]
    if fit and counts.sum() < 2:
        return np.ones(len(index.files), dtype=bool)
    return counts > 0


def pass_one(index: ObservationIndex, column: str, center: str, row_in_base: np.ndarray,
             record: StageRecord, rr: RunRoot, *, fit: bool, max_samples: int, seed: int,
             progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1: per-chip unit baseline means and the PCA sample, one file at a time.

    Reads only the files :func:`pass_one_files` names (those of the baseline period):
    the PCA is fitted on the baseline period, the reference period every later
    observation is compared with (and on every row when the period has fewer than 2).

    ``row_in_base``: bool ``[rows]`` rows dated in the baseline period. Bad rows of the
    files read are recorded as failures in ``record``.

    Returns:
        ``(row_ok, means, sample)``: bool ``[rows]`` valid rows (True in the files not
        read), float32 ``[C, D]`` unit baseline means (NaN rows without baseline),
        float32 ``[S, D]`` seeded uniform subsample of at most ``max_samples`` valid
        baseline vectors (empty unless ``fit``).
    """
    rng = np.random.default_rng(seed)
    read = pass_one_files(index, row_in_base, fit=fit)
    everything = bool(read.all()) and int(row_in_base.sum()) < 2
    pool = index.n_rows if everything else int(row_in_base.sum())
    rate = min(1.0, max_samples / max(pool, 1))
    row_ok = np.ones(index.n_rows, dtype=bool)
    means = BaselineMeans(index.chip_ids.size, index.dim)
    files = np.flatnonzero(read)
    # the sample's candidate rows, drawn file by file up front (the same draws as while
    # streaming): the sample is filled in place, no list of picks to concatenate
    draws = {}
    for i in (files.tolist() if fit else []):
        rows = slice(index.offsets[i], index.offsets[i + 1])
        draws[i] = rng.random(rows.stop - rows.start) < rate
        if not everything:
            draws[i] &= row_in_base[rows]
    sample = np.empty((sum(int(d.sum()) for d in draws.values()), index.dim),
                      dtype=np.float32)
    n_sample = 0
    bar = progress_bar(total=files.size, desc="analyze: baseline + PCA sample",
                       unit="file", disable=not progress)
    for f in _vectors(index, column, center, order=files.tolist()):
        i, first = f.index, int(index.offsets[f.index])
        for start, vectors, block_ok in f.blocks:
            rows = slice(first + start, first + start + block_ok.size)
            weight = index.row_weight[rows] * (row_in_base[rows] & block_ok)
            means.add(index.row_chip[rows], vectors, weight)
            if fit:
                take = np.flatnonzero(block_ok & draws[i][start:start + block_ok.size])
                sample[n_sample:n_sample + take.size] = vectors[take]
                n_sample += take.size
        ok = f.ok
        if not ok.all():
            _record_bad(record, rr, index, i, ok)
            row_ok[first:first + ok.size] = ok
        bar.update(1)
    bar.close()
    del draws
    sample = sample[:n_sample]
    _release_read_buffers()
    if sample.shape[0] > max_samples:
        sample = sample[np.sort(rng.choice(sample.shape[0], max_samples, replace=False))]
    return row_ok, means.unit_means(), sample


def pass_two(index: ObservationIndex, column: str, center: str, row_ok: np.ndarray | None,
             means: np.ndarray,
             pca: PCAModel, n_components: int, *, progress: bool,
             record: StageRecord | None = None, rr: RunRoot | None = None,
             mean_rows: np.ndarray | None = None, checked: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project every row and take its cosine to the chip's unit baseline mean.

    An observation of one row gets that row's projection and cosine; one of ``k``
    same-day rows (weights ``1/k``) the weighted mean of their projections and the
    cosine of their weighted sum (accumulated in float64).

    Args:
        index: the files and their numbering.
        column: the embedding column.
        center: ``scene`` or ``none`` (see :func:`geofm.analyze.stage.analyze`).
        row_ok: bool ``[rows]`` valid rows (from pass 1) of the ``checked`` files; None:
            no file was checked (the update path, which has no pass 1). The rows of the
            files not checked are checked here: their own validity, and their bad rows
            are recorded as failures in ``record``.
        means: float32 ``[C', D]`` unit baseline means (may be memory-mapped).
        pca: the basis; its first ``n_components`` axes are used.
        n_components: ``K``.
        progress: show a progress bar.
        record: where bad rows are recorded (with ``row_ok`` None).
        rr: the run root (paths in those failures).
        mean_rows: the row of ``means`` of each of the index's chips (-1: none, the
            cosine is NaN); default the chip's own index.
        checked: bool ``[F]`` the files pass 1 read (:func:`pass_one_files`; default
            all when ``row_ok`` is given). Those are streamed first, in reverse (the
            files pass 1 read last may still be cached), then the others in order.

    Returns:
        ``(pcs, cos, obs_ok)``: float32 ``[M, K]`` projections, float32 ``[M]`` cosines
        (NaN where there is no baseline mean), bool ``[M]`` observations with a valid
        row (the others are NaN).
    """
    from threadpoolctl import threadpool_limits

    n_obs = index.n_obs
    pcs = np.full((n_obs, n_components), np.nan, dtype=np.float32)
    cos = np.full(n_obs, np.nan, dtype=np.float32)
    seen = np.zeros(n_obs, dtype=bool)
    # observations of several same-day rows: float64 weighted sums, one slot each
    multi = np.unique(index.row_obs[index.row_weight < 1.0])
    dup_pcs = np.zeros((multi.size, n_components))
    dup_vec = np.zeros((multi.size, index.dim))
    dup_w = np.zeros(multi.size)
    bar = progress_bar(total=len(index.files), desc="analyze: project + cosine", unit="file",
                       disable=not progress)
    n_files = len(index.files)
    if checked is None:
        checked = np.full(n_files, row_ok is not None)
    if row_ok is None:
        checked = np.zeros(n_files, dtype=bool)
    order = np.concatenate([np.flatnonzero(checked)[::-1], np.flatnonzero(~checked)])
    scratch = np.empty((series.BLOCK_ROWS, index.dim), dtype=np.float32)
    # one BLAS thread for the projections: the reading thread has the other core (the
    # products are the same with any number of threads)
    with threadpool_limits(limits=1, user_api="blas"):
        for f in _vectors(index, column, center, order=order.tolist()):
            i, first = f.index, int(index.offsets[f.index])
            for start, vectors, valid in f.blocks:
                rows = slice(first + start, first + start + valid.size)
                ok = row_ok[rows] if checked[i] and row_ok is not None else valid
                obs = index.row_obs[rows]
                weight = index.row_weight[rows]
                proj = pca.transform(vectors, scratch=scratch)[:, :n_components]
                sim = cosine(vectors, _mean_of(means, index.row_chip[rows], mean_rows))
                single = ok & (weight == 1.0)
                pcs[obs[single]] = proj[single]
                cos[obs[single]] = sim[single]
                seen[obs[single]] = True
                shared = np.flatnonzero(ok & (weight < 1.0))
                if shared.size:
                    slot = np.searchsorted(multi, obs[shared])
                    w = weight[shared]
                    np.add.at(dup_w, slot, w)
                    np.add.at(dup_pcs, slot, proj[shared] * w[:, None])
                    np.add.at(dup_vec, slot, vectors[shared] * w[:, None])
            if not checked[i]:
                assert record is not None and rr is not None
                _record_bad(record, rr, index, i, f.ok)
            bar.update(1)
    bar.close()
    _release_read_buffers()
    if multi.size:
        has = dup_w > 0
        got = multi[has]
        pcs[got] = (dup_pcs[has] / dup_w[has, None]).astype(np.float32)
        cos[got] = cosine(dup_vec[has], _mean_of(means, index.obs_chip[got], mean_rows))
        seen[got] = True
    return pcs, cos, seen


def _release_read_buffers() -> None:
    """Hand the Arrow buffers of the files read back to the system (mimalloc keeps them)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


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

