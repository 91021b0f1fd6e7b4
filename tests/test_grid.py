"""geofm.grid: the one pixel-grid type (PixelGrid) and the chip tiling (ChipGrid)."""

import pickle

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, array_bounds, rowcol, xy

from geofm.exceptions import GeofmValueError, GridError
from geofm.grid import ChipGrid, PixelGrid, check_north_up

T = (10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0)
X0, Y0 = 500000.0, 5600000.0


def _tif(path, arr, transform, crs="EPSG:32633"):
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[0], width=arr.shape[1],
                       count=1, dtype=arr.dtype, crs=crs, transform=transform) as dst:
        dst.write(arr, 1)
    return path


# -- PixelGrid ----------------------------------------------------------------------------

def test_pixel_centres_and_bounds_match_rasterio():
    transform = Affine(20.0, 0.0, 399960.0, 0.0, -20.0, 5500020.0)
    grid = PixelGrid(32633, transform, (7, 5))
    rows, cols = np.meshgrid(np.arange(7), np.arange(5), indexing="ij")
    xs, ys = xy(transform, rows.ravel(), cols.ravel(), offset="center")
    np.testing.assert_array_equal(np.asarray(xs).reshape(7, 5)[0], grid.x_centres())
    np.testing.assert_array_equal(np.asarray(ys).reshape(7, 5)[:, 0], grid.y_centres())
    # and back: each centre lies in its own pixel
    r, c = rowcol(transform, np.asarray(xs), np.asarray(ys))
    assert (np.asarray(r) == rows.ravel()).all() and (np.asarray(c) == cols.ravel()).all()
    assert grid.bounds == array_bounds(7, 5, transform)
    assert grid.res == (20.0, 20.0) and (grid.height, grid.width) == (7, 5)


def test_a_coefficient_tuple_becomes_an_affine_and_grids_compare_by_value():
    grid = PixelGrid(32633, T, (4, 4))
    assert isinstance(grid.transform, Affine) and tuple(grid.transform)[:6] == T
    assert grid == PixelGrid.from_origin(X0, Y0, res=10.0, shape=(4, 4), epsg=32633)
    assert hash(grid) == hash(PixelGrid(32633, Affine(*T), (4, 4)))


@pytest.mark.parametrize("transform, what", [
    (Affine.rotation(10) @ Affine(10.0, 0.0, X0, 0.0, -10.0, Y0), "rotation"),
    (Affine(10.0, 0.5, X0, 0.0, -10.0, Y0), "rotation"),
    (Affine(10.0, 0.0, X0, 0.0, 10.0, Y0), "e=10.0"),  # south-up
    (Affine(-10.0, 0.0, X0, 0.0, -10.0, Y0), "a=-10.0"),
])
def test_north_up_check_rejects_rotated_and_flipped_transforms(transform, what):
    with pytest.raises(GridError, match="is not on a north-up grid") as info:
        PixelGrid(32633, transform, (4, 4))
    assert what in str(info.value) and "reproject" in str(info.value)
    assert info.value.transform == tuple(transform)[:6]
    assert isinstance(info.value, GeofmValueError) and isinstance(info.value, ValueError)


def test_of_raster_names_the_rotated_file(tmp_path):
    rotated = Affine.rotation(5) @ Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)
    path = _tif(tmp_path / "rot.tif", np.zeros((4, 4), np.uint8), rotated)
    with rasterio.open(path) as src, pytest.raises(GridError, match="rot.tif is not on a "
                                                   "north-up grid") as info:
        PixelGrid.of_raster(src)
    assert info.value.path.endswith("rot.tif")
    err = pickle.loads(pickle.dumps(info.value))
    assert (err.transform, err.path) == (info.value.transform, info.value.path)
    with pytest.raises(GridError, match="north-up"):
        check_north_up(rotated)


def test_of_raster_reads_crs_transform_and_shape(tmp_path):
    path = _tif(tmp_path / "a.tif", np.zeros((6, 9), np.uint8), Affine(*T))
    with rasterio.open(path) as src:
        assert PixelGrid.of_raster(src) == PixelGrid(32633, T, (6, 9))
    path = _tif(tmp_path / "nocrs.tif", np.zeros((6, 9), np.uint8), Affine(*T), crs=None)
    with rasterio.open(path) as src, pytest.raises(GridError, match="has no CRS"):
        PixelGrid.of_raster(src)


def test_empty_shape_is_an_error():
    with pytest.raises(GridError, match=r"grid shape \(0, 4\) is empty"):
        PixelGrid(32633, T, (0, 4))


def test_sub_grid_window_round_trip_and_array_slice():
    grid = PixelGrid(32633, T, (20, 30))
    arr = np.arange(20 * 30).reshape(20, 30)
    sub = grid.sub(slice(5, 13), slice(7, 13))
    assert sub.shape == (8, 6)
    assert tuple(sub.transform)[:6] == (10.0, 0.0, X0 + 70, 0.0, -10.0, Y0 - 50)
    rows, cols = grid.window(sub)
    assert (rows, cols) == (slice(5, 13), slice(7, 13))
    np.testing.assert_array_equal(arr[rows, cols], arr[5:13, 7:13])
    # the sub-grid's pixel centres are the parent's, sliced
    np.testing.assert_array_equal(sub.x_centres(), grid.x_centres()[cols])
    np.testing.assert_array_equal(sub.y_centres(), grid.y_centres()[rows])


def test_window_errors_name_the_problem():
    grid = PixelGrid(32633, T, (20, 30))
    with pytest.raises(GridError, match="not on a pixel corner"):
        grid.window(PixelGrid.from_origin(X0 + 5, Y0, res=10.0, shape=(2, 2), epsg=32633))
    with pytest.raises(GridError, match="pixel size"):
        grid.window(PixelGrid.from_origin(X0, Y0, res=20.0, shape=(2, 2), epsg=32633))
    with pytest.raises(GridError, match="reach outside the 20x30 grid"):
        grid.window(PixelGrid.from_origin(X0 + 290, Y0, res=10.0, shape=(2, 2), epsg=32633))
    with pytest.raises(GridError, match="EPSG:32634"):
        grid.window(PixelGrid.from_origin(X0, Y0, res=10.0, shape=(2, 2), epsg=32634))
    with pytest.raises(GridError, match="empty or has a step"):
        grid.sub(slice(0, 10, 2), slice(0, 4))


def test_from_coords_inverts_x_y_centres():
    grid = PixelGrid.from_origin(X0 + 640, Y0 - 320, res=10.0, shape=(32, 48), epsg=32633)
    back = PixelGrid.from_coords(grid.x_centres(), grid.y_centres(), epsg=32633)
    assert back == grid
    with pytest.raises(GridError, match="pass res= for a 1-pixel axis"):
        PixelGrid.from_coords(np.array([X0 + 5]), grid.y_centres(), epsg=32633)
    one = PixelGrid.from_coords(np.array([X0 + 5]), np.array([Y0 - 5]), epsg=32633, res=10.0)
    assert one == PixelGrid(32633, T, (1, 1))
    with pytest.raises(GridError, match="north-up"):  # ascending y: a south-up grid
        PixelGrid.from_coords(grid.x_centres(), grid.y_centres()[::-1], epsg=32633)


def test_chip_coordinates_round_trip_through_the_file(tmp_path):
    """Chip pixel centres -> chip file -> grid -> the same centres, transform and CRS,
    also as rioxarray reads the file's grid mapping."""
    import datetime as dt

    import rioxarray  # noqa: F401

    from geofm.chipfile import chip_grid, open_chip, write_chip

    chips = ChipGrid(origin=(X0, Y0), res=10.0, chip_size=16)
    cell = chips.cell_grid(3, 5, epsg=32633)
    path = write_chip(tmp_path / "c.nc", np.ones((2, 16, 16), np.uint16), bands=["red", "nir"],
                      x=cell.x_centres(), y=cell.y_centres(), epsg=32633,
                      date=dt.datetime(2022, 5, 1))
    assert chip_grid(path) == cell
    ds = open_chip(path)
    np.testing.assert_array_equal(ds["x"].values, cell.x_centres())
    np.testing.assert_array_equal(ds["y"].values, cell.y_centres())
    assert tuple(ds.rio.transform())[:6] == tuple(cell.transform)[:6]
    assert ds.rio.crs.to_epsg() == 32633
    assert ds["spatial_ref"].attrs["GeoTransform"] == (
        f"{X0 + 5 * 160} 10.0 0.0 {Y0 - 3 * 160} 0.0 -10.0")


def test_cf_grid_mapping_carries_the_crs_and_gdal_geotransform():
    attrs = PixelGrid(32633, T, (4, 4)).cf_grid_mapping()
    assert attrs["grid_mapping_name"] == "transverse_mercator"
    assert "WGS 84 / UTM zone 33N" in attrs["spatial_ref"]
    assert attrs["GeoTransform"] == "500000.0 10.0 0.0 5600000.0 0.0 -10.0"


def test_covering_and_offsets_place_boxes_on_a_mosaic():
    # three 320 m boxes (32 px at 10 m): (0, 0), (0, 2) and (1, 1) of a 2 x 3 mosaic
    corners = [(0, 0), (0, 2), (1, 1)]
    bounds = np.array([[X0 + c * 320, Y0 - (r + 1) * 320, X0 + (c + 1) * 320, Y0 - r * 320]
                       for r, c in corners])
    grid = PixelGrid.covering(bounds, res=10.0, epsg=32633)
    assert grid == PixelGrid.from_origin(X0, Y0, res=10.0, shape=(64, 96), epsg=32633)
    rows, cols = grid.offsets(bounds[:, 0], bounds[:, 3])
    assert rows.tolist() == [0, 0, 32] and cols.tolist() == [0, 64, 32]
    coarse = PixelGrid.covering(bounds, res=320.0, epsg=32633)  # one pixel per box
    assert coarse.shape == (2, 3)
    assert [tuple(a) for a in np.stack(coarse.offsets(bounds[:, 0], bounds[:, 3]), 1)] == corners


# -- ChipGrid -----------------------------------------------------------------------------

def test_cell_grid_bounds_are_the_cells_bounds_bit_for_bit():
    chips = ChipGrid(origin=(399960.0 - 2560, 5500020.0 + 1280), res=10.0, chip_size=64)
    raster = PixelGrid.from_origin(399960.0, 5500020.0, res=10.0, shape=(300, 260), epsg=32633)
    cells = chips.cells(raster)
    assert cells
    for cell in cells:
        grid = chips.cell_grid(cell.row, cell.col, epsg=32633)
        assert grid.bounds == cell.bounds
        assert raster.window(grid) == (slice(cell.row_off, cell.row_off + 64),
                                       slice(cell.col_off, cell.col_off + 64))
    # a strip of cells is the cells side by side
    strip = chips.cell_grid(cells[0].row, cells[0].col, epsg=32633, n_cols=3)
    three = [chips.cell_grid(cells[0].row, cells[0].col + k, epsg=32633) for k in range(3)]
    np.testing.assert_array_equal(strip.x_centres(),
                                  np.concatenate([g.x_centres() for g in three]))


def test_cells_skip_partial_edges():
    grid = ChipGrid(origin=(500000.0, 5600000.0), res=10.0, chip_size=32)
    cells = grid.cells(PixelGrid(32633, T, (100, 70)))  # 3 full rows, 2 full columns
    assert [(c.row, c.col) for c in cells] == [(r, c) for r in range(3) for c in range(2)]
    last = cells[-1]
    assert (last.row_off, last.col_off) == (64, 32)
    assert last.bounds == (500320.0, 5600000.0 - 960, 500640.0, 5600000.0 - 640)


def test_cells_from_explicit_origin_keep_absolute_indices():
    # origin 2 chips west and 1 chip north of the raster corner
    grid = ChipGrid(origin=(500000.0 - 640, 5600000.0 + 320), res=10.0, chip_size=32)
    cells = grid.cells(PixelGrid(32633, T, (64, 64)))
    assert [(c.row, c.col) for c in cells] == [(1, 2), (1, 3), (2, 2), (2, 3)]
    assert (cells[0].row_off, cells[0].col_off) == (0, 0)
    assert cells[0].bounds[0] == 500000.0 and cells[0].bounds[3] == 5600000.0


def test_origin_off_the_pixel_grid_is_an_error():
    grid = ChipGrid(origin=(500005.0, 5600000.0), res=10.0, chip_size=32)
    with pytest.raises(GeofmValueError, match="not on a pixel corner"):
        grid.cells(PixelGrid(32633, T, (64, 64)))


def test_other_pixel_size_is_an_error():
    grid = ChipGrid(origin=(500000.0, 5600000.0), res=20.0, chip_size=32)
    with pytest.raises(GeofmValueError, match="pixel size"):
        grid.cells(PixelGrid(32633, T, (64, 64)))




def test_anchored_takes_the_raster_corner_and_pixel_size_unless_given_an_origin():
    raster = PixelGrid.from_origin(399960.0, 5500020.0, res=20.0, shape=(30, 30), epsg=32633)
    assert ChipGrid.anchored(raster, chip_size=8) == ChipGrid((399960.0, 5500020.0), 20.0, 8)
    moved = ChipGrid.anchored(raster, chip_size=8, origin=(399960.0 - 320, 5500020.0))
    assert [(c.row, c.col) for c in moved.cells(raster)][:3] == [(0, 2), (0, 3), (0, 4)]
