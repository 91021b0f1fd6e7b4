"""Writers of the analysis outputs (see docs/contracts.md, "analyze").

``timeseries.parquet``, ``changes.parquet`` with ``change_map.geojson``, and
``tsne.parquet``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geofm.analyze.change import INSUFFICIENT, SeasonalFit
from geofm.analyze.update import CHIP_META_COLUMNS, Obs

#: The stage's logger, so log lines name `geofm.analyze.stage` as before the split.
log = logging.getLogger("geofm.analyze.stage")


def write_timeseries(path: Path, obs: Obs, chip_ids: np.ndarray, anomaly: np.ndarray,
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


def write_changes(path: Path, geojson_path: Path, chip_ids: np.ndarray, meta: pd.DataFrame,
                  out: dict[str, np.ndarray], fit: SeasonalFit, change_ns: np.ndarray,
                  duplicate: np.ndarray) -> None:
    """Write ``changes.parquet`` (GeoParquet, WGS84) and ``change_map.geojson``.

    One row / feature per chip of ``chip_ids`` (``[C]``): ``out`` is the assessment
    (:func:`geofm.analyze.change.assess`, arrays ``[C]``), ``meta`` the chips'
    footprints and native grid, ``change_ns`` int64 ``[C]`` change dates (ns since the
    epoch, UTC; ignored where there is no change), ``duplicate`` object ``[C]`` the chip
    each change repeats (None: distinct). Chips without a footprint get no feature.
    """
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

