"""The ``analyze`` stage: PCA, cosine to baseline, change detection, alerts, maps, plots.

Reads ``embeddings/<scene_id>.parquet`` and ``meta/<scene_id>.parquet`` of a run root
and writes ``analysis/`` (see docs/contracts.md, "analyze").

The first analysis (and every refit) fits the **reference**: the embeddings are
streamed twice, one file at a time (memory: one file plus ``[chips, D]`` baseline
sums plus the PCA sample): pass 1 collects the PCA sample and the per-chip baseline
sums, pass 2 projects every vector and takes its cosine to the chip's baseline mean;
the seasonal models are fitted on all chips at once (batched Lasso, no per-chip loop).
A later analysis of a grown root is an **update**: only the new files are streamed
(once), projected onto the stored PCA basis and scored against the stored fits; the
published series plus the new scores are then re-assessed (the CCDC rule, a cheap
``[chips, dates]`` scan). Both end in :func:`_publish`, which writes one update's
files together (:class:`geofm.io.StagedFiles`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geofm.analyze.alerts import alerts_frame, format_alerts, list_alerts, previous_alerts
from geofm.analyze.alerts import geojson as alerts_geojson
from geofm.analyze.change import (
    CHANGE,
    INSUFFICIENT,
    NO_CHANGE,
    SeasonalFit,
    assess,
    check_parameters,
    fit_seasonal,
)
from geofm.analyze.overlaps import duplicate_changes, find_overlaps
from geofm.analyze.reduce import PCAModel, fit_pca
from geofm.analyze.reference import (
    Reference,
    file_signature,
    load_means,
    read_state,
    save_means,
    write_state,
)
from geofm.analyze.series import (
    EMBEDDING_COLUMNS,
    NS_PER_DAY,
    ObservationIndex,
    index_embeddings,
    iter_vectors,
)
from geofm.analyze.similarity import BaselineMeans
from geofm.exceptions import GeofmFileExistsError, GeofmValueError
from geofm.io import StagedFiles
from geofm.layout import RunRoot
from geofm.log import progress as progress_bar
from geofm.manifest import StageRecord, stage_entry
from geofm.tables import read_schema, read_table

log = logging.getLogger(__name__)

#: ``center`` choices (see :func:`analyze`).
CENTER_MODES = ("scene", "none")
#: Fewest valid chips in a scene for its median embedding to be subtracted.
MIN_CENTER_CHIPS = 8


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


#: Options that shape the reference (the fits every update is scored against): changing
#: one needs ``refit``. The others (plots, t-SNE) only change what is drawn.
REFERENCE_OPTIONS = ("embedding", "baseline_start", "monitor_start", "signal", "n_components",
                     "threshold", "consecutive", "min_baseline", "alpha", "center", "pca",
                     "pca_samples", "seed")
#: Per-chip columns of ``changes.parquet`` taken from the chip metadata (first row).
CHIP_META_COLUMNS = ("tile", "epsg", "minx", "miny", "maxx", "maxy")


@stage_entry("analyze")
def analyze(root: str | os.PathLike[str] | RunRoot, *, embedding: str = "cls",
            baseline_start: str | None = None, monitor_start: str | None = None,
            signal: str = "pc1", n_components: int = 8, threshold: float = 3.0,
            consecutive: int = 3, min_baseline: int = 6, alpha: float = 0.001,
            center: str = "none", tsne: bool = False, plot_chips: Sequence[str] = (),
            max_plots: int | None = 100,
            pca: str | os.PathLike[str] | None = None, pca_samples: int = 50_000,
            seed: int = 0, refit: bool = False, overwrite: bool = False,
            rasters: bool = True, progress: bool = True) -> StageRecord:
    """Reduce, compare to baseline and detect changes for every chip of a run root.

    The first analysis of a root fixes its **reference**: the PCA basis, the baseline
    period and each chip's seasonal fit and residual scale (see
    :mod:`geofm.analyze.reference`). A later call on a root with new (or re-embedded)
    embedding files is an **update**: only the new observations are read, projected and
    scored against the reference; each chip's status is then re-assessed over its whole
    scored series (a change is confirmed after ``consecutive`` anomalies, dated at the
    first), and the chips that became ``change`` are written as alerts
    (:mod:`geofm.analyze.alerts`). Earlier observations keep their scores: the result
    equals a from-scratch analysis over all observations given the same PCA basis and
    baseline period, as long as the new observations fall after the baseline period
    (late observations inside it are scored, not fitted on) and on days not analysed
    before for that chip. Chips first seen in an update have no fit: ``insufficient
    data`` until a refit. Without new files the call is skipped.

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
        tsne: also write ``analysis/tsne.parquet`` (seeded subsample, 2-D t-SNE of PCs;
            made with the reference, not redrawn by updates).
        plot_chips: chip ids to plot in addition to the changed chips.
        max_plots: at most this many changed chips are plotted (largest magnitude
            first); None plots every changed chip. ``plot_chips`` are always plotted. An
            update plots only the chips it alerts on (and ``plot_chips``).
        pca: an existing ``pca.npz`` to project onto (same axes as an earlier run);
            default fits a new PCA on this run.
        pca_samples: PCA is fitted on a seeded uniform subsample of at most this many
            vectors (memory bound); exact when the run is smaller.
        seed: seed of the PCA subsample and t-SNE.
        refit: start a new reference: refit the PCA (unless ``pca``) and every baseline
            on all observations, rescore everything. Past change dates and magnitudes
            may move; alerts are the chips that are ``change`` now and were not before.
        overwrite: the same as ``refit`` (the older name). Without either, options that
            shape the reference (:data:`REFERENCE_OPTIONS`) must equal the reference's.
        rasters: also write the change map as Cloud-Optimized GeoTIFFs, one per tile,
            and their mosaic VRT (``analysis/rasters/``, see
            :mod:`geofm.analyze.rasters`).
        progress: show progress bars.

    Outputs (``analysis/``): ``timeseries.parquet`` (a row per chip and date: ``chip_id``,
    ``scene_id``, ``date``, ``pc1..pcK``, ``cosine_to_baseline``, ``signal``, ``predicted``,
    ``residual`` = scaled residual (for ``pcs``: the combined score; ``signal`` and
    ``predicted`` then show pc1), ``anomaly``, ``baseline`` = used in the fit),
    ``changes.parquet`` (GeoParquet, WGS84), ``change_map.geojson``, ``pca.npz``,
    ``reference.npz``, ``reference_means.npy``, ``state.json`` (analysed files, update
    history), ``alerts.parquet`` / ``alerts.geojson``, ``rasters/``,
    ``plots/<chip_id>.png`` and, with ``tsne``, ``tsne.parquet``. One update's files are
    published together (a killed update leaves the previous state or completes).

    Returns:
        The stage record (counts ``chips``, ``observations``, ``new_observations``,
        ``changed``, ``no_change``, ``insufficient``, ``alerts``, ``plots``,
        ``failed_chips`` and ``unembedded_scenes`` (valid chips embed could not embed,
        left out and listed in ``extra["not_analysed"]``); ``extra["model"]``: the
        embeddings' model identity; ``extra["updates"]``: the history of updates;
        ``run.json`` stage ``analyze``).

    Raises:
        GeofmValueError: bad options (signal, dates, embedding kind, unknown plot chip).
        GeofmFileNotFoundError: no embeddings in the run root, or ``pca`` missing.
        GeofmFileExistsError: ``analysis/`` was made with other reference options (or by
            a geofm without references) and neither ``refit`` nor ``overwrite`` is set.
        ModelMismatchError: the embeddings files were made by different models (by
            :meth:`geofm.model.identity.ModelIdentity.compatible`; files without model
            metadata count as one unknown model).
    """
    rr = RunRoot.of(root)
    if embedding not in EMBEDDING_COLUMNS:
        raise GeofmValueError(f"embedding={embedding!r} is not valid: use 'cls' or 'mean'.")
    signal_pc = _signal_column(signal, n_components)
    if center not in CENTER_MODES:
        raise GeofmValueError(f"center={center!r} is not valid: use 'scene' or 'none'.")
    check_parameters(threshold=threshold, consecutive=consecutive, min_baseline=min_baseline)
    config = dict(embedding=embedding, baseline_start=baseline_start,
                  monitor_start=monitor_start, signal=signal, n_components=n_components,
                  threshold=threshold, consecutive=consecutive, min_baseline=min_baseline,
                  alpha=alpha, center=center, tsne=tsne, plot_chips=list(plot_chips),
                  max_plots=max_plots, pca=None if pca is None else str(pca),
                  pca_samples=pca_samples, seed=seed, refit=refit or overwrite)
    opts = _Options(column=EMBEDDING_COLUMNS[embedding], signal=signal, signal_pc=signal_pc,
                    n_components=n_components, threshold=threshold, consecutive=consecutive,
                    min_baseline=min_baseline, alpha=alpha, center=center,
                    pca_samples=pca_samples, seed=seed, progress=progress)
    pca_model = None if pca is None else PCAModel.load(pca)
    if pca_model is not None and pca_model.n_components < n_components:
        raise GeofmValueError(f"{pca} has {pca_model.n_components} components but "
                              f"n_components={n_components}; lower --n-components.")
    ref_options = {k: config[k] for k in REFERENCE_OPTIONS}

    with StageRecord(rr, "analyze", config=config) as record:
        staged = StagedFiles(rr.analysis_dir)
        if staged.recover():
            log.warning("analyze: completed the publication of an update that was "
                        "interrupted in %s", rr.analysis_dir)
        scene_ids = rr.scene_ids(rr.embeddings_dir)
        files = [rr.embeddings_path(s) for s in scene_ids]
        if not files:
            index_embeddings([], [])  # raises: run `geofm embed` first
        _check_model(rr, scene_ids, files, record)
        signatures = {s: file_signature(f) for s, f in zip(scene_ids, files, strict=True)}
        state = read_state(rr)
        published = _published_changes(rr)
        fresh = refit or overwrite or state is None
        if state is None and rr.changes_path.exists() and not fresh:
            raise GeofmFileExistsError(
                f"{rr.changes_path} holds results of other embeddings or options (written "
                "without an analysis reference); pass overwrite=True (--overwrite) or "
                "refit=True (--refit) to start a new reference.")
        if not fresh:
            assert state is not None
            stored = state["reference"]["options"]
            if stored != json.loads(json.dumps(ref_options, default=str)):
                diff = sorted(k for k in ref_options if stored.get(k) != ref_options[k])
                raise GeofmFileExistsError(
                    f"{rr.changes_path} holds results of other embeddings or options (the "
                    f"reference {state['reference']['id']} differs in {diff}); pass "
                    "overwrite=True (--overwrite) or refit=True (--refit) to start a new "
                    "reference, or use the reference's options.")
            todo = sorted(s for s in scene_ids if state["scenes"].get(s) != signatures[s])
            gone = sorted(set(state["scenes"]) - set(signatures))
            record.extra["reference"] = state["reference"]
            # the reference's summary (baseline period, PCA) stays in every run.json entry
            record.extra["analysis"] = state["reference"].get("analysis", {
                "baseline_start": state["reference"]["baseline_start"],
                "monitor_start": state["reference"]["monitor_start"]})
            if not todo and not gone and all(p.exists() for p in _outputs(rr)):
                log.info("analysis/ is up to date with these embeddings and options; skipped")
                record.counts.update(_counts_from(rr.changes_path))
                record.counts["skipped"] = 1
                record.extra["updates"] = state["updates"]
                return record
            work = _update(rr, record, state, todo, gone, opts, plot_chips, published)
        else:
            work = _reference(rr, record, files, scene_ids, opts, pca_model, plot_chips,
                              baseline_start=baseline_start, monitor_start=monitor_start,
                              tsne=tsne, pca_path=pca)
            state = {"reference": {"id": work.reference.id, "options": json.loads(
                json.dumps(ref_options, default=str)),
                "baseline_start": str(pd.Timestamp(work.reference.baseline_start_ns,
                                                   tz="UTC").date()),
                "monitor_start": str(pd.Timestamp(work.reference.monitor_start_ns,
                                                  tz="UTC").date()),
                "analysis": record.extra["analysis"]},
                "scenes": {}, "updates": (state or {}).get("updates", [])}
            todo, gone = scene_ids, []
        state["scenes"] = {s: signatures[s] for s in scene_ids}
        _publish(rr, record, staged, work, state, opts, published, scene_added=todo,
                 scene_removed=gone,
                 fingerprint=_fingerprint(files, config), plot_chips=plot_chips,
                 max_plots=max_plots, rasters=rasters)
    return record


@dataclass
class _Options:
    column: str
    signal: str
    signal_pc: int | None | slice
    n_components: int
    threshold: float
    consecutive: int
    min_baseline: int
    alpha: float
    center: str
    pca_samples: int
    seed: int
    progress: bool


@dataclass
class _Obs:
    """Scored observations, one entry per (chip, day): the content of timeseries.parquet."""

    chip: np.ndarray    # int64 [M] row in the work's chip_ids
    ns: np.ndarray      # int64 [M] ns since the epoch, UTC
    scene: np.ndarray   # int64 [M] index into ``scenes``
    scenes: list[str]
    pcs: np.ndarray     # float32 [M, K]
    cos: np.ndarray     # float32 [M]
    sig: np.ndarray     # float32 [M] the signal (pc1 for ``pcs``)
    pred: np.ndarray    # float32 [M] the model's value of ``sig``
    resid: np.ndarray   # float32 [M] scaled residual / combined score
    base: np.ndarray    # bool [M] used in the baseline fit

    _FIELDS = ("chip", "ns", "scene", "pcs", "cos", "sig", "pred", "resid", "base")

    def take(self, idx: np.ndarray) -> _Obs:
        """The observations at ``idx``."""
        return _Obs(scenes=self.scenes, **{f: getattr(self, f)[idx] for f in self._FIELDS})

    def core(self) -> _Core:
        """The fields assessment needs."""
        return _Core(chip=self.chip, ns=self.ns, scene=self.scene, scenes=self.scenes,
                     resid=self.resid, sig=self.sig, base=self.base)

    @classmethod
    def empty(cls, n_components: int) -> _Obs:
        """No observations."""
        f32 = np.zeros(0, np.float32)
        return cls(chip=np.zeros(0, np.int64), ns=np.zeros(0, np.int64),
                   scene=np.zeros(0, np.int64), scenes=[],
                   pcs=np.zeros((0, n_components), np.float32), cos=f32, sig=f32, pred=f32,
                   resid=f32, base=np.zeros(0, bool))

    def values(self, signal_pc: int | None | slice) -> np.ndarray:
        """float64 ``[M, K']`` the monitored components (cosine, one PC or all)."""
        if signal_pc is None:
            return self.cos.astype(np.float64)[:, None]
        if isinstance(signal_pc, slice):
            return self.pcs[:, signal_pc].astype(np.float64)
        return self.pcs[:, signal_pc].astype(np.float64)[:, None]


@dataclass
class _Core:
    """What assessment needs of each observation (published or new)."""

    chip: np.ndarray    # int64 [M]
    ns: np.ndarray      # int64 [M]
    scene: np.ndarray   # int64 [M] into ``scenes``
    scenes: list[str]
    resid: np.ndarray   # float32 [M]
    sig: np.ndarray     # float32 [M]
    base: np.ndarray    # bool [M]

    _FIELDS = ("chip", "ns", "scene", "resid", "sig", "base")

    def take(self, idx: np.ndarray) -> _Core:
        """The observations at ``idx``."""
        return _Core(scenes=self.scenes, **{f: getattr(self, f)[idx] for f in self._FIELDS})

    @classmethod
    def concat(cls, a: _Core, b: _Core) -> _Core:
        """``a`` then ``b`` (scene codes remapped onto the union of their scene lists)."""
        scenes = sorted(set(a.scenes) | set(b.scenes))
        pos = {s: i for i, s in enumerate(scenes)}
        remap_a = np.array([pos[s] for s in a.scenes] or [0], dtype=np.int64)
        remap_b = np.array([pos[s] for s in b.scenes] or [0], dtype=np.int64)
        parts = {f: np.concatenate([getattr(a, f), getattr(b, f)]) for f in cls._FIELDS
                 if f != "scene"}
        parts["scene"] = np.concatenate([remap_a[a.scene], remap_b[b.scene]])
        return cls(scenes=scenes, **parts)


@dataclass
class _Prior:
    """The published ``timeseries.parquet`` rows an update keeps: as read, and their core."""

    table: pa.Table
    core: _Core


@dataclass
class _Work:
    """What an analysis (reference or update) hands to :func:`_publish`."""

    chip_ids: np.ndarray
    fit: SeasonalFit
    reference: Reference
    obs: _Obs
    prior: _Prior | None           # published rows kept by an update (None: reference)
    kind: str                      # "reference" | "update"
    n_rows: int                    # embedding rows read
    n_new: int                     # observations scored now
    files: dict[str, Any]          # extra staged files: name -> writer(path)
    meta: pd.DataFrame             # per chip: geometry, tile, native grid (_chip_meta)


def _reference(rr: RunRoot, record: StageRecord, files: list[Path], scene_ids: list[str],
               o: _Options, pca_model: PCAModel | None, plot_chips: Sequence[str], *,
               baseline_start: str | None, monitor_start: str | None, tsne: bool,
               pca_path: str | os.PathLike[str] | None) -> _Work:
    """Analyse every observation and fit a new reference."""
    index = index_embeddings(files, scene_ids, column=o.column)
    _check_plot_chips(plot_chips, index.chip_ids, rr)
    start, mon = baseline_window(int(index.obs_ns.min()), baseline_start=baseline_start,
                                 monitor_start=monitor_start)
    log.info("%d embeddings of %d chips in %d files; baseline %s..%s, monitoring from %s",
             index.n_rows, index.chip_ids.size, len(files), start.date(), mon.date(),
             mon.date())
    row_ns = index.obs_ns[index.row_obs]
    row_in_base = (row_ns >= start.value) & (row_ns < mon.value)
    # Pass 1: PCA sample and per-chip baseline sums.
    row_ok, means, sample = _pass_one(index, o.column, o.center, row_in_base, record, rr,
                                      fit=pca_model is None, max_samples=o.pca_samples,
                                      seed=o.seed, progress=o.progress)
    if pca_model is None:
        pca_model = fit_pca(sample, n_components=o.n_components)
    del sample
    if pca_model.dim != index.dim:
        raise GeofmValueError(f"PCA {pca_path} was fitted on dimension {pca_model.dim} but "
                              f"the embeddings have {index.dim}; fit a new one (omit --pca).")
    # Pass 2: projections and cosine to the baseline mean, per observation.
    obs_pcs, obs_cos, obs_ok = _pass_two(index, o.column, o.center, row_ok, means, pca_model,
                                         o.n_components, progress=o.progress)
    sel = np.flatnonzero(obs_ok)
    obs = _Obs(chip=index.obs_chip[sel], ns=index.obs_ns[sel], scene=index.obs_scene[sel],
               scenes=list(index.scene_ids), pcs=obs_pcs[sel], cos=obs_cos[sel],
               sig=np.zeros(sel.size, np.float32), pred=np.zeros(sel.size, np.float32),
               resid=np.zeros(sel.size, np.float32), base=np.zeros(sel.size, bool))
    obs.sig = obs.values(o.signal_pc)[:, 0].astype(np.float32)

    # The reference fit, on the baseline observations laid out [chip, date].
    grid = _Padded(obs.chip, index.chip_ids.size, np.ones(sel.size, dtype=bool))
    y = grid.take(obs.values(o.signal_pc), np.nan)
    valid = grid.valid & np.isfinite(y).all(axis=2)
    days = np.where(valid, grid.take(obs.ns / NS_PER_DAY, np.nan), 0.0)
    y = np.where(valid[..., None], y, 0.0)
    in_base = valid & grid.take((obs.ns >= start.value) & (obs.ns < mon.value), False)
    fit, used = fit_seasonal(days, y, valid, baseline=in_base, threshold=o.threshold,
                             min_baseline=o.min_baseline, alpha=o.alpha)
    del y, days
    obs.base = grid.gather(used)
    _score(obs, fit, o.signal_pc, np.arange(sel.size))
    created = pd.Timestamp.now(tz="UTC")
    reference = Reference(id=f"ref-{created:%Y%m%dT%H%M%S.%fZ}", chip_ids=index.chip_ids,
                          fit=fit, baseline_start_ns=start.value, monitor_start_ns=mon.value)
    extra: dict[str, Any] = {
        "pca.npz": pca_model.save, "reference.npz": reference.save,
        "reference_means.npy": lambda p: save_means(p, means)}
    if tsne:
        extra["tsne.parquet"] = lambda p: _write_tsne(p, obs, index.chip_ids, seed=o.seed)
    record.extra["analysis"] = {
        "baseline_start": str(start.date()), "monitor_start": str(mon.date()),
        "signal": o.signal, "embedding": o.column,
        "explained_variance_ratio": [round(float(v), 6)
                                     for v in pca_model.explained_variance_ratio],
        "pca_samples": pca_model.n_samples}
    geoms = _chip_meta(rr, index.chip_ids, record)
    return _Work(chip_ids=index.chip_ids, fit=fit, reference=reference, obs=obs, prior=None,
                 kind="reference", n_rows=index.n_rows, n_new=sel.size, files=extra,
                 meta=geoms)


def _update(rr: RunRoot, record: StageRecord, state: dict[str, Any], todo: list[str],
            gone: list[str], o: _Options, plot_chips: Sequence[str],
            published: pd.DataFrame | None) -> _Work:
    """Score the observations of new (or re-embedded) files against the stored reference."""
    reference = Reference.load(rr.reference_path)
    pca_model = PCAModel.load(rr.pca_path)
    table, old = _read_timeseries(rr, drop_scenes=set(todo) | set(gone))
    files = [rr.embeddings_path(s) for s in todo]
    index = index_embeddings(files, todo, column=o.column) if files else None
    new_chips = index.chip_ids if index is not None else np.array([], dtype=object)
    chip_ids = np.union1d(reference.chip_ids.astype(str), new_chips.astype(str)).astype(object)
    _check_plot_chips(plot_chips, chip_ids, rr)
    fit, ref_pos = reference.extend(chip_ids)
    old_chip = np.searchsorted(chip_ids, old.pop("chip_ids"))
    old_obs = _Core(chip=old_chip[old.pop("chip")], scenes=old.pop("scenes"), **old)
    n_rows = 0
    if index is not None:
        if pca_model.dim != index.dim:
            raise GeofmValueError(f"{rr.pca_path} was fitted on dimension {pca_model.dim} but "
                                  f"the new embeddings have {index.dim}; they come from another "
                                  "model: re-embed them, or refit (--refit).")
        n_rows = index.n_rows
        local = np.searchsorted(chip_ids, index.chip_ids)   # local chip -> global row
        ref_means = load_means(rr.reference_means_path, reference.chip_ids.size)
        pcs, cos, obs_ok = _pass_two(index, o.column, o.center, None, ref_means, pca_model,
                                     o.n_components, progress=o.progress, record=record, rr=rr,
                                     mean_rows=ref_pos[local])
        sel = np.flatnonzero(obs_ok)
        new = _Obs(chip=local[index.obs_chip[sel]], ns=index.obs_ns[sel],
                   scene=index.obs_scene[sel], scenes=list(index.scene_ids), pcs=pcs[sel],
                   cos=cos[sel], sig=np.zeros(sel.size, np.float32),
                   pred=np.zeros(sel.size, np.float32), resid=np.zeros(sel.size, np.float32),
                   base=np.zeros(sel.size, bool))
        new.sig = new.values(o.signal_pc)[:, 0].astype(np.float32)
        _score(new, fit, o.signal_pc, np.arange(sel.size))
        if old_obs.chip.size and sel.size:
            span = np.int64(1) << 32  # chip-day keys: chip * 2**32 + day
            new_day = new.ns // NS_PER_DAY
            late = np.flatnonzero(old_obs.ns // NS_PER_DAY >= new_day.min())
            again = int(np.isin(new.chip * span + new_day, old_obs.chip[late] * span
                                + old_obs.ns[late] // NS_PER_DAY).sum()) if late.size else 0
            if again:
                log.warning("analyze: %d new observation(s) fall on a day already analysed for "
                            "their chip; they are kept beside the earlier one (a refit would "
                            "average them)", again)
    else:
        new, sel = _Obs.empty(o.n_components), np.array([], dtype=np.int64)
    log.info("analyze update: %d new file(s) (%d embeddings, %d observations) scored against "
             "reference %s; %d file(s) dropped", len(todo), n_rows, sel.size, reference.id,
             len(gone))
    geoms = _chip_meta(rr, chip_ids, record, known=published)
    return _Work(chip_ids=chip_ids, fit=fit, reference=reference, obs=new,
                 prior=_Prior(table=table, core=old_obs), kind="update",
                 n_rows=n_rows, n_new=int(sel.size), files={}, meta=geoms)


def _score(obs: _Obs, fit: SeasonalFit, signal_pc: int | None | slice,
           idx: np.ndarray) -> None:
    """Fill ``pred``, ``resid`` of the observations ``idx`` from the chips' fits."""
    pred, resid = fit.score(obs.chip[idx], obs.ns[idx] / NS_PER_DAY, obs.values(signal_pc)[idx])
    obs.pred[idx] = pred[:, 0].astype(np.float32)
    obs.resid[idx] = resid.astype(np.float32)


def _publish(rr: RunRoot, record: StageRecord, staged: StagedFiles, work: _Work,
             state: dict[str, Any], o: _Options, published: pd.DataFrame | None, *,
             scene_added: list[str],
             scene_removed: list[str], fingerprint: str, plot_chips: Sequence[str],
             max_plots: int | None, rasters: bool) -> None:
    """Assess every chip, find the alerts and publish all outputs of this analysis at once."""
    core = work.obs.core() if work.prior is None else _Core.concat(work.prior.core,
                                                                    work.obs.core())
    n_prior = core.chip.size - work.obs.chip.size
    order = _chip_date_order(core.chip, core.ns)
    obs = core.take(order)  # by chip, then date: the [chip, date] grid's order
    n_chips = work.chip_ids.size
    grid = _Padded(obs.chip, n_chips, np.ones(obs.chip.size, dtype=bool))
    valid = grid.take(np.isfinite(obs.sig), False)
    monitor = grid.take(obs.ns >= work.reference.monitor_start_ns, False)
    resid = grid.take(obs.resid.astype(np.float64), np.nan)
    out = assess(work.fit, resid, valid, monitor, threshold=o.threshold,
                 consecutive=o.consecutive)
    status = out["status"]
    ns_grid = grid.take(obs.ns, 0)
    rows = np.arange(n_chips)
    change_ns = np.where(out["change"], ns_grid[rows, np.maximum(out["change_index"], 0)], 0)
    confirm = np.maximum(out["confirm_index"], 0)
    confirm_ns = ns_grid[rows, confirm]
    confirm_scene = grid.take(obs.scene, -1)[rows, confirm]

    prev: np.ndarray = np.full(work.chip_ids.size, None, dtype=object)
    if published is not None and len(published):
        pos = pd.Index(published["chip_id"].astype(str)).get_indexer(work.chip_ids.astype(str))
        prev[pos >= 0] = published["status"].to_numpy(dtype=object)[pos[pos >= 0]]
    alert = out["change"] & (prev != CHANGE)
    now = pd.Timestamp.now(tz="UTC")
    update_no = len(state["updates"]) + 1
    meta = work.meta
    overlaps = find_overlaps(meta)
    duplicate = duplicate_changes(work.chip_ids, out["change"], change_ns, meta,
                                  overlaps=overlaps)
    idx = np.flatnonzero(alert)
    new_alerts = alerts_frame({
        "chip_id": work.chip_ids[idx].astype(str), "tile": meta["tile"].to_numpy()[idx],
        "change_date": change_ns[idx], "magnitude": out["magnitude"][idx],
        "previous_status": prev[idx], "detected_at": [now] * idx.size,
        "update": [update_no] * idx.size, "reference_id": [work.reference.id] * idx.size,
        "confirmed_scene_id": [obs.scenes[s] for s in confirm_scene[idx]],
        "confirmed_date": confirm_ns[idx], "duplicate_of": duplicate[idx]},
        list(meta["geometry"].to_numpy()[idx]))
    history = previous_alerts(rr)
    all_alerts = new_alerts if not len(history) else pd.concat([history, new_alerts],
                                                               ignore_index=True)
    counts = {"chips": int(n_chips), "changed": int((status == CHANGE).sum()),
              "no_change": int((status == NO_CHANGE).sum()),
              "insufficient": int((status == INSUFFICIENT).sum())}
    n_alerts = int(idx.size)
    n_distinct = int(pd.isna(duplicate[idx]).sum())
    entry = {"update": update_no, "at": now.isoformat(), "kind": work.kind,
             "reference_id": work.reference.id, "scenes_added": len(scene_added),
             "scenes_removed": len(scene_removed), "new_observations": work.n_new,
             "alerts": n_alerts, "distinct_alerts": n_distinct,
             "status_moves": _moves(prev, status), **counts}
    if len(scene_added) <= 20:
        entry["scene_ids"] = list(scene_added)
    state["updates"] = [*state["updates"], entry]
    state["fingerprint"] = fingerprint  # of the embeddings files and options

    staged.begin()
    for name, writer in work.files.items():
        writer(staged.path(name))
    anomaly = np.empty(core.chip.size, dtype=bool)
    anomaly[order] = grid.gather(out["anomaly"])
    _write_timeseries(staged.path("timeseries.parquet"), work.obs, work.chip_ids,
                      anomaly[n_prior:], o.n_components,
                      prior=None if work.prior is None else work.prior.table,
                      prior_anomaly=anomaly[:n_prior])
    _write_changes(staged.path("changes.parquet"), staged.path("change_map.geojson"),
                   work.chip_ids, meta, out, work.fit, change_ns, duplicate)
    new_alerts_path = staged.path("alerts.geojson")
    new_alerts_path.write_text(alerts_geojson(new_alerts), encoding="utf-8")
    all_alerts = all_alerts.reset_index(drop=True)
    all_alerts.to_parquet(staged.path("alerts.parquet"), index=False)
    if rasters:
        from geofm.analyze.rasters import write_change_rasters

        write_change_rasters(staged, rr, meta, out, change_ns, duplicate)
    overlaps.to_parquet(staged.path("overlaps.parquet"), index=False)
    write_state(staged.path("state.json"), state)
    staged.commit()

    plot = idx if work.kind == "update" else np.flatnonzero(out["change"])
    n_plots = _write_plots(rr, work.chip_ids, obs, grid, out, work.fit, plot, o, plot_chips,
                           max_plots)
    record.counts.update(embeddings=work.n_rows, observations=int(obs.chip.size),
                         new_observations=work.n_new, alerts=n_alerts, plots=n_plots,
                         **counts)
    record.extra["reference"] = state["reference"]
    record.extra["updates"] = state["updates"]
    log.info("analyze %s %d: %d new observation(s), %d alert(s) (%d distinct places)",
             work.kind, update_no, work.n_new, n_alerts, n_distinct)


def _moves(prev: np.ndarray, status: np.ndarray) -> dict[str, int]:
    """Counts of status moves ``"<before> -> <after>"`` (``none`` before the first)."""
    out: dict[str, int] = {}
    for p, s in zip(prev.tolist(), status.tolist(), strict=True):
        if p != s:
            key = f"{p or 'none'} -> {s}"
            out[key] = out.get(key, 0) + 1
    return out


def _outputs(rr: RunRoot) -> list[Path]:
    return [rr.timeseries_path, rr.changes_path, rr.change_map_path, rr.pca_path,
            rr.reference_path, rr.reference_means_path, rr.analysis_state_path,
            rr.alerts_path, rr.alerts_geojson_path]


def _check_plot_chips(plot_chips: Sequence[str], chip_ids: np.ndarray, rr: RunRoot) -> None:
    unknown = sorted(set(plot_chips) - set(chip_ids.tolist()))
    if unknown:
        raise GeofmValueError(f"plot_chips {unknown[:5]} are not chips of {rr.path}; "
                              "use chip ids from meta/<scene>.parquet.")


def _chip_date_order(chip: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """Indexes that sort observations by chip, then date (stable).

    A stable sort on the chip alone when dates already ascend within each chip (the
    published series followed by newer observations: two sorted runs, merged in linear
    time), else a full lexicographic sort.
    """
    order = np.argsort(chip, kind="stable")
    c, t = chip[order], ns[order]
    if np.any((c[1:] == c[:-1]) & (t[1:] < t[:-1])):
        order = np.lexsort((ns, chip))
    return order


def _read_timeseries(rr: RunRoot, *, drop_scenes: set[str]
                     ) -> tuple[pa.Table, dict[str, Any]]:
    """The published observations, minus those of ``drop_scenes``.

    Returns:
        ``(table, core)``: the rows as read (rewritten as they are by the update, but for
        ``anomaly``), and the :class:`_Core` fields as arrays (``chip`` indexes
        ``chip_ids``, the file's own chip list).
    """
    import pyarrow.compute as pc

    table = read_table(rr.timeseries_path, made_by="analyze")
    codes: dict[str, tuple[np.ndarray, list[str]]] = {}
    for name in ("chip_id", "scene_id"):
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            arr = col.unify_dictionaries().combine_chunks()
        else:
            arr = col.cast(pa.string()).combine_chunks().dictionary_encode()
        idx = arr.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        codes[name] = (idx, [str(v) for v in arr.dictionary.to_pylist()])
    scene_idx, scenes = codes["scene_id"]
    keep = ~np.isin(np.asarray(scenes, dtype=object), list(drop_scenes))[scene_idx] \
        if scenes else np.ones(scene_idx.size, dtype=bool)
    if not keep.all():
        table = table.filter(pa.array(keep))
    date = table.column("date")
    if date.type.unit != "ns":
        date = date.cast(pa.timestamp("ns", tz="UTC"))

    def num(name: str, dtype: Any) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(), dtype=dtype)

    chip_idx, chip_names = codes["chip_id"]
    return table, {"chip": chip_idx[keep], "chip_ids": np.asarray(chip_names, dtype=object),
                   "ns": np.asarray(pc.cast(date, pa.int64()).to_numpy(), dtype=np.int64),
                   "scene": scene_idx[keep], "scenes": scenes,
                   "sig": num("signal", np.float32), "resid": num("residual", np.float32),
                   "base": num("baseline", bool)}


def _check_model(rr: RunRoot, scene_ids: list[str], files: list[Path],
                 record: StageRecord) -> None:
    """Refuse embeddings of two models; count and log the chips embed could not embed."""
    from geofm.embed.writer import check_one_model, record_embedding_gaps

    identity, infos = check_one_model(files, purpose="be analysed together",
                                      require_metadata=False)
    record.extra["model"] = identity.to_dict()
    record_embedding_gaps(rr, dict(zip(scene_ids, infos, strict=True)), record,
                          left_out_key="not_analysed")


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


def _pass_two(index: ObservationIndex, column: str, center: str, row_ok: np.ndarray | None,
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


def _chip_meta(rr: RunRoot, chip_ids: np.ndarray, record: StageRecord, *,
               known: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per chip (rows in ``chip_ids`` order): ``geometry`` (WGS84 shapely) and the native grid.

    Columns ``chip_id``, ``geometry`` and :data:`CHIP_META_COLUMNS` (``tile``, ``epsg``,
    native ``minx miny maxx maxy``; None / NaN where the metadata lacks them), from
    ``known`` (the published ``changes.parquet``) where it has the chip, else from the
    first ``meta/`` row of the chip.
    """
    import shapely

    n = chip_ids.size
    frame = pd.DataFrame({"chip_id": chip_ids.astype(str)})
    wkb: list[Any] = [None] * n
    extra: dict[str, list[Any]] = {c: [None] * n for c in CHIP_META_COLUMNS}
    missing = np.ones(n, dtype=bool)
    wanted = pd.Index(frame["chip_id"])
    if known is not None and len(known):
        pos = wanted.get_indexer(known["chip_id"].astype(str))
        hit = np.flatnonzero(pos >= 0)
        for col, values in (("geometry", known["geometry"].to_numpy()),
                            *((c, known[c].to_numpy()) for c in CHIP_META_COLUMNS
                              if c in known)):
            target = wkb if col == "geometry" else extra[col]
            for j, v in zip(pos[hit], values[hit], strict=True):
                target[j] = v
        missing[pos[hit]] = False
    for scene in rr.scene_ids(rr.meta_dir):
        if not missing.any():
            break
        path = rr.meta_path(scene)
        names = read_schema(path, made_by="chip").names
        cols = ["chip_id", "geometry", *(c for c in CHIP_META_COLUMNS if c in names)]
        table = read_table(path, made_by="chip", columns=cols)
        ids = table.column("chip_id").to_numpy(zero_copy_only=False)
        pos = wanted.get_indexer(ids)
        new = np.flatnonzero(pos >= 0)
        new = new[missing[pos[new]]]
        if new.size:
            taken = table.take(pa.array(new))
            for col in cols[1:]:
                target = wkb if col == "geometry" else extra[col]
                for j, v in zip(pos[new], taken.column(col).to_pylist(), strict=True):
                    target[j] = v
            missing[pos[new]] = False
    no_geom = np.array([g is None for g in wkb], dtype=bool)
    if no_geom.any():
        log.warning("%d chip(s) have no footprint in %s (e.g. %s); they get no geometry",
                    int(no_geom.sum()), rr.meta_dir, chip_ids[no_geom][:3].tolist())
        record.counts["chips_without_footprint"] = int(no_geom.sum())
    geoms = [g if g is None or not isinstance(g, bytes | bytearray) else shapely.from_wkb(g)
             for g in wkb]
    frame["geometry"] = pd.Series(geoms, dtype=object)
    frame["tile"] = pd.Series(extra["tile"], dtype=object)
    frame["epsg"] = pd.array([None if v is None or pd.isna(v) else int(v)
                              for v in extra["epsg"]], dtype="Int32")
    for c in ("minx", "miny", "maxx", "maxy"):
        frame[c] = np.array([np.nan if v is None else float(v) for v in extra[c]])
    return frame


def _published_changes(rr: RunRoot) -> pd.DataFrame | None:
    """The published ``changes.parquet`` (None before the first analysis).

    Columns ``chip_id``, ``status``, ``geometry`` (shapely) and the
    :data:`CHIP_META_COLUMNS` it has.
    """
    import shapely

    if not rr.changes_path.is_file():
        return None
    names = read_schema(rr.changes_path, made_by="analyze").names
    cols = ["chip_id", "status", "geometry", *(c for c in CHIP_META_COLUMNS if c in names)]
    frame = read_table(rr.changes_path, made_by="analyze", columns=cols).to_pandas()
    frame["geometry"] = list(shapely.from_wkb(frame["geometry"].to_numpy()))
    return frame


def _write_timeseries(path: Path, obs: _Obs, chip_ids: np.ndarray, anomaly: np.ndarray,
                      n_components: int, *, prior: pa.Table | None = None,
                      prior_anomaly: np.ndarray | None = None) -> None:
    """Write ``prior`` (published rows, ``anomaly`` replaced) then ``obs`` as new rows."""
    chip_dict = pa.array(chip_ids.tolist(), type=pa.string())
    scene_dict = pa.array(obs.scenes, type=pa.string())
    cols: dict[str, pa.Array] = {
        "chip_id": pa.DictionaryArray.from_arrays(pa.array(obs.chip.astype(np.int32)),
                                                  chip_dict),
        "scene_id": pa.DictionaryArray.from_arrays(pa.array(obs.scene.astype(np.int32)),
                                                   scene_dict),
        "date": pa.array(obs.ns, type=pa.timestamp("ns", tz="UTC")),
    }
    for k in range(n_components):
        cols[f"pc{k + 1}"] = pa.array(obs.pcs[:, k].astype(np.float32))
    cols["cosine_to_baseline"] = pa.array(obs.cos.astype(np.float32))
    cols["signal"] = pa.array(obs.sig.astype(np.float32))
    cols["predicted"] = pa.array(obs.pred.astype(np.float32))
    cols["residual"] = pa.array(obs.resid.astype(np.float32))
    cols["anomaly"] = pa.array(np.asarray(anomaly, dtype=bool))
    cols["baseline"] = pa.array(obs.base.astype(bool))
    table = pa.table(cols)
    if prior is not None:
        prior = prior.set_column(prior.schema.get_field_index("anomaly"), "anomaly",
                                 pa.array(np.asarray(prior_anomaly, dtype=bool)))
        table = pa.concat_tables([prior.select(table.column_names).cast(table.schema), table])
    # dictionary-encode only the ids: trying it on the float columns doubles the write time
    pq.write_table(table, path, use_dictionary=["chip_id", "scene_id"])


def _write_changes(path: Path, geojson_path: Path, chip_ids: np.ndarray, meta: pd.DataFrame,
                   out: dict[str, np.ndarray], fit: SeasonalFit, change_ns: np.ndarray,
                   duplicate: np.ndarray) -> None:
    import geopandas as gpd
    import shapely

    change = out["change"]
    change_date = pd.to_datetime(np.where(change, change_ns, np.iinfo(np.int64).min), utc=True)
    change_date = change_date.where(change)
    ok = out["status"] != INSUFFICIENT
    rmse = np.where(ok, fit.scale[:, 0], np.nan)
    frame = gpd.GeoDataFrame({
        "chip_id": chip_ids.astype(str),
        "n_observations": out["n_observations"].astype(np.int32),
        "n_baseline": fit.n_baseline.astype(np.int32),
        "status": out["status"].astype(str),
        "change": change.astype(bool),
        "change_date": change_date,
        "magnitude": out["magnitude"].astype(np.float32),
        "rmse": rmse.astype(np.float32),
        **{c: meta[c] for c in CHIP_META_COLUMNS},
        "duplicate_of": pd.Series(duplicate, dtype=object),
    }, geometry=gpd.GeoSeries(list(meta["geometry"]), crs="EPSG:4326"))
    frame.to_parquet(path, index=False)

    geoms = np.asarray(list(meta["geometry"]), dtype=object)
    texts = shapely.to_geojson(geoms)
    magnitude = out["magnitude"]
    # One f-string per feature (json.dumps of a dict per chip is most of the cost).
    day = np.datetime_as_string(np.where(change, change_ns, 0).astype("datetime64[ns]"),
                                unit="D")
    dates = np.where(change, np.char.add(np.char.add('"', day), '"'), "null")
    mags = [("null" if not np.isfinite(m) else repr(round(float(m), 4)))
            for m in magnitude.tolist()]
    dups = ["null" if d is None else json.dumps(d) for d in duplicate.tolist()]
    status = out["status"].tolist()
    n_obs = out["n_observations"].tolist()
    flags = ["true" if c else "false" for c in change.tolist()]
    parts = []
    for i in np.flatnonzero([g is not None for g in geoms]).tolist():
        parts.append(f'{{"type": "Feature", "geometry": {texts[i]}, "properties": '
                     f'{{"chip_id": {json.dumps(str(chip_ids[i]))}, "status": "{status[i]}", '
                     f'"change": {flags[i]}, "change_date": {dates[i]}, '
                     f'"intensity": {mags[i]}, "n_observations": {n_obs[i]}, '
                     f'"duplicate_of": {dups[i]}}}}}')
    geojson_path.write_text('{"type": "FeatureCollection", "features": [' + ", ".join(parts)
                            + "]}", encoding="utf-8")


def _write_tsne(path: Path, obs: _Obs, chip_ids: np.ndarray, *, seed: int) -> None:
    from geofm.analyze.reduce import tsne

    if obs.chip.size < 5:
        log.warning("t-SNE skipped: only %d observations", obs.chip.size)
        return
    rows, coords = tsne(obs.pcs, seed=seed)
    table = pa.table({"chip_id": pa.array(chip_ids[obs.chip[rows]].tolist()),
                      "date": pa.array(obs.ns[rows], type=pa.timestamp("ns", tz="UTC")),
                      "tsne1": pa.array(coords[:, 0]), "tsne2": pa.array(coords[:, 1])})
    pq.write_table(table, path)


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




def _write_plots(rr: RunRoot, chip_ids: np.ndarray, obs: _Core, grid: _Padded,
                 out: dict[str, np.ndarray], fit: SeasonalFit, changed: np.ndarray,
                 o: _Options, plot_chips: Sequence[str], max_plots: int | None) -> int:
    from geofm.analyze.plots import Timeline, plot_timeline

    magnitude = out["magnitude"]
    changed = changed[np.argsort(-np.nan_to_num(magnitude[changed], nan=0.0), kind="stable")]
    if max_plots is not None:
        changed = changed[:max(max_plots, 0)]
    position = {c: i for i, c in enumerate(chip_ids.tolist())}
    chosen = list(dict.fromkeys([*changed.tolist(), *(position[c] for c in plot_chips)]))
    if not chosen:
        return 0
    multi = isinstance(o.signal_pc, slice)
    thumbs = _thumbnails(rr, {str(chip_ids[c]) for c in chosen})
    days_grid = grid.take(obs.ns / NS_PER_DAY, np.nan)
    valid_grid = grid.take(np.isfinite(obs.sig), False)
    # One signal: plot it with its seasonal fit. Several PCs: plot the combined score,
    # whose "fit" is 0 and whose band is +-threshold.
    sig_grid = grid.take(obs.resid if multi else obs.sig, np.nan)
    base_grid = grid.take(obs.base, False)
    n_coef = fit.coef.shape[-1]
    for c in progress_bar(chosen, desc="analyze: plots", unit="plot", disable=not o.progress):
        valid = valid_grid[c]
        days = days_grid[c][valid]
        cid = str(chip_ids[c])
        whole = np.floor(days).astype(np.int64)
        if out["change"][c]:
            k = int(out["change_index"][c])
            first_after = int(valid[:k].sum())
            before_day = whole[first_after - 1] if first_after > 0 else whole[0]
            after_day = whole[min(first_after, whole.size - 1)]
            change_day: float | None = float(days_grid[c, k])
        elif whole.size:
            before_day, after_day, change_day = whole[0], whole[-1], None
        else:
            continue
        fitted = bool(fit.fitted[c])
        plot_timeline(Timeline(
            chip_id=cid, days=days, signal=sig_grid[c][valid],
            baseline=base_grid[c][valid], anomaly=out["anomaly"][c][valid],
            coef=fit.coef[c, 0] if not multi and fitted else np.zeros(n_coef),
            intercept=float(fit.intercept[c, 0]) if not multi and fitted else 0.0,
            rmse=float(fit.scale[c, 0]) if not multi and fitted else 1.0,
            threshold=o.threshold, status=str(out["status"][c]), change_day=change_day,
            signal_name=o.signal if not multi else f"anomaly score ({o.signal})",
            score=multi,
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
    parser.add_argument("--refit", action="store_true",
                        help="start a new reference: refit PCA and baselines on all "
                        "observations and rescore them (default: score only new ones)")
    parser.add_argument("--overwrite", action="store_true", help="the same as --refit")
    parser.add_argument("--no-rasters", action="store_true",
                        help="do not write the change-map COGs and mosaic (analysis/rasters/)")
    parser.add_argument("--since", metavar="DATE", type=_since_arg,
                        help="after the analysis, print the alerts detected since DATE")
    parser.add_argument("--alerts-format", choices=("table", "json", "geojson"),
                        default="table", help="how --since prints alerts (default table)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _since_arg(value: str) -> pd.Timestamp:
    from geofm.analyze.alerts import parse_since

    try:
        return parse_since(value)
    except GeofmValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm analyze`` from parsed arguments; return the exit code."""
    since = args.since
    record = analyze(
        args.root, embedding=args.embedding, baseline_start=args.baseline_start,
        monitor_start=args.monitor_start, signal=args.signal, n_components=args.n_components,
        threshold=args.threshold, consecutive=args.consecutive, min_baseline=args.min_baseline,
        tsne=args.tsne, plot_chips=[c for c in args.plot_chips.split(",") if c],
        max_plots=None if args.max_plots < 0 else args.max_plots, pca=args.pca,
        center=args.center, refit=args.refit, rasters=not args.no_rasters,
        overwrite=args.overwrite, progress=not args.no_progress)
    c = record.counts
    log.info("analyze: %s chips, %s changed, %s no change, %s insufficient data, %s alert(s)",
             c.get("chips"), c.get("changed"), c.get("no_change"), c.get("insufficient"),
             c.get("alerts", 0))
    if since is not None:
        frame = list_alerts(args.root, since=since)
        if args.alerts_format == "table":
            print(format_alerts(frame))
        elif args.alerts_format == "geojson":
            print(alerts_geojson(frame))
        else:
            features = json.loads(alerts_geojson(frame))["features"]
            print(json.dumps([{**f["properties"], "geometry": f["geometry"]}
                              for f in features]))
    return 1 if record.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geofm.steps.analyze`` entry point."""
    from geofm.cli import stage_main

    return stage_main("analyze", argv)
