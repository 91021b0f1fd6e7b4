"""The NetCDF chip format: one chip of one acquisition, written by ``chip``, read by the rest.

Layout of ``chips/<scene_id>/<chip_id>.nc`` (CF-1.8, engine h5netcdf):

- one variable per band, named by its Earth Search asset key, dims ``(time, y, x)``,
  ``time`` of length 1; dtype as in the source (uint16 DN for Sentinel-2), already
  harmonised (the +1000 offset of baseline >= 04.00 removed); CF attributes
  ``scale_factor`` (DN -> reflectance), ``add_offset`` and ``_FillValue`` (nodata) are
  stored as *attributes*, so ``xarray.open_dataset(..., mask_and_scale=True)`` yields
  reflectance and :func:`read_chip_array` yields DN;
- ``x``/``y`` coordinates: pixel centres in the scene's native CRS (metres);
- ``spatial_ref``: the CRS as a CF grid mapping (``rioxarray`` reads it back);
- global attributes: ``chip_id``, ``scene_id``, ``sensor``, ``date`` (ISO 8601, UTC),
  ``epsg``, ``harmonisation`` (what was done to the DNs), ``bands`` (comma list).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from geofm.exceptions import RasterError, ShapeError
from geofm.io import atomic_path


def write_chip(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    bands: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    epsg: int,
    date: datetime,
    nodata: float | int | None = 0,
    scale: float = 1.0,
    offset: float = 0.0,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write one chip atomically.

    Args:
        path: destination ``.nc`` file.
        pixels: DN values [band, y, x] in the source dtype (e.g. uint16).
        bands: asset keys, one per entry of the band dimension.
        x: pixel-centre easting coordinates [x], native CRS metres.
        y: pixel-centre northing coordinates [y], native CRS metres (descending).
        epsg: EPSG code of the native CRS.
        date: acquisition time (timezone-aware UTC or naive UTC).
        nodata: DN meaning "no data" (``None`` if there is none).
        scale: CF ``scale_factor`` (DN -> physical value).
        offset: CF ``add_offset``.
        attrs: extra global attributes (``chip_id``, ``scene_id``, ``sensor``, ...).

    Returns:
        The written path.
    """
    import pandas as pd
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    if pixels.ndim != 3:
        raise ShapeError(f"chip pixels must be [band, y, x], got {pixels.ndim} dimensions")
    for axis, (dim, n) in enumerate((("band", len(bands)), ("y", len(y)), ("x", len(x)))):
        if n != pixels.shape[axis]:
            raise ShapeError(f"dimension {dim!r}: pixels have length {pixels.shape[axis]}, "
                             f"coordinates/names have length {n}")
    stamp = pd.Timestamp(date)
    stamp = stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp
    variables = {}
    for i, band in enumerate(bands):
        var_attrs: dict[str, Any] = {"scale_factor": scale, "add_offset": offset}
        if nodata is not None:
            var_attrs["_FillValue"] = np.array(nodata, dtype=pixels.dtype)
        variables[band] = xr.Variable(("time", "y", "x"), pixels[i][None], attrs=var_attrs)
    ds = xr.Dataset(variables, coords={"time": [stamp.to_datetime64()], "y": y, "x": x})
    ds.x.attrs.update(units="m", standard_name="projection_x_coordinate")
    ds.y.attrs.update(units="m", standard_name="projection_y_coordinate")
    ds = ds.rio.write_crs(f"EPSG:{epsg}").rio.write_coordinate_system()
    ds.attrs.update({"Conventions": "CF-1.8", "epsg": int(epsg), "bands": ",".join(bands),
                     "date": stamp.isoformat() + "Z", **dict(attrs or {})})
    encoding: dict[str, dict[str, Any]] = {
        b: {"dtype": str(pixels.dtype), "grid_mapping": "spatial_ref"} for b in bands}
    encoding["time"] = {"units": "seconds since 1970-01-01", "dtype": "int64"}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
    return Path(path)


def open_chip(path: str | os.PathLike[str], *, decode: bool = False):  # type: ignore[no-untyped-def]
    """Open a chip as an ``xarray.Dataset`` (DN values unless ``decode``).

    Raises:
        RasterError: the file is missing or not a readable chip.
    """
    import xarray as xr

    try:
        return xr.open_dataset(path, engine="h5netcdf", mask_and_scale=decode,
                               decode_coords="all").load()
    except FileNotFoundError:
        raise RasterError(f"chip file {path} does not exist; re-run `geofm chip` for its "
                          "scene (with --overwrite if the scene was marked complete)") from None
    except Exception as exc:  # h5py/netCDF raise many types for a corrupt file
        raise RasterError(f"cannot read chip {path}: {exc}; delete it and re-run "
                          "`geofm chip --overwrite` for its scene") from exc


def read_chip_array(path: str | os.PathLike[str],
                    bands: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read the named bands of a chip as DN.

    Args:
        path: chip ``.nc`` file.
        bands: asset keys to read, in the order wanted.

    Returns:
        ``(pixels, valid)``: pixels float32 [C, H, W] in DN (harmonised), and valid
        bool [H, W], False where any requested band is nodata or not finite.

    Raises:
        RasterError: unreadable file or a requested band missing (names the bands present).
    """
    ds = open_chip(path)
    missing = [b for b in bands if b not in ds.data_vars]
    if missing:
        raise RasterError(f"chip {path} has no band(s) {', '.join(missing)}; it holds "
                          f"{', '.join(map(str, ds.data_vars))}. Re-chip with --bands "
                          f"{','.join(bands)}")
    arrays, valid = [], None
    for band in bands:
        da = ds[band].isel(time=0)
        raw = da.values
        fill = da.encoding.get("_FillValue", da.attrs.get("_FillValue"))
        ok = np.isfinite(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
        if fill is not None:
            ok &= raw != fill
        valid = ok if valid is None else valid & ok
        arrays.append(raw.astype(np.float32))
    assert valid is not None
    return np.stack(arrays), valid
