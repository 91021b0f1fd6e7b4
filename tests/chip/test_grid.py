import numpy as np
from pyproj import Transformer

from geofm.chip.grid import chip_id, footprints_wgs84


def test_chip_id_format():
    assert chip_id("33UUP", 256, 3, 12) == "33UUP_256_0003_0012"


def test_footprints_are_lonlat_of_the_corners():
    bounds = np.array([[500000.0, 5599680.0, 500320.0, 5600000.0]])
    (poly,) = footprints_wgs84(bounds, 32633)
    tr = Transformer.from_crs(32633, 4326, always_xy=True)
    lon, lat = tr.transform(500320.0, 5599680.0)
    xs, ys = poly.exterior.coords.xy
    assert min(abs(np.array(xs) - lon) + abs(np.array(ys) - lat)) < 1e-9
    assert 14.9 < poly.centroid.x < 15.1 and 50.4 < poly.centroid.y < 50.6  # lon, lat order
