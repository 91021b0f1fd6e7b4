"""Per-chip cloud and nodata fractions from the Sentinel-2 scene classification (SCL)."""

from __future__ import annotations

import numpy as np

from geofm.sensors import SCL_CLOUDY, SCL_NO_DATA, SCL_SNOW


def cloud_mask(scl: np.ndarray, *, snow: bool = False) -> np.ndarray:
    """Return bool [..., H, W]: True where SCL says cloud shadow, medium/high cloud or cirrus.

    Args:
        scl: SCL class codes [..., H, W] on the chip grid.
        snow: also count snow/ice (SCL 11) as cloud.
    """
    codes = (*SCL_CLOUDY, SCL_SNOW) if snow else SCL_CLOUDY
    return np.isin(scl, codes)


def nodata_mask(bands: np.ndarray, scl: np.ndarray | None, *, nodata: float | None = 0
                ) -> np.ndarray:
    """Return bool [H, W]: True where SCL is "no data" (0) or any band equals ``nodata``.

    Args:
        bands: DN [C, H, W].
        scl: SCL codes [H, W], or ``None`` when there is no cloud mask.
        nodata: the bands' nodata DN (``None``: bands have no nodata value).
    """
    mask = np.zeros(bands.shape[-2:], dtype=bool)
    if nodata is not None:
        mask |= (bands == nodata).any(axis=0)
    if scl is not None:
        mask |= scl == SCL_NO_DATA
    return mask


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
