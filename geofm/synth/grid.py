"""Tile grids of the synthetic scene: UTM zone 33N, MGRS-like tiles on a 60 m lattice.

All tiles are cut from one *canvas*: a 10 m raster anchored at the first tile's
upper-left corner that covers every tile. Everything (land cover, clouds, noise) is
generated on the canvas, so overlapping tiles show the same ground and the same
clouds, like real overlapping MGRS tiles of one datatake. Canvas sides are multiples of
6 pixels, so the 20 m and 60 m grids are exact 2x2 and 6x6 block aggregates and every
tile's 10/20/60 m grids share its upper-left corner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

EPSG = 32633
UTM_ZONE = 33
LATITUDE_BAND = "U"
PIXEL_SIZE = 10
#: Upper-left corner (m, EPSG:32633) of the first tile; a whole multiple of 60 m.
ORIGIN = (300000.0, 5400000.0)
#: MGRS 100 km grid squares of the first and second tile.
GRID_SQUARES = ("UP", "VP")
#: Native resolutions (m) and their block factor relative to 10 m.
FACTORS = {10: 1, 20: 2, 60: 6}


@dataclass(frozen=True)
class Tile:
    """One MGRS-like tile: a ``size`` x ``size`` raster at 10 m.

    Attributes:
        code: MGRS tile code, e.g. ``"33UUP"``.
        col_offset: first canvas column (10 m pixels) of the tile; a multiple of 6.
        size: side in 10 m pixels.
    """

    code: str
    col_offset: int
    size: int

    @property
    def grid_square(self) -> str:
        """The two-letter 100 km square, e.g. ``"UP"``."""
        return self.code[-2:]

    @property
    def origin(self) -> tuple[float, float]:
        """Upper-left corner (x0, y0), metres in EPSG:32633."""
        return (ORIGIN[0] + self.col_offset * PIXEL_SIZE, ORIGIN[1])

    def shape(self, resolution: int) -> tuple[int, int]:
        """Raster (rows, cols) at ``resolution`` m: covers the 10 m extent (ceil)."""
        n = math.ceil(self.size / FACTORS[resolution])
        return (n, n)

    def transform(self, resolution: int) -> list[float]:
        """Affine coefficients ``[a, b, c, d, e, f]`` (rasterio order) at ``resolution``."""
        x0, y0 = self.origin
        return [float(resolution), 0.0, x0, 0.0, -float(resolution), y0]

    def window(self, resolution: int) -> tuple[slice, slice]:
        """(rows, cols) slices of the tile in the canvas grid at ``resolution``."""
        f = FACTORS[resolution]
        rows, cols = self.shape(resolution)
        c0 = self.col_offset // f
        return slice(0, rows), slice(c0, c0 + cols)

    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the 10 m raster, metres in EPSG:32633."""
        x0, y0 = self.origin
        side = self.size * PIXEL_SIZE
        return (x0, y0 - side, x0 + side, y0)

    @cached_property
    def footprint(self) -> tuple[list[list[float]], list[float]]:
        """WGS84 footprint of the 10 m raster: (polygon ring [[lon, lat], ...], bbox)."""
        from pyproj import Transformer

        minx, miny, maxx, maxy = self.bounds()
        n = 8  # densify each edge: UTM straight lines are not straight in lon/lat
        xs: list[float] = []
        ys: list[float] = []
        for (xa, ya), (xb, yb) in (((minx, maxy), (maxx, maxy)), ((maxx, maxy), (maxx, miny)),
                                   ((maxx, miny), (minx, miny)), ((minx, miny), (minx, maxy))):
            for k in range(n):
                xs.append(xa + (xb - xa) * k / n)
                ys.append(ya + (yb - ya) * k / n)
        to_wgs84 = Transformer.from_crs(EPSG, 4326, always_xy=True)
        lons, lats = to_wgs84.transform(xs, ys)
        ring = [[round(float(lo), 7), round(float(la), 7)] for lo, la in zip(lons, lats,
                                                                             strict=True)]
        ring.append(ring[0])
        bbox = [min(p[0] for p in ring), min(p[1] for p in ring),
                max(p[0] for p in ring), max(p[1] for p in ring)]
        return ring, bbox


@dataclass(frozen=True)
class Canvas:
    """The 10 m raster all tiles are cut from.

    Attributes:
        rows: canvas height, 10 m pixels (a multiple of 6).
        cols: canvas width, 10 m pixels (a multiple of 6).
        chip_size: land-cover cell side, pixels.
        tiles: the tiles, first one at column 0.
    """

    rows: int
    cols: int
    chip_size: int
    tiles: tuple[Tile, ...]

    def shape(self, resolution: int) -> tuple[int, int]:
        """Canvas (rows, cols) at ``resolution`` m."""
        f = FACTORS[resolution]
        return (self.rows // f, self.cols // f)

    @property
    def cells(self) -> tuple[int, int]:
        """Number of land-cover cells (rows, cols) covering the canvas (the last may be cut)."""
        return (math.ceil(self.rows / self.chip_size), math.ceil(self.cols / self.chip_size))


def second_tile_offset(size: int, chip_size: int) -> int:
    """Column offset (10 m pixels) of the second tile.

    The offset is a multiple of both 6 (a whole 60 m pixel) and ``chip_size`` (so both
    tiles' chip grids fall on the same land-cover cells), the largest such that still
    overlaps the first tile; when none does (small tiles) the smallest one.
    """
    step = math.lcm(6, chip_size)
    k = (size - 1) // step
    return max(k, 1) * step


def make_canvas(size: int, chip_size: int, n_tiles: int) -> Canvas:
    """Lay out ``n_tiles`` tiles (1 or 2) of ``size`` px and the canvas around them."""
    offsets = [0] if n_tiles == 1 else [0, second_tile_offset(size, chip_size)]
    tiles = tuple(Tile(f"{UTM_ZONE}{LATITUDE_BAND}{GRID_SQUARES[i]}", off, size)
                  for i, off in enumerate(offsets))
    rows = math.ceil(size / 6) * 6
    cols = math.ceil((offsets[-1] + size) / 6) * 6
    return Canvas(rows=rows, cols=cols, chip_size=chip_size, tiles=tiles)
