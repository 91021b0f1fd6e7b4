"""Change maps as rasters: a Cloud-Optimized GeoTIFF per tile, and a mosaic VRT.

Each tile's chips lie on a regular grid in the tile's native CRS, so the change map of
a tile is a raster with **one pixel per chip** (pixel size = chip size, e.g. 2560 m for
256 px chips at 10 m), written with GDAL's COG driver to
``analysis/rasters/<tile>.tif``: float32, three bands,

1. ``status``: 0 no change, 1 change, 2 insufficient data, 3 change already reported
   by an overlapping chip of another tile (``duplicate_of``; so a clearing on the
   tiles' overlap is one change, not two);
2. ``change_date``: days since 1970-01-01 (UTC) of the change;
3. ``magnitude``: the change magnitude (median scaled residual after the change, or of
   all monitoring observations when there is none).

Nodata is :data:`NODATA` (-9999) in every band: no chip there, no change (band 2), no
magnitude (band 3). Tiles are tiled in :data:`BLOCKSIZE` px blocks with nearest-
neighbour overviews (``OVERVIEWS=AUTO``), DEFLATE-compressed.

``analysis/rasters/mosaic.vrt`` puts all tiles that share a CRS into one virtual
raster (a GDAL VRT written here as XML: tiles as ``ComplexSource`` with their nodata,
so one tile's empty pixels do not hide another's; where tiles overlap, the tile first by
code is drawn on top: it holds the chip that duplicates point to, so the mosaic shows
each change once). Tiles in other CRSs (another UTM
zone) get one mosaic per CRS, ``mosaic_<epsg>.vrt``; nothing is reprojected.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from geofm.grid import PixelGrid

if TYPE_CHECKING:
    from geofm.io import StagedFiles

log = logging.getLogger(__name__)

#: Nodata value of every band.
NODATA = -9999.0
#: Block (and smallest overview) size of the COGs, in pixels (chips); GDAL's minimum.
BLOCKSIZE = 128
#: Band names, in band order.
BANDS = ("status", "change_date", "magnitude")
#: ``status`` band codes.
STATUS_CODES = {"no change": 0, "change": 1, "insufficient data": 2, "duplicate": 3}


def tile_grid(frame: pd.DataFrame, *, epsg: int) -> tuple[PixelGrid, np.ndarray, np.ndarray]:
    """The chip grid of one tile's chips: one pixel per chip (native CRS).

    Args:
        frame: the tile's chips with native ``minx miny maxx maxy``.
        epsg: their CRS.

    Returns:
        ``(grid, row [n], col [n])``: the raster grid (pixel size = the chip size, CRS
        units; upper-left corner = the chips' upper-left corner) and each chip's pixel.
    """
    bounds = frame[["minx", "miny", "maxx", "maxy"]].to_numpy(dtype=np.float64)
    size = float(np.median(bounds[:, 2] - bounds[:, 0]))
    grid = PixelGrid.covering(bounds, res=size, epsg=epsg)
    row, col = grid.offsets(bounds[:, 0], bounds[:, 3])
    return grid, row, col


def band_values(status: np.ndarray, change_ns: np.ndarray, magnitude: np.ndarray,
                duplicate: np.ndarray) -> np.ndarray:
    """float32 ``[3, C]`` per-chip band values (status code, change day, magnitude)."""
    code = np.array([STATUS_CODES.get(str(s), NODATA) for s in status], dtype=np.float32)
    dup = np.array([d is not None for d in duplicate], dtype=bool) & (code == 1)
    code[dup] = STATUS_CODES["duplicate"]
    change = (code == 1) | (code == 3)
    days = np.where(change, np.floor_divide(change_ns, 86_400 * 10**9), NODATA)
    mag = np.where(np.isfinite(magnitude), magnitude, NODATA)
    return np.stack([code, days.astype(np.float32), mag.astype(np.float32)])


def write_cog(path: Path, data: np.ndarray, *, epsg: int, x0: float, y0: float,
              size: float) -> None:
    """Write float32 ``[3, H, W]`` as a COG (GDAL's COG driver) at ``path``."""
    import rasterio
    import rasterio.shutil
    from rasterio.io import MemoryFile

    grid = PixelGrid.from_origin(x0, y0, res=size, shape=data.shape[1:], epsg=epsg)
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=data.shape[0],
                   dtype="float32", crs=f"EPSG:{grid.epsg}", nodata=NODATA,
                   transform=grid.transform)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
            for i, name in enumerate(BANDS, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(status_codes=",".join(f"{v}={k}" for k, v in STATUS_CODES.items()),
                            change_date_units="days since 1970-01-01 UTC", nodata=str(NODATA))
        with mem.open() as src:
            rasterio.shutil.copy(src, str(path), driver="COG", BLOCKSIZE=BLOCKSIZE,
                                 OVERVIEWS="AUTO", RESAMPLING="NEAREST",
                                 OVERVIEW_RESAMPLING="NEAREST", COMPRESS="DEFLATE")


def write_change_rasters(staged: StagedFiles, root: Any, meta: pd.DataFrame,
                         out: dict[str, np.ndarray], change_ns: np.ndarray,
                         duplicate: np.ndarray) -> list[str]:
    """Write one COG per tile and the mosaic VRT(s) into ``staged`` (see module docs).

    Args:
        staged: the update's staged files (targets under ``analysis/``).
        root: the :class:`~geofm.layout.RunRoot` (names the files).
        meta: per chip ``chip_id``, ``tile``, ``epsg``, native ``minx miny maxx maxy``.
        out: :func:`~geofm.analyze.change.assess` output (``status``, ``magnitude``).
        change_ns: int64 ``[C]`` change dates (ns since the epoch).
        duplicate: object ``[C]`` ``duplicate_of`` per chip.

    Returns:
        The staged names written (relative to ``analysis/``).
    """
    values = band_values(out["status"], change_ns, out["magnitude"], duplicate)
    usable = meta["tile"].notna().to_numpy() & meta["epsg"].notna().to_numpy() & \
        np.isfinite(meta[["minx", "miny", "maxx", "maxy"]].to_numpy(dtype=float)).all(axis=1)
    if not usable.all():
        log.info("change rasters: %d chip(s) without tile/CRS/native bounds in their metadata "
                 "are left out", int((~usable).sum()))
    names: list[str] = []
    tiles: list[dict[str, Any]] = []
    frame = meta[usable]
    for (tile, epsg), part in frame.groupby(["tile", "epsg"], sort=True):
        grid, row, col = tile_grid(part, epsg=int(epsg))
        data = np.full((len(BANDS), *grid.shape), NODATA, dtype=np.float32)
        data[:, row, col] = values[:, part.index.to_numpy()]
        path = root.change_raster_path(str(tile))
        name = str(path.relative_to(root.analysis_dir))
        (x0, _, _, y0), size = grid.bounds, grid.res[0]
        write_cog(staged.path(name), data, epsg=grid.epsg, x0=x0, y0=y0, size=size)
        names.append(name)
        tiles.append(dict(name=path.name, epsg=grid.epsg, x0=x0, y0=y0, size=size,
                          width=grid.width, height=grid.height))
    by_crs: dict[int, list[dict[str, Any]]] = {}
    for t in tiles:
        by_crs.setdefault(t["epsg"], []).append(t)
    for epsg, group in by_crs.items():
        mosaic = root.mosaic_path if len(by_crs) == 1 else \
            root.mosaic_path.with_name(f"mosaic_{epsg}.vrt")
        name = str(mosaic.relative_to(root.analysis_dir))
        staged.path(name).write_text(mosaic_vrt(group, epsg=epsg), encoding="utf-8")
        names.append(name)
    return names


def mosaic_vrt(tiles: list[dict[str, Any]], *, epsg: int) -> str:
    """GDAL VRT XML that mosaics same-CRS, same-pixel-size tile rasters.

    Args:
        tiles: per tile ``name`` (file name beside the VRT), ``x0``, ``y0`` (upper-left
            corner), ``size`` (pixel size), ``width``, ``height``.
        epsg: their CRS.

    Returns:
        The XML text (sources relative to the VRT; fractional offsets where tile grids
        are not aligned; the tile first by name drawn last, on top).
    """
    from pyproj import CRS

    size = float(tiles[0]["size"])
    x0 = min(t["x0"] for t in tiles)
    y0 = max(t["y0"] for t in tiles)
    x1 = max(t["x0"] + t["width"] * t["size"] for t in tiles)
    y1 = min(t["y0"] - t["height"] * t["size"] for t in tiles)
    width = int(np.ceil(round((x1 - x0) / size, 6)))
    height = int(np.ceil(round((y0 - y1) / size, 6)))
    wkt = escape(CRS.from_epsg(epsg).to_wkt())
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f'  <SRS dataAxisToSRSAxisMapping="1,2">{wkt}</SRS>',
             f"  <GeoTransform>{x0!r}, {size!r}, 0.0, {y0!r}, 0.0, {-size!r}</GeoTransform>"]
    for b, band in enumerate(BANDS, start=1):
        lines += [f'  <VRTRasterBand dataType="Float32" band="{b}">',
                  f"    <Description>{band}</Description>",
                  f"    <NoDataValue>{NODATA}</NoDataValue>"]
        for t in sorted(tiles, key=lambda t: t["name"], reverse=True):
            scale = t["size"] / size
            xoff = (t["x0"] - x0) / size
            yoff = (y0 - t["y0"]) / size
            lines += [
                "    <ComplexSource>",
                f'      <SourceFilename relativeToVRT="1">{escape(t["name"])}</SourceFilename>',
                f"      <SourceBand>{b}</SourceBand>",
                f'      <SourceProperties RasterXSize="{t["width"]}" '
                f'RasterYSize="{t["height"]}" DataType="Float32" '
                f'BlockXSize="{BLOCKSIZE}" BlockYSize="{BLOCKSIZE}"/>',
                f'      <SrcRect xOff="0" yOff="0" xSize="{t["width"]}" ySize="{t["height"]}"/>',
                f'      <DstRect xOff="{xoff:.6f}" yOff="{yoff:.6f}" '
                f'xSize="{t["width"] * scale:.6f}" ySize="{t["height"] * scale:.6f}"/>',
                f"      <NODATA>{NODATA}</NODATA>",
                "    </ComplexSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"
