import importlib.util
from datetime import UTC, datetime
from pathlib import Path

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


# --- the writer after issue 18 (templates) against the writer before it ---------------

REFERENCE = Path(__file__).parent / "data" / "chip_reference"


def _reference_inputs():
    spec = importlib.util.spec_from_file_location("make_reference",
                                                  REFERENCE / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_inputs()


def _h5_tree(path):
    """Every object's dtype, shape, values and attributes (references as dimension names)."""
    import h5py

    def plain(value):
        if isinstance(value, h5py.Reference):
            return "ref"
        if isinstance(value, np.ndarray):
            if value.dtype.names:  # REFERENCE_LIST: (reference, dimension index) records
                return [(plain(r[0]), int(r[1])) for r in value.tolist()]
            if value.dtype == object:
                return [plain(v) for v in value.tolist()]
            return (value.dtype.str, value.tolist())
        if isinstance(value, bytes | np.bytes_):
            return bytes(value)
        return value if not isinstance(value, np.generic) else (value.dtype.str, value.item())

    out = {}
    with h5py.File(path, "r") as fh:
        out["/"] = {k: plain(v) for k, v in fh.attrs.items()}
        for name, ds in fh.items():
            attrs = {k: plain(v) for k, v in ds.attrs.items()}
            out[name] = (ds.dtype.str, ds.shape, plain(ds[()]), attrs)
        out["order"] = list(fh)
    return out


@pytest.fixture
def fresh_templates(monkeypatch):
    import geofm.chipfile as chipfile

    monkeypatch.setattr(chipfile, "_TEMPLATES", {})
    return chipfile


def test_new_writer_reproduces_the_reference_chip(tmp_path, fresh_templates):
    """reference.nc was written by the pre-issue-18 writer (make_reference.py): a chip
    written now, by the template path, holds the same values, coordinates, CRS, band
    names, units and attributes."""
    inputs = _reference_inputs()
    pixels = inputs.pop("pixels")
    # a first chip of the same kind elsewhere builds the template...
    first = dict(inputs, x=inputs["x"] + 60.0,
                 attrs={**inputs["attrs"], "chip_id": "32UMU_8_0012_0035"})
    write_chip(tmp_path / "first.nc", pixels[:, ::-1].copy(), **first)
    assert any(t is not None for t in fresh_templates._TEMPLATES.values())
    # ... which writes the reference chip
    new = write_chip(tmp_path / "new.nc", pixels, **inputs)
    old = REFERENCE / "reference.nc"
    assert _h5_tree(new) == _h5_tree(old)
    for decode in (False, True):
        xr.testing.assert_identical(open_chip(new, decode=decode), open_chip(old, decode=decode))
    a, b = rioxarray.open_rasterio(new), rioxarray.open_rasterio(old)
    assert a.rio.crs == b.rio.crs and a.rio.crs.to_epsg() == 32632
    assert a.rio.transform() == b.rio.transform()
    assert list(open_chip(new).data_vars) == ["blue", "green", "red", "nir", "swir16"]
    assert open_chip(new)["x"].attrs["units"] == "metre"
    np.testing.assert_array_equal(read_chip_array(new, inputs["bands"])[0],
                                  read_chip_array(old, inputs["bands"])[0])


def test_template_chips_are_the_bytes_of_the_h5py_writer(tmp_path, fresh_templates,
                                                        monkeypatch):
    rng = np.random.default_rng(5)
    chips = []
    for i in range(5):  # other positions, ids, dates, scenes, harmonisation notes
        chips.append(dict(
            pixels=rng.integers(0, 9000, size=(3, 8, 6)).astype(np.uint16),
            bands=["red", "green", "blue"], x=300_005.0 + 60 * i + 10 * np.arange(6),
            y=5_399_995.0 - 80 * i - 10 * np.arange(8), epsg=32633,
            date=datetime(2022, 3, 1 + i, 10, 5, i, tzinfo=UTC), scale=1e-4,
            attrs={"chip_id": f"33UUP_8_{i:04d}_{i:04d}", "scene_id": f"S2A_{i}",
                   "harmonisation": "none" if i % 2 else "offset"}))
    templated = [write_chip(tmp_path / f"t{i}.nc", c.pop("pixels"), **c) for i, c in
                 enumerate([dict(c) for c in chips])]
    assert sum(t is not None for t in fresh_templates._TEMPLATES.values()) == 2  # 2 lengths
    monkeypatch.setattr(fresh_templates, "_TEMPLATES", {})
    monkeypatch.setattr(fresh_templates._Template, "build", classmethod(lambda cls, *a: None))
    for i, c in enumerate(chips):
        plain = write_chip(tmp_path / f"h{i}.nc", c.pop("pixels"), **c)
        assert plain.read_bytes() == templated[i].read_bytes(), f"chip {i}"
        rds = rioxarray.open_rasterio(templated[i])
        assert tuple(rds.rio.transform())[:6] == (10.0, 0.0, 300_000.0 + 60 * i, 0.0, -10.0,
                                                  5_400_000.0 - 80 * i)
        assert open_chip(templated[i]).attrs["chip_id"] == f"33UUP_8_{i:04d}_{i:04d}"


def test_chips_a_template_cannot_hold_are_written_by_h5py(tmp_path, fresh_templates):
    pixels = np.arange(2 * 4 * 4, dtype=np.uint16).reshape(2, 4, 4)
    kwargs = dict(bands=["red", "nir"], x=np.arange(4.0), y=-np.arange(4.0), epsg=32633,
                  date=datetime(2022, 1, 1))
    path = write_chip(tmp_path / "u.nc", pixels, attrs={"scene_id": "Zürich"}, **kwargs)
    assert list(fresh_templates._TEMPLATES.values()) == []  # non-ASCII: no template
    assert open_chip(path).attrs["scene_id"] == "Zürich"
    path = write_chip(tmp_path / "f.nc", pixels.astype(np.float32) / 3, nodata=None,
                      attrs={"chip_id": "a"}, **kwargs)
    np.testing.assert_array_equal(read_chip_array(path, ["nir"])[0][0],
                                  (pixels[1].astype(np.float32) / 3))
