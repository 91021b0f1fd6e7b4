"""geofm.serve.data: the chip layer, one chip, file resolution and search options."""

import os
import shutil

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from geofm.exceptions import GeofmFileNotFoundError, GeofmValueError
from geofm.serve.data import (
    MAX_K,
    NOT_ANALYSED,
    STATUS_NAMES,
    RunData,
    UnknownChipError,
    quad_corners,
    search_options,
)


def _meta(root):
    return pd.concat([gpd.read_parquet(p) for p in sorted((root / "meta").glob("*.parquet"))])


def test_quad_corners_keeps_four_corners_of_densified_rotated_and_odd_polygons():
    square = shapely.Polygon([(0, 0), (1, 0), (1, 1), (0, 1)])
    dense = shapely.segmentize(shapely.affinity.rotate(square, 10, origin=(0, 0)), 0.1)
    triangle = shapely.Polygon([(0, 0), (2, 0), (1, 1)])
    mid_edge = shapely.Polygon([(0.5, 0), (1, 0), (1, 1), (0, 1), (0, 0)])  # starts mid-edge
    out = quad_corners([square, dense, None, triangle, shapely.Polygon(), mid_edge])
    assert out.shape == (6, 4, 2) and out.dtype == np.float32
    assert {tuple(p) for p in out[5]} == {(0, 0), (1, 0), (1, 1), (0, 1)}
    assert {tuple(p) for p in out[0]} == {(0, 0), (1, 0), (1, 1), (0, 1)}
    want = np.asarray(shapely.affinity.rotate(square, 10, origin=(0, 0)).exterior.coords)[:4]
    assert np.allclose(sorted(map(tuple, out[1])), sorted(map(tuple, want)), atol=1e-6)
    assert np.isnan(out[2]).all() and np.isnan(out[4]).all()
    # not a quadrilateral: its minimum rotated rectangle, which covers it
    assert shapely.Polygon(out[3]).buffer(1e-6).covers(triangle)


def test_layer_lists_every_chip_with_the_analysis_status_and_footprint(served_root):
    data = RunData(served_root)
    layer = data.layer()
    meta = _meta(served_root)
    assert layer.chip_ids == sorted(meta["chip_id"].unique())
    changes = gpd.read_parquet(served_root / "analysis" / "changes.parquet").set_index("chip_id")
    for i, cid in enumerate(layer.chip_ids):
        assert STATUS_NAMES[layer.status[i]] == changes.loc[cid, "status"]
        poly = meta.loc[meta["chip_id"] == cid, "geometry"].iloc[0]
        quad = shapely.Polygon(layer.corners[i].astype(float))  # the (densified) footprint
        assert quad.symmetric_difference(poly).area < 1e-3 * poly.area
        if changes.loc[cid, "change"]:
            assert layer.change_date[i] == changes.loc[cid, "change_date"]
            assert layer.magnitude[i] == pytest.approx(changes.loc[cid, "magnitude"])
        else:
            assert pd.isna(layer.change_date[i])
    payload = layer.payload()
    assert [c["chip_id"] for c in payload["changes"]] == sorted(
        changes.index[changes["change"]])
    assert len(layer.corner_bytes()) == 32 * len(layer)
    west, south, east, north = layer.bounds()
    assert west < east and south < north and 10 < west < 20 and 40 < south < 60


def test_layer_is_read_again_when_the_analysis_appears(bare_root, served_root, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(bare_root, root)
    data = RunData(root)
    assert (data.layer().status == NOT_ANALYSED).all()
    first = data.blob("chips.json")
    assert data.layer() is data.layer()  # cached while nothing changes
    shutil.copytree(served_root / "analysis", root / "analysis")  # analyze finished
    assert (data.layer().status != NOT_ANALYSED).all()
    assert data.blob("chips.json") != first and data.summary()["analysis"]


def test_layer_without_analysis_marks_chips_not_analysed(bare_root):
    layer = RunData(bare_root).layer()
    assert (layer.status == NOT_ANALYSED).all() and pd.isna(layer.change_date).all()
    assert RunData(bare_root).chip(layer.chip_ids[0])["timeline"] is None


@pytest.mark.parametrize("layout", ["one file", "three parts"])
def test_chip_timeline_reads_every_timeseries_layout(served_root, changed_chips, tmp_path,
                                                     layout):
    """Roots analysed before parts hold one file; updates add parts: the same timeline."""
    import pyarrow.parquet as pq

    root = tmp_path / "run"
    shutil.copytree(served_root, root)
    path = root / "analysis" / "timeseries.parquet"
    assert path.is_dir()  # the analysis writes a dataset of parts
    table = pq.read_table(path)
    shutil.rmtree(path)
    if layout == "one file":
        pq.write_table(table, path)
    else:
        path.mkdir()
        cuts = [0, len(table) // 3, 2 * len(table) // 3, len(table)]
        for k in range(3):
            pq.write_table(table.slice(cuts[k], cuts[k + 1] - cuts[k]),
                           path / f"part-{k + 1:05d}.parquet")
    cid = changed_chips[0]
    timeline = RunData(root).chip(cid)["timeline"]
    n_dates = int((table.column("chip_id").to_pandas().astype(str) == cid).sum())
    assert timeline is not None and len(timeline["dates"]) == n_dates > 0
    assert timeline == RunData(served_root).chip(cid)["timeline"]


def test_chip_timeline_is_the_analysed_signal_with_its_band(served_root, changed_chips):
    data = RunData(served_root)
    cid = changed_chips[0]
    chip = data.chip(cid)
    ts = pd.read_parquet(served_root / "analysis" / "timeseries.parquet")
    ts = ts[ts["chip_id"] == cid].sort_values("date")
    tl = chip["timeline"]
    assert tl["mode"] == "signal" and tl["signal"] == "pc1" and tl["threshold"] == 3.0
    assert np.allclose(tl["value"], ts["signal"], atol=1e-5)
    assert np.allclose(tl["fit"], ts["predicted"], atol=1e-5)
    rmse = chip["details"]["rmse"]
    assert np.allclose(np.array(tl["high"]) - np.array(tl["fit"]), 3 * rmse, atol=1e-4)
    assert tl["anomaly"] == ts["anomaly"].tolist()
    assert chip["status"] == "change" and chip["change_date"] == tl["change_date"]
    # before strictly precedes the change day, after is on or after it
    assert chip["before"]["date"][:10] < chip["change_date"] <= chip["after"]["date"][:10]
    assert (served_root / chip["before"]["thumbnail"]).is_file()
    dates = [a["date"] for a in chip["acquisitions"]]
    assert dates == sorted(dates) and len(dates) == 24
    assert chip["meta"]["tile"] == cid.split("_")[0] and chip["meta"]["epsg"] > 0


def test_unknown_chip_names_it_and_suggests_close_ids(served_root, changed_chips):
    data = RunData(served_root)
    wrong = changed_chips[0][:-1] + "9"
    with pytest.raises(UnknownChipError, match=rf"{wrong}.*not a chip of the run.*did you "
                                               "mean") as info:
        data.chip(wrong)
    assert info.value.chip_id == wrong and info.value.suggestions
    with pytest.raises(UnknownChipError, match="pick a chip on the map"):
        data.chip("nothing-like-it")


def test_missing_or_empty_root_is_a_clear_error(tmp_path):
    with pytest.raises(GeofmFileNotFoundError, match=r"run root .*nope does not exist"):
        RunData(tmp_path / "nope")
    with pytest.raises(GeofmFileNotFoundError, match=r"no chip metadata.*geofm chip"):
        RunData(tmp_path)


def test_resolve_file_serves_only_pngs_inside_the_root(served_root, tmp_path, changed_chips):
    root = tmp_path / "run"
    shutil.copytree(served_root, root, symlinks=True)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG outside")
    os.symlink(secret, root / "thumbnails" / "escape.png")
    data = RunData(root)
    thumb = data.chip(changed_chips[0])["before"]["thumbnail"]
    assert data.resolve_file(thumb) == (root / thumb).resolve()
    for bad in ("../secret.png", "thumbnails/escape.png", str(root / thumb), "run.json",
                "meta/../../secret.png", "thumbnails/missing.png", "", "a\x00.png"):
        assert data.resolve_file(bad) is None, bad


def test_search_options_map_to_search_keywords():
    opts = search_options({"chip": ["A,B", "C"], "neg": ["D"], "k": ["5"],
                           "min_similarity": ["0.5"], "start": ["2021-01-01"],
                           "end": [""], "bbox": ["1,2,3,4"], "max_cloud": ["0.1"],
                           "centre": ["1"], "distinct": ["0"], "date": ["2021-06-01"]})
    assert opts == {"chip_ids": ["A", "B", "C"], "negative_chip_ids": ["D"],
                    "date": "2021-06-01", "k": 5, "min_similarity": 0.5,
                    "start": "2021-01-01", "end": None, "bbox": (1.0, 2.0, 3.0, 4.0),
                    "max_cloud": 0.1, "centre": True, "distinct": False}
    assert search_options({"chip": ["A"]})["k"] == 10


@pytest.mark.parametrize("params, message", [
    ({}, "at least one query chip"),
    ({"chip": ["A"], "k": ["0"]}, f"k=0 must be between 1 and {MAX_K}"),
    ({"chip": ["A"], "k": ["ten"]}, "k='ten' is not a whole number"),
    ({"chip": ["A"], "max_cloud": ["2"]}, r"max_cloud='2' must be in \[0.0, 1.0\]"),
    ({"chip": ["A"], "min_similarity": ["x"]}, "min_similarity='x' is not a number"),
    ({"chip": ["A"], "bbox": ["3,2,1,4"]}, "W < E"),
    ({"chip": ["A"], "centre": ["maybe"]}, "centre='maybe' must be 1 or 0"),
    ({"chip": ["A"], "k": ["1", "2"]}, "'k' was given 2 times"),
])
def test_search_options_reject_bad_values_naming_the_parameter(params, message):
    with pytest.raises(GeofmValueError, match=message):
        search_options(params)
