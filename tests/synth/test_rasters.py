import numpy as np
import rasterio

from geofm.synth.rasters import write_cog


def test_cog_roundtrip_and_stable_bytes(tmp_path):
    a = np.arange(96 * 96, dtype=np.uint16).reshape(96, 96)
    transform = [20.0, 0.0, 300000.0, 0.0, -20.0, 5400000.0]
    p1 = write_cog(tmp_path / "a.tif", a, transform)
    p2 = write_cog(tmp_path / "sub" / "b.tif", a, transform)
    assert p1.read_bytes() == p2.read_bytes()
    with rasterio.open(p1) as ds:
        np.testing.assert_array_equal(ds.read(1), a)
        assert ds.crs.to_epsg() == 32633 and ds.res == (20.0, 20.0) and ds.nodata == 0
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.compression.name.lower() == "deflate"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.tif", "sub"]  # no temp files
