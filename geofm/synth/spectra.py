"""Surface reflectance of the synthetic land-cover classes, in Sentinel-2 L2A DN.

DN = reflectance x 10000 (before the baseline-04.00 offset). Each class has a dormant
and a peak spectrum; the seasonal weight ``w`` in [0, 1] mixes them
(``dormant + w * (peak - dormant)``), an annual cycle repeating every year.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from geofm.sensors import SCL_NOT_VEGETATED, SCL_VEGETATION, SCL_WATER, get_sensor
from geofm.synth.landcover import BARE, CROPLAND, FOREST, PASTURE, URBAN, WATER

#: Reflectance bands in the sensor table's order (SCL excluded).
BANDS: tuple[str, ...] = tuple(b.name for b in get_sensor("sentinel-2-l2a").bands
                               if not b.is_mask)

_ORDER = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir",
          "nir08", "nir09", "swir16", "swir22")
# Per class: (dormant, peak) spectra in _ORDER.
_SPECTRA: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    FOREST: ((330, 260, 430, 330, 780, 1700, 2050, 2250, 2320, 1500, 1350, 650),
             (280, 210, 420, 250, 720, 2250, 2800, 3000, 3100, 2000, 1450, 620)),
    PASTURE: ((560, 520, 780, 820, 1150, 1700, 1950, 2200, 2260, 1500, 2450, 1550),
              (420, 340, 720, 380, 1050, 2400, 2950, 3250, 3330, 2200, 2050, 1000)),
    CROPLAND: ((980, 900, 1220, 1500, 1720, 1900, 2000, 2100, 2150, 1450, 2950, 2350),
               (330, 250, 620, 240, 950, 2900, 3600, 4100, 4200, 2800, 1850, 780)),
    BARE: ((1350, 1250, 1550, 1950, 2150, 2300, 2400, 2500, 2560, 1800, 3300, 2850),) * 2,
    WATER: ((700, 600, 520, 300, 250, 200, 180, 150, 140, 90, 80, 50),) * 2,
    URBAN: ((1250, 1150, 1250, 1350, 1450, 1600, 1700, 1800, 1850, 1300, 2250, 2050),) * 2,
}
#: Share of bare soil seen through a young pasture (a cleared cell after regrowth):
#: new Amazon pastures keep exposed soil and slash, so they are brighter in the visible
#: than mature pasture (peak red about 0.07 reflectance against 0.04, forest 0.025).
YOUNG_PASTURE_BARE = 0.2
#: Seasonal behaviour per class: (amplitude, day of year of the peak, sharpness).
SEASON: dict[int, tuple[float, float, float]] = {
    FOREST: (1.0, 200.0, 1.0), PASTURE: (1.0, 160.0, 1.0), CROPLAND: (1.0, 190.0, 3.0),
    BARE: (0.0, 180.0, 1.0), WATER: (0.0, 180.0, 1.0), URBAN: (0.0, 180.0, 1.0),
}
#: Within-class texture amplitude (relative) per class.
TEXTURE = {FOREST: 0.12, PASTURE: 0.06, CROPLAND: 0.07, BARE: 0.08, WATER: 0.03, URBAN: 0.2}
#: Thick-cloud top DN per band (bright, flat in VNIR, darker in SWIR).
CLOUD = dict(zip(_ORDER, (7200, 7000, 6900, 6800, 6800, 6700, 6700, 6600, 6600, 4200, 4700,
                         3100), strict=True))
#: Thin-cirrus additive DN per band at full cirrus opacity.
CIRRUS = dict(zip(_ORDER, (900, 850, 800, 780, 760, 740, 730, 720, 720, 500, 600, 400),
                  strict=True))
#: SCL code of each class when clear (cropland is "not vegetated" while dormant).
SCL_CLEAR = {FOREST: SCL_VEGETATION, PASTURE: SCL_VEGETATION, CROPLAND: SCL_VEGETATION,
             BARE: SCL_NOT_VEGETATED, WATER: SCL_WATER, URBAN: SCL_NOT_VEGETATED}


def wavelength(band: str) -> float:
    """Centre wavelength of ``band``, micrometres."""
    w = get_sensor("sentinel-2-l2a").band(band).wavelength
    return float(w) if w is not None else float("nan")


def spectra_tables() -> tuple[np.ndarray, np.ndarray]:
    """Dormant and peak DN tables, each float32 [7, n_bands] indexed by class code.

    Row 0 (nodata) is zero; columns follow :data:`BANDS`.
    """
    dormant = np.zeros((7, len(BANDS)), np.float32)
    peak = np.zeros((7, len(BANDS)), np.float32)
    for code, (d, p) in _SPECTRA.items():
        by_band_d = dict(zip(_ORDER, d, strict=True))
        by_band_p = dict(zip(_ORDER, p, strict=True))
        dormant[code] = [by_band_d[b] for b in BANDS]
        peak[code] = [by_band_p[b] for b in BANDS]
    return dormant, peak


def seasonal_weight(code: int, doy: np.ndarray | float) -> np.ndarray:
    """Seasonal weight of class ``code`` on day(s) of year ``doy`` (0 dormant, 1 peak)."""
    amp, peak_doy, sharp = SEASON[code]
    phase = 2 * np.pi * (np.asarray(doy, np.float32) - peak_doy) / 365.25
    return (amp * ((1 + np.cos(phase)) / 2) ** sharp).astype(np.float32)


def day_of_year(date: dt.date) -> int:
    """Day of year (1..366)."""
    return date.timetuple().tm_yday
