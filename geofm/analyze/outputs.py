"""Publication of one analysis, and the writers of its outputs (docs/contracts.md, "analyze").

:func:`publish` assesses every chip of a :class:`~geofm.analyze.update.Work` (a
reference or an update), finds the alerts and writes all of ``analysis/`` together
(:class:`geofm.io.StagedFiles`): this analysis' part of ``timeseries.parquet``
(:mod:`geofm.analyze.timeseries`), ``changes.parquet`` with
``change_map.geojson``, alerts, overlaps, rasters, ``state.json``; plots follow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from geofm.analyze.alerts import alerts_frame, previous_alerts
from geofm.analyze.alerts import geojson as alerts_geojson
from geofm.analyze.assessment import Assessed, ChipRows, assess_chips, take_fit
from geofm.analyze.change import CHANGE, INSUFFICIENT, NO_CHANGE, SeasonalFit
from geofm.analyze.chipstate import ChipState
from geofm.analyze.footprints import GRID_COLUMNS, Footprints
from geofm.analyze.overlaps import duplicate_changes, find_overlaps, read_overlaps
from geofm.analyze.passes import Padded
from geofm.analyze.reference import write_state
from geofm.analyze.timeseries import Published, stage_timeseries
from geofm.analyze.update import Carried, Core, Obs, Options, Work, read_prior
from geofm.io import StagedFiles
from geofm.layout import RunRoot
from geofm.manifest import StageRecord
from geofm.tables import read_table

log = logging.getLogger(__name__)


def publish(rr: RunRoot, record: StageRecord, staged: StagedFiles, work: Work,
            state: dict[str, Any], o: Options, published: pd.DataFrame | None, *,
            scene_added: list[str], scene_removed: list[str], fingerprint: str,
            plot_chips: Sequence[str], max_plots: int | None, rasters: bool) -> None:
    """Assess every chip, find the alerts and publish all outputs of this analysis at once.

    ``state`` (``state.json`` to be) gets this analysis' entry in ``updates``;
    ``published``: the ``changes.parquet`` before it (None: the first), whose statuses
    decide which changes are new alerts. Fills ``record``'s counts.
    """
    new = work.obs.core()
    n_chips = work.chip_ids.size
    pos = np.full(n_chips, -1, dtype=np.int64)  # each chip's row in `published`
    prev: np.ndarray = np.full(n_chips, None, dtype=object)
    if published is not None and len(published):
        pos = pd.Index(published["chip_id"].astype(str)).get_indexer(work.chip_ids.astype(str))
        prev[pos >= 0] = published["status"].to_numpy(dtype=object)[pos[pos >= 0]]
    carried = work.carried
    # without the chips' states (a reference, or none saved), every chip is walked
    touched = None if carried is None else touched_chips(work, published, pos, plot_chips)
    todo = np.arange(n_chips) if touched is None else np.flatnonzero(touched)
    resume = np.zeros(todo.size, dtype=bool) if carried is None else \
        resumable(carried, new, todo, work.fit, consecutive=o.consecutive,
                  monitor_start_ns=work.reference.monitor_start_ns)
    if work.prior is not None and work.prior.lost.size:  # their states count rows that go
        resume &= ~np.isin(todo, work.prior.lost)
    if work.kind == "update" and not resume.all():
        work.load_prior(rr)  # some chips are walked from their first observation
    old = work.prior.core if work.prior is not None else Core.empty()
    n_prior = old.chip.size
    # every row's anomaly flag: the published ones stay unless their chip is walked
    anomaly = np.zeros(n_prior + new.chip.size, dtype=bool)
    if work.prior is not None:
        anomaly[:n_prior] = work.prior.published.anomaly
    rule: dict[str, Any] = dict(monitor_start_ns=work.reference.monitor_start_ns,
                                threshold=o.threshold, consecutive=o.consecutive)
    full, going = todo[~resume], todo[resume]
    walked = assess_chips(ChipRows(old, new, n_chips), full, work.fit, anomaly,
                          ChipState.empty(full.size), **rule)
    if going.size:  # the others go on from their state with their new rows only
        assert carried is not None
        on = assess_chips(ChipRows(Core.empty(), new, n_chips), going, work.fit,
                          anomaly[n_prior:], carried.state.take(going), **rule)
        walked = on if not full.size else \
            Assessed.concat([walked, on]).take(np.argsort(np.concatenate([full, going])))
    assessed = walked
    local = np.full(n_chips, -1, dtype=np.int64)  # each chip's position in `todo`
    local[todo] = np.arange(todo.size)
    # the rule's state of every chip after this analysis (the untouched keep theirs)
    keep = carried.state if carried is not None else ChipState.empty(n_chips)
    at = np.arange(n_chips)
    at[todo] = n_chips + np.arange(todo.size)
    chip_state = ChipState.concat([keep, assessed.state]).take(at)
    out, change_ns = merge_assessment(assessed.out, assessed.change_ns, touched, published,
                                      pos)
    status = out["status"]
    alert = out["change"] & (prev != CHANGE)
    now = pd.Timestamp.now(tz="UTC")
    update_no = len(state["updates"]) + 1
    fp = work.footprints
    chips = fp.frame()
    # the same chips as published: the same overlapping pairs
    overlaps = read_overlaps(rr.overlaps_path) if fp.stored else None
    fresh_overlaps = overlaps is None
    if overlaps is None:
        overlaps = find_overlaps(chips.assign(geometry=fp.geometry()))
    duplicate = duplicate_changes(work.chip_ids, out["change"], change_ns, chips,
                                  overlaps=overlaps)
    idx = np.flatnonzero(alert)  # alerts are touched changes: confirm_index >= 0
    new_alerts = alerts_frame({
        "chip_id": work.chip_ids[idx].astype(str), "tile": chips["tile"].to_numpy()[idx],
        "change_date": change_ns[idx], "magnitude": out["magnitude"][idx],
        "previous_status": prev[idx], "detected_at": [now] * idx.size,
        "update": [update_no] * idx.size, "reference_id": [work.reference.id] * idx.size,
        "confirmed_scene_id": assessed.confirm_scene[local[idx]],
        "confirmed_date": assessed.confirm_ns[local[idx]], "duplicate_of": duplicate[idx]},
        list(fp.geometry(idx)))
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
    stage_timeseries(staged, rr, work.obs, work.chip_ids, anomaly[n_prior:], o.n_components,
                     prior=None if work.kind == "reference" else
                     work.prior.published if work.prior is not None else Published.kept(rr),
                     prior_anomaly=anomaly[:n_prior])
    chip_state.save(staged.path(rr.assessment_path.name), work.chip_ids, update_no)
    if not fp.stored:
        fp.write(staged.path(rr.footprints_path.name))
    write_changes(staged.path("changes.parquet"), staged.path("change_map.geojson"),
                  fp, chips, out, work.fit, change_ns, duplicate)
    staged.path("alerts.geojson").write_text(alerts_geojson(new_alerts), encoding="utf-8")
    all_alerts.reset_index(drop=True).to_parquet(staged.path("alerts.parquet"), index=False)
    if rasters:
        from geofm.analyze.rasters import write_change_rasters

        write_change_rasters(staged, rr, chips, out, change_ns, duplicate)
    if fresh_overlaps:
        overlaps.to_parquet(staged.path("overlaps.parquet"), index=False)
    write_state(staged.path("state.json"), state)
    staged.commit()

    plot = idx if work.kind == "update" else np.flatnonzero(out["change"])
    n_plots = plot_chosen(rr, work, new, anomaly, plot, assessed, local, o, plot_chips,
                          max_plots)
    record.counts.update(embeddings=work.n_rows, observations=int(chip_state.n_seen.sum()),
                         new_observations=work.n_new, alerts=n_alerts, plots=n_plots,
                         **counts)
    record.extra["reference"] = state["reference"]
    record.extra["updates"] = state["updates"]
    log.info("analyze %s %d: %d new observation(s), %d alert(s) (%d distinct places)",
             work.kind, update_no, work.n_new, n_alerts, n_distinct)


def plot_chosen(rr: RunRoot, work: Work, new: Core, anomaly: np.ndarray, plot: np.ndarray,
                assessed: Assessed, local: np.ndarray, o: Options, plot_chips: Sequence[str],
                max_plots: int | None) -> int:
    """Draw the timelines of ``plot`` (int chip codes, assessed now) and ``plot_chips``.

    Only those chips' series are laid out: from the published rows in memory and
    ``new`` (``anomaly``: their flags, in that order), or else from the dataset just
    published. ``local``: each chip's position in ``assessed`` (-1: not assessed).
    Returns the number of chips chosen for plotting.
    """
    from geofm.analyze.plots import write_plots

    named = pd.Index(work.chip_ids.astype(str)).get_indexer(list(plot_chips))
    chips = np.unique(np.concatenate([plot, named]).astype(np.int64))
    if not chips.size or (max_plots == 0 and not plot_chips):
        return 0
    if work.prior is not None or work.kind == "reference":
        old = work.prior.core if work.prior is not None else Core.empty()
        rows = ChipRows(old, new, work.chip_ids.size)
    else:  # the rows were not read: those published now hold the new ones too
        everything = read_prior(rr, work.chip_ids, drop_scenes=set())
        rows = ChipRows(everything.core, Core.empty(), work.chip_ids.size)
        anomaly = everything.published.anomaly
    row, obs = rows.take(chips)
    grid = Padded(obs.chip, chips.size, np.ones(obs.chip.size, dtype=bool))
    at = local[chips]
    out = {k: v[at] for k, v in assessed.out.items()}
    out["anomaly"] = grid.take(anomaly[row], False)
    return write_plots(rr, work.chip_ids[chips], obs, grid, out, take_fit(work.fit, chips),
                       np.searchsorted(chips, plot), o, plot_chips, max_plots)


def resumable(carried: Carried, new: Core, todo: np.ndarray, fit: SeasonalFit, *,
              consecutive: int, monitor_start_ns: int) -> np.ndarray:
    """Which chips of ``todo`` go on from their state: bool ``[len(todo)]``.

    A chip does unless its state is of no use: it had published rows and a new one
    comes before its last (a late acquisition), or it becomes assessable (enough
    monitoring observations: its earlier anomalies start to count) or stops being.
    """
    st, n = carried.state, carried.known.size
    monitoring = np.isfinite(new.sig) & (new.ns >= monitor_start_ns)
    n_monitor = st.n_monitor + np.bincount(new.chip[monitoring], minlength=n)
    ok = fit.fitted & (n_monitor >= consecutive)
    late = np.bincount(new.chip[new.ns < st.last_ns[new.chip]], minlength=n) > 0
    return (~carried.known | (~late & (ok == st.ok)))[todo]


#: ``changes.parquet`` columns an update takes over for the chips it does not assess.
KEPT_COLUMNS = ("status", "change_date", "magnitude", "n_observations")


def touched_chips(work: Work, published: pd.DataFrame | None, pos: np.ndarray,
                  plot_chips: Sequence[str]) -> np.ndarray | None:
    """Which chips an update must assess: bool ``[C]`` (None: every chip).

    Those with new observations, those that lost published rows (a rescored or removed
    scene), those not in ``published`` (``pos`` -1: their row in it) and ``plot_chips``.
    Any other chip keeps its published rows, its reference fit and so its assessment:
    its ``changes.parquet`` values are taken over. A reference, or published changes
    without :data:`KEPT_COLUMNS`, assesses every chip.
    """
    if work.kind == "reference" or published is None or \
            not set(KEPT_COLUMNS) <= set(published):
        return None
    touched = pos < 0
    touched[work.obs.chip] = True
    if work.prior is not None:
        touched[work.prior.lost] = True
    if plot_chips:
        touched[pd.Index(work.chip_ids.astype(str)).get_indexer(list(plot_chips))] = True
    return touched


def merge_assessment(assessed: dict[str, np.ndarray], change_ns: np.ndarray,
                     touched: np.ndarray | None, published: pd.DataFrame | None,
                     pos: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-chip results ``[C]``: ``assessed`` for the touched chips, ``published`` elsewhere.

    Returns ``(out, change_ns)``: ``status``, ``change``, ``magnitude`` (float64; a
    published one is float32), ``n_observations``, ``change_index`` and
    ``confirm_index`` (-1 for untouched chips), and int64 change dates (ns, 0: none).
    """
    if touched is None:
        return assessed, change_ns
    assert published is not None
    n = touched.size
    rest = pos[~touched]
    kept_status = published["status"].to_numpy(dtype=object)[rest]
    kept_date = pd.DatetimeIndex(pd.to_datetime(published["change_date"], utc=True)).asi8[rest]
    out: dict[str, np.ndarray] = {}
    for key, dtype, kept in (
            ("status", object, kept_status),
            ("magnitude", np.float64, published["magnitude"].to_numpy(np.float64)[rest]),
            ("n_observations", np.int64,
             published["n_observations"].to_numpy(np.int64)[rest]),
            ("change_index", np.int64, -1), ("confirm_index", np.int64, -1)):
        full = np.empty(n, dtype=dtype)
        full[touched] = assessed[key]
        full[~touched] = kept
        out[key] = full
    out["change"] = out["status"] == CHANGE
    dates = np.zeros(n, dtype=np.int64)
    dates[touched] = change_ns
    dates[~touched] = np.where(kept_status == CHANGE, kept_date, 0)  # NaT elsewhere
    return out, dates


def moves(prev: np.ndarray, status: np.ndarray) -> dict[str, int]:
    """Counts of status moves ``"<before> -> <after>"`` (``none`` before the first).

    ``prev`` and ``status``: object ``[C]`` each chip's status before and now.
    """
    out: dict[str, int] = {}
    for p, s in zip(prev.tolist(), status.tolist(), strict=True):
        if p != s:
            key = f"{p or 'none'} -> {s}"
            out[key] = out.get(key, 0) + 1
    return out


def resume(rr: RunRoot, record: StageRecord, state: dict[str, Any], *, todo: list[str],
           gone: list[str]) -> bool:
    """Record the stored reference in ``record``; True if analysis/ is up to date.

    Up to date: no scene to score (``todo``) or drop (``gone``) and every output present;
    ``record`` then gets the published counts and ``skipped``.
    """
    record.extra["reference"] = state["reference"]
    # the reference's summary (baseline period, PCA) stays in every run.json entry
    record.extra["analysis"] = state["reference"].get("analysis", {
        "baseline_start": state["reference"]["baseline_start"],
        "monitor_start": state["reference"]["monitor_start"]})
    if todo or gone or not all(p.exists() for p in output_paths(rr)):
        return False
    log.info("analysis/ is up to date with these embeddings and options; skipped")
    record.counts.update(published_counts(rr))
    record.counts["skipped"] = 1
    record.extra["updates"] = state["updates"]
    return True


def output_paths(rr: RunRoot) -> list[Path]:
    """The outputs every analysis writes (all present: an up-to-date run may be skipped)."""
    return [rr.timeseries_path, rr.changes_path, rr.change_map_path, rr.pca_path,
            rr.reference_path, rr.reference_means_path, rr.analysis_state_path,
            rr.alerts_path, rr.alerts_geojson_path]


def published_counts(rr: RunRoot) -> dict[str, int]:
    """``chips``, ``changed``, ``no_change``, ``insufficient`` of the published changes."""
    status = read_table(rr.changes_path, made_by="analyze", columns=["status"]).column(
        "status").to_numpy(zero_copy_only=False)
    return {"chips": int(status.size), "changed": int((status == CHANGE).sum()),
            "no_change": int((status == NO_CHANGE).sum()),
            "insufficient": int((status == INSUFFICIENT).sum())}


def write_changes(path: Path, geojson_path: Path, fp: Footprints, chips: pd.DataFrame,
                  out: dict[str, np.ndarray], fit: SeasonalFit, change_ns: np.ndarray,
                  duplicate: np.ndarray) -> None:
    """Write ``changes.parquet`` (GeoParquet, WGS84) and ``change_map.geojson``.

    One row / feature per chip (``[C]``, the rows of ``fp`` and ``chips``): ``out`` is
    the assessment (:func:`geofm.analyze.change.assess`, arrays ``[C]``), ``fp`` the
    chips' footprints (written: its WKB, GeoJSON text and GeoParquet metadata are used
    as they are), ``chips`` their native grid (:meth:`Footprints.frame`), ``change_ns``
    int64 ``[C]`` change dates (ns since the epoch, UTC; ignored where there is no
    change), ``duplicate`` object ``[C]`` the chip each change repeats (None: distinct).
    Chips without a footprint get no feature.
    """
    assert fp.geo is not None, "footprints are written before the changes"
    change = out["change"]
    change_date = pd.to_datetime(np.where(change, change_ns, np.iinfo(np.int64).min), utc=True)
    change_date = change_date.where(change)
    ok = out["status"] != INSUFFICIENT
    rmse = np.where(ok, fit.scale[:, 0], np.nan)
    chip_ids = chips["chip_id"].to_numpy(dtype=object)
    frame = pd.DataFrame({
        "chip_id": chip_ids.astype(str),
        "n_observations": out["n_observations"].astype(np.int32),
        "n_baseline": fit.n_baseline.astype(np.int32),
        "status": out["status"].astype(str),
        "change": change.astype(bool),
        "change_date": change_date,
        "magnitude": out["magnitude"].astype(np.float32),
        "rmse": rmse.astype(np.float32),
        **{c: chips[c] for c in GRID_COLUMNS},
        "duplicate_of": pd.Series(duplicate, dtype=object),
    })
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column("geometry", fp.table.column("geometry"))
    pq.write_table(table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"geo": fp.geo}), path)

    magnitude = out["magnitude"]
    text = pa.large_string()
    day = pc.strftime(pa.array(np.where(change, change_ns, 0), pa.timestamp("ns", tz="UTC")),
                      format="%Y-%m-%d")
    dates = pc.if_else(pa.array(change), pc.binary_join_element_wise('"', day, '"', ""),
                       "null").cast(text)
    finite = np.isfinite(magnitude).tolist()
    # rounded from the float32 value changes.parquet keeps (an update takes the
    # magnitudes of chips it does not assess from there: the same digits either way)
    mags = [repr(round(m, 4)) if ok else "null" for m, ok in zip(
        magnitude.astype(np.float32).astype(np.float64).tolist(), finite, strict=True)]
    ids = fp.table.column("chip_id").cast(text)
    # printable ASCII without '"' or '\\': then json.dumps(id) is '"' + id + '"'
    plain = not pc.any(pc.match_substring_regex(ids, r'[^ -~]|["\\]')).as_py()
    dups = ["null" if d is None else json.dumps(d) for d in duplicate.tolist()]
    statuses = np.asarray(sorted({CHANGE, NO_CHANGE, INSUFFICIENT}), dtype=object)
    status_code = np.searchsorted(statuses, out["status"].astype(object))
    # one feature per chip, joined element-wise by Arrow (a Python f-string per chip
    # was most of the cost); the bytes are those of json.dumps with default separators
    pieces: list[Any] = [
        '{"type": "Feature", "geometry": ', fp.table.column("geojson").cast(text),
        ', "properties": {"chip_id": ',
        *(('"', ids, '"') if plain
          else (pa.array([json.dumps(c) for c in ids.to_pylist()], text),)),
        ', "status": "', pa.array(statuses.tolist(), text).take(pa.array(status_code)),
        '", "change": ', pa.array(["false", "true"], text).take(
            pa.array(change.astype(np.int8))),
        ', "change_date": ', dates,
        ', "intensity": ', pa.array(mags, text),
        ', "n_observations": ', pc.cast(pa.array(out["n_observations"].astype(np.int64)),
                                        text),
        ', "duplicate_of": ', pa.array(dups, text), "}}, "]
    pieces = [pa.scalar(p, text) if isinstance(p, str) else p for p in pieces]
    features = pc.binary_join_element_wise(*pieces, pa.scalar("", text))
    has_geometry = pc.is_valid(fp.table.column("geometry"))
    if not pc.all(has_geometry).as_py():
        features = pc.filter(features, has_geometry)
    if isinstance(features, pa.ChunkedArray):
        features = features.combine_chunks()
    # each feature ends with ", ": the features' character data, less the last ", ", is
    # the body of the collection (no joined copy)
    offsets = np.frombuffer(features.buffers()[1], dtype=np.int64)[
        features.offset:features.offset + len(features) + 1]
    data = features.buffers()[2]
    with open(geojson_path, "wb") as fh:  # UTF-8 bytes, not decoded into a str
        fh.write(b'{"type": "FeatureCollection", "features": [')
        if len(features):
            fh.write(memoryview(data)[int(offsets[0]):int(offsets[-1]) - 2])
        fh.write(b"]}")


def write_tsne(path: Path, obs: Obs, chip_ids: np.ndarray, *, seed: int) -> None:
    """Write ``tsne.parquet``: 2-D t-SNE of a seeded subsample of ``obs.pcs`` (skip < 5)."""
    from geofm.analyze.reduce import tsne

    if obs.chip.size < 5:
        log.warning("t-SNE skipped: only %d observations", obs.chip.size)
        return
    rows, coords = tsne(obs.pcs, seed=seed)
    table = pa.table({"chip_id": pa.array(chip_ids[obs.chip[rows]].tolist()),
                      "date": pa.array(obs.ns[rows], type=pa.timestamp("ns", tz="UTC")),
                      "tsne1": pa.array(coords[:, 0]), "tsne2": pa.array(coords[:, 1])})
    pq.write_table(table, path)

