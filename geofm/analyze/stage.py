"""The ``analyze`` stage: PCA, cosine to baseline, change detection, alerts, maps, plots.

Reads ``embeddings/`` and ``meta/`` of a run root and writes ``analysis/`` (see
docs/contracts.md, "analyze"). This module is the orchestration: the first analysis
(and every refit) fits the **reference** (:func:`geofm.analyze.update.reference`, the
two streamed passes of :mod:`geofm.analyze.passes`); a later analysis of a grown root
is an **update** (:func:`geofm.analyze.update.update`: only the new files, scored
against the stored reference). Both end in :func:`geofm.analyze.outputs.publish`,
which assesses every chip and writes one update's files together; plots are drawn by
:mod:`geofm.analyze.plots`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from geofm.analyze import outputs
from geofm.analyze import reference as refs
from geofm.analyze.alerts import format_alerts, list_alerts
from geofm.analyze.alerts import geojson as alerts_geojson
from geofm.analyze.reduce import PCAModel
from geofm.analyze.series import EMBEDDING_COLUMNS, index_embeddings
from geofm.analyze.update import (
    CENTER_MODES,
    check_model,
    make_options,
    published_changes,
    reference,
    update,
)
from geofm.exceptions import GeofmValueError
from geofm.io import StagedFiles
from geofm.layout import RunRoot
from geofm.manifest import StageRecord, call_config, stage_entry

log = logging.getLogger(__name__)


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

    The first analysis of a root fixes its **reference**: the PCA basis, the baseline period
    and each chip's seasonal fit and residual scale (see :mod:`geofm.analyze.reference`). A
    later call on a root with new (or re-embedded) embedding files is an **update**: only
    the new observations are read, projected and scored against the reference; the status of
    each chip that got one (or lost one) is then re-assessed over its whole scored series,
    the others keep theirs (a change is confirmed after ``consecutive`` anomalies, dated at
    the first), and the chips that became ``change`` are written as alerts
    (:mod:`geofm.analyze.alerts`). Earlier observations keep their scores: the result equals
    a from-scratch analysis over all observations given the same PCA basis and baseline
    period, as long as the new observations fall after the baseline period (late
    observations inside it are scored, not fitted on) and on days not analysed before for
    that chip. Chips first seen in an update have no fit: ``insufficient data`` until a
    refit. Without new files the call is skipped.

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
            vectors of the baseline period (memory bound; exact when it has fewer).
            The baseline period is the reference every later observation is compared
            with; its files are read twice, the later ones once (earlier versions
            sampled every date). A baseline period of fewer than 2 embeddings samples
            every date.
        seed: seed of the PCA subsample and t-SNE.
        refit: start a new reference: refit the PCA (unless ``pca``) and every baseline
            on all observations, rescore everything. Past change dates and magnitudes
            may move; alerts are the chips that are ``change`` now and were not before.
        overwrite: the same as ``refit`` (the older name). Without either, options that
            shape the reference (:data:`~geofm.analyze.reference.REFERENCE_OPTIONS`) must
            equal the reference's.
        rasters: also write the change map as Cloud-Optimized GeoTIFFs, one per tile,
            and their mosaic VRT (``analysis/rasters/``, see
            :mod:`geofm.analyze.rasters`).
        progress: show progress bars.

    Outputs (``analysis/``): ``timeseries.parquet``, a Parquet dataset (a folder of parts
    read as one table; each update appends a part, see
    :mod:`geofm.analyze.timeseries`) with a row per chip and date: ``chip_id``,
    ``scene_id``, ``date``, ``pc1..pcK``, ``cosine_to_baseline``, ``signal``, ``predicted``,
    ``residual`` = scaled residual (for ``pcs``: the combined score; ``signal`` and
    ``predicted`` then show pc1), ``anomaly``, ``baseline`` = used in the fit;
    ``changes.parquet`` (GeoParquet, WGS84), ``change_map.geojson``, ``pca.npz``,
    ``reference.npz``, ``reference_means.npy``, ``state.json`` (analysed files, update
    history), ``alerts.parquet`` / ``alerts.geojson``, ``overlaps.parquet``,
    ``footprints.parquet`` (:mod:`geofm.analyze.footprints`), ``rasters/``,
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
    opts = make_options(embedding=embedding, signal=signal, n_components=n_components,
                        threshold=threshold, consecutive=consecutive, min_baseline=min_baseline,
                        alpha=alpha, center=center, pca_samples=pca_samples, seed=seed,
                        progress=progress)
    config = dict(embedding=embedding, baseline_start=baseline_start,
                  monitor_start=monitor_start, signal=signal, n_components=n_components,
                  threshold=threshold, consecutive=consecutive, min_baseline=min_baseline,
                  alpha=alpha, center=center, tsne=tsne, plot_chips=list(plot_chips),
                  max_plots=max_plots, pca=None if pca is None else str(pca),
                  pca_samples=pca_samples, seed=seed, refit=refit or overwrite)
    pca_model = None if pca is None else PCAModel.load(pca)
    if pca_model is not None and pca_model.n_components < n_components:
        raise GeofmValueError(f"{pca} has {pca_model.n_components} components but "
                              f"n_components={n_components}; lower --n-components.")
    ref_options = json.loads(json.dumps({k: config[k] for k in refs.REFERENCE_OPTIONS},
                                        default=str))

    with StageRecord(rr, "analyze", config=call_config(**config)) as record:
        staged = StagedFiles(rr.analysis_dir)
        if staged.recover():
            log.warning("analyze: completed the publication of an update that was "
                        "interrupted in %s", rr.analysis_dir)
        scene_ids = rr.scene_ids(rr.embeddings_dir)
        files = [rr.embeddings_path(s) for s in scene_ids]
        if not files:
            index_embeddings([], [])  # raises: run `geofm embed` first
        check_model(rr, scene_ids, files, record)
        signatures = {s: refs.file_signature(f) for s, f in zip(scene_ids, files, strict=True)}
        state = refs.read_state(rr)
        published = published_changes(rr)
        stats = {s: refs.stat_signature(f) for s, f in zip(scene_ids, files, strict=True)}
        scenes = refs.changed_scenes(state, ref_options, signatures, stats=stats,
                                     changes_path=rr.changes_path, refit=refit or overwrite)
        if scenes is not None:  # an update of the stored reference
            assert state is not None
            todo, gone = scenes
            if outputs.resume(rr, record, state, todo=todo, gone=gone):
                return record  # nothing changed: skipped
            work = update(rr, record, state, todo, gone, opts, plot_chips)
        else:
            work = reference(rr, record, files, scene_ids, opts, pca_model, plot_chips,
                             baseline_start=baseline_start, monitor_start=monitor_start,
                             pca_path=pca, tsne=tsne)
            state = refs.new_state(work.reference, ref_options, record.extra["analysis"], state)
            todo, gone = scene_ids, []
        state["scenes"] = signatures
        outputs.publish(rr, record, staged, work, state, opts, published, scene_added=todo,
                        scene_removed=gone, fingerprint=refs.fingerprint(signatures, config),
                        plot_chips=plot_chips, max_plots=max_plots, rasters=rasters)
    return record


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
    from geofm.cliargs import library_value

    return library_value(parse_since, value)


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
