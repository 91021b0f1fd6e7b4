import numpy as np

from geofm.chip.screen import cloud_mask, fractions, is_valid, nodata_mask


def test_cloud_codes_and_snow_option():
    scl = np.array([[0, 3, 4, 8], [9, 10, 11, 6]], np.uint8)
    assert cloud_mask(scl).sum() == 4
    assert cloud_mask(scl, snow=True).sum() == 5


def test_nodata_from_scl_or_any_band():
    bands = np.ones((2, 2, 2), np.uint16)
    bands[1, 0, 0] = 0
    scl = np.array([[4, 0], [4, 4]], np.uint8)
    np.testing.assert_array_equal(nodata_mask(bands, scl), [[True, True], [False, False]])
    np.testing.assert_array_equal(nodata_mask(bands, None), [[True, False], [False, False]])


def test_fractions_and_validity():
    cloud = np.zeros((4, 4), bool)
    cloud[0] = True
    cf, nf = fractions(cloud, np.zeros((4, 4), bool))
    assert (cf, nf) == (0.25, 0.0)
    assert not is_valid(cf, nf, max_cloud=0.2, max_nodata=0.0)
    assert is_valid(cf, nf, max_cloud=0.25, max_nodata=0.0)
    cf, nf = fractions(None, np.eye(4, dtype=bool))
    assert np.isnan(cf) and nf == 0.25
    assert is_valid(cf, 0.0, max_cloud=0.0, max_nodata=0.0)
    assert not is_valid(cf, nf, max_cloud=1.0, max_nodata=0.2)


def test_landsat_qa_pixel_bits():
    clear, fill = 1 << 6, 1
    qa = np.array([[clear, clear | 1 << 1, clear | 1 << 2, clear | 1 << 3],
                   [clear | 1 << 4, clear | 1 << 5, fill, clear | 1 << 7]], np.uint16)
    landsat = "landsat-c2-l2"
    np.testing.assert_array_equal(cloud_mask(qa, sensor=landsat),
                                  [[False, True, True, True], [True, False, False, False]])
    assert cloud_mask(qa, snow=True, sensor=landsat)[1, 1]
    bands = np.ones((1, 2, 4), np.uint16)
    np.testing.assert_array_equal(nodata_mask(bands, qa, sensor=landsat),
                                  [[False] * 4, [False, False, True, False]])
