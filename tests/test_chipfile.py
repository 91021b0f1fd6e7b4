from datetime import UTC, datetime

import numpy as np
import pytest
import rioxarray
import xarray as xr

from geofm.chipfile import open_chip, read_chip_array, write_chip
from geofm.exceptions import RasterError, ShapeError

BANDS = ["blue", "green", "red", "nir"]


@pytest.fixture
def chip_file(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(1, 4000, size=(4, 8, 6)).astype(np.uint16)
    pixels[2, 1, 1] = 0  # nodata in red
    x = 300_005.0 + 10 * np.arange(6)
    y = 5_399_995.0 - 10 * np.arange(8)
    path = write_chip(tmp_path / "scene" / "c.nc", pixels, bands=BANDS, x=x, y=y, epsg=32633,
                      date=datetime(2022, 3, 1, 10, 5, tzinfo=UTC), scale=1e-4,
                      attrs={"chip_id": "33UUP_64_0000_0000", "scene_id": "S2A_X"})
    return path, pixels


def test_read_chip_array_returns_dn_and_valid_mask(chip_file):
    path, pixels = chip_file
    values, valid = read_chip_array(path, ["nir", "red"])
    assert values.dtype == np.float32 and values.shape == (2, 8, 6)
    np.testing.assert_array_equal(values[0], pixels[3])
    np.testing.assert_array_equal(values[1], pixels[2])
    assert not valid[1, 1] and valid.sum() == 8 * 6 - 1
    _, valid_blue = read_chip_array(path, ["blue"])
    assert valid_blue.all()


def test_open_chip_and_rioxarray_round_trip(chip_file):
    path, pixels = chip_file
    ds = open_chip(path)
    assert ds["red"].dtype == np.uint16
    assert ds.attrs["chip_id"] == "33UUP_64_0000_0000"
    assert str(ds["time"].values[0]).startswith("2022-03-01T10:05")
    decoded = xr.open_dataset(path, engine="h5netcdf")
    assert float(decoded["blue"].values[0, 0, 0]) == pytest.approx(pixels[0, 0, 0] * 1e-4)
    assert np.isnan(decoded["red"].values[0, 1, 1])
    rds = rioxarray.open_rasterio(path)
    assert rds.rio.crs.to_epsg() == 32633
    assert tuple(rds.rio.transform())[:6] == (10.0, 0.0, 300_000.0, 0.0, -10.0, 5_400_000.0)


def test_missing_band_names_the_bands_present(chip_file):
    path, _ = chip_file
    with pytest.raises(RasterError, match=r"no band\(s\) swir16; it holds blue, green, red, nir"):
        read_chip_array(path, ["red", "swir16"])


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(RasterError, match="does not exist; re-run `geofm chip`"):
        read_chip_array(tmp_path / "none.nc", BANDS)
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"\x89HDF garbage")
    with pytest.raises(RasterError, match=r"cannot read chip .*bad.nc"):
        read_chip_array(bad, BANDS)
    with pytest.raises(RasterError, match=r"cannot read chip .*bad.nc"):
        open_chip(bad)


def test_shape_errors_name_the_dimension(tmp_path):
    with pytest.raises(ShapeError, match="dimension 'x': pixels have length 6, .* length 5"):
        write_chip(tmp_path / "x.nc", np.zeros((1, 4, 6), np.uint16), bands=["red"],
                   x=np.arange(5.0), y=np.arange(4.0), epsg=32633, date=datetime(2022, 1, 1))
