import numpy as np

from geofm.synth import spectra
from geofm.synth.landcover import BARE, CROPLAND, FOREST, PASTURE, URBAN, WATER


def _ndvi(table, code):
    red, nir = spectra.BANDS.index("red"), spectra.BANDS.index("nir")
    return (table[code, nir] - table[code, red]) / (table[code, nir] + table[code, red])


def test_class_spectra_are_distinct_and_plausible():
    dormant, peak = spectra.spectra_tables()
    assert dormant.shape == (7, 12) and spectra.BANDS[0] == "coastal"
    assert _ndvi(peak, FOREST) > 0.8 and _ndvi(peak, CROPLAND) > 0.8
    assert _ndvi(peak, WATER) < 0 and _ndvi(peak, URBAN) < 0.3 and _ndvi(peak, BARE) < 0.3
    nir = spectra.BANDS.index("nir")
    assert peak[WATER, nir] < 300 < peak[FOREST, spectra.BANDS.index("red")] + 100
    # Every pair of classes differs by > 300 DN in some band at peak and dormant time.
    for table in (dormant, peak):
        for a in range(1, 7):
            for b in range(a + 1, 7):
                assert np.abs(table[a] - table[b]).max() > 300


def test_seasonality_strong_for_crops_mild_for_forest_none_for_urban():
    dormant, peak = spectra.spectra_tables()
    swing = {c: _ndvi(peak, c) - _ndvi(dormant, c) for c in (FOREST, PASTURE, CROPLAND)}
    assert swing[CROPLAND] > 0.6 > swing[PASTURE] > swing[FOREST] > 0.05
    np.testing.assert_array_equal(dormant[URBAN], peak[URBAN])
    w = spectra.seasonal_weight(CROPLAND, np.arange(1, 366))
    assert w.max() > 0.99 and w.min() < 0.01 and 150 < np.argmax(w) < 230
    # Annual cycle repeats every year.
    assert abs(float(spectra.seasonal_weight(FOREST, 100.0))
               - float(spectra.seasonal_weight(FOREST, 465.25))) < 1e-5
    assert float(spectra.seasonal_weight(WATER, 200.0)) == 0
