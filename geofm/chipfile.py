"""The NetCDF chip format: one chip of one acquisition, written by ``chip``, read by the rest.

Layout of ``chips/<scene_id>/<chip_id>.nc`` (CF-1.8, engine h5netcdf):

- one variable per band, named by its Earth Search asset key, dims ``(time, y, x)``,
  ``time`` of length 1; dtype as in the source (uint16 DN for Sentinel-2), already
  harmonised (the +1000 offset of baseline >= 04.00 removed); CF attributes
  ``scale_factor`` (DN -> reflectance), ``add_offset`` and ``_FillValue`` (nodata) are
  stored as *attributes*, so ``xarray.open_dataset(..., mask_and_scale=True)`` yields
  reflectance and :func:`read_chip_array` yields DN;
- ``x``/``y`` coordinates: pixel centres in the scene's native CRS (metres);
- ``spatial_ref``: the CRS as a CF grid mapping plus GDAL's ``GeoTransform`` of the
  :class:`~geofm.grid.PixelGrid` the coordinates are the centres of (``rioxarray``
  reads both back; :func:`chip_grid` gives the grid);
- global attributes: ``chip_id``, ``scene_id``, ``sensor``, ``date`` (ISO 8601, UTC),
  ``epsg``, ``harmonisation`` (what was done to the DNs), ``bands`` (comma list).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from geofm.exceptions import RasterError, ShapeError
from geofm.grid import PixelGrid
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

    The first chip of a kind (same bands, shape, dtype, CRS, nodata, scale, offset,
    attribute names, non-string attribute values and string lengths) is written with
    h5py and kept as a template; the next ones copy the template and put their pixels,
    coordinates, time and string attributes (``chip_id``, ``date``, ``GeoTransform``,
    ...) in place (:class:`_Template`): byte for byte the file the h5py writer writes,
    about 20x faster (the chip stage's hot loop, issue 18).

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

    if pixels.ndim != 3:
        raise ShapeError(f"chip pixels must be [band, y, x], got {pixels.ndim} dimensions")
    for axis, (dim, n) in enumerate((("band", len(bands)), ("y", len(y)), ("x", len(x)))):
        if n != pixels.shape[axis]:
            raise ShapeError(f"dimension {dim!r}: pixels have length {pixels.shape[axis]}, "
                             f"coordinates/names have length {n}")
    stamp = pd.Timestamp(date)
    stamp = stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    global_attrs = {"Conventions": "CF-1.8", "epsg": int(epsg), "bands": ",".join(bands),
                    "date": stamp.isoformat() + "Z", **dict(attrs or {})}
    grid_mapping = PixelGrid.from_coords(x, y, epsg=int(epsg), res=1.0).cf_grid_mapping()
    chip = _ChipContent(pixels=np.ascontiguousarray(pixels), bands=tuple(bands),
                        epsg=int(epsg), x=x, y=y,
                        micros=int(stamp.value // 1000), nodata=nodata, scale=float(scale),
                        offset=float(offset), global_attrs=global_attrs,
                        grid_mapping=grid_mapping)
    key = chip.template_key()
    template = _TEMPLATES.get(key) if key is not None else None
    with atomic_path(path) as tmp:
        if template is None and key is not None and key not in _TEMPLATES:
            template = _Template.build(chip, tmp)
            with _TEMPLATES_LOCK:
                while len(_TEMPLATES) >= _MAX_TEMPLATES:
                    _TEMPLATES.pop(next(iter(_TEMPLATES)))
                _TEMPLATES[key] = template
        if template is not None:
            tmp.write_bytes(template.render(chip))
        else:
            _write_h5(tmp, chip)
    return Path(path)


@dataclasses.dataclass(frozen=True)
class _ChipContent:
    """Everything one chip file holds, checked and normalised by :func:`write_chip`."""

    pixels: np.ndarray
    bands: tuple[str, ...]
    epsg: int
    x: np.ndarray
    y: np.ndarray
    micros: int
    nodata: float | int | None
    scale: float
    offset: float
    global_attrs: dict[str, Any]
    grid_mapping: dict[str, Any]

    def varying(self) -> dict[str, str]:
        """The string attributes a template patches.

        Every string global attribute and the grid mapping's ``GeoTransform``
        (``chip_id``, ``date``, ``scene_id`` differ from chip to chip or scene to scene).
        """
        out = {k: v for k, v in self.global_attrs.items() if isinstance(v, str)}
        out["GeoTransform"] = str(self.grid_mapping["GeoTransform"])
        return out

    def template_key(self) -> tuple[Any, ...] | None:
        """What a template must share with this chip (``None``: write without one)."""
        varying = self.varying()
        if len(varying) > len(_MARKERS) or not all(v.isascii() for v in varying.values()):
            return None
        fixed = tuple((k, type(v).__name__, None if k in varying else repr(v))
                      for k, v in self.global_attrs.items())
        return (self.pixels.shape, self.pixels.dtype.str, self.bands, self.epsg,
                repr(self.nodata), self.scale, self.offset, fixed,
                tuple((k, len(v)) for k, v in varying.items()))

    def with_markers(self, markers: Mapping[str, str]) -> _ChipContent:
        """This chip with its varying strings replaced by ``markers`` (same keys)."""
        global_attrs = {k: markers.get(k, v) for k, v in self.global_attrs.items()}
        # (``markers`` holds every string global attribute, so none is left as it was)
        grid_mapping = {**self.grid_mapping, "GeoTransform": markers["GeoTransform"]}
        return dataclasses.replace(self, global_attrs=global_attrs, grid_mapping=grid_mapping)


#: Chip templates of this process, by :meth:`_ChipContent.template_key` (``None``: this
#: kind of chip is always written by :func:`_write_h5`).
_TEMPLATES: dict[tuple[Any, ...], _Template | None] = {}
_TEMPLATES_LOCK = threading.Lock()

#: One marker character per patched string attribute (see :meth:`_Template.build`).
_MARKERS = "#@!$%&*+~^"

#: At most this many templates are kept (one per scene and chip kind is the usual need).
_MAX_TEMPLATES = 8


@dataclasses.dataclass(frozen=True)
class _Template:
    """The bytes of one chip file and where its per-chip parts lie in them.

    The h5py writer stores every variable contiguously (no chunks, no filters) and
    string attributes as variable-length strings in the HDF5 global heap, neither
    covered by a checksum, so a chip that differs from the template only in its arrays
    and in equal-length string attributes is the template with those bytes replaced.
    :meth:`build` checks this on the template itself (each marker string found exactly
    once, every array contiguous, re-rendering gives the same bytes) and returns
    ``None`` otherwise, and :func:`write_chip` then writes that kind with h5py.
    """

    image: bytes
    arrays: tuple[tuple[str, int, int], ...]  # (variable, byte offset, byte length)
    strings: tuple[tuple[str, int], ...]  # (attribute, byte offset); empty ones left out

    @classmethod
    def build(cls, chip: _ChipContent, scratch: Path) -> _Template | None:
        """Write ``chip`` with marker strings to ``scratch`` and map it; ``None`` if unmappable."""
        import h5py

        varying = chip.varying()
        markers = {k: _MARKERS[i] * len(v) for i, (k, v) in enumerate(varying.items())}
        # zero arrays: no pixel or coordinate byte can be taken for a marker
        blank = dataclasses.replace(chip.with_markers(markers), micros=0,
                                    pixels=np.zeros_like(chip.pixels),
                                    x=np.zeros_like(chip.x), y=np.zeros_like(chip.y))
        _write_h5(scratch, blank)
        image = scratch.read_bytes()
        strings = []
        for name, marker in markers.items():
            raw = marker.encode()
            if not raw:
                continue
            at = image.find(raw)
            if at < 0 or image.find(raw[:1] * (len(raw) + 1)) >= 0 \
                    or image.find(raw, at + 1) >= 0:
                return None
            strings.append((name, at))
        arrays = []
        with h5py.File(scratch, "r") as fh:
            for name in ("time", "y", "x", *chip.bands):
                ds = fh[name]
                where = ds.id.get_offset()
                if where is None or ds.chunks is not None or ds.compression is not None:
                    return None
                arrays.append((name, int(where), int(ds.id.get_storage_size())))
        template = cls(image=image, arrays=tuple(arrays), strings=tuple(strings))
        if template.render(blank) != image:
            return None
        return template

    def render(self, chip: _ChipContent) -> bytes:
        """The file bytes of ``chip`` (of this template's kind)."""
        buf = bytearray(self.image)
        values = {"time": np.array([chip.micros], np.int64), "x": chip.x, "y": chip.y,
                  **{b: chip.pixels[i] for i, b in enumerate(chip.bands)}}
        for name, where, size in self.arrays:
            raw = np.ascontiguousarray(values[name]).tobytes()
            if len(raw) != size:
                raise ShapeError(f"chip template: variable {name!r} holds {size} bytes, "
                                 f"got {len(raw)}")
            buf[where:where + size] = raw
        varying = chip.varying()
        for name, where in self.strings:
            raw = varying[name].encode()
            buf[where:where + len(raw)] = raw
        return bytes(buf)


def _write_h5(target: Path, chip: _ChipContent) -> None:
    """Write ``chip`` with h5py in the netCDF-4 layout (dimension scales, CF attributes).

    The same file xarray + h5netcdf would write, 3-4x faster; read back with
    xarray/rioxarray (:func:`open_chip`).
    """
    import h5py

    pixels = chip.pixels
    with h5py.File(target, "w", track_order=True) as fh:
        fh.attrs["_NCProperties"] = np.bytes_("version=2,geofm=chipfile,hdf5=h5py")
        scales = {}
        coords = (
            ("time", np.array([chip.micros], np.int64),
             {"units": "microseconds since 1970-01-01", "calendar": "proleptic_gregorian",
              "standard_name": "time"}),
            ("y", chip.y, {"units": "metre", "standard_name": "projection_y_coordinate",
                           "axis": "Y", "long_name": "y coordinate of projection"}),
            ("x", chip.x, {"units": "metre", "standard_name": "projection_x_coordinate",
                           "axis": "X", "long_name": "x coordinate of projection"}),
        )
        for dim_id, (name, values, var_attrs) in enumerate(coords):
            ds = fh.create_dataset(name, data=values)
            ds.make_scale(name)
            ds.attrs["_Netcdf4Dimid"] = np.int32(dim_id)
            for key, value in var_attrs.items():
                ds.attrs[key] = value
            scales[name] = ds
        grid_mapping = fh.create_dataset("spatial_ref", data=np.int64(0))
        for key, value in chip.grid_mapping.items():
            grid_mapping.attrs[key] = value
        nodata = chip.nodata
        for i, band in enumerate(chip.bands):
            kwargs = {} if nodata is None else {"fillvalue": np.array(nodata, pixels.dtype)}
            var = fh.create_dataset(band, data=pixels[i][None], **kwargs)
            for axis, dim in enumerate(("time", "y", "x")):
                var.dims[axis].attach_scale(scales[dim])
            if nodata is not None:
                var.attrs["_FillValue"] = np.array([nodata], dtype=pixels.dtype)
            var.attrs["scale_factor"] = chip.scale
            var.attrs["add_offset"] = chip.offset
            var.attrs["grid_mapping"] = "spatial_ref"
            var.attrs["coordinates"] = "spatial_ref"
        for key, value in chip.global_attrs.items():
            fh.attrs[key] = value


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
    """Read the named bands of a chip as DN (the hot path of ``embed`` and ``finetune``).

    Reads the band variables straight from the HDF5 container (no xarray decoding:
    about 10x faster per chip than :func:`open_chip`).

    Args:
        path: chip ``.nc`` file.
        bands: asset keys to read, in the order wanted.

    Returns:
        ``(pixels, valid)``: pixels float32 [C, H, W] in DN (harmonised), and valid
        bool [H, W], False where any requested band is nodata or not finite.

    Raises:
        RasterError: unreadable file or a requested band missing (names the bands present).
    """
    import h5py

    try:
        fh = h5py.File(path, "r")
    except FileNotFoundError:
        raise RasterError(f"chip file {path} does not exist; re-run `geofm chip` for its "
                          "scene (with --overwrite if the scene was marked complete)") from None
    except OSError as exc:
        raise RasterError(f"cannot read chip {path}: {exc}; delete it and re-run "
                          "`geofm chip --overwrite` for its scene") from exc
    with fh:
        missing = [b for b in bands if b not in fh]
        if missing:
            present = [k for k in fh if k not in ("time", "x", "y", "spatial_ref")]
            raise RasterError(f"chip {path} has no band(s) {', '.join(missing)}; it holds "
                              f"{', '.join(present)}. Re-chip with --bands {','.join(bands)}")
        arrays, valid = [], None
        for band in bands:
            try:
                raw = fh[band][0]
            except (OSError, ValueError, IndexError) as exc:
                raise RasterError(f"cannot read band {band!r} of chip {path}: {exc}; delete "
                                  "it and re-run `geofm chip --overwrite` for its scene") from exc
            fill = fh[band].attrs.get("_FillValue")
            ok = np.isfinite(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
            if fill is not None:
                ok &= raw != np.asarray(fill).ravel()[0]
            valid = ok if valid is None else valid & ok
            arrays.append(raw.astype(np.float32))
    assert valid is not None
    return np.stack(arrays), valid


def chip_grid(path: str | os.PathLike[str]) -> PixelGrid:
    """The native pixel grid of a chip file (from its ``x``/``y`` centres and ``epsg``).

    Raises:
        RasterError: the file is missing or not a readable chip.
    """
    ds = open_chip(path)
    if "epsg" in ds.attrs:
        epsg = int(ds.attrs["epsg"])
    else:
        import rioxarray  # noqa: F401  (registers the .rio accessor)

        epsg = int(ds.rio.crs.to_epsg())
    return PixelGrid.from_coords(ds["x"].values, ds["y"].values, epsg=epsg, res=10.0)
