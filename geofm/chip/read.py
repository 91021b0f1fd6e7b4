"""Windowed reading of any band onto a 10 m target grid, exactly aligned.

The target is a :class:`geofm.grid.PixelGrid` (north-up, the native CRS). A source band
of another resolution is sampled at the target's pixel centres, so 20 m / 60 m edges
land on 10 m edges with no half-pixel shift:

- ``nearest``: the source pixel that contains the centre (used for SCL, and for bands
  already on the target grid, where it is a plain windowed read);
- ``bilinear``: the four source pixels around the centre, weights by distance between
  source pixel centres; nodata neighbours get weight 0 and a target pixel is nodata
  where its nearest source pixel is nodata.

Only the source rows/columns the target needs are read from the file.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from geofm.exceptions import GeofmValueError
from geofm.grid import check_north_up

if TYPE_CHECKING:
    from geofm.grid import PixelGrid


def _axis(src_origin: float, src_res: float, centres: np.ndarray) -> np.ndarray:
    """Fractional source pixel index of each target centre (0.0 = first pixel's centre)."""
    return (centres - src_origin) / src_res - 0.5


def _is_run(idx: np.ndarray) -> bool:
    return bool(len(idx)) and idx[-1] - idx[0] == len(idx) - 1 and bool(np.all(np.diff(idx) == 1))


def _take(block: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``block[rows][:, cols]`` with slices where the indices are contiguous runs."""
    r = slice(int(rows[0]), int(rows[-1]) + 1) if _is_run(rows) else rows
    c = slice(int(cols[0]), int(cols[-1]) + 1) if _is_run(cols) else cols
    if isinstance(r, slice) or isinstance(c, slice):
        return block[r][:, c]
    return block[np.ix_(r, c)]


def read_to_grid(src, grid: PixelGrid, *, resampling: str = "nearest",  # type: ignore[no-untyped-def]
                 nodata: float | None = 0, band: int = 1) -> np.ndarray:
    """Read one band of an open rasterio dataset onto ``grid``.

    Args:
        src: open ``rasterio`` dataset, north-up, same CRS as the grid.
        grid: the target pixels.
        resampling: ``"nearest"`` or ``"bilinear"``.
        nodata: value meaning no data in the source (and written where the target has
            none, including outside the source raster).
        band: 1-based band index in ``src``.

    Returns:
        Array [grid.height, grid.width] in the source dtype.

    Raises:
        GeofmValueError: unknown resampling.
        GridError: a rotated or south-up source.
    """
    if resampling not in ("nearest", "bilinear"):
        raise GeofmValueError(f"resampling {resampling!r} is not supported; use 'nearest' or "
                              "'bilinear'")
    check_north_up(src.transform, path=str(src.name))
    a, _, c, _, e, f = (float(v) for v in tuple(src.transform)[:6])
    src_h, src_w = src.height, src.width
    fill = 0 if nodata is None else nodata
    fc = _axis(c, a, grid.x_centres())          # fractional source columns
    fr = _axis(-f, -e, -grid.y_centres())       # fractional source rows (y descends)
    near_c = np.floor(fc + 0.5).astype(np.int64)
    near_r = np.floor(fr + 0.5).astype(np.int64)
    inside_c = (near_c >= 0) & (near_c < src_w)
    inside_r = (near_r >= 0) & (near_r < src_h)
    res_x, res_y = grid.res
    if resampling == "nearest" or (math.isclose(a, res_x) and math.isclose(-e, res_y)
                                   and np.allclose(fc, near_c) and np.allclose(fr, near_r)):
        rows, cols = np.clip(near_r, 0, src_h - 1), np.clip(near_c, 0, src_w - 1)
        block = _read(src, band, rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
        out = _take(block, rows - rows.min(), cols - cols.min())
        if not (inside_r.all() and inside_c.all()):
            out = out.copy()
            out[~inside_r, :] = fill
            out[:, ~inside_c] = fill
        return out
    # bilinear: two neighbours per axis, clamped at the raster edge (edge replication)
    c0 = np.floor(fc).astype(np.int64)
    r0 = np.floor(fr).astype(np.int64)
    wc = (fc - c0).astype(np.float32)
    wr = (fr - r0).astype(np.float32)
    c0c, c1c = np.clip(c0, 0, src_w - 1), np.clip(c0 + 1, 0, src_w - 1)
    r0c, r1c = np.clip(r0, 0, src_h - 1), np.clip(r0 + 1, 0, src_h - 1)
    rmin, rmax = int(min(r0c.min(), r1c.min())), int(max(r0c.max(), r1c.max())) + 1
    cmin, cmax = int(min(c0c.min(), c1c.min())), int(max(c0c.max(), c1c.max())) + 1
    block = _read(src, band, rmin, rmax, cmin, cmax)
    values = block.astype(np.float32)
    valid = (np.ones(block.shape, np.float32) if nodata is None
             else (block != nodata).astype(np.float32))
    values *= valid

    def interp(arr: np.ndarray) -> np.ndarray:
        cols = arr[:, c0c - cmin] * (1 - wc) + arr[:, c1c - cmin] * wc
        return cols[r0c - rmin] * (1 - wr)[:, None] + cols[r1c - rmin] * wr[:, None]

    weight = interp(valid)
    total = interp(values)
    near_valid = _take(valid, np.clip(near_r, 0, src_h - 1) - rmin,
                       np.clip(near_c, 0, src_w - 1) - cmin) > 0
    ok = near_valid & (weight > 0) & inside_r[:, None] & inside_c[None, :]
    out = np.full((grid.height, grid.width), fill, dtype=block.dtype)
    result = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        result = np.clip(np.rint(result), info.min, info.max)
    out[ok] = result[ok].astype(block.dtype)
    return out


def _read(src, band: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    from rasterio.windows import Window

    return src.read(band, window=Window(c0, r0, c1 - c0, r1 - r0))
