"""Format search results: a text table, a JSON list, or a GeoJSON FeatureCollection.

JSON (the public contract): a list of ``{chip_id, scene_id, date, similarity,
geometry}`` objects (GeoJSON geometry, WGS84 lon/lat), best first, plus
``cloud_fraction``, ``thumbnail_path`` and the change columns. GeoJSON: the same rows
as Features whose properties carry everything except the geometry (opens in QGIS).
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from geofm.exceptions import GeofmValueError

if TYPE_CHECKING:
    import geopandas as gpd

FORMATS = ("table", "json", "geojson")
_TABLE_COLUMNS = ("chip_id", "scene_id", "date", "similarity", "cloud_fraction",
                  "change", "thumbnail_path")


def _plain(value: Any) -> Any:
    """JSON-ready scalar: ISO dates, None for NaN/NaT, Python numbers."""
    import pandas as pd

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return _plain(value.item())
    return value


def to_records(results: gpd.GeoDataFrame) -> list[dict[str, Any]]:
    """Result rows as JSON-ready dicts with a GeoJSON ``geometry``, best first."""
    from shapely.geometry import mapping

    records = []
    for row in results.to_dict("records"):
        geom = row.pop("geometry")
        rec = {k: _plain(v) for k, v in row.items()}
        rec["geometry"] = None if geom is None else mapping(geom)
        records.append(rec)
    return records


def to_feature_collection(results: gpd.GeoDataFrame) -> dict[str, Any]:
    """Result rows as a GeoJSON FeatureCollection (properties include ``similarity``)."""
    features = []
    for rank, rec in enumerate(to_records(results), start=1):
        geom = rec.pop("geometry")
        features.append({"type": "Feature", "geometry": geom,
                         "properties": {"rank": rank, **rec}})
    return {"type": "FeatureCollection", "features": features}


def format_results(results: gpd.GeoDataFrame, fmt: str = "table") -> str:
    """Render results as ``table``, ``json`` or ``geojson`` text."""
    if fmt == "json":
        return json.dumps(to_records(results), indent=2)
    if fmt == "geojson":
        return json.dumps(to_feature_collection(results), indent=2)
    if fmt != "table":
        raise GeofmValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if results.empty:
        return "no results (try a lower --min-similarity or wider filters)"
    cols = [c for c in _TABLE_COLUMNS if c in results.columns]
    frame = results[cols].copy()
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    frame.index = range(1, len(frame) + 1)
    # Nearly parallel vectors (random or collapsed encoders) all round to 1.0000: show
    # as many decimals as it takes for the hits to differ (at most 8).
    if "similarity" in frame:  # report rows (geofm.generative.report) have none
        sims = frame["similarity"].to_numpy()
        decimals = 4
        while decimals < 8 and len(set(np.round(sims, decimals))) < len(set(sims)):
            decimals += 1
        frame["similarity"] = [f"{x:.{decimals}f}" for x in sims]
    return frame.to_string(float_format=lambda x: f"{x:.4f}")


def emit(text: str, output: str | os.PathLike[str] | None = None) -> None:
    """Write formatted results to the file ``output`` (atomically), or to standard output."""
    import sys

    from geofm.io import write_text_atomic

    if output:
        write_text_atomic(output, text + "\n")
    else:
        sys.stdout.write(text + "\n")
