"""The chip grid: native-CRS cells of ``chip_size`` pixels counted from a fixed origin.

The origin is the upper-left corner of the item's raster grid (for Sentinel-2 L2A the
MGRS tile corner, identical for every acquisition) or an explicit ``grid_origin``. Row
``r`` / column ``c`` is the cell ``[x0 + c*S*p, x0 + (c+1)*S*p] x [y0 - (r+1)*S*p,
y0 - r*S*p]`` (``S`` = chip size in pixels, ``p`` = pixel size in metres), so the same
footprint gets the same id in every acquisition and every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geofm.exceptions import GeofmValueError

#: Tolerance (in pixels) for "the raster grid is aligned with the chip grid".
_ALIGN_TOL = 1e-6


def chip_id(tile: str, chip_size: int, row: int, col: int) -> str:
    """The stable chip id ``"{tile}_{chip_size}_{row:04d}_{col:04d}"``."""
    return f"{tile}_{chip_size}_{row:04d}_{col:04d}"


@dataclass(frozen=True)
class Cell:
    """One full chip of the grid that lies inside a raster.

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
    """A chip grid in one native CRS.

    Attributes:
        origin: ``(x0, y0)`` upper-left corner of cell (0, 0), native CRS metres.
        res: pixel size in metres (square pixels, north-up).
        chip_size: cell size in pixels.
    """

    origin: tuple[float, float]
    res: float
    chip_size: int

    @property
    def cell_metres(self) -> float:
        """Cell edge length in metres."""
        return self.chip_size * self.res

    def cells(self, transform: tuple[float, ...], shape: tuple[int, int]) -> list[Cell]:
        """Full cells inside a raster; partial cells at the edges are skipped.

        Args:
            transform: the raster's affine ``(a, b, c, d, e, f)`` (north-up, ``a == -e``).
            shape: the raster's ``(height, width)`` in pixels.

        Returns:
            Cells in row-major order.

        Raises:
            GeofmValueError: the raster is rotated, has another pixel size, or its pixels
                do not line up with the grid origin.
        """
        a, b, c, d, e, f = (float(v) for v in transform[:6])
        if b != 0 or d != 0 or not math.isclose(a, self.res) or not math.isclose(-e, self.res):
            raise GeofmValueError(
                f"raster pixel size ({a}, {e}) / rotation ({b}, {d}) does not match the chip "
                f"grid's {self.res} m north-up pixels; reproject the raster to a north-up grid")
        # grid origin in raster pixel coordinates
        gx = (self.origin[0] - c) / self.res
        gy = (f - self.origin[1]) / self.res
        if abs(gx - round(gx)) > _ALIGN_TOL or abs(gy - round(gy)) > _ALIGN_TOL:
            raise GeofmValueError(
                f"grid origin {self.origin} is not on a pixel corner of the raster (upper-left "
                f"{(c, f)}, {self.res} m pixels); choose a --grid-origin that differs from the "
                "raster corner by a whole number of pixels")
        gx, gy = round(gx), round(gy)
        size = self.chip_size
        height, width = shape
        rows = range(math.ceil(-gy / size), math.floor((height - gy) / size))
        cols = range(math.ceil(-gx / size), math.floor((width - gx) / size))
        cells = []
        for r in rows:
            for col in cols:
                minx = self.origin[0] + col * self.cell_metres
                maxy = self.origin[1] - r * self.cell_metres
                cells.append(Cell(r, col, gy + r * size, gx + col * size,
                                  (minx, maxy - self.cell_metres, minx + self.cell_metres, maxy)))
        return cells


def footprints_wgs84(bounds: np.ndarray, epsg: int, *, densify: int = 4) -> list:  # type: ignore[type-arg]
    """WGS84 footprint polygons of native-CRS boxes.

    Args:
        bounds: float64 [N, 4] ``minx, miny, maxx, maxy`` in EPSG:``epsg``, metres.
        epsg: native CRS.
        densify: points per edge (edges of UTM boxes are slightly curved in lon/lat).

    Returns:
        N shapely polygons, lon/lat (x = longitude).
    """
    from pyproj import Transformer
    from shapely import polygons

    bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    t = np.linspace(0.0, 1.0, densify, endpoint=False)
    minx, miny, maxx, maxy = (bounds[:, i : i + 1] for i in range(4))
    xs = np.concatenate([minx + (maxx - minx) * t, np.broadcast_to(maxx, (len(bounds), densify)),
                         maxx - (maxx - minx) * t, np.broadcast_to(minx, (len(bounds), densify))],
                        axis=1)
    ys = np.concatenate([np.broadcast_to(maxy, (len(bounds), densify)), maxy - (maxy - miny) * t,
                         np.broadcast_to(miny, (len(bounds), densify)), miny + (maxy - miny) * t],
                        axis=1)
    transformer = Transformer.from_crs(epsg, 4326, always_xy=True)
    lon, lat = transformer.transform(xs, ys)
    return list(polygons(np.stack([lon, lat], axis=-1)))


def load_aoi(path: str, epsg: int):  # type: ignore[no-untyped-def]
    """Union of the polygons of a GeoJSON AOI, reprojected to EPSG:``epsg``.

    A file without a CRS is read as WGS84 (the GeoJSON default).

    Raises:
        GeofmValueError: the file is unreadable or holds no polygon.
    """
    import geopandas as gpd

    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio/GDAL raise several types for unreadable files
        raise GeofmValueError(f"cannot read AOI {path}: {exc}; pass a GeoJSON file with "
                              "Polygon or MultiPolygon features") from None
    if frame.crs is None:
        frame = frame.set_crs(4326)
    frame = frame[frame.geometry.notna() & frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    if frame.empty:
        raise GeofmValueError(f"AOI {path} holds no Polygon or MultiPolygon; pass a GeoJSON "
                              "with at least one polygon")
    return frame.to_crs(epsg).geometry.union_all()
