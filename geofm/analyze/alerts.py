"""Alerts: the chips whose change was confirmed by an analysis update.

Every ``geofm analyze`` compares each chip's new status with the status it published
last time (``analysis/changes.parquet`` before the update; none before the first
analysis). A chip that is now ``change`` and was not is an alert, with the update's
time (``detected_at``), the change date (first anomalous observation of the run), its
magnitude and the acquisition that confirmed it (the ``consecutive``-th anomaly of the
run). ``analysis/alerts.parquet`` (GeoParquet, WGS84) keeps the alerts of every update;
``analysis/alerts.geojson`` holds those of the latest update only. Other status moves
(``insufficient data`` -> ``no change``) are counted in the update history, not alerted.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from geofm.layout import RunRoot
from geofm.tables import read_table

#: Columns of ``analysis/alerts.parquet`` (besides ``geometry``), in order.
ALERT_COLUMNS = ("chip_id", "tile", "change_date", "magnitude", "previous_status",
                 "detected_at", "update", "reference_id", "confirmed_scene_id",
                 "confirmed_date", "duplicate_of")


def alerts_frame(rows: dict[str, Any], geometry: list[Any]) -> Any:
    """A GeoDataFrame of alerts from column arrays (see :data:`ALERT_COLUMNS`)."""
    import geopandas as gpd

    frame = pd.DataFrame({k: rows[k] for k in ALERT_COLUMNS})
    for col in ("change_date", "detected_at", "confirmed_date"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    frame["magnitude"] = frame["magnitude"].astype(np.float32)
    frame["update"] = frame["update"].astype(np.int32)
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geometry, crs="EPSG:4326"))


def empty_alerts() -> Any:
    """An alerts GeoDataFrame with no rows (the schema of :func:`alerts_frame`)."""
    rows: dict[str, Any] = {k: [] for k in ALERT_COLUMNS}
    return alerts_frame(rows, [])


def previous_alerts(root: RunRoot) -> Any:
    """Every alert published so far (empty before the first analysis)."""
    import geopandas as gpd

    if not root.alerts_path.is_file():
        return empty_alerts()
    read_table(root.alerts_path, made_by="analyze", columns=["chip_id"])  # TableError if bad
    return gpd.read_parquet(root.alerts_path)


def geojson(frame: Any) -> str:
    """The alerts as a GeoJSON FeatureCollection (dates as ISO strings)."""
    import shapely

    features = []
    geoms = shapely.to_geojson(np.asarray(frame.geometry.values, dtype=object))
    for i, row in enumerate(frame.itertuples(index=False)):
        props = {}
        for k in ALERT_COLUMNS:
            v = getattr(row, k)
            if isinstance(v, pd.Timestamp):
                v = v.isoformat() if k != "change_date" else str(v.date())
            elif v is None or (isinstance(v, float) and not np.isfinite(v)):
                v = None
            elif isinstance(v, np.generic):
                v = v.item()
            props[k] = v
        geom = None if geoms[i] is None else json.loads(geoms[i])
        features.append({"type": "Feature", "geometry": geom, "properties": props})
    return json.dumps({"type": "FeatureCollection", "features": features})


def list_alerts(root: str | Any, *, since: str | pd.Timestamp | None = None,
                include_duplicates: bool = False) -> Any:
    """Alerts detected at or after ``since`` (all when None), oldest first.

    Args:
        root: run root.
        since: a date or time (UTC if naive), compared with ``detected_at``.
        include_duplicates: also list alerts of chips that re-report a place another
            tile's chip already reported (``duplicate_of`` set; see
            :mod:`geofm.analyze.overlaps`).

    Returns:
        GeoDataFrame with :data:`ALERT_COLUMNS` and ``geometry`` (WGS84).

    Raises:
        GeofmValueError: ``since`` is not a date.
    """
    frame = previous_alerts(RunRoot.of(root))
    if since is not None:
        frame = frame[frame["detected_at"] >= parse_since(since)]
    if not include_duplicates and len(frame):
        frame = frame[frame["duplicate_of"].isna()]
    return frame.sort_values(["detected_at", "chip_id"], kind="stable").reset_index(drop=True)


def parse_since(since: str | pd.Timestamp) -> pd.Timestamp:
    """``since`` as a UTC timestamp (naive values are UTC).

    Raises:
        GeofmValueError: it is not a date.
    """
    from geofm.dates import parse_utc

    return parse_utc(since, name="since", hint="use YYYY-MM-DD or an ISO time.")


def format_alerts(frame: Any) -> str:
    """A plain-text table of alerts, one line each."""
    if not len(frame):
        return "no alerts"
    lines = [f"{'detected_at':<25} {'chip_id':<28} {'change_date':<11} {'magnitude':>9}  "
             "confirmed_by"]
    for row in frame.itertuples(index=False):
        lines.append(f"{row.detected_at.isoformat():<25} {row.chip_id:<28} "
                     f"{str(row.change_date.date()):<11} {row.magnitude:>9.2f}  "
                     f"{row.confirmed_scene_id} ({row.confirmed_date.date()})")
    return "\n".join(lines)
