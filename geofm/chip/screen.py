"""Per-chip cloud and nodata fractions from the sensor's mask band.

Sentinel-2: the scene classification (SCL) classes; Landsat Collection 2: the
``QA_PIXEL`` bits (:mod:`geofm.sensors` holds the codes and bits).
"""

from __future__ import annotations

import numpy as np

from geofm.sensors import (
    LANDSAT_QA_CLOUDY_BITS,
    LANDSAT_QA_FILL,
    LANDSAT_QA_SNOW,
    SCL_CLOUDY,
    SCL_NO_DATA,
    SCL_SNOW,
)

#: Sensors whose mask band is Landsat's QA_PIXEL (every other one: Sentinel-2 SCL).
_QA_PIXEL_SENSORS = frozenset({"landsat-c2-l2"})


def _bits(mask: np.ndarray, bits: tuple[int, ...]) -> np.ndarray:
    flags = sum(1 << b for b in bits)
    return (mask.astype(np.int64) & flags) != 0


def cloud_mask(mask: np.ndarray, *, snow: bool = False,
               sensor: str = "sentinel-2-l2a") -> np.ndarray:
    """Return bool [..., H, W]: True where the mask band says cloud.

    Sentinel-2 SCL: cloud shadow, medium/high cloud or cirrus (3, 8, 9, 10). Landsat
    QA_PIXEL: dilated cloud, cirrus, cloud or cloud shadow (bits 1-4).

    Args:
        mask: SCL codes or QA_PIXEL words [..., H, W] on the chip grid.
        snow: also count snow/ice (SCL 11, QA_PIXEL bit 5) as cloud.
        sensor: the geofm sensor name, which says how to read ``mask``.
    """
    if sensor in _QA_PIXEL_SENSORS:
        return _bits(mask, (*LANDSAT_QA_CLOUDY_BITS, LANDSAT_QA_SNOW) if snow
                     else LANDSAT_QA_CLOUDY_BITS)
    codes = (*SCL_CLOUDY, SCL_SNOW) if snow else SCL_CLOUDY
    return np.isin(mask, codes)


def nodata_mask(bands: np.ndarray, mask: np.ndarray | None, *, nodata: float | None = 0,
                sensor: str = "sentinel-2-l2a") -> np.ndarray:
    """Return bool [H, W]: True where the mask band says no data or any band is ``nodata``.

    Args:
        bands: DN [C, H, W].
        mask: SCL codes (no data: 0) or QA_PIXEL words (no data: fill bit 0) [H, W], or
            ``None`` when there is no cloud mask.
        nodata: the bands' nodata DN (``None``: bands have no nodata value).
        sensor: the geofm sensor name, which says how to read ``mask``.
    """
    missing = np.zeros(bands.shape[-2:], dtype=bool)
    if nodata is not None:
        missing |= (bands == nodata).any(axis=0)
    if mask is not None:
        missing |= (_bits(mask, (LANDSAT_QA_FILL,)) if sensor in _QA_PIXEL_SENSORS
                    else mask == SCL_NO_DATA)
    return missing


def fractions(cloud: np.ndarray | None, nodata: np.ndarray) -> tuple[float, float]:
    """``(cloud_fraction, nodata_fraction)`` of one chip, each 0..1 of all its pixels.

    ``cloud_fraction`` is NaN when there is no cloud mask (``cloud is None``).
    """
    cloud_fraction = float("nan") if cloud is None else float(cloud.mean())
    return cloud_fraction, float(nodata.mean())


def is_valid(cloud_fraction: float, nodata_fraction: float, *, max_cloud: float,
             max_nodata: float) -> bool:
    """True if a chip passes the run's filters (a NaN cloud fraction is not screened)."""
    cloud_ok = np.isnan(cloud_fraction) or cloud_fraction <= max_cloud + 1e-9
    return bool(cloud_ok and nodata_fraction <= max_nodata + 1e-9)
