import numpy as np
import pytest

from geofm.exceptions import GeofmError, SensorError
from geofm.sensors import SENSORS, get_sensor


def test_sentinel2_has_every_earth_search_band():
    s2 = get_sensor("sentinel-2-l2a")
    assert set(s2.band_names) == {
        "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir",
        "nir08", "nir09", "swir16", "swir22", "scl"}
    assert s2.band("red").resolution == 10
    assert s2.band("swir16").resolution == 20
    assert s2.band("nir09").resolution == 60
    assert s2.band("scl").is_mask


def test_clay_normalisation_values_match_reference():
    s2 = get_sensor("sentinel-2-l2a")
    mean, std = s2.normalisation(["blue", "nir", "swir22"])
    np.testing.assert_array_equal(mean, np.array([1105, 2743, 1835], np.float32))
    np.testing.assert_array_equal(std, np.array([1809, 1742, 1379], np.float32))
    np.testing.assert_allclose(s2.wavelengths(["red", "swir16"]), [0.665, 1.61])
    assert get_sensor("naip").normalisation(["nir"])[0][0] == pytest.approx(139.04)
    assert get_sensor("landsat-c2-l2").gsd == 30
    assert get_sensor("sentinel-1-rtc").band("vh").mean == pytest.approx(-18.673)


def test_all_means_clays_ten_bands():
    s2 = get_sensor("sentinel-2-l2a")
    assert len(s2.resolve("all")) == 10
    assert s2.resolve(None) == ("blue", "green", "red", "nir")
    assert s2.resolve("red, nir") == ("red", "nir")


def test_unknown_sensor_lists_valid_ones():
    with pytest.raises(SensorError, match="valid sensors: landsat-c2-l2, naip"):
        get_sensor("modis")


def test_unknown_band_lists_valid_ones():
    with pytest.raises(GeofmError, match=r"unknown band 'nir2'.*valid bands: coastal, blue"):
        get_sensor("sentinel-2-l2a").resolve("red,nir2")


def test_band_without_clay_statistics_is_refused():
    with pytest.raises(SensorError, match="coastal.*no Clay normalisation"):
        get_sensor("sentinel-2-l2a").normalisation(["coastal", "red"])


def test_every_clay_band_is_usable():
    for sensor in SENSORS.values():
        mean, std = sensor.normalisation(sensor.clay_bands)
        assert (std > 0).all() and len(mean) == len(sensor.clay_bands)


def test_provider_band_names_resolve_to_band_names():
    s2 = get_sensor("sentinel-2-l2a")
    assert s2.resolve("B02,green,b8a,SCL") == ("blue", "green", "nir08", "scl")
    assert s2.band("B11").name == "swir16"
    landsat = get_sensor("landsat-c2-l2")
    assert landsat.resolve(["SR_B2", "OLI_B5"]) == ("blue", "nir08")
    assert landsat.band("blue").offset == -0.2 and landsat.mask_band == "qa_pixel"
    with pytest.raises(GeofmError, match=r"or the provider names B01=coastal, B02=blue"):
        s2.resolve("B13")


def test_sensor_for_collection():
    from geofm.sensors import sensor_for_collection

    assert sensor_for_collection("sentinel-2-c1-l2a").name == "sentinel-2-l2a"
    assert sensor_for_collection("landsat-c2l2-sr").name == "landsat-c2-l2"
    assert sensor_for_collection("cop-dem-glo-30") is None
    assert sensor_for_collection(None) is None


def test_landsat_provider_names_are_unambiguous_across_landsat_generations():
    landsat = get_sensor("landsat-c2-l2")
    assert landsat.resolve("SR_B2,OLI_B5,qa_pixel") == ("blue", "nir08", "qa_pixel")
    # B2 is blue on Landsat 8/9 OLI but green on Landsat 7 ETM+: not a name geofm guesses
    with pytest.raises(SensorError, match="unknown band 'B2'.*SR_B2=blue"):
        landsat.band("B2")
