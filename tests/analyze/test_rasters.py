"""Change maps as Cloud-Optimized GeoTIFFs (one per tile) and their mosaic VRT."""

import numpy as np
import pandas as pd
import pytest

from geofm.analyze.rasters import BANDS, BLOCKSIZE, NODATA, band_values, mosaic_vrt, write_cog

DAY = 86_400 * 10**9


def _ghost_header(path):
    """GDAL's COG ghost area (the structural metadata right after the TIFF header)."""
    head = path.read_bytes()[:400]
    start = head.index(b"GDAL_STRUCTURAL_METADATA_SIZE=")
    return head[start:start + 300].decode("ascii", "replace")


def test_cog_is_tiled_with_overviews_and_ifds_first(tmp_path):
    import rasterio

    h, w = 300, 260  # more chips than one block: overviews exist
    data = np.full((3, h, w), NODATA, dtype=np.float32)
    data[0] = (np.arange(h * w).reshape(h, w) % 3).astype(np.float32)
    data[1, 5, 7] = 19_000.0
    path = tmp_path / "T.tif"
    write_cog(path, data, epsg=32633, x0=300000.0, y0=5400000.0, size=640.0)
    ghost = _ghost_header(path)
    assert "LAYOUT=IFDS_BEFORE_DATA" in ghost and "BLOCK_ORDER=ROW_MAJOR" in ghost
    assert "KNOWN_INCOMPATIBLE_EDITION=NO" in ghost
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.profile["tiled"] and src.block_shapes[0] == (BLOCKSIZE, BLOCKSIZE)
        assert src.overviews(1) == [2, 4]
        assert src.crs.to_epsg() == 32633 and src.res == (640.0, 640.0)
        assert src.transform.c == 300000.0 and src.transform.f == 5400000.0
        assert src.nodata == NODATA and src.count == 3 and src.dtypes[0] == "float32"
        assert list(src.descriptions) == list(BANDS)
        np.testing.assert_array_equal(src.read(), data)


def test_band_values_codes_dates_and_nodata():
    status = np.array(["no change", "change", "insufficient data", "change"], dtype=object)
    change_ns = np.array([0, 19_000 * DAY + 5, 0, 19_010 * DAY])
    magnitude = np.array([0.5, 7.0, np.nan, 6.0])
    dup = np.array([None, None, None, "X"], dtype=object)
    v = band_values(status, change_ns, magnitude, dup)
    np.testing.assert_array_equal(v[0], [0, 1, 2, 3])           # 3: reported by another tile
    np.testing.assert_array_equal(v[1], [NODATA, 19_000, NODATA, 19_010])
    np.testing.assert_array_equal(v[2], [0.5, 7.0, NODATA, 6.0])


def test_mosaic_vrt_places_unaligned_tiles(tmp_path):
    import rasterio

    a = np.full((3, 2, 2), NODATA, np.float32)
    a[0] = [[0, 1], [0, 0]]
    b = np.full((3, 2, 2), NODATA, np.float32)
    b[0] = [[2, 2], [2, NODATA]]
    write_cog(tmp_path / "A.tif", a, epsg=32633, x0=0.0, y0=1000.0, size=100.0)
    write_cog(tmp_path / "B.tif", b, epsg=32633, x0=300.0, y0=900.0, size=100.0)
    tiles = [dict(name="A.tif", x0=0.0, y0=1000.0, size=100.0, width=2, height=2),
             dict(name="B.tif", x0=300.0, y0=900.0, size=100.0, width=2, height=2)]
    (tmp_path / "m.vrt").write_text(mosaic_vrt(tiles, epsg=32633))
    with rasterio.open(tmp_path / "m.vrt") as src:
        assert (src.width, src.height) == (5, 3) and src.crs.to_epsg() == 32633
        assert src.nodata == NODATA and src.count == 3
        got = src.read(1)
    expect = np.array([[0, 1, NODATA, NODATA, NODATA],
                       [0, 0, NODATA, 2, 2],
                       [NODATA, NODATA, NODATA, 2, NODATA]], dtype=np.float32)
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("bad", ["../x", ".hidden"])
def test_tile_names_stay_inside_the_root(tmp_path, bad):
    from geofm.exceptions import UnsafePathError
    from geofm.layout import RunRoot

    with pytest.raises(UnsafePathError):
        RunRoot.of(tmp_path).change_raster_path(bad)


def test_stage_writes_one_cog_per_tile(tmp_path):
    """The analyze stage's COG for a one-tile root holds each chip's status and date."""
    import geopandas as gpd
    import rasterio

    from geofm.analyze import analyze
    from tests.analyze.test_incremental import OPTS, STEPS, _date, write_dates

    rr = write_dates(tmp_path / "root", range(30))
    analyze(rr.path, **OPTS)
    changes = gpd.read_parquet(rr.changes_path).set_index("chip_id")
    with rasterio.open(rr.change_raster_path("33UUP")) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.shape == (1, 8) and src.crs.to_epsg() == 32633
        status, days, mag = src.read()
    for c in range(8):
        cid = f"33UUP_64_0000_{c:04d}"
        assert status[0, c] == {"change": 1, "no change": 0}[changes.loc[cid, "status"]]
        if c in STEPS:
            assert days[0, c] == _date(STEPS[c]).value // DAY
        else:
            assert days[0, c] == NODATA
        assert mag[0, c] == pytest.approx(changes.loc[cid, "magnitude"])
    assert rr.mosaic_path.is_file()
    assert pd.notna(changes["epsg"]).all()
