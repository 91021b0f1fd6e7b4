"""Encoder inputs: normalisation, time and location codes, datacube assembly."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
import torch

from geofm.exceptions import GeofmValueError, SensorError, ShapeError
from geofm.model.inputs import encode_latlon, encode_time, make_datacube, normalise
from geofm.sensors import get_sensor

S2 = get_sensor("sentinel-2-l2a")
RGBN = ["blue", "green", "red", "nir"]


def test_encode_latlon_latitude_first_hand_values() -> None:
    got = encode_latlon([45.0], [10.0])
    # lat 45 deg: sin = cos = sqrt(2)/2; lon 10 deg: sin 0.173648, cos 0.984808
    expected = np.array([[0.70710678, 0.70710678, 0.17364818, 0.98480775]], np.float32)
    assert got.dtype == np.float32 and got.shape == (1, 4)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    swapped = encode_latlon([10.0], [45.0])
    assert not np.allclose(got, swapped)


def test_encode_latlon_scalar_and_negative() -> None:
    got = encode_latlon(-30.0, -120.0)
    expected = [[-0.5, math.sqrt(3) / 2, -math.sqrt(3) / 2, -0.5]]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_encode_latlon_rejects_swapped_and_bad_values() -> None:
    with pytest.raises(GeofmValueError, match="latitude 120.0 is outside .*swapped"):
        encode_latlon([120.0], [45.0])
    with pytest.raises(GeofmValueError, match="NaN or inf"):
        encode_latlon([np.nan], [1.0])
    with pytest.raises(ShapeError, match="one latitude and one longitude per chip"):
        encode_latlon([1.0, 2.0], [1.0])


def test_encode_time_hand_values() -> None:
    dates = ["2021-06-01T10:30:00Z",  # ISO week 22, hour 10
             dt.datetime(2021, 1, 1, 23, 59),  # naive = UTC; ISO week 53 of 2020
             "2021-06-01T23:30:00-02:00"]  # = 2021-06-02T01:30Z: week 22, hour 1
    got = encode_time(dates)
    assert got.dtype == np.float32 and got.shape == (3, 4)
    for row, (week, hour) in zip(got, [(22, 10), (53, 23), (22, 1)], strict=True):
        w, h = week * 2 * math.pi / 52, hour * 2 * math.pi / 24
        np.testing.assert_allclose(row, [math.sin(w), math.cos(w), math.sin(h), math.cos(h)],
                                   atol=1e-6)


def test_encode_time_numpy_datetime64_and_errors() -> None:
    got = encode_time(np.array(["2022-03-15T12:00"], dtype="datetime64[ns]"))
    w, h = 11 * 2 * math.pi / 52, math.pi  # 2022-03-15 is ISO week 11; hour 12
    np.testing.assert_allclose(got[0], [math.sin(w), math.cos(w), math.sin(h), math.cos(h)],
                               atol=1e-6)
    with pytest.raises(GeofmValueError, match="cannot read dates"):
        encode_time(["not a date"])
    with pytest.raises(GeofmValueError, match="missing date"):
        encode_time([None])


def test_normalise_numpy_and_torch() -> None:
    mean, std = S2.normalisation(["blue", "nir"])
    dn = np.zeros((1, 2, 2, 2), dtype=np.uint16)
    dn[0, 0] = [[1105, 1105 + 1809], [0, 1105]]
    dn[0, 1] = 2743 + 2 * 1742
    got = normalise(dn, mean, std)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got[0, 0], [[0, 1], [-1105 / 1809, 0]], atol=1e-6)
    np.testing.assert_allclose(got[0, 1], 2.0, atol=1e-6)
    got_t = normalise(torch.from_numpy(dn.astype(np.int32)), mean, std)
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32
    np.testing.assert_allclose(got_t.numpy(), got, atol=1e-6)
    with pytest.raises(ShapeError, match="band=3"):
        normalise(dn, [1, 2, 3], [1, 1, 1])


def test_make_datacube() -> None:
    rng = np.random.default_rng(0)
    dn = rng.integers(0, 5000, (2, 4, 16, 16)).astype(np.uint16)
    cube = make_datacube(dn, sensor="sentinel-2-l2a", bands=RGBN,
                         dates=["2021-06-01T10:30:00Z", "2021-07-01T10:30:00Z"],
                         lats=[45.0, 46.0], lons=[10.0, 11.0], device="cpu")
    assert set(cube) == {"pixels", "time", "latlon", "gsd", "waves"}
    assert all(v.dtype == torch.float32 for v in cube.values())
    assert cube["pixels"].shape == (2, 4, 16, 16)
    mean, std = S2.normalisation(RGBN)
    np.testing.assert_allclose(cube["pixels"].numpy(),
                               (dn - mean[:, None, None]) / std[:, None, None], atol=1e-5)
    assert cube["gsd"].shape == () and float(cube["gsd"]) == 10.0
    np.testing.assert_allclose(cube["waves"].numpy(), [0.493, 0.56, 0.665, 0.842], atol=1e-6)
    np.testing.assert_allclose(cube["latlon"][0].numpy(),
                               [0.70710678, 0.70710678, 0.17364818, 0.98480775], atol=1e-6)
    np.testing.assert_allclose(cube["time"].numpy(), encode_time(
        ["2021-06-01T10:30:00Z", "2021-07-01T10:30:00Z"]), atol=0)


def test_make_datacube_errors() -> None:
    dn = np.zeros((2, 4, 16, 16), np.uint16)
    kw = dict(sensor=S2, dates=["2021-06-01"] * 2, lats=[1, 2], lons=[1, 2])
    with pytest.raises(ShapeError, match="band=4 but 3 band names"):
        make_datacube(dn, bands=["blue", "green", "red"], **kw)
    with pytest.raises(SensorError, match="coastal .*no Clay normalisation"):
        make_datacube(dn, bands=["coastal", "blue", "green", "red"], **kw)
    with pytest.raises(ShapeError, match="dates have length 1 but pixels have batch=2"):
        make_datacube(dn, bands=RGBN, **{**kw, "dates": ["2021-06-01"]})


def test_footprint_centres_are_centroids_latitude_first():
    import shapely

    from geofm.model.inputs import footprint_centres

    square = shapely.box(10.0, 50.0, 10.5, 50.4)
    # a triangle's centroid is not its bbox centre: the helper must use the centroid
    triangle = shapely.Polygon([(0.0, 0.0), (3.0, 0.0), (0.0, 3.0)])
    for given in ([square, triangle], [square.wkb, triangle.wkb]):
        lats, lons = footprint_centres(given)
        np.testing.assert_allclose(lats, [50.2, 1.0])
        np.testing.assert_allclose(lons, [10.25, 1.0])
