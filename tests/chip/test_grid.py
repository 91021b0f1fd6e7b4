import numpy as np
import pytest
from pyproj import Transformer

from geofm.chip.grid import ChipGrid, chip_id, footprints_wgs84
from geofm.exceptions import GeofmValueError

T = (10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0)


def test_chip_id_format():
    assert chip_id("33UUP", 256, 3, 12) == "33UUP_256_0003_0012"


def test_cells_skip_partial_edges():
    grid = ChipGrid(origin=(500000.0, 5600000.0), res=10.0, chip_size=32)
    cells = grid.cells(T, (100, 70))  # 3 full rows, 2 full columns
    assert [(c.row, c.col) for c in cells] == [(r, c) for r in range(3) for c in range(2)]
    last = cells[-1]
    assert (last.row_off, last.col_off) == (64, 32)
    assert last.bounds == (500320.0, 5600000.0 - 960, 500640.0, 5600000.0 - 640)


def test_cells_from_explicit_origin_keep_absolute_indices():
    # origin 2 chips west and 1 chip north of the raster corner
    grid = ChipGrid(origin=(500000.0 - 640, 5600000.0 + 320), res=10.0, chip_size=32)
    cells = grid.cells(T, (64, 64))
    assert [(c.row, c.col) for c in cells] == [(1, 2), (1, 3), (2, 2), (2, 3)]
    assert (cells[0].row_off, cells[0].col_off) == (0, 0)
    assert cells[0].bounds[0] == 500000.0 and cells[0].bounds[3] == 5600000.0


def test_origin_off_the_pixel_grid_is_an_error():
    grid = ChipGrid(origin=(500005.0, 5600000.0), res=10.0, chip_size=32)
    with pytest.raises(GeofmValueError, match="not on a pixel corner"):
        grid.cells(T, (64, 64))


def test_other_pixel_size_is_an_error():
    grid = ChipGrid(origin=(500000.0, 5600000.0), res=20.0, chip_size=32)
    with pytest.raises(GeofmValueError, match="pixel size"):
        grid.cells(T, (64, 64))


def test_footprints_are_lonlat_of_the_corners():
    bounds = np.array([[500000.0, 5599680.0, 500320.0, 5600000.0]])
    (poly,) = footprints_wgs84(bounds, 32633)
    tr = Transformer.from_crs(32633, 4326, always_xy=True)
    lon, lat = tr.transform(500320.0, 5599680.0)
    xs, ys = poly.exterior.coords.xy
    assert min(abs(np.array(xs) - lon) + abs(np.array(ys) - lat)) < 1e-9
    assert 14.9 < poly.centroid.x < 15.1 and 50.4 < poly.centroid.y < 50.6  # lon, lat order
