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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geofm.analyze.alerts import alerts_frame, format_alerts, list_alerts, previous_alerts
from geofm.analyze.alerts import geojson as alerts_geojson
from geofm.analyze.change import CHANGE, INSUFFICIENT, NO_CHANGE, assess, check_parameters
from geofm.analyze.outputs import write_changes as _write_changes  # tests patch this name
from geofm.analyze.outputs import write_timeseries, write_tsne
from geofm.analyze.overlaps import duplicate_changes, find_overlaps
from geofm.analyze.passes import Padded
from geofm.analyze.reduce import PCAModel
from geofm.analyze.reference import file_signature, read_state, write_state
from geofm.analyze.series import EMBEDDING_COLUMNS, index_embeddings
from geofm.analyze.update import (
    Core,
    Options,
    Work,
    chip_date_order,
    moves,
    published_changes,
    reference,
    update,
)
from geofm.analyze.update import baseline_window as baseline_window  # public here before
from geofm.exceptions import GeofmFileExistsError, GeofmValueError
from geofm.io import StagedFiles
from geofm.layout import RunRoot
from geofm.manifest import StageRecord, call_config, stage_entry
from geofm.tables import read_table

log = logging.getLogger(__name__)

#: ``center`` choices (see :func:`analyze`).
CENTER_MODES = ("scene", "none")


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
            when it has at least :data:`~geofm.analyze.passes.MIN_CENTER_CHIPS`) before
            PCA and cosine, so what every chip of an acquisition shares (season,
            illumination, the model's date encoding, a processing-baseline offset) is
            not mistaken for change;
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
    opts = Options(column=EMBEDDING_COLUMNS[embedding], signal=signal, signal_pc=signal_pc,
                    n_components=n_components, threshold=threshold, consecutive=consecutive,
                    min_baseline=min_baseline, alpha=alpha, center=center,
                    pca_samples=pca_samples, seed=seed, progress=progress)
    pca_model = None if pca is None else PCAModel.load(pca)
    if pca_model is not None and pca_model.n_components < n_components:
        raise GeofmValueError(f"{pca} has {pca_model.n_components} components but "
                              f"n_components={n_components}; lower --n-components.")
    ref_options = {k: config[k] for k in REFERENCE_OPTIONS}

    with StageRecord(rr, "analyze", config=call_config(**config)) as record:
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
        published = published_changes(rr)
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
            work = update(rr, record, state, todo, gone, opts, plot_chips, published)
        else:
            work = reference(rr, record, files, scene_ids, opts, pca_model, plot_chips,
                             baseline_start=baseline_start, monitor_start=monitor_start,
                             pca_path=pca)
            if tsne:
                obs, chip_ids = work.obs, work.chip_ids
                work.files["tsne.parquet"] = lambda p: write_tsne(p, obs, chip_ids, seed=seed)
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


def _publish(rr: RunRoot, record: StageRecord, staged: StagedFiles, work: Work,
             state: dict[str, Any], o: Options, published: pd.DataFrame | None, *,
             scene_added: list[str],
             scene_removed: list[str], fingerprint: str, plot_chips: Sequence[str],
             max_plots: int | None, rasters: bool) -> None:
    """Assess every chip, find the alerts and publish all outputs of this analysis at once."""
    core = work.obs.core() if work.prior is None else Core.concat(work.prior.core,
                                                                    work.obs.core())
    n_prior = core.chip.size - work.obs.chip.size
    order = chip_date_order(core.chip, core.ns)
    obs = core.take(order)  # by chip, then date: the [chip, date] grid's order
    n_chips = work.chip_ids.size
    grid = Padded(obs.chip, n_chips, np.ones(obs.chip.size, dtype=bool))
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
             "status_moves": moves(prev, status), **counts}
    if len(scene_added) <= 20:
        entry["scene_ids"] = list(scene_added)
    state["updates"] = [*state["updates"], entry]
    state["fingerprint"] = fingerprint  # of the embeddings files and options

    staged.begin()
    for name, writer in work.files.items():
        writer(staged.path(name))
    anomaly = np.empty(core.chip.size, dtype=bool)
    anomaly[order] = grid.gather(out["anomaly"])
    write_timeseries(staged.path("timeseries.parquet"), work.obs, work.chip_ids,
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

    from geofm.analyze.plots import write_plots

    plot = idx if work.kind == "update" else np.flatnonzero(out["change"])
    n_plots = write_plots(rr, work.chip_ids, obs, grid, out, work.fit, plot, o, plot_chips,
                          max_plots)
    record.counts.update(embeddings=work.n_rows, observations=int(obs.chip.size),
                         new_observations=work.n_new, alerts=n_alerts, plots=n_plots,
                         **counts)
    record.extra["reference"] = state["reference"]
    record.extra["updates"] = state["updates"]
    log.info("analyze %s %d: %d new observation(s), %d alert(s) (%d distinct places)",
             work.kind, update_no, work.n_new, n_alerts, n_distinct)


def _outputs(rr: RunRoot) -> list[Path]:
    return [rr.timeseries_path, rr.changes_path, rr.change_map_path, rr.pca_path,
            rr.reference_path, rr.reference_means_path, rr.analysis_state_path,
            rr.alerts_path, rr.alerts_geojson_path]


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


def cli_options() -> dict[str, Any]:
    """``geofm analyze``'s options: :func:`analyze`'s signature plus what it cannot say.

    Returns:
        ``{name: geofm.options.Option}``.
    """
    from geofm.options import Cli, comma_list, declare

    return declare(analyze, {
        "root": Cli(required=True),
        "embedding": Cli(choices=tuple(sorted(EMBEDDING_COLUMNS))),
        "center": Cli(choices=CENTER_MODES),
        "plot_chips": Cli(default="", convert=comma_list,
                          help="comma-separated chip ids to plot besides the changed chips"),
        "max_plots": Cli(type=int, convert=_max_plots,
                         help="plot at most N changed chips, largest first (-1: all)"),
    })


def _max_plots(value: int | None) -> int | None:
    """``--max-plots -1`` (every changed chip) -> None."""
    return None if value is None or value < 0 else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``geofm analyze`` options to ``parser`` (from :func:`cli_options`)."""
    from geofm.options import add_arguments as add_options

    add_options(parser, cli_options().values())
    parser.add_argument("--since", metavar="DATE", type=_since_arg,
                        help="after the analysis, print the alerts detected since DATE")
    parser.add_argument("--alerts-format", choices=("table", "json", "geojson"),
                        default="table", help="how --since prints alerts (default table)")


def _since_arg(value: str) -> pd.Timestamp:
    from geofm.analyze.alerts import parse_since

    try:
        return parse_since(value)
    except GeofmValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def run_cli(args: argparse.Namespace) -> int:
    """Run ``geofm analyze`` from parsed arguments; return the exit code."""
    from geofm.options import library_kwargs

    since = args.since
    record = analyze(**library_kwargs(args, cli_options().values()))
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
