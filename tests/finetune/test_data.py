from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from geofm.exceptions import GeofmFileNotFoundError
from geofm.finetune.data import align_labels
from geofm.grid import PixelGrid
from geofm.splits import split_locations

X0, Y1, RES = 500_000.0, 5_600_000.0, 10.0  # UTM 33N, an arbitrary corner


def from_origin(x, y, dx, dy):
    return Affine(dx, 0.0, x, 0.0, -dy, y)


def _label_raster(path, codes, *, transform, crs, nodata=None):
    with rasterio.open(path, "w", driver="GTiff", height=codes.shape[0], width=codes.shape[1],
                       count=1, dtype="uint8", crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(codes.astype("uint8"), 1)
    return path


def _blocks(h, w, block, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, 7, size=(h // block + 1, w // block + 1))
    return np.kron(coarse, np.ones((block, block), dtype=int))[:h, :w]


def test_chip_grid_from_pixel_centres():
    x = X0 + RES / 2 + RES * np.arange(4)
    y = Y1 - RES / 2 - RES * np.arange(3)
    grid = PixelGrid.from_coords(x, y, epsg=32633)
    assert (grid.height, grid.width, grid.epsg) == (3, 4, 32633)
    assert tuple(grid.transform)[:6] == (RES, 0.0, X0, 0.0, -RES, Y1)


def test_align_same_crs_is_an_exact_window(tmp_path):
    codes = _blocks(40, 50, 3)
    path = _label_raster(tmp_path / "l.tif", codes, transform=from_origin(X0, Y1, RES, RES),
                         crs="EPSG:32633")
    # a chip 8 x 6 px whose corner is 5 rows down and 7 columns right of the raster's
    grid = PixelGrid(32633, from_origin(X0 + 7 * RES, Y1 - 5 * RES, RES, RES), (8, 6))
    np.testing.assert_array_equal(align_labels([path], grid), codes[5:13, 7:13])


def test_align_outside_the_raster_and_nodata_give_zero(tmp_path):
    codes = np.full((10, 10), 9)
    codes[:, :5] = 255
    path = _label_raster(tmp_path / "l.tif", codes, transform=from_origin(X0, Y1, RES, RES),
                         crs="EPSG:32633", nodata=255)
    grid = PixelGrid(32633, from_origin(X0 + 3 * RES, Y1, RES, RES), (4, 12))  # runs off the east
    out = align_labels([path], grid)
    assert (out[:, :2] == 0).all() and (out[:, 2:7] == 9).all() and (out[:, 7:] == 0).all()


def test_align_from_another_crs_uses_nearest(tmp_path):
    """Labels in EPSG:4326 land on the UTM chip grid at the right places (nearest)."""
    from pyproj import Transformer

    to_wgs = Transformer.from_crs(32633, 4326, always_xy=True)
    lon0, lat1 = to_wgs.transform(X0 - 200, Y1 + 200)
    deg = 0.0002  # ~14 x 22 m cells, classes in blocks of 6 cells
    codes = _blocks(60, 60, 6, seed=1)
    transform = from_origin(lon0, lat1, deg, deg)
    path = _label_raster(tmp_path / "wgs.tif", codes, transform=transform, crs="EPSG:4326")
    grid = PixelGrid(32633, from_origin(X0, Y1, RES, RES), (32, 32))
    out = align_labels([path], grid)
    # expected: look up each chip pixel centre in the WGS84 raster
    cols, rows = np.meshgrid(np.arange(32), np.arange(32))
    lon, lat = to_wgs.transform(X0 + (cols + 0.5) * RES, Y1 - (rows + 0.5) * RES)
    r = np.floor((lat1 - lat) / deg).astype(int)
    c = np.floor((lon - lon0) / deg).astype(int)
    expected = codes[r, c]
    assert len(np.unique(expected)) > 2
    assert (out == expected).mean() > 0.97  # only pixels on a cell edge may differ


def test_first_raster_with_a_label_wins(tmp_path):
    a = np.zeros((10, 10), dtype=int)
    a[:5] = 1
    b = np.full((10, 10), 2)
    t = from_origin(X0, Y1, RES, RES)
    pa = _label_raster(tmp_path / "a.tif", a, transform=t, crs="EPSG:32633")
    pb = _label_raster(tmp_path / "b.tif", b, transform=t, crs="EPSG:32633")
    out = align_labels([pa, pb], PixelGrid(32633, t, (10, 10)))
    assert (out[:5] == 1).all() and (out[5:] == 2).all()


def test_missing_label_file(tmp_path):
    from geofm.finetune.data import load_labelled_chips

    with pytest.raises(GeofmFileNotFoundError, match="label raster .*missing.tif does not exist"):
        load_labelled_chips(tmp_path, [tmp_path / "missing.tif"])


def _no_crs_copy(src_path, path):
    with rasterio.open(src_path) as src:
        codes, transform = src.read(1), src.transform
    return _label_raster(path, codes, transform=transform, crs=None)


@pytest.mark.parametrize("make, message", [
    (lambda src, p: p.write_text("this is not a GeoTIFF"), "cannot be read as a raster"),
    (lambda src, p: p.write_bytes(src.read_bytes()[:200]), "cannot be read as a raster"),
    (_no_crs_copy, "has no CRS, so it cannot be placed on the chips"),
])
def test_cli_bad_label_raster_exits_1_naming_the_file(chipped_root, label_raster, tmp_path,
                                                      capsys, make, message):
    from geofm.cli import main

    bad = tmp_path / "labels.tif"
    make(label_raster, bad)
    code = main(["finetune", "--root", str(chipped_root), "--labels", str(bad), "--out",
                 str(tmp_path / "out"), "--model", "tiny", "--epochs", "1", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"label raster {bad} {message}" in err
    assert "--labels" in err


def test_align_labels_refuses_a_raster_without_crs(tmp_path):
    from geofm.exceptions import RasterError

    path = _label_raster(tmp_path / "l.tif", np.ones((8, 8)), transform=from_origin(
        X0, Y1, RES, RES), crs=None)
    grid = PixelGrid(epsg=32633, transform=from_origin(X0, Y1, RES, RES), shape=(8, 8))
    with pytest.raises(RasterError, match="has no CRS"):
        align_labels([path], grid)


def test_the_split_draws_only_labelled_locations():
    """Chips without a labelled pixel (the unlabelled half of a checkerboard) are never
    train or validation locations, so a few labelled places are not diluted."""
    import pandas as pd

    from geofm.finetune.data import LabelledChips

    locations = [f"loc{i}" for i in range(8)]
    labels = np.zeros((8, 4, 4), np.uint8)
    labels[::2, 1:3, 1:3] = 2  # locations 0, 2, 4, 6 labelled
    data = LabelledChips(root=Path("."), samples=pd.DataFrame({"loc": range(8)}),
                         locations=locations, grids=[], labels=labels, bands=("red",),
                         n_classes=2)
    assert data.labelled_locations() == ["loc0", "loc2", "loc4", "loc6"]
    train, val = split_locations(data.labelled_locations(), val_fraction=0.25, seed=0)
    assert len(val) == 1 and len(train) == 3
    assert set(train + val) == {"loc0", "loc2", "loc4", "loc6"}
