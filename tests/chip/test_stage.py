"""Stage tests on hand-made scenes (fast, exact) and acceptance tests on `geofm synth` data."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from geofm.chip import chip
from geofm.chipfile import open_chip, read_chip_array
from geofm.exceptions import GeofmValueError
from geofm.layout import RunRoot
from geofm.manifest import read_manifest


def _meta(root):
    import geopandas as gpd

    run = RunRoot.of(root)
    return pd.concat([gpd.read_parquet(run.meta_path(s)) for s in run.scene_ids(run.meta_dir)],
                     ignore_index=True)


def test_harmonisation_removes_the_offset_and_keeps_nodata(make_scene, tmp_path):
    blue = np.full((64, 64), 1500, np.uint16)
    blue[0, 0] = 0        # nodata stays 0
    blue[0, 1] = 1000     # would become 0: clipped to 1
    make_scene("OLD", values={"blue": blue - np.where(blue > 1000, 1000, 0).astype(np.uint16)},
               baseline="03.01")
    make_scene("NEW", date="2022-03-01T10:00:00Z", values={"blue": blue}, baseline="04.00")
    rec = chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, max_nodata=1.0,
               progress=False)
    old, _ = read_chip_array(tmp_path / "root/chips/OLD/33UUP_32_0000_0000.nc", ["blue"])
    new, _ = read_chip_array(tmp_path / "root/chips/NEW/33UUP_32_0000_0000.nc", ["blue"])
    assert new[0, 5, 5] == old[0, 5, 5] == 500
    assert new[0, 0, 0] == 0 and new[0, 0, 1] == 1
    assert "subtracted 1000" in rec.extra["harmonisation"]["NEW"]
    assert rec.extra["harmonisation"]["OLD"].startswith("none")
    ds = open_chip(tmp_path / "root/chips/NEW/33UUP_32_0000_0000.nc")
    assert "subtracted 1000" in ds.attrs["harmonisation"]


def test_cloud_fraction_from_scl_and_validity(make_scene, tmp_path):
    scl = np.full((32, 32), 4, np.uint8)       # 20 m: 2 x 2 chips of 16 SCL pixels
    scl[:16, :16] = 9                          # chip (0,0) fully cloudy
    scl[:4, 16:] = 3                           # chip (0,1): 4/16 rows of shadow
    scl[16:, :16][0, 0] = 0                    # chip (1,0): one 20 m nodata pixel
    make_scene(values={"scl": scl})
    chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, max_cloud=0.3,
         progress=False)
    meta = _meta(tmp_path / "root").set_index("chip_id")
    assert meta.loc["33UUP_32_0000_0000", "cloud_fraction"] == 1.0
    assert meta.loc["33UUP_32_0000_0001", "cloud_fraction"] == 0.25
    assert meta.loc["33UUP_32_0001_0000", "nodata_fraction"] == pytest.approx(4 / 1024)
    assert meta["valid"].to_dict() == {"33UUP_32_0000_0000": False, "33UUP_32_0000_0001": True,
                                       "33UUP_32_0001_0000": False, "33UUP_32_0001_0001": True}
    assert pd.isna(meta.loc["33UUP_32_0000_0000", "chip_path"])
    assert (tmp_path / "root" / meta.loc["33UUP_32_0000_0001", "chip_path"]).exists()
    assert (tmp_path / "root" / meta.loc["33UUP_32_0000_0001", "thumbnail_path"]).exists()


def test_partial_chips_skipped_and_grid_origin(make_scene, tmp_path):
    make_scene(size=80)
    rec = chip(tmp_path / "data/items", tmp_path / "a", chip_size=32, progress=False)
    assert rec.counts["chips"] == 4  # 80 px: two full chips per axis
    # origin 16 px north-west of the raster: first full cell is (1, 1) at raster px 16
    rec = chip(tmp_path / "data/items", tmp_path / "b", chip_size=32, progress=False,
               grid_origin=(500000.0 - 160, 5600000.0 + 160))
    meta = _meta(tmp_path / "b")
    assert sorted(meta.chip_id) == ["33UUP_32_0001_0001", "33UUP_32_0001_0002",
                                    "33UUP_32_0002_0001", "33UUP_32_0002_0002"]
    assert meta.set_index("chip_id").loc["33UUP_32_0001_0001", "minx"] == 500000.0 + 160


def test_aoi_in_another_crs(make_scene, tmp_path):
    make_scene()
    # a small box inside chip (1, 1), given in EPSG:32633 and declared as such
    aoi = {"type": "FeatureCollection",
           "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
           "features": [{"type": "Feature", "properties": {}, "geometry": {
               "type": "Polygon", "coordinates": [[[500400, 5599400], [500500, 5599400],
                                                   [500500, 5599500], [500400, 5599400]]]}}]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, aoi=tmp_path / "aoi.geojson",
         progress=False)
    assert list(_meta(tmp_path / "root").chip_id) == ["33UUP_32_0001_0001"]


def test_no_scl_needs_no_cloud_mask(make_scene, tmp_path):
    item = make_scene()
    data = json.loads(item.read_text())
    del data["assets"]["scl"]
    item.write_text(json.dumps(data))
    rec = chip(item, tmp_path / "r1", chip_size=32, progress=False)
    assert rec.failures and "no asset 'scl'" in rec.failures[0].reason
    assert "--no-cloud-mask" in rec.failures[0].reason
    rec = chip(item, tmp_path / "r2", chip_size=32, cloud_mask=False, progress=False)
    assert not rec.failures and rec.counts["valid_chips"] == 4
    assert _meta(tmp_path / "r2").cloud_fraction.isna().all()


def test_raster_without_crs_fails_the_scene(make_scene, tmp_path, tif):
    item = make_scene("A")
    make_scene("B", seed=1)
    data = json.loads(item.read_text())
    del data["properties"]["proj:epsg"]
    item.write_text(json.dumps(data))
    for key, res in (("blue", 10), ("green", 10), ("red", 10), ("nir", 10)):
        tif(tmp_path / f"data/assets/A/{key}.tif", np.ones((64, 64), np.uint16), res, crs=None)
    rec = chip(item.parent, tmp_path / "root", chip_size=32, progress=False)
    assert [f.unit for f in rec.failures] == ["A"]
    assert "has no CRS" in rec.failures[0].reason
    assert RunRoot.of(tmp_path / "root").meta_path("B").exists()


def test_bad_arguments_fail_before_work(make_scene, tmp_path):
    item = make_scene()
    with pytest.raises(GeofmValueError, match="max_cloud is a fraction"):
        chip(item, tmp_path / "r", max_cloud=5, progress=False)
    with pytest.raises(KeyError, match="unknown band 'bogus'"):
        chip(item, tmp_path / "r", bands="red,bogus", progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_parallel_workers_match_inline(make_scene, tmp_path):
    for i in range(3):
        make_scene(f"S{i}", date=f"2021-0{i + 1}-01T10:00:00Z", seed=i)
    chip(tmp_path / "data/items", tmp_path / "one", chip_size=32, bands="red,rededge1",
         progress=False)
    rec = chip(tmp_path / "data/items", tmp_path / "two", chip_size=32, bands="red,rededge1",
               workers=2, progress=False)
    assert rec.counts["valid_chips"] == 12
    a, b = _meta(tmp_path / "one"), _meta(tmp_path / "two")
    pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
    x1, _ = read_chip_array(tmp_path / "one" / a.chip_path[5], ["red", "rededge1"])
    x2, _ = read_chip_array(tmp_path / "two" / b.chip_path[5], ["red", "rededge1"])
    np.testing.assert_array_equal(x1, x2)


def test_a_failed_chip_write_fails_its_scene_only(make_scene, tmp_path, monkeypatch):
    import geofm.chip.scene as scene_mod

    make_scene("A", seed=1)
    make_scene("B", date="2021-06-02T10:00:00Z", seed=2)
    real = scene_mod.write_chip

    def disk_full(path, *args, **kwargs):
        if "/A/" in str(path) and path.name.endswith("0001_0001.nc"):
            raise OSError(28, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(scene_mod, "write_chip", disk_full)  # runs on the writer thread
    rec = chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, progress=False)
    assert [f.unit for f in rec.failures] == ["A"]
    assert "No space left on device" in rec.failures[0].reason
    assert not RunRoot.of(tmp_path / "root").meta_path("A").exists()  # A is not complete
    assert rec.counts["valid_chips"] == 4 + 3  # B's 4, and the 3 of A written before it


def test_default_workers_stay_inline_for_a_short_run(make_scene, tmp_path, monkeypatch):
    import geofm.chip.stage as stage_mod

    monkeypatch.setattr(stage_mod, "default_workers", lambda: 4)
    for i in range(3):
        make_scene(f"S{i}", date=f"2021-0{i + 1}-01T10:00:00Z", seed=i)
    rec = chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, progress=False)
    assert rec.extra["workers_used"] == 1 and rec.counts["valid_chips"] == 12
    assert read_manifest(tmp_path / "root")["stages"]["chip"]["workers_used"] == 1


def test_default_workers_count_usable_cpus(monkeypatch):
    import geofm.chip.stage as stage_mod

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(3)), raising=False)
    assert stage_mod.default_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert stage_mod.default_workers() == stage_mod.MAX_WORKERS == 8


@pytest.mark.parametrize("workers", [0, "2", 1.5, True])
def test_bad_workers_are_refused_before_any_work(tmp_path, workers):
    with pytest.raises(GeofmValueError, match="workers must be a whole number >= 1"):
        chip(tmp_path / "none", tmp_path / "root", workers=workers, progress=False)
    assert not (tmp_path / "root").exists()


@pytest.mark.slow
def test_default_workers_go_parallel_for_a_long_run(make_scene, tmp_path, monkeypatch):
    import geofm.chip.stage as stage_mod

    monkeypatch.setattr(stage_mod, "default_workers", lambda: 2)
    monkeypatch.setattr(stage_mod, "PARALLEL_AFTER_S", -1.0)  # any run is "long"
    for i in range(3):
        make_scene(f"S{i}", date=f"2021-0{i + 1}-01T10:00:00Z", seed=i)
    rec = chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, progress=False)
    assert rec.extra["workers_used"] == 2 and rec.counts["valid_chips"] == 12
    assert not rec.failures


def _snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if name not in ("run.json", ".geofm.lock"):  # bookkeeping, not outputs
                out[p] = (os.stat(p).st_mtime_ns, open(p, "rb").read())
    return out


def test_rerun_does_no_work_and_overwrite_redoes(make_scene, tmp_path):
    make_scene()
    chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, progress=False)
    before = _snapshot(tmp_path / "root")
    rec = chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, progress=False)
    assert rec.counts["skipped_scenes"] == 1 and rec.counts["chips"] == 0
    assert _snapshot(tmp_path / "root") == before
    rec = chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, overwrite=True,
               progress=False)
    assert rec.counts["chips"] == 4
    meta = RunRoot.of(tmp_path / "root").meta_path("S2A_33UUP_20210601_0_L2A")
    assert os.stat(meta).st_mtime_ns != before[str(meta)][0]


def test_thumbnail_stretch_is_fixed_for_the_run(make_scene, tmp_path):
    from PIL import Image

    red = np.full((64, 64), 1500, np.uint16)
    make_scene(values={"red": red, "green": red, "blue": red})
    chip(tmp_path / "data/items", tmp_path / "root", chip_size=32, progress=False)
    png = np.asarray(Image.open(tmp_path / "root/thumbnails/S2A_33UUP_20210601_0_L2A/"
                                "33UUP_32_0000_0000.png"))
    assert png.shape == (32, 32, 3) and (png == 127).all()  # 1500 of 0..3000
    stage = read_manifest(tmp_path / "root")["stages"]["chip"]
    assert stage["thumbnail_stretch"] == [0.0, 3000.0]


# --- acceptance on `geofm synth` data -------------------------------------------------

def _truth(synth_dir):
    return json.loads((synth_dir / "truth.json").read_text())


def test_ids_footprints_equal_truth_cells_in_every_acquisition(synth_dir, chipped_root):
    truth = _truth(synth_dir)
    meta = _meta(chipped_root)
    assert meta.scene_id.nunique() == len(truth["items"])
    cells = {f"{c['tile']}_64_{c['row']:04d}_{c['col']:04d}": (c["minx"], c["miny"], c["maxx"],
                                                                c["maxy"])
             for c in truth["cells"]}
    for _, scene in meta.groupby("scene_id"):
        assert set(scene.chip_id) == set(cells)
    for row in meta.itertuples():
        assert (row.minx, row.miny, row.maxx, row.maxy) == cells[row.chip_id]
        assert row.epsg == truth["epsg"]
        assert row.geometry.contains(row.geometry.centroid)  # WGS84 polygon
        assert 0 < row.geometry.centroid.x < 30 and 30 < row.geometry.centroid.y < 70


def test_cloud_fraction_agrees_with_scl(synth_dir, chipped_root):
    import rasterio

    meta = _meta(chipped_root)
    assert (meta.cloud_fraction == 1.0).any()
    for row in meta.itertuples():
        with rasterio.open(synth_dir / "assets" / row.scene_id / "scl.tif") as src:
            r0, c0 = src.index(row.minx + 1, row.maxy - 1)
            scl = src.read(1)[r0:r0 + 32, c0:c0 + 32]  # 64 px of 10 m = 32 px of 20 m
        assert row.cloud_fraction == pytest.approx(np.isin(scl, [3, 8, 9, 10]).mean())
        assert row.nodata_fraction >= (scl == 0).mean() - 1e-6
        assert row.valid == (row.cloud_fraction <= 0.05 and row.nodata_fraction == 0)
        assert (chipped_root / f"chips/{row.scene_id}/{row.chip_id}.nc").exists() == row.valid
    assert not meta[meta.cloud_fraction == 1.0].valid.any()


def test_harmonisation_keeps_unchanging_surfaces_level(synth_dir, chipped_root):
    truth = _truth(synth_dir)
    switch = pd.Timestamp(truth["baseline_switch"], tz="UTC")
    meta = _meta(chipped_root)
    # surfaces without a seasonal cycle in the synthetic spectra (cropland/pasture have one)
    stable = [c for c in truth["cells"] if c["class"] in ("water", "urban", "forest")
              and c["event"] is None]
    checked = 0
    for cell in stable:
        cid = f"{cell['tile']}_64_{cell['row']:04d}_{cell['col']:04d}"
        rows = meta[(meta.chip_id == cid) & meta.valid]
        level = {}
        for side, part in (("before", rows[rows.date < switch]),
                           ("after", rows[rows.date >= switch])):
            values = [np.median(read_chip_array(chipped_root / p, ["red"])[0])
                      for p in part.chip_path]
            if values:
                level[side] = np.median(values)
        if len(level) == 2:
            checked += 1
            assert abs(level["after"] - level["before"]) < 250  # the offset is 1000
    assert checked
    after = [i for i in truth["items"] if i["boa_offset"]]
    assert after and all(i["processing_baseline"] >= "04.00" for i in after)


def test_20m_bands_are_aligned_with_the_10m_grid(synth_dir, tmp_path):
    import rasterio
    from scipy.ndimage import map_coordinates

    item = sorted((synth_dir / "items").glob("*.json"))[0]
    chip(item, tmp_path / "root", chip_size=64, bands="red,rededge1", max_cloud=1.0,
         max_nodata=1.0, progress=False)
    meta = _meta(tmp_path / "root")
    ds = open_chip(tmp_path / "root" / meta.chip_path[3])
    with rasterio.open(synth_dir / "assets" / meta.scene_id[0] / "rededge1.tif") as src:
        coarse = src.read(1).astype(np.float64)
        t = src.transform
    # independent bilinear: fractional 20 m indices of the 10 m pixel centres
    yy, xx = np.meshgrid(ds.y.values, ds.x.values, indexing="ij")
    rows = (t.f - yy) / -t.e - 0.5
    cols = (xx - t.c) / t.a - 0.5
    expected = map_coordinates(coarse, [rows, cols], order=1, mode="nearest")
    got = ds.rededge1.values[0].astype(np.float64)
    inner = (slice(1, -1), slice(1, -1))
    assert np.abs(got[inner] - expected[inner]).max() <= 1.0
    # the same with a 10 m shift would not match
    shifted = map_coordinates(coarse, [rows, cols + 0.5], order=1, mode="nearest")
    assert np.abs(got[inner] - shifted[inner]).max() > 5


def test_netcdf_round_trip_with_rioxarray(synth_dir, chipped_root):
    import rasterio
    import rioxarray  # noqa: F401
    import xarray as xr
    from rasterio.windows import from_bounds

    meta = _meta(chipped_root)
    row = meta[meta.valid & (meta.date < pd.Timestamp("2022-01-25", tz="UTC"))].iloc[0]
    ds = xr.open_dataset(chipped_root / row.chip_path, engine="h5netcdf", decode_coords="all",
                         mask_and_scale=False)
    assert ds.rio.crs.to_epsg() == 32633
    assert tuple(ds.rio.transform())[:6] == (10.0, 0.0, row.minx, 0.0, -10.0, row.maxy)
    assert ds.red.dtype == np.uint16 and ds.red.attrs["scale_factor"] == pytest.approx(1e-4)
    assert ds.attrs["chip_id"] == row.chip_id and ds.attrs["scene_id"] == row.scene_id
    assert pd.Timestamp(ds.time.values[0], tz="UTC") == row.date
    with rasterio.open(synth_dir / "assets" / row.scene_id / "red.tif") as src:
        window = from_bounds(row.minx, row.miny, row.maxx, row.maxy, src.transform)
        np.testing.assert_array_equal(ds.red.values[0], src.read(1, window=window))


def test_incremental_run_keeps_earlier_ids_and_rerun_changes_nothing(synth_dir, tmp_path):
    items = sorted((synth_dir / "items").glob("*.json"),
                   key=lambda p: json.loads(p.read_text())["properties"]["datetime"])
    early = tmp_path / "early"
    early.mkdir()
    for p in items[:5]:
        shutil.copy(p, early / p.name)
    root = tmp_path / "root"
    # hrefs are relative to items/: copy next to the synth folder layout
    (tmp_path / "assets").symlink_to(synth_dir / "assets")
    chip(early, root, chip_size=64, progress=False)
    first = _meta(root)
    before = _snapshot(root)
    rec = chip(synth_dir / "items", root, chip_size=64, progress=False)
    assert rec.counts["skipped_scenes"] == 5
    assert all(_snapshot(root)[p] == v for p, v in before.items())  # old files untouched
    later = _meta(root)
    assert later.scene_id.nunique() == len(items)
    assert set(first.chip_id) == set(later.chip_id)
    assert rec.extra["coverage"]["per_year"]["2021"]["chips"] == 4
    snap = _snapshot(root)
    rec = chip(synth_dir / "items", root, chip_size=64, progress=False)
    assert rec.counts["chips"] == 0 and _snapshot(root) == snap


def test_two_tiles_never_share_an_id(tmp_path):
    from geofm.synth import synthesize

    out = synthesize(tmp_path / "s2", seed=1, size=64, n_dates=2, n_events=0, n_tiles=2,
                     chip_size=32)
    chip(out / "items", tmp_path / "root", chip_size=32, progress=False)
    meta = _meta(tmp_path / "root")
    tiles = meta.groupby("tile").chip_id.apply(set)
    assert len(tiles) == 2
    (a, b) = tiles.values
    assert a and b and not a & b
    assert all(cid.startswith(tile) for tile, ids in tiles.items() for cid in ids)


def test_aoi_and_partial_chips_on_synth(synth_dir, tmp_path):
    from geofm.chip.grid import footprints_wgs84

    truth = _truth(synth_dir)
    cell = truth["cells"][-1]
    (poly,) = footprints_wgs84(np.array([[cell["minx"] + 100, cell["miny"] + 100,
                                          cell["maxx"] - 100, cell["maxy"] - 100]]),
                               truth["epsg"])
    aoi = {"type": "Feature", "properties": {},
           "geometry": {"type": "Polygon", "coordinates": [list(poly.exterior.coords)]}}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    item = sorted((synth_dir / "items").glob("*.json"))[0]
    chip(item, tmp_path / "a", chip_size=64, aoi=tmp_path / "aoi.geojson", progress=False)
    assert list(_meta(tmp_path / "a").chip_id) == [
        f"{cell['tile']}_64_{cell['row']:04d}_{cell['col']:04d}"]
    chip(item, tmp_path / "b", chip_size=48, progress=False)  # 128 px: 2 full chips per axis
    meta = _meta(tmp_path / "b")
    assert sorted(zip(meta.row, meta.col, strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert meta.maxx.max() - meta.minx.min() == 960.0


def test_corrupt_cog_fails_its_scene_only(synth_dir, tmp_path, capsys):
    import geofm.cli

    data = tmp_path / "s2"
    shutil.copytree(synth_dir, data)
    items = sorted((data / "items").glob("*.json"))
    bad = items[2].stem
    red = data / "assets" / bad / "red.tif"
    red.write_bytes(red.read_bytes()[: red.stat().st_size // 2])
    root = tmp_path / "root"
    code = geofm.cli.main(["chip", "--items", str(data / "items"), "--out", str(root),
                           "--chip-size", "64", "--no-progress", "--workers", "2"])
    assert code == 1
    out = capsys.readouterr().out
    assert f"FAILED {bad}" in out and "'red'" in out
    stage = read_manifest(root)["stages"]["chip"]
    assert stage["status"] == "failed"
    (failure,) = stage["failures"]
    assert failure["unit"] == bad and failure["asset"] == "red"
    assert failure["path"] == str(red) and "corrupt" in failure["reason"]
    assert RunRoot.of(root).scene_ids(RunRoot.of(root).meta_dir) == sorted(
        p.stem for p in items if p.stem != bad)
    assert "valid acquisitions per chip" in out


def test_missing_file_and_aoi_outside(make_scene, tmp_path):
    item = make_scene("A")
    (tmp_path / "data/assets/A/red.tif").unlink()
    rec = chip(item, tmp_path / "r1", chip_size=32, progress=False)
    (failure,) = rec.failures
    assert failure.asset == "red" and failure.path.endswith("assets/A/red.tif")
    assert "item 'A'" in failure.reason and "does not exist" in failure.reason
    item = make_scene("B")
    aoi = {"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    rec = chip(item, tmp_path / "r2", chip_size=32, aoi=tmp_path / "aoi.geojson",
               progress=False)
    assert not rec.failures and rec.counts["chips"] == 0
    assert RunRoot.of(tmp_path / "r2").meta_path("B").exists()  # scene done, no chips


def test_misaligned_grid_origin_fails_the_scene_with_its_name(make_scene, tmp_path):
    item = make_scene("A")
    rec = chip(item, tmp_path / "r", chip_size=32, grid_origin=(500005.0, 5600000.0),
               progress=False)
    (failure,) = rec.failures
    assert failure.unit == "A" and failure.reason.startswith("item 'A': grid origin")
    assert "whole number of pixels" in failure.reason


def test_aoi_missing_every_item_or_unreadable_fails_before_work(synth_dir, tmp_path):
    from geofm.exceptions import GeofmValueError

    aoi = {"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[0, 0], [0.1, 0], [0.1, 0.1], [0, 0]]]}}
    (tmp_path / "far.geojson").write_text(json.dumps(aoi))
    with pytest.raises(GeofmValueError, match=r"far.geojson .* intersects none of the 14 "
                                              r"items .*check the AOI's CRS"):
        chip(synth_dir / "items", tmp_path / "r", chip_size=64, aoi=tmp_path / "far.geojson",
             progress=False)
    assert not (tmp_path / "r" / "meta").exists()
    (tmp_path / "bad.geojson").write_text("{}")
    with pytest.raises(GeofmValueError, match=r"cannot read AOI .*bad.geojson"):
        chip(synth_dir / "items", tmp_path / "r", chip_size=64, aoi=tmp_path / "bad.geojson",
             progress=False)


# --- untrusted items: ids stay file names inside the root; bad items are errors -------------

def _tree(top, skip):
    """Every path under ``top`` except those under ``skip`` (relative, sorted)."""
    return sorted(str(p.relative_to(top)) for p in top.rglob("*")
                  if p != skip and skip not in p.parents)


def _good_and_bad(make_scene, tmp_path, edit):
    """Items folder with scene GOOD and a copy of it, edited by ``edit(dict)``, in bad.json."""
    good = make_scene("GOOD")
    item = json.loads(good.read_text())
    item["id"] = "BAD"
    edit(item)
    bad = good.parent / "bad.json"
    bad.write_text(json.dumps(item))
    return good.parent, bad


def _chip_main(items, root):
    import geofm.cli

    return geofm.cli.main(["chip", "--items", str(items), "--out", str(root),
                           "--chip-size", "32", "--no-progress"])


@pytest.mark.parametrize("make_id", [lambda tmp: "../../escape", lambda tmp: f"{tmp}/abs/id",
                                     lambda tmp: "a/../../b", lambda tmp: "../escape/x"])
def test_traversal_item_ids_write_nothing_outside_the_root(make_scene, tmp_path, capsys,
                                                           make_id):
    bad_id = make_id(tmp_path)
    items, bad = _good_and_bad(make_scene, tmp_path, lambda d: d.update(id=bad_id))
    root = tmp_path / "work" / "root"
    root.parent.mkdir()
    before = _tree(tmp_path, root)
    assert _chip_main(items, root) == 1
    assert _tree(tmp_path, root) == before  # not one file created outside the root
    out = capsys.readouterr().out
    assert f"FAILED {bad_id} ({bad}): item {bad_id!r} ({bad}): its id " in out
    assert "rename the item" in out
    (failure,) = read_manifest(root)["stages"]["chip"]["failures"]
    assert failure["unit"] == bad_id and failure["path"] == str(bad)
    run = RunRoot.of(root)
    assert run.scene_ids(run.meta_dir) == ["GOOD"]  # the other scene went on


@pytest.mark.parametrize("code", ["MGRS-../../../X", "MGRS-/tmp/x", "../x", "MGRS-a b"])
def test_traversal_grid_codes_fail_their_item(make_scene, tmp_path, capsys, code):
    items, bad = _good_and_bad(make_scene, tmp_path,
                               lambda d: d["properties"].update({"grid:code": code}))
    root = tmp_path / "work" / "root"
    root.parent.mkdir()
    before = _tree(tmp_path, root)
    assert _chip_main(items, root) == 1
    assert _tree(tmp_path, root) == before
    assert not list(root.rglob("*X*"))
    assert sorted(p.parent.name for p in root.rglob("*.nc")) == ["GOOD"] * 4
    out = capsys.readouterr().out
    assert f"FAILED BAD ({bad}): item 'BAD'" in out and "properties.grid:code" in out
    assert "MGRS-33UUP" in out  # the fix


def test_runroot_refuses_an_unchecked_scene_even_past_the_item_checks(make_scene, tmp_path):
    from dataclasses import replace

    from geofm.chip.items import load_scenes
    from geofm.chip.scene import ChipOptions, chip_scene

    (scene,) = load_scenes(make_scene("A"))
    opts = ChipOptions(root=str(tmp_path / "root"), chip_size=32,
                       bands=("blue", "green", "red", "nir"), aoi=None, max_cloud=0.05,
                       max_nodata=0.0, grid_origin=None, cloud_mask=True,
                       stretch=(0.0, 3000.0))
    before = _tree(tmp_path, tmp_path / "root")
    escaped = chip_scene(replace(scene, scene_id="../../escape"), opts)
    assert "item id '../../escape' has a '.' or '..' path segment" in str(escaped.error)
    tiled = chip_scene(replace(scene, tile="../../../X"), opts)
    assert "chip id '../../../X_32_0000_0000' holds '/'" in str(tiled.error)
    assert _tree(tmp_path, tmp_path / "root") == before


def _set(path, value):
    """An ``edit`` that sets (``...``: deletes) the field at ``path`` of the item dict."""
    def edit(item):
        where = item
        for key in path[:-1]:
            where = where[key]
        if value is ...:
            del where[path[-1]]
        else:
            where[path[-1]] = value
    return edit


#: (edit of the bad item, text the message must hold: the value and the fix)
BAD_ITEMS = {
    "datetime": (_set(("properties", "datetime"), "yesterday"),
                 ["properties.datetime 'yesterday' is not an ISO 8601", "2021-06-01T10:00:00Z"]),
    "assets-list": (_set(("assets",), [{"href": "x.tif"}]),
                    ["'assets' is a list, not an object"]),
    "epsg": (_set(("properties", "proj:epsg"), "abc"),
             ["proj:epsg 'abc' is not an EPSG code", "32633"]),
    "bbox": (_set(("bbox",), ["w", "s", "e", "n"]),
             ["bbox ['w', 's', 'e', 'n'] is not 4 (or 6) numbers", "[west, south, east, north]"]),
    "geometry-null": (_set(("geometry",), None),
                      ["geometry is null", "WGS84 footprint as a GeoJSON geometry"]),
    "properties-missing": (_set(("properties",), ...),
                           ["'properties' is null, not an object"]),
    "properties-list": (_set(("properties",), ["datetime"]),
                        ["'properties' is a list, not an object"]),
    "asset-without-href": (_set(("assets", "red", "href"), ...),
                           ["asset 'red' has no href", "path or URL of its file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_a_bad_item_fails_its_scene_and_the_rest_goes_on(make_scene, tmp_path, capsys, case):
    edit, texts = BAD_ITEMS[case]
    items, bad = _good_and_bad(make_scene, tmp_path, edit)
    root = tmp_path / "root"
    assert _chip_main(items, root) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("FAILED"))
    assert line.startswith(f"FAILED BAD ({bad}): item 'BAD' ({bad}): ")
    for text in texts:
        assert text in line
    assert "1 failed" in out
    stage = read_manifest(root)["stages"]["chip"]
    assert stage["status"] == "failed" and stage["counts"]["failed_scenes"] == 1
    assert [f["unit"] for f in stage["failures"]] == ["BAD"]
    assert RunRoot.of(root).meta_path("GOOD").exists()


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_a_bad_only_item_is_an_error_before_any_work(make_scene, tmp_path, geofm_log, case):
    edit, texts = BAD_ITEMS[case]
    _, bad = _good_and_bad(make_scene, tmp_path, edit)
    root = tmp_path / "root"
    assert _chip_main(bad, root) == 1
    assert f"item 'BAD' ({bad})" in geofm_log.text
    for text in texts:
        assert text in geofm_log.text
    assert "Traceback" not in geofm_log.text
    assert not root.exists()  # nothing was started


@pytest.mark.parametrize(("content", "text"), [
    (b"\xff\xfe{\x00", "is not UTF-8 text"), (b"{not json", "is not valid JSON"),
    (b"[1, 2", "is not valid JSON"), (b"42", "is neither a STAC Item")])
def test_unreadable_items_files(make_scene, tmp_path, capsys, geofm_log, content, text):
    good = make_scene("GOOD")
    bad = good.parent / "bad.json"
    bad.write_bytes(content)
    assert _chip_main(good.parent, tmp_path / "r1") == 1  # in a folder: that file fails
    out = capsys.readouterr().out
    assert f"FAILED {bad}" in out and text in out
    assert RunRoot.of(tmp_path / "r1").meta_path("GOOD").exists()
    assert _chip_main(bad, tmp_path / "r2") == 1  # alone: the input is unusable
    assert f"{bad} {text}" in geofm_log.text and not (tmp_path / "r2").exists()


def test_an_items_file_holding_a_json_list_is_chipped(make_scene, tmp_path, capsys):
    a, b = make_scene("A"), make_scene("B", seed=1)
    listing = a.parent / "list.json"  # relative hrefs resolve against it
    listing.write_text(json.dumps([json.loads(a.read_text()), json.loads(b.read_text())]))
    assert _chip_main(listing, tmp_path / "root") == 0, capsys.readouterr().out
    run = RunRoot.of(tmp_path / "root")
    assert run.scene_ids(run.meta_dir) == ["A", "B"]


def test_a_scene_id_with_a_slash_is_embedded_and_indexed(make_scene, tmp_path):
    import warnings

    import geopandas as gpd

    from geofm.embed import embed
    from geofm.exceptions import GeofmWarning
    from geofm.index import build_index

    ids = {"S2A_one": "S2A/2021", "S2B_two": "S2B 2021:06%"}
    for n, (name, item_id) in enumerate(ids.items()):
        path = make_scene(name, date=f"2021-06-0{n + 1}T10:00:00Z", seed=n)
        path.write_text(path.read_text().replace(f'"id": "{name}"', f'"id": "{item_id}"'))
    root = tmp_path / "root"
    rec = chip(tmp_path / "data/items", root, chip_size=32, progress=False)
    assert not rec.failures and rec.counts["valid_chips"] == 8
    run = RunRoot.of(root)
    assert sorted(p.name for p in run.meta_dir.iterdir()) == ["S2A%2F2021.parquet",
                                                              "S2B%202021%3A06%25.parquet"]
    assert sorted(run.scene_ids(run.meta_dir)) == sorted(ids.values())
    meta = _meta(root)
    assert set(meta.scene_id) == set(ids.values())
    assert all((root / p).is_file() for p in meta.chip_path)
    assert meta.set_index("scene_id").chip_path.loc["S2A/2021"].iloc[0].startswith(
        "chips/S2A%2F2021/")
    with warnings.catch_warnings():
        # only the random-weights warning of the tiny encoder is expected here
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=GeofmWarning)
        erec = embed(root, model="tiny", batch_size=8, progress=False)
    assert not erec.failures and erec.counts["chips"] == 8
    assert sorted(run.scene_ids(run.embeddings_dir)) == sorted(ids.values())
    irec = build_index(root)
    assert not irec.failures
    table = gpd.read_parquet(run.consolidated_path)
    assert sorted(table.groupby("scene_id").size().items()) == [("S2A/2021", 4),
                                                                ("S2B 2021:06%", 4)]
