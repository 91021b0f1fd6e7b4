"""change_map.geojson as written by geofm.analyze.outputs.write_changes."""

import json

import numpy as np
import pandas as pd
import shapely

from geofm.analyze.change import SeasonalFit
from geofm.analyze.footprints import Footprints
from geofm.analyze.outputs import write_changes


def test_change_map_features_are_json_of_each_chip(tmp_path):
    ids = np.array(['a"b', "é-1", "plain", "nogeom"], dtype=object)
    n = ids.size
    meta = pd.DataFrame({
        "chip_id": ids.astype(str),
        "geometry": [shapely.box(0, 0, 1, 1), shapely.box(1.5, 0, 2.001, 1),
                     shapely.box(2, 0, 3, 1), None],
        "tile": ["T1"] * n, "epsg": pd.array([32633] * n, dtype="Int32"),
        "minx": np.zeros(n), "miny": np.zeros(n), "maxx": np.ones(n), "maxy": np.ones(n)})
    out = {"status": np.array(["change", "no change", "insufficient data", "change"],
                              dtype=object),
           "change": np.array([True, False, False, True]),
           "magnitude": np.array([3.14159265, 0.5, np.nan, 12.0]),
           "n_observations": np.array([10, 11, 2, 9])}
    fit = SeasonalFit(coef=np.zeros((n, 1, 9)), intercept=np.zeros((n, 1)),
                      scale=np.ones((n, 1)), fitted=np.array([True, True, False, True]),
                      n_baseline=np.array([6, 6, 1, 6]))
    change_ns = np.array([pd.Timestamp("2022-03-04").value, 0, 0,
                          pd.Timestamp("2022-05-06").value])
    duplicate = np.array([None, None, None, 'a"b'], dtype=object)
    geojson = tmp_path / "change_map.geojson"
    fp = Footprints.build(ids, meta["geometry"].to_numpy(), meta)
    fp.write(tmp_path / "footprints.parquet")
    write_changes(tmp_path / "changes.parquet", geojson, fp, fp.frame(), out, fit, change_ns,
                  duplicate)
    text = geojson.read_text(encoding="utf-8")
    expected = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": json.loads(shapely.to_geojson(meta["geometry"][i])),
         "properties": {"chip_id": ids[i], "status": out["status"][i],
                        "change": bool(out["change"][i]), "change_date": date,
                        "intensity": mag, "n_observations": int(out["n_observations"][i]),
                        "duplicate_of": None}}
        for i, date, mag in ((0, "2022-03-04", 3.1416), (1, None, 0.5), (2, None, None))]}
    assert json.loads(text) == expected  # the chip without a footprint has no feature
    # json.dumps' separators outside the geometry
    assert '"chip_id": "a\\"b", "status": "change", "change": true' in text
    assert '"chip_id": "\\u00e9-1"' in text
