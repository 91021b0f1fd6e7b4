"""Pixel grids: which pixel is where, answered once for every stage.

A :class:`PixelGrid` is a north-up raster grid in one projected CRS: an EPSG code, the
affine transform of the pixel *corners* (rasterio's ``Affine``, coefficients
``(a, b, c, d, e, f)`` with ``b == d == 0``, ``a > 0``, ``e < 0``) and a shape
``(height, width)``. Pixel ``(i, j)`` (row ``i`` counted down, column ``j`` right)
covers ``[c + j*a, c + (j+1)*a] x [f + (i+1)*e, f + i*e]`` and has its centre at
``x = c + (j + 0.5)*a``, ``y = f + (i + 0.5)*e`` (metres in the grid's CRS). Chip files
store those centres as their ``x``/``y`` coordinates (:meth:`PixelGrid.from_coords`
turns them back into the grid); the chip stage reads bands onto a grid, ``finetune``
resamples labels onto it, ``predict`` and ``analyze`` mosaic chip footprints into one.

A :class:`ChipGrid` is the chip tiling of the chip stage: square cells of
``chip_size`` pixels counted from a fixed origin (the upper-left corner of the item's
raster grid, or an explicit ``--grid-origin``). Cell ``(row, col)`` is
``[x0 + col*S*p, x0 + (col+1)*S*p] x [y0 - (row+1)*S*p, y0 - row*S*p]`` (``S`` = chip size
in pixels, ``p`` = pixel size in metres), so the same footprint gets the same cell, and
the same chip id, in every acquisition and every run.

Arithmetic is kept in the order the stages have always used, so coordinates, bounds and
transforms are the same floats bit for bit (a test pins it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geofm.exceptions import GridError

if TYPE_CHECKING:
    from affine import Affine

#: Tolerance (in pixels) for "a grid corner lies on a pixel corner of another grid".
ALIGN_TOL = 1e-6


def _affine(coefficients: Sequence[float]) -> Affine:
    from rasterio.transform import Affine

    return Affine(*(float(v) for v in tuple(coefficients)[:6]))


def _pair(res: float | tuple[float, float]) -> tuple[float, float]:
    """``(x size, y size)`` of a pixel size given as one number or a pair."""
    if isinstance(res, tuple | list):
        return float(res[0]), float(res[1])
    return float(res), float(res)


def check_north_up(transform: Any, *, path: str | None = None) -> None:
    """Raise :class:`~geofm.exceptions.GridError` unless ``transform`` is north-up.

    Args:
        transform: affine coefficients ``(a, b, c, d, e, f, ...)`` (an ``Affine`` or a
            sequence, rasterio order).
        path: the raster the transform belongs to, for the message.

    Raises:
        GridError: rotated or sheared (``b`` or ``d`` not 0), or not ``a > 0, e < 0``.
    """
    coeffs = tuple(float(v) for v in tuple(transform)[:6])
    if len(coeffs) < 6:
        raise GridError(f"transform {coeffs} has {len(coeffs)} coefficients, not 6; pass "
                        "(a, b, c, d, e, f) in rasterio order", transform=coeffs, path=path)
    a, b, c, d, e, f = coeffs
    if b != 0 or d != 0 or not a > 0 or not e < 0 or not all(map(math.isfinite, coeffs)):
        where = f"{path} " if path else ""
        raise GridError(
            f"{where}is not on a north-up grid (transform {coeffs}: rotation b={b}, d={d}, "
            f"pixel size a={a}, e={e}); geofm needs no rotation, a > 0 and e < 0: reproject "
            "it first (e.g. gdalwarp to its own CRS)", transform=coeffs, path=path)


@dataclass(frozen=True)
class PixelGrid:
    """A north-up pixel grid: CRS, affine transform of the pixel corners, shape.

    Attributes:
        epsg: EPSG code of the (projected) CRS.
        transform: rasterio ``Affine`` of the pixel corners, CRS units (metres);
            a sequence of 6 coefficients is turned into one.
        shape: ``(height, width)`` in pixels, both >= 1.

    Raises:
        GridError: a rotated or south-up transform, or an empty shape.
    """

    epsg: int
    transform: Affine
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        check_north_up(self.transform)
        from affine import Affine

        if not isinstance(self.transform, Affine):
            object.__setattr__(self, "transform", _affine(self.transform))
        height, width = (int(n) for n in self.shape)
        if height < 1 or width < 1:
            raise GridError(f"grid shape {tuple(self.shape)} is empty; a grid needs at least "
                            "one row and one column", transform=tuple(self.transform)[:6])
        object.__setattr__(self, "shape", (height, width))
        object.__setattr__(self, "epsg", int(self.epsg))

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_origin(cls, x0: float, y0: float, *, res: float | tuple[float, float],
                    shape: tuple[int, int], epsg: int) -> PixelGrid:
        """Grid whose upper-left corner is ``(x0, y0)``.

        Args:
            x0: left edge, CRS metres.
            y0: top edge, CRS metres.
            res: pixel size in metres, or ``(x size, y size)`` (both positive).
            shape: ``(height, width)`` in pixels.
            epsg: EPSG code of the CRS.
        """
        res_x, res_y = _pair(res)
        return cls(epsg, _affine((res_x, 0.0, float(x0), 0.0, -res_y, float(y0))), shape)

    @classmethod
    def from_coords(cls, x: np.ndarray, y: np.ndarray, *, epsg: int,
                    res: float | None = None) -> PixelGrid:
        """Grid of pixel-centre coordinates (a chip file's ``x`` [W] and ``y`` [H]).

        The pixel size is the step between the first two centres of each axis.

        Args:
            x: float [W] pixel-centre eastings, ascending, CRS metres.
            y: float [H] pixel-centre northings, descending, CRS metres.
            epsg: EPSG code of the CRS.
            res: pixel size assumed along an axis with a single coordinate (its step
                cannot be measured); required only then.

        Raises:
            GridError: an axis is empty, or has one coordinate and no ``res``, or ``y``
                ascends (south-up).
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        for name, axis in (("x", x), ("y", y)):
            if axis.ndim != 1 or axis.size == 0 or (axis.size == 1 and res is None):
                raise GridError(f"coordinate {name!r} has shape {axis.shape}; a grid needs a "
                                "1-d axis of at least 2 pixel centres (or pass res= for a "
                                "1-pixel axis)")
        dx = float(x[1] - x[0]) if x.size > 1 else float(res)  # type: ignore[arg-type]
        dy = float(y[1] - y[0]) if y.size > 1 else -float(res)  # type: ignore[arg-type]
        transform = (dx, 0.0, float(x[0]) - dx / 2, 0.0, dy, float(y[0]) - dy / 2)
        return cls(epsg, _affine(transform), (int(y.size), int(x.size)))

    @classmethod
    def of_raster(cls, src: Any, *, epsg: int | None = None) -> PixelGrid:
        """Grid of an open rasterio dataset.

        Args:
            src: open ``rasterio`` dataset.
            epsg: its CRS, if already known (default: ``src.crs``).

        Raises:
            GridError: the raster is not north-up, or has no EPSG-coded CRS.
        """
        check_north_up(src.transform, path=str(src.name))
        if epsg is None:
            epsg = src.crs.to_epsg() if src.crs is not None else None
            if epsg is None:
                raise GridError(f"{src.name} has no CRS with an EPSG code ({src.crs}); "
                                "assign one (e.g. gdal_edit.py -a_srs EPSG:32633)",
                                transform=tuple(src.transform)[:6], path=str(src.name))
        return cls(int(epsg), src.transform, (int(src.height), int(src.width)))

    @classmethod
    def covering(cls, bounds: np.ndarray, *, res: float | tuple[float, float],
                 epsg: int) -> PixelGrid:
        """The smallest grid of ``res`` pixels anchored at the boxes' upper-left corner.

        Used to mosaic chip footprints (``predict``: one pixel per chip pixel;
        ``analyze``: one pixel per chip). The width and height are the boxes' extent
        divided by the pixel size, rounded to whole pixels.

        Args:
            bounds: float [N, 4] ``minx, miny, maxx, maxy``, CRS metres.
            res: pixel size in metres, or ``(x size, y size)``.
            epsg: EPSG code of the CRS.
        """
        b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
        res_x, res_y = _pair(res)
        x0, y1 = float(b[:, 0].min()), float(b[:, 3].max())
        width = int(round((float(b[:, 2].max()) - x0) / res_x))
        height = int(round((y1 - float(b[:, 1].min())) / res_y))
        return cls(epsg, _affine((res_x, 0.0, x0, 0.0, -res_y, y1)), (height, width))

    # -- geometry -----------------------------------------------------------------------

    @property
    def height(self) -> int:
        """Rows (pixels along ``y``)."""
        return self.shape[0]

    @property
    def width(self) -> int:
        """Columns (pixels along ``x``)."""
        return self.shape[1]

    @property
    def res(self) -> tuple[float, float]:
        """``(x size, y size)`` of a pixel, metres, both positive."""
        return (float(self.transform.a), -float(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` of the pixel corners, CRS metres."""
        t = self.transform
        return (t.c, t.f + self.height * t.e, t.c + self.width * t.a, t.f)

    def x_centres(self) -> np.ndarray:
        """float64 [width] pixel-centre eastings, CRS metres (ascending)."""
        return self.transform.c + (np.arange(self.width) + 0.5) * self.transform.a

    def y_centres(self) -> np.ndarray:
        """float64 [height] pixel-centre northings, CRS metres (descending)."""
        return self.transform.f - (np.arange(self.height) + 0.5) * -self.transform.e

    def offsets(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of the pixel corner nearest each point (x, y).

        For a box's upper-left corner ``(minx, maxy)`` on this grid, this is the pixel
        its first row and column fall on.

        Args:
            x: float [N] eastings (or a scalar), CRS metres.
            y: float [N] northings (or a scalar), CRS metres.

        Returns:
            ``(rows, cols)``: int64 [N] each (rounded half to even).
        """
        t = self.transform
        rows = np.rint((t.f - np.asarray(y, dtype=np.float64)) / -t.e).astype(np.int64)
        cols = np.rint((np.asarray(x, dtype=np.float64) - t.c) / t.a).astype(np.int64)
        return rows, cols

    def window(self, other: PixelGrid) -> tuple[slice, slice]:
        """Rows and columns of this grid that ``other`` covers (``self[window] == other``).

        Args:
            other: a grid of the same CRS and pixel size whose corners lie on this
                grid's pixel corners, inside it.

        Returns:
            ``(rows, cols)`` slices, for ``array[rows, cols]`` of an array on this grid.

        Raises:
            GridError: another CRS or pixel size, corners off this grid's pixel corners,
                or ``other`` reaches outside this grid.
        """
        if other.epsg != self.epsg:
            raise GridError(f"grid in EPSG:{other.epsg} cannot be a window of a grid in "
                            f"EPSG:{self.epsg}; reproject it first",
                            transform=tuple(other.transform)[:6])
        if not all(math.isclose(p, q) for p, q in zip(other.res, self.res, strict=True)):
            raise GridError(f"pixel size {other.res} differs from the grid's {self.res}; "
                            "a window needs the same pixel size",
                            transform=tuple(other.transform)[:6])
        t, o = self.transform, other.transform
        fr, fc = (t.f - o.f) / -t.e, (o.c - t.c) / t.a
        if abs(fr - round(fr)) > ALIGN_TOL or abs(fc - round(fc)) > ALIGN_TOL:
            raise GridError(f"grid corner {(o.c, o.f)} is not on a pixel corner of the grid "
                            f"at {(t.c, t.f)} with {self.res} m pixels; shift it by whole "
                            "pixels", transform=tuple(o)[:6])
        r0, c0 = round(fr), round(fc)
        if r0 < 0 or c0 < 0 or r0 + other.height > self.height or c0 + other.width > self.width:
            raise GridError(f"grid rows {r0}..{r0 + other.height}, columns "
                            f"{c0}..{c0 + other.width} reach outside the {self.height}x"
                            f"{self.width} grid", transform=tuple(o)[:6])
        return slice(r0, r0 + other.height), slice(c0, c0 + other.width)

    def sub(self, rows: slice, cols: slice) -> PixelGrid:
        """The grid of a window of this one (``rows``/``cols`` slices with step 1).

        Raises:
            GridError: an empty window, a step, or one that reaches outside the grid.
        """
        r0, r1, rs = rows.indices(self.height)
        c0, c1, cs = cols.indices(self.width)
        if rs != 1 or cs != 1 or r1 <= r0 or c1 <= c0:
            raise GridError(f"window rows {rows}, columns {cols} of the {self.height}x"
                            f"{self.width} grid is empty or has a step; pass contiguous "
                            "non-empty slices", transform=tuple(self.transform)[:6])
        t = self.transform
        return PixelGrid(self.epsg, _affine((t.a, 0.0, t.c + c0 * t.a, 0.0, t.e, t.f + r0 * t.e)),
                         (r1 - r0, c1 - c0))

    # -- file formats -------------------------------------------------------------------

    def cf_grid_mapping(self) -> dict[str, Any]:
        """CF grid-mapping attributes of the CRS plus GDAL's ``GeoTransform``.

        What a chip file's ``spatial_ref`` variable carries: ``pyproj``'s CF attributes
        (``grid_mapping_name``, ``crs_wkt``, ...), ``spatial_ref`` (WKT, as rioxarray
        writes it) and ``GeoTransform`` ``"c a b f d e"`` (GDAL order), so rioxarray and
        GDAL read back this transform.
        """
        attrs: dict[str, Any] = dict(_crs_cf(self.epsg))
        t = self.transform
        attrs["GeoTransform"] = " ".join(str(v) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
        return attrs


@functools.lru_cache(maxsize=16)
def _crs_cf(epsg: int) -> tuple[tuple[str, Any], ...]:
    from pyproj import CRS

    crs = CRS.from_epsg(epsg)
    cf = crs.to_cf()
    cf["spatial_ref"] = crs.to_wkt()
    return tuple(cf.items())


@dataclass(frozen=True)
class Cell:
    """One full chip of a :class:`ChipGrid` that lies inside a raster.

    Attributes:
        row: grid row counted down from the origin.
        col: grid column counted right from the origin.
        row_off: first raster row of the cell (reference-band pixels).
        col_off: first raster column of the cell.
        bounds: ``(minx, miny, maxx, maxy)`` in the native CRS, metres.
    """

    row: int
    col: int
    row_off: int
    col_off: int
    bounds: tuple[float, float, float, float]


@dataclass(frozen=True)
class ChipGrid:
    """The chip tiling of one native CRS: ``chip_size`` pixel cells from ``origin``.

    Attributes:
        origin: ``(x0, y0)`` upper-left corner of cell (0, 0), native CRS metres.
        res: pixel size in metres (square pixels, north-up).
        chip_size: cell size in pixels.
    """

    origin: tuple[float, float]
    res: float
    chip_size: int

    @classmethod
    def anchored(cls, raster: PixelGrid, *, chip_size: int,
                 origin: tuple[float, float] | None = None) -> ChipGrid:
        """The chip grid of a raster: its pixel size, anchored at ``origin``.

        Args:
            raster: the reference band's grid (finest pixels).
            chip_size: cell size in pixels.
            origin: ``(x0, y0)`` of cell (0, 0), native CRS metres (default: the raster's
                upper-left corner; for Sentinel-2 L2A the MGRS tile corner).
        """
        t = raster.transform
        x0, y0 = origin if origin is not None else (t.c, t.f)
        return cls(origin=(float(x0), float(y0)), res=float(t.a), chip_size=int(chip_size))

    @property
    def cell_metres(self) -> float:
        """Cell edge length in metres."""
        return self.chip_size * self.res

    def _corner(self, row: int, col: int) -> tuple[float, float]:
        """Upper-left corner ``(minx, maxy)`` of cell ``(row, col)``, metres."""
        return (self.origin[0] + col * self.cell_metres, self.origin[1] - row * self.cell_metres)

    def cell_grid(self, row: int, col: int, *, epsg: int, n_cols: int = 1) -> PixelGrid:
        """The pixel grid of cell ``(row, col)`` and the ``n_cols - 1`` cells right of it.

        Its pixel centres are the ``x``/``y`` coordinates of the chips cut there; its
        bounds are the cells' :attr:`Cell.bounds`, the same floats.
        """
        x0, y0 = self._corner(row, col)
        return PixelGrid.from_origin(x0, y0, res=self.res, epsg=epsg,
                                     shape=(self.chip_size, n_cols * self.chip_size))

    def cells(self, raster: PixelGrid) -> list[Cell]:
        """Full cells inside a raster; partial cells at the edges are skipped.

        Args:
            raster: the raster's grid (the reference band's: finest pixels).

        Returns:
            Cells in row-major order.

        Raises:
            GridError: the raster has another pixel size, or its pixels do not line up
                with the grid origin.
        """
        t = raster.transform
        a, c, e, f = float(t.a), float(t.c), float(t.e), float(t.f)
        if not math.isclose(a, self.res) or not math.isclose(-e, self.res):
            raise GridError(
                f"raster pixel size ({a}, {e}) does not match the chip grid's {self.res} m "
                "north-up pixels; reproject the raster to a north-up grid",
                transform=tuple(t)[:6])
        # grid origin in raster pixel coordinates
        gx = (self.origin[0] - c) / self.res
        gy = (f - self.origin[1]) / self.res
        if abs(gx - round(gx)) > ALIGN_TOL or abs(gy - round(gy)) > ALIGN_TOL:
            raise GridError(
                f"grid origin {self.origin} is not on a pixel corner of the raster (upper-left "
                f"{(c, f)}, {self.res} m pixels); choose a --grid-origin that differs from the "
                "raster corner by a whole number of pixels", transform=tuple(t)[:6])
        gx, gy = round(gx), round(gy)
        size = self.chip_size
        height, width = raster.shape
        rows = range(math.ceil(-gy / size), math.floor((height - gy) / size))
        cols = range(math.ceil(-gx / size), math.floor((width - gx) / size))
        cells = []
        for r in rows:
            for col in cols:
                minx, maxy = self._corner(r, col)
                cells.append(Cell(r, col, gy + r * size, gx + col * size,
                                  (minx, maxy - self.cell_metres, minx + self.cell_metres, maxy)))
        return cells
