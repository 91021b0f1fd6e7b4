"""The ``analyze`` stage: PCA, cosine to baseline, change detection, map and plots.

Reads ``embeddings/<scene_id>.parquet`` and ``meta/<scene_id>.parquet`` of a run root
and writes ``analysis/`` (see docs/contracts.md, "analyze"). The embeddings are
streamed twice, one file at a time (memory: one file plus ``[chips, D]`` baseline
sums plus the PCA sample): pass 1 collects the PCA sample and the per-chip baseline
sums, pass 2 projects every vector and takes its cosine to the chip's baseline mean.
Change detection then runs on all chips at once (batched Lasso, no per-chip loop).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geofm.analyze.change import CHANGE, INSUFFICIENT, NO_CHANGE, ChangeResult, detect_changes
from geofm.analyze.reduce import PCAModel, fit_pca
from geofm.analyze.series import (
    EMBEDDING_COLUMNS,
    NS_PER_DAY,
    ObservationIndex,
    index_embeddings,
    iter_vectors,
)
from geofm.analyze.similarity import BaselineMeans
from geofm.exceptions import GeofmFileExistsError, GeofmValueError
from geofm.io import atomic_path, write_text_atomic
from geofm.layout import RunRoot
from geofm.log import progress as progress_bar
from geofm.manifest import StageRecord, stage_entry
from geofm.tables import read_schema, read_table

log = logging.getLogger(__name__)

#: ``center`` choices (see :func:`analyze`).
CENTER_MODES = ("scene", "none")
#: Fewest valid chips in a scene for its median embedding to be subtracted.
MIN_CENTER_CHIPS = 8

OUTPUT_NAMES = ("timeseries.parquet", "changes.parquet", "change_map.geojson", "pca.npz")
_FINGERPRINT_KEY = b"geofm_analyze"


def _parse_date(value: str | pd.Timestamp | None, name: str) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise GeofmValueError(f"{name}={value!r} is not a date; use YYYY-MM-DD.") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def baseline_window(first_ns: int, *, baseline_start: str | None = None,
                    monitor_start: str | None = None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Baseline period ``[baseline_start, monitor_start)``; monitoring from ``monitor_start``.

    Default: the first calendar year with data (``first_ns`` = earliest observation,
    ns since epoch UTC). With only ``baseline_start`` the baseline lasts one year; with
    only ``monitor_start`` it starts at the earliest observation.

    Raises:
        GeofmValueError: if a date does not parse or ``monitor_start <= baseline_start``.
    """
    first = pd.Timestamp(first_ns, tz="UTC")
    start = _parse_date(baseline_start, "baseline_start")
    mon = _parse_date(monitor_start, "monitor_start")
    if start is None:
        start = pd.Timestamp(year=first.year, month=1, day=1, tz="UTC") if mon is None \
            else first.floor("D")
    if mon is None:
        mon = start + pd.DateOffset(years=1)
    if mon <= start:
        raise GeofmValueError(f"monitor_start {mon.date()} must be after baseline_start "
                              f"{start.date()}; pass --monitor-start later than --baseline-start.")
    return start, mon


def _fingerprint(index_files: Sequence[Path], config: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in index_files:
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _signal_column(signal: str, n_components: int) -> int | None | slice:
    """Index of the PC used as signal (None: cosine; a slice: all PCs); validates it."""
    if signal == "cosine":
        return None
    if signal == "pcs":
        return slice(0, n_components)
    if signal.startswith("pc") and signal[2:].isdigit() and 1 <= int(signal[2:]) <= n_components:
        return int(signal[2:]) - 1
    raise GeofmValueError(f"signal={signal!r} is not valid: use 'pcs', 'cosine' or "
                          f"pc1..pc{n_components} (raise n_components for a higher component).")


@stage_entry("analyze")
def analyze(root: str | os.PathLike[str] | RunRoot, *, embedding: str = "cls",
            baseline_start: str | None = None, monitor_start: str | None = None,
            signal: str = "pc1", n_components: int = 8, threshold: float = 3.0,
            consecutive: int = 3, min_baseline: int = 6, alpha: float = 0.001,
            center: str = "none", tsne: bool = False, plot_chips: Sequence[str] = (),
            max_plots: int | None = 100,
            pca: str | os.PathLike[str] | None = None, pca_samples: int = 50_000,
            seed: int = 0, overwrite: bool = False, progress: bool = True) -> StageRecord:
    """Reduce, compare to baseline and detect changes for every chip of a run root.

    Args:
        root: run root with ``embeddings/`` (and ``meta/`` for footprints, thumbnails).
        embedding: ``cls`` (column ``embedding``) or ``mean`` (``embedding_mean``).
        baseline_start: start of the baseline period (date; default: 1 January of the
            first year with data).
        monitor_start: start of monitoring (default: one year after ``baseline_start``).
        signal: series to monitor: ``pc1``, ``pc2``, ... (one component), ``cosine`` (to
            the baseline mean), or ``pcs``: all ``n_components`` PCs, each with its own
            seasonal fit and RMSE, combined per date into one chi-square score (normal
            equivalent, so ``threshold`` keeps its meaning).
        n_components: PCA components kept in ``analysis/timeseries.parquet``.
        threshold: anomaly threshold on the scaled residual magnitude (for ``pcs``: on
            the combined score). Defaults ``signal="pc1"``, ``threshold=3.0``,
            ``consecutive=3`` (the reference's PC1) were tuned on synthetic seeds 5-7
            and meet the change-accuracy targets on seeds 0-4
            (benchmarks/results/analyze.md).
        consecutive: anomalous monitoring observations in a row that make a change.
        min_baseline: fewest baseline observations; fewer -> ``insufficient data``.
        alpha: Lasso penalty of the seasonal model.
        center: ``scene`` subtracts each scene's median embedding (over its valid chips,
            when it has at least :data:`MIN_CENTER_CHIPS`) before PCA and cosine, so
            what every chip of an acquisition shares (season, illumination, the model's
            date encoding, a processing-baseline offset) is not mistaken for change;
            ``none`` (default) uses the embeddings as they are. Caution: when many chips
            change the same way, the scene median moves and unchanged chips inherit
            the shift (more false alarms in the synthetic benchmark).
        tsne: also write ``analysis/tsne.parquet`` (seeded subsample, 2-D t-SNE of PCs).
        plot_chips: chip ids to plot in addition to the changed chips.
        max_plots: at most this many changed chips are plotted (largest magnitude
            first); None plots every changed chip. ``plot_chips`` are always plotted.
        pca: an existing ``pca.npz`` to project onto (same axes as an earlier run);
            default fits a new PCA on this run.
        pca_samples: PCA is fitted on a seeded uniform subsample of at most this many
            vectors (memory bound); exact when the run is smaller.
        seed: seed of the PCA subsample and t-SNE.
        overwrite: recompute although ``analysis/`` holds results of other inputs or
            options. Results of the same inputs and options are kept either way.
        progress: show progress bars.

    Outputs (``analysis/``): ``timeseries.parquet`` (a row per chip and date: ``chip_id``,
    ``scene_id``, ``date``, ``pc1..pcK``, ``cosine_to_baseline``, ``signal``, ``predicted``,
    ``residual`` = scaled residual (for ``pcs``: the combined score; ``signal`` and
    ``predicted`` then show pc1), ``anomaly``, ``baseline`` = used in the fit),
    ``changes.parquet`` (GeoParquet, WGS84), ``change_map.geojson``, ``pca.npz``,
    ``plots/<chip_id>.png`` and, with ``tsne``, ``tsne.parquet``.

    Returns:
        The stage record (counts ``chips``, ``observations``, ``changed``, ``no_change``,
        ``insufficient``, ``plots``, ``failed_chips`` and ``unembedded_scenes`` (valid
        chips embed could not embed, left out and listed in ``extra["not_analysed"]``);
        ``extra["model"]``: the embeddings' model identity; ``run.json`` stage ``analyze``).

    Raises:
        GeofmValueError: bad options (signal, dates, embedding kind, unknown plot chip).
        GeofmFileNotFoundError: no embeddings in the run root, or ``pca`` missing.
        GeofmFileExistsError: ``analysis/`` holds other results and ``overwrite`` is off.
        ModelMismatchError: the embeddings files were made by different models (by
            :meth:`geofm.model.identity.ModelIdentity.compatible`; files without model
            metadata count as one unknown model).
    """
    rr = RunRoot.of(root)
    if embedding not in EMBEDDING_COLUMNS:
        raise GeofmValueError(f"embedding={embedding!r} is not valid: use 'cls' or 'mean'.")
    column = EMBEDDING_COLUMNS[embedding]
    signal_pc = _signal_column(signal, n_components)
    if center not in CENTER_MODES:
        raise GeofmValueError(f"center={center!r} is not valid: use 'scene' or 'none'.")
    config = dict(embedding=embedding, baseline_start=baseline_start,
                  monitor_start=monitor_start, signal=signal, n_components=n_components,
                  threshold=threshold, consecutive=consecutive, min_baseline=min_baseline,
                  alpha=alpha, center=center, tsne=tsne, plot_chips=list(plot_chips),
                  max_plots=max_plots, pca=None if pca is None else str(pca),
                  pca_samples=pca_samples, seed=seed)
    pca_model = None if pca is None else PCAModel.load(pca)
    if pca_model is not None and pca_model.n_components < n_components:
        raise GeofmValueError(f"{pca} has {pca_model.n_components} components but "
                              f"n_components={n_components}; lower --n-components.")

    with StageRecord(rr, "analyze", config=config) as record:
        scene_ids = rr.scene_ids(rr.embeddings_dir)
        files = [rr.embeddings_path(s) for s in scene_ids]
        if files:
            _check_model(rr, scene_ids, files, record)
        fingerprint = _fingerprint(files, config) if files else ""
        changes_path = rr.analysis_dir / "changes.parquet"
        if changes_path.exists() and not overwrite:
            if _stored_fingerprint(changes_path) == fingerprint and all(
                    (rr.analysis_dir / n).exists() for n in OUTPUT_NAMES):
                log.info("analysis/ is up to date with these embeddings and options; skipped")
                record.counts.update(_counts_from(changes_path))
                record.counts["skipped"] = 1
                return record
            raise GeofmFileExistsError(
                f"{changes_path} holds results of other embeddings or options; pass "
                "overwrite=True (--overwrite) to recompute.")
        index = index_embeddings(files, scene_ids, column=column)
        unknown = sorted(set(plot_chips) - set(index.chip_ids.tolist()))
        if unknown:
            raise GeofmValueError(f"plot_chips {unknown[:5]} are not chips of {rr.path}; "
                                  "use chip ids from meta/<scene>.parquet.")
        start, mon = baseline_window(int(index.obs_ns.min()), baseline_start=baseline_start,
                                     monitor_start=monitor_start)
        log.info("%d embeddings of %d chips in %d files; baseline %s..%s, monitoring from %s",
                 index.n_rows, index.chip_ids.size, len(files), start.date(), mon.date(),
                 mon.date())
        row_ns = index.obs_ns[index.row_obs]
        row_in_base = (row_ns >= start.value) & (row_ns < mon.value)

        # Pass 1: PCA sample and per-chip baseline sums.
        pass1 = _pass_one(index, column, center, row_in_base, record, rr,
                          fit=pca_model is None,
                          max_samples=pca_samples, seed=seed, progress=progress)
        row_ok, means, sample = pass1
        if pca_model is None:
            pca_model = fit_pca(sample, n_components=n_components)
            del sample
        if pca_model.dim != index.dim:
            raise GeofmValueError(f"PCA {pca} was fitted on dimension {pca_model.dim} but the "
                                  f"embeddings have {index.dim}; fit a new one (omit --pca).")
        # Pass 2: projections and cosine to the baseline mean, per observation.
        obs_pcs, obs_cos, obs_ok = _pass_two(index, column, center, row_ok, means, pca_model,
                                             n_components, progress=progress)
        del means

        series = _pad(index, obs_ok)
        sig_obs = obs_cos if signal_pc is None else obs_pcs[:, signal_pc]
        multi = isinstance(signal_pc, slice)
        days = series.take(index.obs_days, np.nan)
        obs_ns = index.obs_ns
        in_base = (obs_ns >= start.value) & (obs_ns < mon.value)
        result = detect_changes(
            days, series.take(sig_obs, np.nan), series.valid,
            baseline=series.take(in_base, False), monitor=series.take(obs_ns >= mon.value, False),
            threshold=threshold, consecutive=consecutive, min_baseline=min_baseline,
            alpha=alpha)

        rr.analysis_dir.mkdir(parents=True, exist_ok=True)
        pca_model.save(rr.analysis_dir / "pca.npz")
        _write_timeseries(rr, index, series, obs_ok, obs_pcs, obs_cos,
                          sig_obs[:, 0] if multi else sig_obs, result, n_components)
        geoms = _footprints(rr, index.chip_ids, record)
        change_ns = np.where(result.change, series.take(obs_ns, 0)[
            np.arange(result.change.size), np.maximum(result.change_index, 0)], 0)
        _write_changes(changes_path, rr, index.chip_ids, geoms, result, change_ns, fingerprint)
        if tsne:
            _write_tsne(rr, index, obs_ok, obs_pcs, seed=seed)
        n_plots = _write_plots(rr, index, series, result, None if multi else sig_obs, signal,
                               threshold,
                               plot_chips, max_plots, progress=progress)

        status = result.status
        record.counts.update(
            embeddings=index.n_rows, observations=int(obs_ok.sum()), chips=int(status.size),
            changed=int((status == CHANGE).sum()), no_change=int((status == NO_CHANGE).sum()),
            insufficient=int((status == INSUFFICIENT).sum()), plots=n_plots)
        record.extra["analysis"] = {
            "baseline_start": str(start.date()), "monitor_start": str(mon.date()),
            "signal": signal, "embedding": embedding,
            "explained_variance_ratio": [round(float(v), 6)
                                         for v in pca_model.explained_variance_ratio],
            "pca_samples": pca_model.n_samples}
    return record


def _check_model(rr: RunRoot, scene_ids: list[str], files: list[Path],
                 record: StageRecord) -> None:
    """Refuse embeddings of two models; count and log the chips embed could not embed."""
    from geofm.embed.writer import check_one_model, embedding_gaps

    identity, infos = check_one_model(files, purpose="be analysed together",
                                      require_metadata=False)
    record.extra["model"] = identity.to_dict()
    gaps = embedding_gaps(rr, dict(zip(scene_ids, infos, strict=True)))
    record.counts.update(failed_chips=len(gaps["failed_chips"]),
                         unembedded_scenes=len(gaps["scenes"]))
    if gaps["failed_chips"] or gaps["scenes"]:
        record.extra["not_analysed"] = gaps
        log.warning("analyze: %d chip(s) that embed could not embed and %d scene(s) without "
                    "embeddings are left out (listed in %s); re-run `geofm embed --root %s` "
                    "to retry them", len(gaps["failed_chips"]), len(gaps["scenes"]),
                    rr.manifest_path, rr.path)


def _stored_fingerprint(path: Path) -> str | None:
    meta = read_schema(path, made_by="analyze").metadata or {}
    value = meta.get(_FINGERPRINT_KEY)
    return None if value is None else value.decode()


def _counts_from(path: Path) -> dict[str, int]:
    status = read_table(path, made_by="analyze", columns=["status"]).column("status").to_numpy(
        zero_copy_only=False)
    return {"chips": int(status.size), "changed": int((status == CHANGE).sum()),
            "no_change": int((status == NO_CHANGE).sum()),
            "insufficient": int((status == INSUFFICIENT).sum())}


def _vectors(index: ObservationIndex, column: str, center: str
             ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """:func:`iter_vectors`, with each scene's median embedding subtracted if asked."""
    for i, vectors, ok in iter_vectors(index, column):
        if center == "scene" and ok.sum() >= MIN_CENTER_CHIPS:
            vectors = vectors - np.median(vectors[ok], axis=0)
            vectors[~ok] = 0.0
        yield i, vectors, ok


def _pass_one(index: ObservationIndex, column: str, center: str, row_in_base: np.ndarray,
              record: StageRecord, rr: RunRoot, *, fit: bool, max_samples: int, seed: int,
              progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
            bad = np.flatnonzero(~ok)
            chips = index.chip_ids[index.row_chip[rows][bad]][:5].tolist()
            record.fail(index.scene_ids[i], f"{bad.size} embedding(s) null, of the wrong "
                        f"length or not finite (chips {chips}); those rows are left out. "
                        "Re-embed this scene with `geofm embed --overwrite`.",
                        path=os.path.relpath(index.files[i], rr.path))
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


def _pass_two(index: ObservationIndex, column: str, center: str, row_ok: np.ndarray,
              means: np.ndarray,
              pca: PCAModel, n_components: int, *, progress: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_obs = index.n_obs
    pcs = np.zeros((n_obs, n_components), dtype=np.float64)
    wsum = np.zeros(n_obs)
    cos = np.zeros(n_obs, dtype=np.float64)
    dup_sums: dict[int, np.ndarray] = {}
    bar = progress_bar(total=len(index.files), desc="analyze: project + cosine", unit="file",
                       disable=not progress)
    comps = pca.components[:n_components]
    for i, vectors, _ in _vectors(index, column, center):
        rows = slice(index.offsets[i], index.offsets[i + 1])
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
        ref = means[index.row_chip[rows][single]]
        vec = vectors[single]
        norm = np.linalg.norm(vec, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos[obs[single]] = np.einsum("nd,nd->n", vec, ref) / norm
        for r in np.flatnonzero(~single & ok):
            o = int(obs[r])
            dup_sums[o] = dup_sums.get(o, 0.0) + w[r] * vectors[r].astype(np.float64)
        bar.update(1)
    bar.close()
    for o, vec in dup_sums.items():
        norm = np.linalg.norm(vec)
        ref = means[index.obs_chip[o]]
        cos[o] = float(vec @ ref / norm) if norm > 0 else np.nan
    obs_ok = wsum > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        pcs = (pcs / wsum[:, None]).astype(np.float32)
    cos = np.where(obs_ok, cos, np.nan).astype(np.float32)
    return pcs, cos, obs_ok


class _Padded:
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


def _pad(index: ObservationIndex, obs_ok: np.ndarray) -> _Padded:
    return _Padded(index.obs_chip, index.chip_ids.size, obs_ok)


def _write_timeseries(rr: RunRoot, index: ObservationIndex, series: _Padded, obs_ok: np.ndarray,
                      pcs: np.ndarray, cos: np.ndarray, sig: np.ndarray, result: ChangeResult,
                      n_components: int) -> None:
    sel = np.flatnonzero(obs_ok)
    chip_dict = pa.array(index.chip_ids.tolist(), type=pa.string())
    scene_dict = pa.array(index.scene_ids, type=pa.string())
    cols: dict[str, pa.Array] = {
        "chip_id": pa.DictionaryArray.from_arrays(pa.array(index.obs_chip[sel].astype(np.int32)),
                                                  chip_dict),
        "scene_id": pa.DictionaryArray.from_arrays(
            pa.array(index.obs_scene[sel].astype(np.int32)), scene_dict),
        "date": pa.array(index.obs_ns[sel], type=pa.timestamp("ns", tz="UTC")),
    }
    for k in range(n_components):
        cols[f"pc{k + 1}"] = pa.array(pcs[sel, k].astype(np.float32))
    cols["cosine_to_baseline"] = pa.array(cos[sel])
    cols["signal"] = pa.array(np.asarray(sig[sel], dtype=np.float32))
    predicted = series.gather(result.predicted)[sel]
    if predicted.ndim == 2:  # signal "pcs": the prediction of pc1, like `signal`
        predicted = predicted[:, 0]
    cols["predicted"] = pa.array(predicted.astype(np.float32))
    cols["residual"] = pa.array(series.gather(result.residual)[sel].astype(np.float32))
    cols["anomaly"] = pa.array(series.gather(result.anomaly)[sel])
    cols["baseline"] = pa.array(series.gather(result.baseline_used)[sel])
    table = pa.table(cols)
    with atomic_path(rr.analysis_dir / "timeseries.parquet") as tmp:
        pq.write_table(table, tmp)


def _footprints(rr: RunRoot, chip_ids: np.ndarray, record: StageRecord) -> list[Any]:
    """WGS84 footprint (shapely) per chip from ``meta/``; None where no meta row has one."""
    import shapely

    wanted = pd.Index(chip_ids)
    wkb: list[Any] = [None] * chip_ids.size
    missing = np.ones(chip_ids.size, dtype=bool)
    for scene in rr.scene_ids(rr.meta_dir):
        if not missing.any():
            break
        table = read_table(rr.meta_path(scene), made_by="chip", columns=["chip_id", "geometry"])
        ids = table.column("chip_id").to_numpy(zero_copy_only=False)
        pos = wanted.get_indexer(ids)
        new = np.flatnonzero(pos >= 0)
        new = new[missing[pos[new]]]
        if new.size:
            geo = table.column("geometry").take(pa.array(new)).to_pylist()
            for j, g in zip(pos[new], geo, strict=True):
                wkb[j] = g
            missing[pos[new]] = False
    if missing.any():
        log.warning("%d chip(s) have no footprint in %s (e.g. %s); they get no geometry",
                    int(missing.sum()), rr.meta_dir, chip_ids[missing][:3].tolist())
        record.counts["chips_without_footprint"] = int(missing.sum())
    return list(shapely.from_wkb(np.array(wkb, dtype=object)))


def _write_changes(path: Path, rr: RunRoot, chip_ids: np.ndarray, geoms: list[Any],
                   result: ChangeResult, change_ns: np.ndarray, fingerprint: str) -> None:
    import geopandas as gpd
    import shapely

    change_date = pd.to_datetime(np.where(result.change, change_ns, np.iinfo(np.int64).min),
                                 utc=True)
    change_date = change_date.where(result.change)
    frame = gpd.GeoDataFrame({
        "chip_id": chip_ids.astype(str),
        "n_observations": result.n_observations.astype(np.int32),
        "n_baseline": result.n_baseline.astype(np.int32),
        "status": result.status.astype(str),
        "change": result.change.astype(bool),
        "change_date": change_date,
        "magnitude": result.magnitude.astype(np.float32),
        "rmse": (result.rmse if result.rmse.ndim == 1 else result.rmse[:, 0]).astype(np.float32),
    }, geometry=gpd.GeoSeries(geoms, crs="EPSG:4326"))
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
        table = pq.read_table(tmp)  # add the inputs' fingerprint beside the "geo" metadata
        meta = dict(table.schema.metadata or {})
        meta[_FINGERPRINT_KEY] = fingerprint.encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)

    features = []
    for i, geom in enumerate(geoms):
        if geom is None:
            continue
        mag = result.magnitude[i]
        features.append({
            "type": "Feature", "geometry": json.loads(shapely.to_geojson(geom)),
            "properties": {
                "chip_id": str(chip_ids[i]), "status": str(result.status[i]),
                "change": bool(result.change[i]),
                "change_date": None if not result.change[i] else str(change_date[i].date()),
                "intensity": None if not np.isfinite(mag) else round(float(mag), 4),
                "n_observations": int(result.n_observations[i])}})
    text = json.dumps({"type": "FeatureCollection", "features": features})
    write_text_atomic(rr.analysis_dir / "change_map.geojson", text)


def _write_tsne(rr: RunRoot, index: ObservationIndex, obs_ok: np.ndarray, pcs: np.ndarray,
                *, seed: int) -> None:
    from geofm.analyze.reduce import tsne

    sel = np.flatnonzero(obs_ok)
    if sel.size < 5:
        log.warning("t-SNE skipped: only %d observations", sel.size)
        return
    rows, coords = tsne(pcs[sel], seed=seed)
    obs = sel[rows]
    table = pa.table({"chip_id": pa.array(index.chip_ids[index.obs_chip[obs]].tolist()),
                      "date": pa.array(index.obs_ns[obs], type=pa.timestamp("ns", tz="UTC")),
                      "tsne1": pa.array(coords[:, 0]), "tsne2": pa.array(coords[:, 1])})
    with atomic_path(rr.analysis_dir / "tsne.parquet") as tmp:
        pq.write_table(table, tmp)


def _thumbnails(rr: RunRoot, chip_ids: set[str]) -> dict[tuple[str, int], Path]:
    """(chip_id, UTC day) -> thumbnail path for the given chips, from ``meta/``."""
    out: dict[tuple[str, int], Path] = {}
    for scene in rr.scene_ids(rr.meta_dir):
        path = rr.meta_path(scene)
        if "thumbnail_path" not in read_schema(path, made_by="chip").names:
            continue
        table = read_table(path, made_by="chip", columns=["chip_id", "date", "thumbnail_path"])
        frame = table.to_pandas()
        frame = frame[frame["chip_id"].isin(chip_ids) & frame["thumbnail_path"].notna()]
        for cid, date, rel in frame.itertuples(index=False):
            day = int(pd.Timestamp(date).value // NS_PER_DAY)
            out.setdefault((cid, day), rr.path / rel)
    return out


def _write_plots(rr: RunRoot, index: ObservationIndex, series: _Padded, result: ChangeResult,
                 sig_obs: np.ndarray | None, signal: str, threshold: float,
                 plot_chips: Sequence[str],
                 max_plots: int | None, *, progress: bool) -> int:
    from geofm.analyze.plots import Timeline, plot_timeline

    changed = np.flatnonzero(result.change)
    changed = changed[np.argsort(-np.nan_to_num(result.magnitude[changed], nan=0.0),
                                 kind="stable")]
    if max_plots is not None:
        changed = changed[:max(max_plots, 0)]
    position = {c: i for i, c in enumerate(index.chip_ids.tolist())}
    chosen = list(dict.fromkeys([*changed.tolist(), *(position[c] for c in plot_chips)]))
    if not chosen:
        return 0
    thumbs = _thumbnails(rr, {str(index.chip_ids[c]) for c in chosen})
    days_grid = series.take(index.obs_days, np.nan)
    # One signal: plot it with its seasonal fit. Several PCs: plot the combined score,
    # whose "fit" is 0 and whose band is +-threshold.
    sig_grid = result.residual if sig_obs is None else series.take(sig_obs, np.nan)
    n_coef = result.coef.shape[-1]
    for c in progress_bar(chosen, desc="analyze: plots", unit="plot", disable=not progress):
        valid = series.valid[c]
        days = days_grid[c][valid]
        cid = str(index.chip_ids[c])
        whole = np.floor(days).astype(np.int64)
        if result.change[c]:
            k = int(result.change_index[c])
            first_after = int(valid[:k].sum())
            before_day = whole[first_after - 1] if first_after > 0 else whole[0]
            after_day = whole[min(first_after, whole.size - 1)]
            change_day: float | None = float(days_grid[c, k])
        else:
            before_day, after_day, change_day = whole[0], whole[-1], None
        plot_timeline(Timeline(
            chip_id=cid, days=days, signal=sig_grid[c][valid],
            baseline=result.baseline_used[c][valid], anomaly=result.anomaly[c][valid],
            coef=result.coef[c] if sig_obs is not None else np.zeros(n_coef),
            intercept=float(result.intercept[c]) if sig_obs is not None else 0.0,
            rmse=float(result.rmse[c]) if sig_obs is not None else 1.0, threshold=threshold,
            status=str(result.status[c]), change_day=change_day,
            signal_name=signal if sig_obs is not None else f"anomaly score ({signal})",
            score=sig_obs is None,
            before=thumbs.get((cid, int(before_day))), after=thumbs.get((cid, int(after_day)))),
            rr.plots_dir / f"{cid}.png")
    return len(chosen)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``geofm analyze`` options to ``parser``."""
    parser.add_argument("--root", required=True, help="run root (with embeddings/ and meta/)")
    parser.add_argument("--embedding", choices=sorted(EMBEDDING_COLUMNS), default="cls",
                        help="CLS token or mean of patch tokens (default cls)")
    parser.add_argument("--baseline-start", help="baseline start date (default: 1 Jan of the "
                        "first year with data)")
    parser.add_argument("--monitor-start", help="monitoring start date (default: baseline "
                        "start + 1 year)")
    parser.add_argument("--signal", default="pc1",
                        help="pc1, pc2, ..., pcs (all components combined) or cosine "
                        "(default pc1)")
    parser.add_argument("--n-components", type=int, default=8, help="PCA components (default 8)")
    parser.add_argument("--threshold", type=float, default=3.0,
                        help="scaled-residual threshold (default 3.0)")
    parser.add_argument("--consecutive", type=int, default=3,
                        help="anomalous observations in a row that make a change (default 3)")
    parser.add_argument("--min-baseline", type=int, default=6,
                        help="fewest baseline observations (default 6)")
    parser.add_argument("--center", choices=CENTER_MODES, default="none",
                        help="scene: subtract each scene's median embedding first "
                        "(default none)")
    parser.add_argument("--tsne", action="store_true", help="also write analysis/tsne.parquet")
    parser.add_argument("--plot-chips", default="",
                        help="comma-separated chip ids to plot besides the changed chips")
    parser.add_argument("--max-plots", type=int, default=100,
                        help="plot at most N changed chips, largest first (-1: all)")
    parser.add_argument("--pca", help="project onto an existing pca.npz instead of fitting")
    parser.add_argument("--overwrite", action="store_true", help="recompute analysis/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm analyze`` from parsed arguments; return the exit code."""
    record = analyze(
        args.root, embedding=args.embedding, baseline_start=args.baseline_start,
        monitor_start=args.monitor_start, signal=args.signal, n_components=args.n_components,
        threshold=args.threshold, consecutive=args.consecutive, min_baseline=args.min_baseline,
        tsne=args.tsne, plot_chips=[c for c in args.plot_chips.split(",") if c],
        max_plots=None if args.max_plots < 0 else args.max_plots, pca=args.pca,
        center=args.center,
        overwrite=args.overwrite, progress=not args.no_progress)
    c = record.counts
    log.info("analyze: %s chips, %s changed, %s no change, %s insufficient data",
             c.get("chips"), c.get("changed"), c.get("no_change"), c.get("insufficient"))
    return 1 if record.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.steps.analyze`` entry point."""
    from geofm.cli import stage_main

    return stage_main("analyze", argv)
