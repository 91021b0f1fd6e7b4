import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from geofm.exceptions import GeofmValueError
from geofm.search.output import format_results, to_feature_collection, to_records


def _results(n=2):
    return gpd.GeoDataFrame({
        "chip_id": [f"c{i}" for i in range(n)], "scene_id": ["s"] * n,
        "date": pd.to_datetime(["2021-06-01"] * n, utc=True),
        "similarity": np.linspace(0.9, 0.8, n).astype(np.float32),
        "cloud_fraction": np.float32([0.01] * n), "change_date": [pd.NaT] * n,
        "magnitude": [np.nan] * n,
    }, geometry=[shapely.box(13 + i, 52, 13.1 + i, 52.1) for i in range(n)], crs=4326)


def test_records_are_json_ready_with_geojson_geometry():
    recs = to_records(_results())
    text = json.dumps(recs)  # would raise on numpy / Timestamp values
    back = json.loads(text)
    assert back[0]["date"] == "2021-06-01T00:00:00+00:00"
    assert back[0]["change_date"] is None and back[0]["magnitude"] is None
    assert back[0]["geometry"]["type"] == "Polygon"
    assert back[1]["geometry"]["coordinates"][0][0][0] == pytest.approx(14.1)
    assert back[0]["similarity"] == pytest.approx(0.9)


def test_feature_collection_ranks_and_properties():
    fc = to_feature_collection(_results(3))
    assert fc["type"] == "FeatureCollection"
    assert [f["properties"]["rank"] for f in fc["features"]] == [1, 2, 3]
    assert "geometry" not in fc["features"][0]["properties"]
    back = gpd.GeoDataFrame.from_features(fc["features"], crs=4326)
    assert back["similarity"].is_monotonic_decreasing


def test_table_and_empty_and_unknown_format():
    text = format_results(_results(), "table")
    assert "c0" in text and "0.9000" in text and "2021-06-01" in text
    assert "no results" in format_results(_results(0), "table")
    assert json.loads(format_results(_results(0), "json")) == []
    with pytest.raises(GeofmValueError, match="unknown format 'csv'"):
        format_results(_results(), "csv")


def test_table_shows_enough_decimals_to_tell_near_parallel_hits_apart():
    res = _results(3)
    res["similarity"] = np.array([0.9999986, 0.9999981, 0.9999975])
    table = format_results(res, "table")
    for value in ("0.9999986", "0.9999981", "0.9999975"):
        assert value in table
    assert "1.0000" not in table
    assert "0.9000" in format_results(_results(3), "table")  # ordinary values: 4 decimals
