"""What the encoder is fed: normalised pixels, time and location codes, the datacube.

Shared by the embed stage and fine-tuning, so both feed the model the same way.
Conventions (Clay v1 / v1.5 tutorials):

- ``time`` [B, 4] = ``sin(week), cos(week), sin(hour), cos(hour)`` with
  ``week = ISO week * 2 pi / 52`` and ``hour = UTC hour * 2 pi / 24``.
- ``latlon`` [B, 4] = ``sin(lat), cos(lat), sin(lon), cos(lon)``, angles in radians,
  **latitude first**.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from geofm.exceptions import GeofmValueError, ShapeError
from geofm.sensors import Sensor, get_sensor

if TYPE_CHECKING:
    import torch

#: Clay's week period (weeks per year) and hour period used in the time code.
WEEKS_PER_YEAR = 52
HOURS_PER_DAY = 24


@overload
def normalise(pixels_dn: np.ndarray, mean: Any, std: Any) -> np.ndarray: ...


@overload
def normalise(pixels_dn: torch.Tensor, mean: Any, std: Any) -> torch.Tensor: ...


def normalise(pixels_dn: np.ndarray | torch.Tensor, mean: Any, std: Any,
              ) -> np.ndarray | torch.Tensor:
    """Clay normalisation ``(DN - mean) / std`` per band.

    Args:
        pixels_dn: DN values [..., C, H, W] (numpy or torch, any numeric dtype).
        mean: per-band mean [C], in DN (``geofm.sensors.Sensor.normalisation``).
        std: per-band standard deviation [C], in DN.

    Returns:
        float32 [..., C, H, W] of the same kind (numpy in, numpy out; torch in, torch out
        on the same device). NaN stays NaN.

    Raises:
        ShapeError: the band axis (third from last) does not have length C.
    """
    mean_np = np.asarray(mean, dtype=np.float32).reshape(-1)
    std_np = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean_np.shape != std_np.shape:
        raise ShapeError(f"mean has {mean_np.size} bands but std has {std_np.size}")
    if pixels_dn.ndim < 3 or pixels_dn.shape[-3] != mean_np.size:
        raise ShapeError(f"pixels have shape {tuple(pixels_dn.shape)}: expected [..., band, "
                         f"y, x] with band={mean_np.size} (one mean/std per band)")
    if np.any(std_np <= 0):
        raise GeofmValueError(f"normalisation std must be positive, got {std_np.tolist()}")
    if isinstance(pixels_dn, np.ndarray):
        out = pixels_dn.astype(np.float32, copy=True)
        out -= mean_np[:, None, None]
        out /= std_np[:, None, None]
        return out
    import torch

    dev = pixels_dn.device
    m = torch.from_numpy(mean_np).to(dev)[:, None, None]
    s = torch.from_numpy(std_np).to(dev)[:, None, None]
    return (pixels_dn.to(torch.float32) - m) / s


def encode_time(dates: Any) -> np.ndarray:
    """Clay's time code of acquisition datetimes.

    Args:
        dates: B datetimes (``datetime``, ``np.datetime64``, pandas, ISO strings); naive
            values are taken as UTC, aware ones converted to UTC. A single value gives B=1.

    Returns:
        float32 [B, 4]: ``sin(w), cos(w), sin(h), cos(h)`` with ``w = ISO week * 2pi/52``
        and ``h = UTC hour * 2pi/24``.
    """
    from geofm.dates import utc_index

    index = utc_index(dates)
    week = index.isocalendar().week.to_numpy(dtype=np.float64) * 2 * np.pi / WEEKS_PER_YEAR
    hour = index.hour.to_numpy(dtype=np.float64) * 2 * np.pi / HOURS_PER_DAY
    return np.stack([np.sin(week), np.cos(week), np.sin(hour), np.cos(hour)],
                    axis=1).astype(np.float32)


def footprint_centres(footprints: Any) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude of chip footprint centroids: the position Clay is given.

    Args:
        footprints: N WGS84 polygons (shapely geometries, a GeoSeries, or WKB bytes).

    Returns:
        ``(lats, lons)``: two float64 arrays [N], degrees; latitude first, as
        :func:`encode_latlon` takes them.
    """
    import shapely

    geoms = np.asarray(footprints, dtype=object)
    if geoms.size and isinstance(geoms.flat[0], bytes | bytearray):
        geoms = shapely.from_wkb(geoms)
    centres = shapely.centroid(geoms)
    return (np.asarray(shapely.get_y(centres), dtype=np.float64),
            np.asarray(shapely.get_x(centres), dtype=np.float64))


def encode_latlon(lat: Any, lon: Any) -> np.ndarray:
    """Clay's location code, latitude first.

    Args:
        lat: B latitudes, degrees north, in [-90, 90] (WGS84, e.g. chip centroid).
        lon: B longitudes, degrees east, in [-180, 360].

    Returns:
        float32 [B, 4]: ``sin(lat), cos(lat), sin(lon), cos(lon)`` of the angles in
        radians.

    Raises:
        GeofmValueError: a latitude outside [-90, 90] (often swapped lat/lon), a value
            that is not finite, or lengths that differ.
    """
    lat_a = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon_a = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    if lat_a.shape != lon_a.shape or lat_a.ndim != 1:
        raise ShapeError(f"lat has shape {lat_a.shape} but lon has shape {lon_a.shape}; "
                         "give one latitude and one longitude per chip")
    if not (np.isfinite(lat_a).all() and np.isfinite(lon_a).all()):
        raise GeofmValueError("latitude/longitude contain NaN or inf; every chip needs a "
                              "WGS84 footprint centroid")
    if np.any(np.abs(lat_a) > 90):
        raise GeofmValueError(
            f"latitude {lat_a[np.abs(lat_a) > 90][0]} is outside [-90, 90]; are latitude "
            "and longitude swapped? encode_latlon takes (lat, lon) in degrees")
    if np.any(lon_a < -180) or np.any(lon_a > 360):
        raise GeofmValueError(f"longitude outside [-180, 360]: {lon_a.tolist()}; give "
                              "degrees east")
    la, lo = np.deg2rad(lat_a), np.deg2rad(lon_a)
    return np.stack([np.sin(la), np.cos(la), np.sin(lo), np.cos(lo)], axis=1).astype(
        np.float32)


def make_datacube(pixels_dn: np.ndarray | torch.Tensor, *, sensor: Sensor | str,
                  bands: Sequence[str], dates: Any, lats: Any, lons: Any,
                  device: str | torch.device = "cpu",
                  time_location: bool = True) -> dict[str, torch.Tensor]:
    """Assemble the encoder's input dict from DN pixels and chip metadata.

    Args:
        pixels_dn: DN values [B, C, H, W] (numpy or torch; pinned CPU tensors are moved
            without blocking), bands in the order of ``bands``.
        sensor: the :class:`~geofm.sensors.Sensor` or its name.
        bands: C band names of ``sensor`` (all with Clay statistics).
        dates: B acquisition datetimes (see :func:`encode_time`).
        lats: B latitudes, degrees (chip centroid, WGS84).
        lons: B longitudes, degrees.
        device: where the tensors go.
        time_location: encode ``dates`` and ``lats``/``lons``; False feeds zeros in
            those 8 channels (what Clay's own tutorials do when they are unknown), so the
            embedding depends on the pixels only. Dates and positions are still
            validated.

    Returns:
        ``pixels`` float32 [B, C, H, W] normalised, ``time`` float32 [B, 4], ``latlon``
        float32 [B, 4], ``gsd`` float32 scalar (metres), ``waves`` float32 [C] (um).

    Raises:
        ShapeError: band count or batch length mismatch (names the dimension).
        SensorError: unknown band, or a band without Clay statistics.
    """
    import torch

    sensor_obj = get_sensor(sensor) if isinstance(sensor, str) else sensor
    bands = sensor_obj.resolve(list(bands))
    mean, std = sensor_obj.normalisation(bands)
    waves = sensor_obj.wavelengths(bands)
    if pixels_dn.ndim != 4:
        raise ShapeError(f"pixels have shape {tuple(pixels_dn.shape)}; expected [batch, "
                         "band, y, x]")
    b, c = pixels_dn.shape[:2]
    if c != len(bands):
        raise ShapeError(f"pixels have band={c} but {len(bands)} band names were given "
                         f"({', '.join(bands)})")
    time = encode_time(dates)
    latlon = encode_latlon(lats, lons)
    for name, arr in (("dates", time), ("lats/lons", latlon)):
        if arr.shape[0] != b:
            raise ShapeError(f"{name} have length {arr.shape[0]} but pixels have batch={b}; "
                             "give one value per chip")
    if not time_location:
        time, latlon = np.zeros_like(time), np.zeros_like(latlon)
    dev = torch.device(device)
    pixels_t: torch.Tensor = (torch.from_numpy(np.ascontiguousarray(pixels_dn))
                              if isinstance(pixels_dn, np.ndarray) else pixels_dn)
    pixels_t = pixels_t.to(dev, non_blocking=True)
    return {
        "pixels": normalise(pixels_t, mean, std),
        "time": torch.from_numpy(time).to(dev),
        "latlon": torch.from_numpy(latlon).to(dev),
        "gsd": torch.tensor(float(sensor_obj.gsd), dtype=torch.float32, device=dev),
        "waves": torch.from_numpy(waves).to(dev),
    }
