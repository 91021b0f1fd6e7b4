"""Several tiles as one region: overlapping chips of two tiles report one change once."""

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geofm.analyze import analyze
from geofm.analyze.alerts import list_alerts
from geofm.analyze.overlaps import duplicate_changes, find_overlaps, overlap_groups
from geofm.layout import RunRoot

DIM = 8
N_DATES = 28
START = pd.Timestamp("2021-01-03", tz="UTC")
STEP_AT = 21  # monitoring starts at date 19


@pytest.fixture(scope="module")
def two_tiles(tmp_path_factory):
    """``geofm synth --n-tiles 2`` truth: two tiles overlapping by one chip column."""
    from geofm.synth import synthesize

    out = synthesize(tmp_path_factory.mktemp("synth2") / "s2", seed=1, size=256, n_dates=6,
                     start="2021-06-01", cadence_days=30, n_events=6, n_tiles=2, chip_size=64)
    return out, json.loads((out / "truth.json").read_text())


def _root_from_truth(root, truth):
    """Meta + embeddings for every truth cell of both tiles; planted events step at STEP_AT.

    The same ground seen by both tiles gets the same vectors (one canvas), so the
    overlapping chips of a planted event both change.
    """
    import shapely
    from pyproj import Transformer

    from geofm.chip.grid import chip_id

    rr = RunRoot.of(root)
    to_wgs = Transformer.from_crs(truth["epsg"], 4326, always_xy=True)
    cells = truth["cells"]
    events = {(e["tile"], e["row"], e["col"]) for e in truth["events"]}
    ground = sorted({(c["minx"], c["maxy"]) for c in cells})
    rng = np.random.default_rng(3)
    base = {g: rng.normal(size=DIM) * 0.3 + 3.0 for g in ground}
    for t in range(N_DATES):
        date = START + pd.Timedelta(days=20 * t)
        noise = {g: 0.02 * np.random.default_rng([t, i]).normal(size=DIM)
                 for i, g in enumerate(ground)}
        for tile in truth["tiles"]:
            scene = f"S2A_{tile}_{date:%Y%m%d}_0_L2A"
            rows, meta = [], []
            for c in (c for c in cells if c["tile"] == tile):
                g = (c["minx"], c["maxy"])
                v = base[g] + noise[g]
                if (tile, c["row"], c["col"]) in events and t >= STEP_AT:
                    v = v + 5.0 * np.eye(DIM)[0]
                cid = chip_id(tile, truth["chip_size"], c["row"], c["col"])
                poly = shapely.transform(shapely.box(c["minx"], c["miny"], c["maxx"], c["maxy"]),
                                         lambda xy: np.column_stack(
                                             to_wgs.transform(xy[:, 0], xy[:, 1])))
                rows.append((cid, v.astype(np.float32)))
                meta.append(dict(chip_id=cid, scene_id=scene, tile=tile, date=date,
                                 row=c["row"], col=c["col"], epsg=truth["epsg"],
                                 minx=c["minx"], miny=c["miny"], maxx=c["maxx"], maxy=c["maxy"],
                                 valid=True, geometry=poly))
            emb = np.stack([v for _, v in rows])
            pq.write_table(pa.table({
                "chip_id": [r[0] for r in rows], "scene_id": [scene] * len(rows),
                "date": pa.array([date.value] * len(rows), type=pa.timestamp("ns", tz="UTC")),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
                "embedding_mean": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM)}),
                _mk(rr.embeddings_path(scene)))
            gpd.GeoDataFrame(meta, geometry="geometry", crs="EPSG:4326").to_parquet(
                _mk(rr.meta_path(scene)))
    return rr


def _mk(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_synth_two_tiles_overlap_by_one_chip_column(two_tiles):
    _, truth = two_tiles
    cells = pd.DataFrame(truth["cells"])
    assert set(cells["tile"]) == {"33UUP", "33UVP"}
    import shapely

    cells["geometry"] = [shapely.box(r.minx, r.miny, r.maxx, r.maxy) for r in cells.itertuples()]
    cells["chip_id"] = [f"{r.tile}_{r.row}_{r.col}" for r in cells.itertuples()]
    pairs = find_overlaps(cells)
    # UUP column 3 is UVP column 0 (the same ground), 4 rows, both directions
    assert len(pairs) == 8 and (pairs["share"] == 1.0).all()
    assert set(pairs[pairs.tile == "33UUP"]["chip_id"]) == {f"33UUP_{r}_3" for r in range(4)}
    assert overlap_groups(pairs)["33UVP_2_0"] == "33UUP_2_3"


def test_one_alert_per_planted_event_not_two(two_tiles, tmp_path):
    _, truth = two_tiles
    unique = {(e["tile"], e["row"], e["col"]) for e in truth["events"]
              if not (e["tile"] == "33UVP" and e["col"] == 0)}
    twice = [e for e in truth["events"] if e["tile"] == "33UVP"]
    assert len(twice) >= 2 and len(unique) == 6  # seed 1 plants 3 events on the overlap

    rr = _root_from_truth(tmp_path / "root", truth)
    record = analyze(rr.path, n_components=2, max_plots=0, progress=False)
    assert record.counts["changed"] == len(unique) + len(twice)
    alerts = gpd.read_parquet(rr.alerts_path)
    assert alerts["duplicate_of"].notna().sum() == len(twice)
    dup = alerts.dropna(subset=["duplicate_of"])
    assert set(dup["chip_id"]) == {f"33UVP_64_{e['row']:04d}_0000" for e in twice}
    assert set(dup["duplicate_of"]) == {f"33UUP_64_{e['row']:04d}_0003" for e in twice}
    distinct = list_alerts(rr.path)
    assert len(distinct) == len(unique)  # one alert per planted event
    assert len(list_alerts(rr.path, include_duplicates=True)) == len(unique) + len(twice)
    manifest = json.loads(rr.manifest_path.read_text())
    assert manifest["stages"]["analyze"]["updates"][0]["distinct_alerts"] == len(unique)

    overlaps = pq.read_table(rr.overlaps_path).to_pandas()
    assert len(overlaps) == 8
    changes = gpd.read_parquet(rr.changes_path).set_index("chip_id")
    assert changes.loc["33UVP_64_0002_0000", "duplicate_of"] == "33UUP_64_0002_0003"
    # the change map says "reported by the other tile" (code 3) for the duplicate
    import rasterio

    with rasterio.open(rr.change_raster_path("33UVP")) as src:
        status = src.read(1)
    assert status[2, 0] == 3
    with rasterio.open(rr.mosaic_path) as src:
        mosaic = src.read(1)
        assert mosaic.shape == (4, 7) and src.crs.to_epsg() == truth["epsg"]
    # every planted event shows as one "change" pixel in the mosaic: 6 pixels, not 9
    assert int((mosaic == 1).sum()) == len(unique)


def test_duplicate_changes_needs_close_dates():
    import shapely

    meta = pd.DataFrame({"chip_id": ["A_1", "B_1"], "tile": ["A", "B"],
                         "geometry": [shapely.box(0, 0, 1, 1), shapely.box(0.5, 0, 1.5, 1)]})
    ids = meta["chip_id"].to_numpy(dtype=object)
    day = 86_400 * 10**9
    same = duplicate_changes(ids, np.array([True, True]), np.array([0, 5 * day]), meta)
    assert same.tolist() == [None, "A_1"]
    apart = duplicate_changes(ids, np.array([True, True]), np.array([0, 90 * day]), meta)
    assert apart.tolist() == [None, None]


def test_chipped_two_tile_synth_footprints_overlap_once_per_place(two_tiles, tmp_path):
    """The real chip stage on `geofm synth --n-tiles 2`: its footprints pair up across tiles."""
    import shapely

    from geofm.chip import chip

    synth, _ = two_tiles
    root = tmp_path / "root"
    chip(synth / "items", root, chip_size=64, progress=False)
    meta = pd.concat(pd.read_parquet(p) for p in sorted((root / "meta").glob("*.parquet")))
    meta = meta.drop_duplicates("chip_id").sort_values("chip_id").reset_index(drop=True)
    meta["geometry"] = list(shapely.from_wkb(meta["geometry"].to_numpy()))
    pairs = find_overlaps(meta)
    assert len(pairs) == 8 and (pairs["share"] > 0.99).all()
    uup = pairs[pairs.tile == "33UUP"]
    assert sorted(uup["chip_id"]) == [f"33UUP_64_{r:04d}_0003" for r in range(4)]
    assert sorted(uup["other_chip_id"]) == [f"33UVP_64_{r:04d}_0000" for r in range(4)]
