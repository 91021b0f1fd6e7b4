import numpy as np
import pytest
import rasterio

from geofm.chip.read import read_to_grid
from geofm.exceptions import GeofmValueError
from geofm.grid import PixelGrid

X0, Y0 = 500000.0, 5600000.0


def _grid(h=16, w=16, dx=0, dy=0):
    return PixelGrid.from_origin(X0 + dx * 10, Y0 - dy * 10, res=10.0, shape=(h, w), epsg=32633)


def test_same_resolution_is_a_plain_window(tmp_path, tif):
    arr = np.arange(1, 32 * 32 + 1, dtype=np.uint16).reshape(32, 32)
    tif(tmp_path / "a.tif", arr, 10)
    with rasterio.open(tmp_path / "a.tif") as src:
        out = read_to_grid(src, _grid(8, 12, dx=5, dy=3))
    np.testing.assert_array_equal(out, arr[3:11, 5:17])


def test_bilinear_reproduces_a_linear_ramp_exactly(tmp_path, tif):
    # 20 m pixel centres at x = X0 + 10 + 20 j: value = 100 + x-offset in metres
    j = np.arange(16)
    ramp = (1000 + 10 + 20 * j).astype(np.uint16)
    tif(tmp_path / "ramp.tif", np.tile(ramp, (16, 1)), 20)
    with rasterio.open(tmp_path / "ramp.tif") as src:
        out = read_to_grid(src, _grid(16, 16, dx=4, dy=4), resampling="bilinear")
    x_off = 40 + 5 + 10 * np.arange(16)  # 10 m centres relative to X0
    np.testing.assert_array_equal(out, np.tile(1000 + x_off, (16, 1)))


def test_bilinear_edges_align_with_10m_edges(tmp_path, tif):
    # a 20 m step edge at x = X0 + 160 m must be symmetric around 10 m column 16
    coarse = np.full((16, 16), 1000, np.uint16)
    coarse[:, 8:] = 3000
    tif(tmp_path / "step.tif", coarse, 20)
    with rasterio.open(tmp_path / "step.tif") as src:
        out = read_to_grid(src, _grid(4, 32), resampling="bilinear")[0]
    assert out[15] == 1500 and out[16] == 2500  # 0.75/0.25 on both sides: no shift
    assert (out[:14] == 1000).all() and (out[18:] == 3000).all()


def test_nearest_maps_10m_pixels_into_their_20m_pixel(tmp_path, tif):
    coarse = np.arange(1, 65, dtype=np.uint8).reshape(8, 8)
    tif(tmp_path / "scl.tif", coarse, 20)
    with rasterio.open(tmp_path / "scl.tif") as src:
        out = read_to_grid(src, _grid(6, 6, dx=1, dy=1))
    expected = np.repeat(np.repeat(coarse, 2, 0), 2, 1)[1:7, 1:7]
    np.testing.assert_array_equal(out, expected)


def test_bilinear_ignores_nodata_neighbours_and_keeps_nodata_pixels(tmp_path, tif):
    coarse = np.full((8, 8), 2000, np.uint16)
    coarse[:, :2] = 0
    tif(tmp_path / "nd.tif", coarse, 20)
    with rasterio.open(tmp_path / "nd.tif") as src:
        out = read_to_grid(src, _grid(4, 16), resampling="bilinear")
    assert (out[:, :4] == 0).all()
    assert (out[:, 4:] == 2000).all()


def test_outside_the_raster_is_nodata(tmp_path, tif):
    tif(tmp_path / "a.tif", np.full((8, 8), 7, np.uint16), 10)
    with rasterio.open(tmp_path / "a.tif") as src:
        out = read_to_grid(src, _grid(4, 4, dx=6, dy=6))
    np.testing.assert_array_equal(out[:2, :2], 7)
    assert (out[2:] == 0).all() and (out[:, 2:] == 0).all()


def test_unknown_resampling(tmp_path, tif):
    tif(tmp_path / "a.tif", np.ones((8, 8), np.uint16), 10)
    with rasterio.open(tmp_path / "a.tif") as src, \
            pytest.raises(GeofmValueError, match="resampling 'cubic'"):
        read_to_grid(src, _grid(), resampling="cubic")


@pytest.mark.parametrize("res", [20, 60])
def test_bilinear_and_nearest_equal_gdal_reproject_within_one_dn(tmp_path, tif, res):
    """On a real Sentinel-2 tile grid (MGRS 33UWP: origin 499980, 5400000, EPSG:32633),
    20 m / 60 m -> 10 m: the hand-written path equals GDAL's ``reproject`` (bilinear for
    reflectance, nearest for SCL) within 1 DN wherever neither has nodata, away from the
    raster edge."""
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    x0, y0, n = 499980.0, 5400000.0, 48
    rng = np.random.default_rng(res)
    coarse = rng.integers(1, 10000, (n, n)).astype(np.uint16)
    coarse[10:13, 20:22] = 0  # nodata holes
    tif(tmp_path / "b.tif", coarse, res, x0=x0, y0=y0)
    scl = rng.integers(0, 12, (n, n)).astype(np.uint8)
    tif(tmp_path / "scl.tif", scl, res, x0=x0, y0=y0)
    size = n * res // 10 - 2 * res // 10  # stay one coarse pixel inside the edge
    grid = PixelGrid.from_origin(x0 + res, y0 - res, res=10.0, shape=(size, size), epsg=32633)
    for name, method, ours_kind in (("b.tif", Resampling.bilinear, "bilinear"),
                                    ("scl.tif", Resampling.nearest, "nearest")):
        with rasterio.open(tmp_path / name) as src:
            ours = read_to_grid(src, grid, resampling=ours_kind, nodata=0)
            gdal = np.zeros((size, size), src.dtypes[0])
            reproject(rasterio.band(src, 1), gdal, src_transform=src.transform,
                      src_crs=src.crs, src_nodata=0, dst_transform=Affine(
                          10.0, 0, grid.transform.c, 0, -10.0, grid.transform.f), dst_crs=src.crs,
                      dst_nodata=0, resampling=method)
        both = (ours != 0) & (gdal != 0)
        assert both.mean() > 0.9
        diff = np.abs(ours.astype(np.int32) - gdal.astype(np.int32))[both]
        assert diff.max() <= (1 if ours_kind == "bilinear" else 0), (name, diff.max())


def test_remote_open_failures_get_different_messages(tmp_path):
    """404, 403 (an expired signature) and a refused connection, from a local server."""
    import http.server
    import json
    import socket
    import threading

    from geofm.chip import chip

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(403 if "denied" in self.path else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    port = server.server_address[1]
    cases = {"missing": f"http://127.0.0.1:{port}/gone.tif",
             "denied": f"http://127.0.0.1:{port}/denied.tif?se=2020-01-01&sig=old",
             "refused": f"http://127.0.0.1:{free}/x.tif"}
    items = tmp_path / "items"
    items.mkdir()
    for name, url in cases.items():
        (items / f"{name}.json").write_text(json.dumps({
            "type": "Feature", "id": name, "collection": "sentinel-2-l2a",
            "geometry": {"type": "Point", "coordinates": [15, 50]},
            "properties": {"datetime": "2021-06-01T10:00:00Z", "proj:epsg": 32633},
            "assets": {k: {"href": url} for k in ("blue", "green", "red", "nir")}}))
    try:
        import rasterio

        with rasterio.Env(GDAL_HTTP_MAX_RETRY=0):
            rec = chip(items, tmp_path / "root", cloud_mask=False, progress=False)
    finally:
        server.shutdown()
    reasons = {f.unit: f.reason for f in rec.failures}
    assert "does not exist (HTTP 404" in reasons["missing"]
    assert "access denied (HTTP 403/401): an expired" in reasons["denied"]
    assert "cannot reach the server" in reasons["refused"]
